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
    /// @notice Challenges need an auditor and a positive challenge bond.
    error ChallengesDisabled();
    /// @notice A challenge must post exactly the challenge bond.
    /// @param required Wei required.
    /// @param provided Wei sent.
    error WrongChallengeBond(uint256 required, uint256 provided);
    /// @notice Sampled audits are off (auditRateBps is 0).
    error SamplingDisabled();
    /// @notice The audit draw of a job needs the hash of the block it completed in, which is not
    /// available: the call is in that same block, or more than 256 blocks later.
    /// @param jobId The job.
    /// @param completedBlock Block of the job's last commit.
    error DrawUnavailable(uint256 jobId, uint256 completedBlock);
    /// @notice A checkpointed receipt must raise the job's billed tokens.
    /// @param jobId The job.
    /// @param tokens Tokens in the receipt.
    /// @param billedTokens Tokens already billed.
    error ReceiptNotNewer(uint256 jobId, uint32 tokens, uint32 billedTokens);
    /// @notice The job was not drawn for a sampled audit.
    /// @param jobId The job.
    error NotSampled(uint256 jobId);
    /// @notice Only the job's client may release it.
    /// @param jobId The job.
    /// @param caller Who called.
    error NotJobClient(uint256 jobId, address caller);
    /// @notice The job cannot be released: a client receipt is already on-chain (a step was served).
    /// @param jobId The job.
    /// @param billedTokens Tokens billed by the receipt on-chain.
    error JobAlreadyServed(uint256 jobId, uint32 billedTokens);
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
    /// @notice The job was cancelled after its commit deadline; nodes that did not commit were slashed
    /// (unless the client released the job: then `slashed` is 0).
    /// @param jobId The job.
    /// @param missingMask Route positions that never committed.
    /// @param paid Wei credited to the nodes that committed.
    /// @param slashed Wei slashed from the missing nodes and burned (never paid to anyone, so nobody
    /// profits from a missed commit; at most what the job offered the hop).
    /// @param refund Wei returned to the client (the escrow minus `paid`).
    event JobCancelled(uint256 indexed jobId, uint8 missingMask, uint256 paid, uint256 slashed, uint256 refund);
    /// @notice The client declared that it never signed a step of this job (a route node refused its first
    /// step, or the route was full): if the job is cancelled, no hop is slashed for a missing commit.
    /// @param jobId The job.
    event JobReleased(uint256 indexed jobId);
    /// @notice The job was disputed: held by the auditor, or disputed automatically by its last commit
    /// (mismatched commitments or a sampled audit). It cannot be finalized until the auditor resolves it or
    /// the dispute times out; the dispute timeout runs from this block's timestamp.
    /// @param jobId The job.
    event JobDisputed(uint256 indexed jobId);
    /// @notice At the job's last commit, some node's output commitment differed from the next node's
    /// input commitment; the job was disputed (JobDisputed is emitted with it).
    /// @param jobId The job.
    event CommitmentsMismatched(uint256 indexed jobId);
    /// @notice The job was drawn for a sampled audit (from the hash of the block of its last commit,
    /// unknown to every committer) and disputed (JobDisputed is emitted with it).
    /// @param jobId The job.
    event AuditSampled(uint256 indexed jobId);
    /// @notice Someone posted the challenge bond against a committed job inside its challenge window; the
    /// job was disputed (JobDisputed is emitted with it). The bond comes back on a fraud verdict and goes
    /// to the route's nodes and the honest verifiers otherwise.
    /// @param jobId The job.
    /// @param challenger Who posted the bond.
    /// @param bond Wei posted.
    event JobChallenged(uint256 indexed jobId, address indexed challenger, uint256 bond);
    /// @notice A challenge bond was settled with its job.
    /// @param jobId The job.
    /// @param challenger Who posted it.
    /// @param toChallenger Wei returned to the challenger (fraud found).
    /// @param perNode Wei credited to every paid route node (no fraud found), as earnings.
    /// @param toAuditor Wei sent to the auditor for the honest verifiers (no fraud found by a verdict).
    event ChallengeSettled(
        uint256 indexed jobId,
        address indexed challenger,
        uint256 toChallenger,
        uint256 perNode,
        uint256 toAuditor
    );
    /// @notice A client receipt was checkpointed before the job's commits: billing can no longer fall below
    /// it, even if the client (a smart wallet) stops validating its signatures.
    /// @param jobId The job.
    /// @param billedTokens The job's billed tokens after the checkpoint.
    event ReceiptCheckpointed(uint256 indexed jobId, uint32 billedTokens);
    /// @notice The auditor penalized a drawn verifier that never voted.
    /// @param verifier The verifier.
    /// @param amount Wei slashed from its stake and sent to the auditor.
    event VerifierPenalized(address indexed verifier, uint256 amount);
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
    /// The escrow must cover maxTokens x the sum of the route's prices plus the hop fee per hop.
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

    /// @notice submitJob with matching hints: per shard, 1 + the pool index of a node the client knows to
    /// be within its price (0: none), used only when the seeded probes find no eligible node.
    /// @param modelId The model.
    /// @param firstShard First shard the nodes run.
    /// @param maxTokens Most tokens the client will sign for.
    /// @param maxPricePerToken Highest per-node price in wei per token.
    /// @param metadata Up to 256 bytes the client declares.
    /// @param hints One entry per shard of the route at most.
    /// @return jobId The new job id.
    function submitJobWithHints(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata,
        uint32[] calldata hints
    ) external payable returns (uint256 jobId);

    /// @notice submitJobWithHints that never matches a node in `avoid`: a client failing over from a node
    /// it saw die, stall or answer garbage submits the rest of its generation without it.
    /// @param modelId The model.
    /// @param firstShard First shard the nodes run.
    /// @param maxTokens Most tokens the client will sign for.
    /// @param maxPricePerToken Highest per-node price in wei per token.
    /// @param metadata Up to 256 bytes the client declares.
    /// @param hints One entry per shard of the route at most.
    /// @param avoid Nodes not to match (at most the registry's MAX_AVOID).
    /// @return jobId The new job id.
    function submitJobAvoiding(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata,
        uint32[] calldata hints,
        address[] calldata avoid
    ) external payable returns (uint256 jobId);

    /// @notice Record a client receipt on an Open job before the deadline, so the billed count cannot be
    /// lost if the client's signature stops validating later (a smart wallet's key rotation). Anyone may
    /// call; the receipt must be the client's and raise the billed count.
    /// @param jobId The job.
    /// @param terms The job's terms.
    /// @param receipt The client's signed envelope.
    function checkpointReceipt(uint256 jobId, bytes calldata terms, Receipt calldata receipt) external;

    /// @notice Dispute a committed job inside its challenge window by posting the challenge bond (anyone:
    /// the client, a verifier, a watcher). The auditor then judges every position.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function challenge(uint256 jobId, bytes calldata terms) external payable;

    /// @notice Dispute a committed job that the audit draw selected (see auditDraw), inside its challenge
    /// window and within 256 blocks of its last commit. Anyone may call.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function sampleAudit(uint256 jobId, bytes calldata terms) external;

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

    /// @notice After the commit deadline of a job not fully committed: pay committed nodes (price x billed
    /// plus the hop fee), slash the missing ones (missSlashBps of bond, capped at what the job offered the
    /// hop) and burn the slash, and refund the client the rest of the escrow.
    /// @param jobId The job.
    /// @param terms The job's terms.
    function cancel(uint256 jobId, bytes calldata terms) external;

    /// @notice The client declares it never signed a step of this Open job (its first step was refused, or
    /// the route was full): a cancel after the commit deadline then slashes no hop for a missing commit.
    /// Without a signed step no node could have served, so none can be blamed. The job still runs to its
    /// commit deadline: a node holding a signed receipt can still commit it and is paid as usual, so a
    /// client that lies gets nothing back it owes. The release only ever spares nodes (a later receipt,
    /// checkpointed by the client itself, cannot turn it into a slash of nodes that trusted it).
    /// @param jobId The job.
    /// @param terms The job's terms.
    function releaseJob(uint256 jobId, bytes calldata terms) external;

    /// @notice Whether the client released the job (see releaseJob); false again once it is cancelled.
    /// @param jobId The job.
    /// @return released True while the release is recorded.
    function isReleased(uint256 jobId) external view returns (bool released);

    /// @notice Auditor hook: hold a committed job within its challenge window, or restart the dispute
    /// timeout of a disputed job (the AuditCourt does so when it opens the audit, so resolving always has
    /// its whole window before anyone may finalize the job unaudited).
    /// @param jobId The job.
    /// @param terms The job's terms.
    function holdForAudit(uint256 jobId, bytes calldata terms) external;

    /// @notice Auditor hook: settle a disputed job. Fraudulent positions are slashed fraudSlashBps of their
    /// bond and not paid; the slash proceeds are sent to the auditor.
    /// @param jobId The job.
    /// @param terms The job's terms.
    /// @param fraudMask Route positions found fraudulent.
    /// @return slashed Wei slashed and sent to the auditor.
    /// @return challengeShare Wei of a lost challenge bond sent to the auditor for the honest verifiers.
    function resolveDispute(
        uint256 jobId,
        bytes calldata terms,
        uint8 fraudMask
    ) external returns (uint256 slashed, uint256 challengeShare);

    /// @notice Auditor hook: slash a drawn verifier that never voted; proceeds go to the auditor.
    /// @param verifier The verifier.
    /// @param amount Wei to take (capped at its bond).
    /// @return slashed Wei taken.
    function penalizeVerifier(address verifier, uint256 amount) external returns (uint256 slashed);

    /// @notice Withdraw the caller's node earnings (the ledger is in the registry, the value here).
    function withdrawEarnings() external;

    /// @notice Withdraw refunds that could not be pushed.
    function withdrawCredit() external;

    /// @notice A job's stored state.
    /// @param jobId The job.
    /// @return The job.
    function getJob(uint256 jobId) external view returns (Job memory);

    /// @notice The job's per-job word: while Open, the commitment-link accumulator (the XOR of the link
    /// terms of the positions committed so far); once complete, the block number of its last commit (when
    /// sampling is on) or of its dispute; zero after settlement.
    /// @param jobId The job.
    /// @return The accumulator.
    function linksOf(uint256 jobId) external view returns (bytes32);

    /// @notice Block of a disputed job's dispute (its audit panels are drawn from that block's hash, which
    /// nobody knew when the dispute was made); zero when the job is not Disputed.
    /// @param jobId The job.
    /// @return The block number.
    function disputeBlockOf(uint256 jobId) external view returns (uint256);

    /// @notice Whether a Committed job is drawn for a sampled audit: keccak(blockhash of its completing
    /// block, jobId) mod 10000 < auditRateBps.
    /// @param jobId The job.
    /// @return available False in the completing block itself and more than 256 blocks after it.
    /// @return sampled Whether sampleAudit will dispute it.
    function auditDraw(uint256 jobId) external view returns (bool available, bool sampled);

    /// @notice The open challenge of a job.
    /// @param jobId The job.
    /// @return challenger Who posted the bond (zero: none).
    /// @return bond Wei posted.
    function challengeOf(uint256 jobId) external view returns (address challenger, uint256 bond);

    /// @notice Flat wei each committed hop earns per job on top of price x tokens: covers its commit.
    /// @return Wei.
    function hopFee() external view returns (uint256);

    /// @notice Wei a challenger posts.
    /// @return Wei (0: challenges disabled).
    function challengeBond() external view returns (uint256);

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
