// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {JobStatus, AuditStatus, VoteStatus} from "../libraries/SplitmeshTypes.sol";

/// @title Errors of the AuditCourt
interface IAuditCourtErrors {
    /// @notice A constructor parameter is out of range.
    /// @param what Name of the offending parameter.
    error InvalidParameter(string what);
    /// @notice No job with this id in the JobMarket.
    /// @param jobId The id.
    error UnknownJob(uint256 jobId);
    /// @notice The terms passed do not hash to the job's stored terms hash.
    /// @param jobId The job.
    error TermsMismatch(uint256 jobId);
    /// @notice Only a job the JobMarket holds as Disputed can be audited.
    /// @param jobId The job.
    /// @param status Its status in the JobMarket.
    error JobNotDisputed(uint256 jobId, JobStatus status);
    /// @notice Too little of the dispute timeout is left for a commit and a reveal phase and a resolution
    /// before anyone may finalize the job unaudited.
    /// @param jobId The job.
    /// @param latestOpenAt Last timestamp at which the audit could have been opened.
    error AuditTooLate(uint256 jobId, uint256 latestOpenAt);
    /// @notice The job already has an audit (open or resolved).
    /// @param jobId The job.
    error AuditAlreadyOpened(uint256 jobId);
    /// @notice The audit's panels are drawn from the hash of the dispute block, which exists only from
    /// the next block on.
    /// @param jobId The job.
    /// @param openableFrom First block in which the audit can be opened.
    error AuditTooEarly(uint256 jobId, uint256 openableFrom);
    /// @notice The job has no open audit.
    /// @param jobId The job.
    /// @param status The audit's status (None: never opened; Resolved: over).
    error AuditNotOpen(uint256 jobId, AuditStatus status);
    /// @notice The route has no hop at this position.
    /// @param jobId The job.
    /// @param position The position given.
    error InvalidPosition(uint256 jobId, uint8 position);
    /// @notice The caller was not drawn as a verifier of this position.
    /// @param jobId The job.
    /// @param position The position.
    /// @param caller The caller.
    error NotVerifier(uint256 jobId, uint8 position, address caller);
    /// @notice A vote commitment must come with exactly the verifier bond.
    /// @param required Wei required.
    /// @param provided Wei sent.
    error WrongBond(uint256 required, uint256 provided);
    /// @notice The commit phase is over.
    /// @param jobId The job.
    /// @param deadline Last timestamp at which commitments were accepted.
    error CommitPhaseClosed(uint256 jobId, uint256 deadline);
    /// @notice The verifier already committed a vote for this position.
    /// @param jobId The job.
    /// @param position The position.
    /// @param verifier The verifier.
    error AlreadyCommitted(uint256 jobId, uint8 position, address verifier);
    /// @notice Reveals open after the commit deadline, or once every verifier of the position committed.
    /// @param jobId The job.
    /// @param position The position.
    /// @param commitDeadline Revealing is possible strictly after this timestamp (or earlier, see above).
    error RevealNotOpen(uint256 jobId, uint8 position, uint256 commitDeadline);
    /// @notice The reveal phase is over.
    /// @param jobId The job.
    /// @param deadline Last timestamp at which reveals were accepted.
    error RevealPhaseClosed(uint256 jobId, uint256 deadline);
    /// @notice The verifier has no committed, unrevealed vote for this position.
    /// @param jobId The job.
    /// @param position The position.
    /// @param verifier The verifier.
    /// @param vote Its vote's status.
    error NothingToReveal(uint256 jobId, uint8 position, address verifier, VoteStatus vote);
    /// @notice A verdict must be 1 (honest) or 2 (fraud).
    /// @param verdict The verdict given.
    error InvalidVerdict(uint8 verdict);
    /// @notice The revealed verdict and salt do not hash to the committed vote.
    /// @param jobId The job.
    /// @param position The position.
    /// @param verifier The verifier.
    error CommitmentMismatch(uint256 jobId, uint8 position, address verifier);
    /// @notice The audit cannot be resolved before its reveal deadline has passed.
    /// @param jobId The job.
    /// @param revealDeadline Resolving is possible strictly after this timestamp.
    error RevealPhaseOpen(uint256 jobId, uint256 revealDeadline);
    /// @notice Native currency was sent by someone other than the JobMarket.
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

/// @title AuditCourt: staked verifiers re-execute disputed jobs and vote, commit-reveal, on fraud
/// @notice The JobMarket's auditor. For a Disputed job, anyone opens an audit: per route position, k
/// verifiers are drawn from the NodeRegistry pool serving the same shard (the audited node excluded).
/// Each posts a bond with a vote commitment, then reveals; a strict majority of revealed fraud votes
/// finds fraud. The court then settles the job in the JobMarket, which slashes the fraudulent nodes and
/// sends the slash here: rewardBps of it, plus the bonds of verifiers who never revealed, goes in equal
/// shares to the verifiers who voted fraud on a fraudulent position; the rest goes to the job's client.
interface IAuditCourt is IAuditCourtErrors {
    /// @notice An audit as the views report it.
    struct AuditInfo {
        AuditStatus status;
        uint8 hops; // route positions
        uint8 unverifiableMask; // positions without any verifier to draw (counted as honest)
        uint8 fraudMask; // positions found fraudulent (set when resolved)
        uint40 openedAt;
        uint256 commitDeadline; // last second of the commit phase
        uint256 revealDeadline; // last second of the reveal phase; resolve strictly after
    }

