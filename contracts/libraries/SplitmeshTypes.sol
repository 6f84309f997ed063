// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice One hop of a job's route: the node serving a shard and the price it was matched at.
/// @dev Packs into one storage slot (160 + 64 bits) so a registry pool entry is a single SLOAD.
struct RouteHop {
    address node;
    uint64 pricePerToken; // wei per token
}

/// @notice Everything fixed about a job when it is submitted, decoded. On-chain the terms travel packed
/// (see JobTermsLib): only a 160-bit hash is stored and callers pass the packed bytes back as calldata.
struct JobTerms {
    address client;
    uint32 modelId;
    uint8 firstShard; // the client ran shards [0, firstShard) itself
    uint32 maxTokens;
    uint96 escrow; // wei
    RouteHop[] route; // route[i] serves shard firstShard + i
}

/// @notice A usage receipt: the client's EIP-712 signed envelope of one step. The last one a node holds
/// proves how many tokens the job used so far.
struct Receipt {
    uint32 step;
    uint32 tokens; // cumulative tokens processed by the job up to and including `step`
    bytes32 payloadHash; // keccak256 of the step's tensor frame
    bytes signature; // 65-byte ECDSA signature by the job's client
}

/// @notice Lifecycle of a job. States only move forward: Open -> Committed -> (Disputed ->) Finalized,
/// or Open -> Cancelled.
enum JobStatus {
    None,
    Open,
    Committed,
    Disputed,
    Finalized,
    Cancelled
}

/// @notice Registration state of a node address.
enum NodeStatus {
    None,
    Active,
    Inactive
}

/// @notice Lifecycle of an audit in the AuditCourt: None -> Open -> Resolved.
enum AuditStatus {
    None,
    Open,
    Resolved
}

/// @notice A verifier's vote on one route position: Drawn -> Committed -> Honest | Fraud (revealed).
enum VoteStatus {
    None, // not drawn
    Drawn,
    Committed,
    Honest,
    Fraud
}
