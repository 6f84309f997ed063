// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {JobTerms, Receipt, JobStatus} from "../libraries/SplitmeshTypes.sol";

/// @title Errors of the JobMarket
interface IJobMarketErrors {
    /// @notice A constructor parameter is out of range.
    /// @param what Name of the offending parameter.
    error InvalidParameter(string what);
    /// @notice maxTokens must be positive.
    error ZeroMaxTokens();
    /// @notice The job metadata is longer than the limit.
    /// @param length Length in bytes.
    error MetadataTooLong(uint256 length);
    /// @notice The escrow does not cover maxTokens at the matched route's prices.
    /// @param required Wei needed.
    /// @param provided Wei sent.
    error EscrowTooSmall(uint256 required, uint256 provided);
    /// @notice The escrow does not fit in 96 bits.
    /// @param provided Wei sent.
    error EscrowTooLarge(uint256 provided);
    /// @notice No job with this id.
    /// @param jobId The id.
    error UnknownJob(uint256 jobId);
    /// @notice The terms passed do not hash to the job's stored terms hash.
    /// @param jobId The job.
    error TermsMismatch(uint256 jobId);
    /// @notice The job is not in the status this call needs.
    /// @param jobId The job.
    /// @param status Its current status.
    error WrongJobStatus(uint256 jobId, JobStatus status);
    /// @notice The route has no hop at this position.
    /// @param jobId The job.
    /// @param position The position given.
    error InvalidPosition(uint256 jobId, uint8 position);
    /// @notice The caller is not the node at this position of the route.
    /// @param jobId The job.
    /// @param caller The caller.
    /// @param position The position given.
    error NotRouteNode(uint256 jobId, address caller, uint8 position);
    /// @notice This route position already committed.
    /// @param jobId The job.
    /// @param position The position.
    error AlreadyCommitted(uint256 jobId, uint8 position);
    /// @notice The commit deadline has passed.
    /// @param jobId The job.
    /// @param deadline Last timestamp at which commits were accepted.
    error CommitDeadlinePassed(uint256 jobId, uint256 deadline);
    /// @notice The commit window is still open, the job cannot be cancelled yet.
    /// @param jobId The job.
    /// @param deadline Cancelling is possible strictly after this timestamp.
    error CommitWindowOpen(uint256 jobId, uint256 deadline);
    /// @notice The challenge window is still open, the job cannot be finalized yet.
    /// @param jobId The job.
    /// @param endsAt Finalizing is possible from this timestamp on.
    error ChallengeWindowOpen(uint256 jobId, uint256 endsAt);
    /// @notice The challenge window is over, the job can no longer be held for audit.
    /// @param jobId The job.
    /// @param endedAt When it ended.
    error ChallengeWindowClosed(uint256 jobId, uint256 endedAt);
    /// @notice The receipt's token count is above the job's maxTokens.
    /// @param tokens Tokens in the receipt.
    /// @param maxTokens The job's limit.
    error TokensExceedMax(uint32 tokens, uint32 maxTokens);
    /// @notice The receipt was not signed by the job's client.
    /// @param jobId The job.
    /// @param signer The address recovered from the signature (zero if malformed).
    error InvalidReceiptSignature(uint256 jobId, address signer);
    /// @notice Only the auditor may call this function.
    /// @param caller The caller.
    error NotAuditor(address caller);
    /// @notice The fraud mask names positions outside the route.
    /// @param fraudMask The mask given.
    error InvalidFraudMask(uint8 fraudMask);
    /// @notice Native currency was sent by someone other than the registry.
    /// @param sender The sender.
    error UnexpectedPayment(address sender);
    /// @notice Nothing to withdraw.
    /// @param account The caller.
    error NothingToWithdraw(address account);
    /// @notice A native-currency transfer failed.
    /// @param to The recipient.
    /// @param amount The amount in wei.
    error TransferFailed(address to, uint256 amount);
}

/// @title JobMarket: escrowed jobs, on-chain matching, commitments, challenge window, payment
interface IJobMarket is IJobMarketErrors {
    /// @notice The stored state of a job (one storage slot).
    struct Job {
        bytes20 termsHash; // first 20 bytes of keccak256(abi.encodePacked(jobId, packedTerms))
        JobStatus status;
        uint8 committedMask; // bit i set: route position i committed
        uint32 billedTokens; // highest token count of a valid client receipt
        uint40 timestamp; // Open: submitted at; Committed: last commit at; Disputed: disputed at
    }