    /// @notice One route position's panel of verifiers as the views report it.
    struct PanelInfo {
        address[] verifiers;
        VoteStatus[] votes; // votes[i] is verifiers[i]'s
        bytes32[] commitments; // zero until committed, zeroed again once revealed
        uint8 committed; // verifiers who committed (revealed or not)
        uint8 honestVotes; // revealed honest
        uint8 fraudVotes; // revealed fraud
    }

    /// @notice An audit was opened; one event per route position, with the verifiers drawn for it.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param node The audited node (hop `position` of the job's route).
    /// @param verifiers The verifiers drawn, distinct, the audited node excluded; empty: unverifiable.
    event AuditOpened(uint256 indexed jobId, uint8 position, address indexed node, address[] verifiers);
    /// @notice A verifier committed its vote and posted its bond.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param verifier The verifier.
    /// @param commitment keccak256(abi.encode(jobId, position, verdict, salt, verifier)).
    event VoteCommitted(uint256 indexed jobId, uint8 position, address indexed verifier, bytes32 commitment);
    /// @notice A verifier revealed its vote; its bond was returned to it.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param verifier The verifier.
    /// @param verdict 1 honest, 2 fraud.
    event VoteRevealed(uint256 indexed jobId, uint8 position, address indexed verifier, uint8 verdict);
    /// @notice A position's verdict, when the audit was resolved.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param fraud True iff more than half of the verifiers drawn for the position revealed fraud.
    /// @param honestVotes Revealed honest votes.
    /// @param fraudVotes Revealed fraud votes.
    /// @param forfeited Bonds of verifiers who committed and never revealed or who revealed against the
    /// verdict, in wei (to the reward pool).
    event PositionJudged(
        uint256 indexed jobId,
        uint8 position,
        bool fraud,
        uint8 honestVotes,
        uint8 fraudVotes,
        uint256 forfeited
    );
    /// @notice A verifier that revealed the position's verdict was credited its bond back plus its reward.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param verifier The verifier.
    /// @param amount Wei credited, bond included (withdraw with withdrawCredit).
    event VerifierRewarded(uint256 indexed jobId, uint8 position, address indexed verifier, uint256 amount);
    /// @notice The audit was resolved.
    /// @param jobId The job.
    /// @param fraudMask Positions found fraudulent.
    /// @param slashed Wei the JobMarket slashed and sent to the court.
    /// @param rewarded Wei credited to verifiers beyond their own bonds (the reward pool: their share of
    /// the slash, forfeited bonds, penalties of verifiers that never voted, a lost challenge bond's share).
    /// @param toClient Wei paid to the job's challenger (or, unchallenged, its client): the rest of the
    /// slash, and the pool when no verifier revealed the verdict.
    event AuditResolved(uint256 indexed jobId, uint8 fraudMask, uint256 slashed, uint256 rewarded, uint256 toClient);
    /// @notice When the audit was resolved the JobMarket had already finalized the job (its dispute timed
    /// out); the verdicts stand, nothing was slashed.
    /// @param jobId The job.
    event JobSettledBeforeVerdict(uint256 indexed jobId);
    /// @notice A payment could not be pushed and was credited for withdrawal instead.
    /// @param account The recipient.
    /// @param amount Wei credited.
    event PaymentCredited(address indexed account, uint256 amount);
    /// @notice The dispute block's hash was no longer available (more than 256 blocks old), so this block
    /// was recorded instead; the audit opens from the next block on, drawn from this block's hash.
    /// @param jobId The job.
    /// @param blockNumber The new anchor block.
    event AuditAnchored(uint256 indexed jobId, uint256 blockNumber);
    /// @notice Credited value was withdrawn.
    /// @param account The recipient.
    /// @param amount Wei sent.
    event CreditWithdrawn(address indexed account, uint256 amount);

    /// @notice Open the audit of a job the JobMarket holds as Disputed; anyone may, from the block after
    /// the dispute. Draws the verifiers of every route position by stake, seeded by keccak256(blockhash of
    /// the dispute block, jobId, position): fixed before anyone can open the audit and unknown to whoever
    /// disputed, so neither can pick the panel. When that hash is gone (over 256 blocks), the first call
    /// records a new anchor block (AuditAnchored) and a later call opens. Restarts the job's dispute
    /// timeout in the JobMarket, so resolving always has its whole window.
    /// @param jobId The job.
    /// @param terms The job's packed terms (as emitted by JobSubmitted).
    function openAudit(uint256 jobId, bytes calldata terms) external;

    /// @notice Commit a vote on one position, with exactly verifierBond wei; drawn verifiers only, until
    /// the commit deadline.
    /// @param jobId The job.
    /// @param position The route position judged.
    /// @param commitment keccak256(abi.encode(jobId, position, verdict, salt, msg.sender)).
    function commitVote(uint256 jobId, uint8 position, bytes32 commitment) external payable;

    /// @notice Reveal a committed vote; the bond stays held until resolve (credited back with a reward
    /// when the vote matches the verdict, forfeited otherwise). Open strictly after the commit
    /// deadline, or as soon as every verifier drawn for the position has committed (no vote can change
    /// then), and until the reveal deadline.
    /// @param jobId The job.
    /// @param position The route position judged.
    /// @param verdict 1 honest, 2 fraud.
    /// @param salt The secret salt of the commitment.
    function revealVote(uint256 jobId, uint8 position, uint8 verdict, bytes32 salt) external;

    /// @notice Count the votes and settle the job in the JobMarket; anyone may, strictly after the reveal
    /// deadline. Per position: fraud iff more than half of the verifiers drawn for it revealed fraud (a
    /// quorum: abstainers never help a minority slash); otherwise honest. Verifiers who revealed the
    /// verdict get their bond back and share the pool; bonds of the others are forfeited to the pool, and
    /// drawn verifiers that never committed are slashed one bond each into the pool.
    /// @param jobId The job.
    /// @param terms The job's packed terms.
    function resolve(uint256 jobId, bytes calldata terms) external;

    /// @notice Withdraw the caller's credited rewards and payments.
    function withdrawCredit() external;

    /// @notice An audit's state.
    /// @param jobId The job.
    /// @return info Status, masks, timing.
    function getAudit(uint256 jobId) external view returns (AuditInfo memory info);

    /// @notice The panel of one route position: verifiers, their votes and the tallies.
    /// @param jobId The job.
    /// @param position The route position.
    /// @return panel The panel (empty for an audit that was never opened).
    function getPanel(uint256 jobId, uint8 position) external view returns (PanelInfo memory panel);

    /// @notice The commitment a verifier posts for a vote.
    /// @param jobId The job.
    /// @param position The route position.
    /// @param verdict 1 honest, 2 fraud.
    /// @param salt A fresh secret.
    /// @param verifier The verifier.
    /// @return keccak256(abi.encode(jobId, position, verdict, salt, verifier)).
    function voteCommitment(
        uint256 jobId,
        uint8 position,
        uint8 verdict,
        bytes32 salt,
        address verifier
    ) external pure returns (bytes32);

    /// @notice Wei waiting to be withdrawn by an account.
    /// @param account The account.
    /// @return Wei.
    function creditOf(address account) external view returns (uint256);

    /// @notice Sum of all credits.
    /// @return Wei.
    function totalCredits() external view returns (uint256);

    /// @notice Sum of the verifier bonds held (committed, not yet revealed nor forfeited).
    /// @return Wei.
    function bondsHeld() external view returns (uint256);

    /// @notice The JobMarket this court audits for.
    /// @return Its address.
    function market() external view returns (address);

    /// @notice The NodeRegistry verifiers are drawn from.
    /// @return Its address.
    function registry() external view returns (address);

    /// @notice The court's parameters.
    /// @return verifiersPerPosition Verifiers drawn per route position (k).
    /// @return verifierBond Wei each verifier posts with its commitment.
    /// @return commitWindow Seconds from opening during which votes are committed.
    /// @return revealWindow Seconds after the commit deadline during which votes are revealed.
    /// @return rewardBps Share of a fraud slash paid to the winning verifiers, in basis points.
    function parameters()
        external
        view
        returns (
            uint256 verifiersPerPosition,
            uint256 verifierBond,
            uint256 commitWindow,
            uint256 revealWindow,
            uint256 rewardBps
        );
}