    /// @notice A job was submitted, escrowed and matched.
    /// @param jobId The new job id.
    /// @param client The client.
    /// @param terms The packed terms (see JobTermsLib); pass them back to commit, finalize and cancel.
    /// @param metadata Client-declared parameters (for example the privacy budget), opaque to the chain.
    event JobSubmitted(uint256 indexed jobId, address indexed client, bytes terms, bytes metadata);
    /// @notice A route node committed to its transcript. When the last position commits, the job becomes
    /// Committed and the challenge window runs from this block's timestamp.
    /// @param jobId The job.
    /// @param position The committing node's route position (the node is hop `position` of the terms).
    /// @param inputCommitment Hash chain over the input frames it received.
    /// @param outputCommitment Hash chain over the output frames it sent.
    /// @param billedTokens The job's billed tokens after this commit.
    event JobCommitted(
        uint256 indexed jobId,
        uint8 position,
        bytes32 inputCommitment,
        bytes32 outputCommitment,
        uint32 billedTokens
    );
    /// @notice The job was finalized: nodes were paid, the client refunded.
    /// @param jobId The job.
    /// @param billedTokens Tokens billed per paid node (every committed position not found fraudulent).
    /// @param paid Total wei credited to nodes.
    /// @param refund Wei returned to the client.
    event JobFinalized(uint256 indexed jobId, uint32 billedTokens, uint256 paid, uint256 refund);
    /// @notice The job was cancelled after its commit deadline; nodes that did not commit were slashed.
    /// @param jobId The job.
    /// @param missingMask Route positions that never committed.
    /// @param paid Wei credited to the nodes that committed.
    /// @param slashed Wei slashed from the missing nodes, added to the refund.
    /// @param refund Wei returned to the client.
    event JobCancelled(uint256 indexed jobId, uint8 missingMask, uint256 paid, uint256 slashed, uint256 refund);
    /// @notice The job was disputed: held by the auditor, or disputed automatically by its last commit
    /// (mismatched commitments or a sampled audit). It cannot be finalized until the auditor resolves it or
    /// the dispute times out; the dispute timeout runs from this block's timestamp.
    /// @param jobId The job.
    event JobDisputed(uint256 indexed jobId);
    /// @notice At the job's last commit, some node's output commitment differed from the next node's
    /// input commitment; the job was disputed (JobDisputed is emitted with it).
    /// @param jobId The job.
    event CommitmentsMismatched(uint256 indexed jobId);
    /// @notice The job's last commit drew it for a sampled audit; the job was disputed (JobDisputed is
    /// emitted with it).
    /// @param jobId The job.
    event AuditSampled(uint256 indexed jobId);
    /// @notice The auditor resolved a dispute.
    /// @param jobId The job.
    /// @param fraudMask Route positions found fraudulent (slashed, not paid).
    /// @param slashed Wei slashed, sent to the auditor.
    event DisputeResolved(uint256 indexed jobId, uint8 fraudMask, uint256 slashed);
    /// @notice A refund could not be pushed and was credited for withdrawal instead.
    /// @param account The recipient.
    /// @param amount Wei credited.
    event RefundCredited(address indexed account, uint256 amount);
    /// @notice A credited refund was withdrawn.
    /// @param account The recipient.
    /// @param amount Wei sent.
    event CreditWithdrawn(address indexed account, uint256 amount);

    /// @notice Submit a job with escrow; it is matched on-chain to one node per shard from firstShard on.
    /// @param modelId The model.
    /// @param firstShard First shard the nodes run (the client ran shards before it).
    /// @param maxTokens Most tokens the client will sign for.
    /// @param maxPricePerToken Highest per-node price in wei per token.
    /// @param metadata Up to 256 bytes the client declares (emitted, not stored).
    /// @return jobId The new job id.
    function submitJob(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata
    ) external payable returns (uint256 jobId);

    /// @notice Commit the caller's transcript commitments and the client's latest usage receipt. The last
    /// commit completes the job: it becomes Committed, or Disputed when some node's output commitment
    /// differs from the next node's input commitment, or when the job is drawn for a sampled audit.
    /// @param jobId The job.
    /// @param terms The job's packed terms as emitted by JobSubmitted.
    /// @param position The caller's route position.
    /// @param inputCommitment Hash chain over received frames.
    /// @param outputCommitment Hash chain over sent frames.
    /// @param receipt The client's signed envelope with the highest token count the node holds.
    function commit(
        uint256 jobId,
        bytes calldata terms,
        uint8 position,
        bytes32 inputCommitment,
        bytes32 outputCommitment,
        Receipt calldata receipt
    ) external;

    /// @notice Pay the nodes price x billedTokens and refund the rest, once the challenge window passed.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function finalize(uint256 jobId, bytes calldata terms) external;

    /// @notice After the commit deadline of a job not fully committed: pay committed nodes, slash the
    /// missing ones and refund the client the rest plus the slashed stake.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function cancel(uint256 jobId, bytes calldata terms) external;

    /// @notice Auditor hook: hold a committed job within its challenge window.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function holdForAudit(uint256 jobId, bytes calldata terms) external;

    /// @notice Auditor hook: settle a disputed job. Fraudulent positions are slashed fraudSlashBps of their
    /// bond and not paid; the slash proceeds are sent to the auditor.
    /// @param jobId The job.
    /// @param terms The job's terms.
    /// @param fraudMask Route positions found fraudulent.
    /// @return slashed Wei slashed and sent to the auditor.
    function resolveDispute(uint256 jobId, bytes calldata terms, uint8 fraudMask) external returns (uint256 slashed);

    /// @notice Withdraw the caller's node earnings (the ledger is in the registry, the value here).
    function withdrawEarnings() external;

    /// @notice Withdraw refunds that could not be pushed.
    function withdrawCredit() external;

    /// @notice A job's stored state.
    /// @param jobId The job.
    /// @return The job.
    function getJob(uint256 jobId) external view returns (Job memory);

    /// @notice The commitment-link accumulator of a job that is still Open: the XOR of the link terms of
    /// the positions committed so far (zero before the first commit, and again once the job settles or
    /// completes).
    /// @param jobId The job.
    /// @return The accumulator.
    function linksOf(uint256 jobId) external view returns (bytes32);

    /// @notice Number of jobs submitted; ids are 1..count.
    /// @return The count.
    function jobCount() external view returns (uint256);

    /// @notice The 20-byte hash that commits a job's terms.
    /// @param jobId The job.
    /// @param terms The packed terms.
    /// @return The hash.
    function hashTerms(uint256 jobId, bytes calldata terms) external pure returns (bytes20);

    /// @notice Decode packed terms.
    /// @param terms The packed terms.
    /// @return decoded The terms as a struct.
    function decodeTerms(bytes calldata terms) external pure returns (JobTerms memory decoded);

    /// @notice EIP-712 digest of a usage envelope, as the client signs it.
    /// @param jobId The job.
    /// @param step Step number.
    /// @param tokens Cumulative tokens.
    /// @param payloadHash keccak256 of the step's frame.
    /// @return The digest.
    function envelopeDigest(
        uint256 jobId,
        uint32 step,
        uint32 tokens,
        bytes32 payloadHash
    ) external view returns (bytes32);

    /// @notice Refunds waiting to be withdrawn by an account.
    /// @param account The account.
    /// @return Wei.
    function creditOf(address account) external view returns (uint256);

    /// @notice Sum of refunds waiting to be withdrawn.
    /// @return Wei.
    function totalCredits() external view returns (uint256);

    /// @notice The NodeRegistry.
    /// @return Its address.
    function registry() external view returns (address);

    /// @notice The auditor allowed to hold and resolve jobs (zero: audits disabled).
    /// @return Its address.
    function auditor() external view returns (address);

    /// @notice Share of completed jobs drawn for a sampled audit, in basis points.
    /// @return Basis points (0 disables sampling).
    function auditRateBps() external view returns (uint256);

    /// @notice Protocol timing and slashing parameters.
    /// @return commitTimeout Seconds after submission until commits close.
    /// @return challengeWindow Seconds after the last commit until finalization.
    /// @return disputeTimeout Seconds a held job waits for the auditor before anyone may finalize it.
    /// @return missSlashBps Share of bond slashed from a node that never commits, in basis points.
    /// @return fraudSlashBps Share of bond slashed for a fraud verdict, in basis points.
    function parameters()
        external
        view
        returns (
            uint256 commitTimeout,
            uint256 challengeWindow,
            uint256 disputeTimeout,
            uint256 missSlashBps,
            uint256 fraudSlashBps
        );
}
