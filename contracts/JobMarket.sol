// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {JobTerms, Receipt, RouteHop, JobStatus} from "./libraries/SplitmeshTypes.sol";
import {JobTermsLib} from "./libraries/JobTermsLib.sol";

/// @title JobMarket
/// @notice Clients escrow payment for a job; the contract matches one node per remaining shard, nodes
/// commit their transcript commitments with the client's signed usage receipt, and after a challenge
/// window anyone finalizes: each node that committed is credited price x billed tokens and the client
/// gets the rest back. The last commit disputes the job instead when the commitments do not link up
/// (node p's output commitment must equal node p+1's input commitment) or when the job is drawn for a
/// sampled audit; the auditor (the AuditCourt) then settles it, or anyone finalizes it after the dispute
/// timeout.
/// @dev Gas: a job is one storage slot. Its terms (client, route, prices, escrow) live packed in the
/// JobSubmitted event and are passed back as calldata, checked against a 160-bit hash in the slot
/// (second-preimage resistance 2^160; the contract, not the caller, picks the hashed terms). A job of
/// more than one hop uses one more slot while it is Open: the XOR accumulator of its commitment links,
/// zeroed again when the job completes or is cancelled.
/// Balance invariant: address(this).balance >= escrow of unsettled jobs + totalCredits + node earnings
/// (the registry keeps the earnings ledger next to each node's stake; this contract keeps the value).
contract JobMarket is IJobMarket, EIP712, ReentrancyGuardTransient {
    using JobTermsLib for bytes;

    /// @notice EIP-712 type of the client's per-step envelope, which doubles as the usage receipt.
    bytes32 public constant ENVELOPE_TYPEHASH =
        keccak256("Envelope(uint256 jobId,uint32 step,uint32 tokens,bytes32 payloadHash)");
    /// @notice Longest client metadata in bytes.
    uint256 public constant MAX_METADATA_LENGTH = 256;
    /// @notice Gas forwarded with a refund push; a recipient needing more is credited instead.
    uint256 public constant REFUND_GAS = 50_000;
    /// @notice Where miss-slashes go: nobody, so nobody profits from a node missing its commit.
    address public constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;
    /// @notice Share of a challenge bond lost on an honest verdict that pays the honest verifiers (the
    /// rest goes to the route's nodes, the accused).
    uint256 public constant CHALLENGE_VERIFIER_BPS = 5_000;
    uint256 private constant BPS = 10_000;

    struct Challenge {
        address challenger;
        uint96 bond;
    }

    INodeRegistry private immutable _registry;
    address private immutable _auditor;
    uint256 private immutable _commitTimeout;
    uint256 private immutable _challengeWindow;
    uint256 private immutable _disputeTimeout;
    uint256 private immutable _missSlashBps;
    uint256 private immutable _fraudSlashBps;
    uint256 private immutable _auditRateBps;
    uint256 private immutable _hopFee;
    uint256 private immutable _challengeBond;

    uint256 private _nextJobId = 1; // starts non-zero so that no job pays for a fresh counter slot
    uint256 private _totalCredits;
    uint256 private _challengeBonds; // sum of the bonds of open challenges
    mapping(uint256 jobId => Job) private _jobs;
    mapping(uint256 jobId => Challenge) private _challenges;
    mapping(address account => uint256) private _credits;
    // XOR over the committed positions p of keccak(jobId, p, input_p) (p > 0) and
    // keccak(jobId, p + 1, output_p) (p < hops - 1): each internal boundary contributes its term from both
    // sides, so once every position committed the accumulator is zero iff every boundary matched, in any
    // commit order. Once the job completes the same word holds a block number: the block of the last
    // commit (when sampling is on: the audit draw uses its hash) or of the dispute (the audit panels use
    // its hash). Either hash is unknown to whoever sends the transaction that fixes the block.
    mapping(uint256 jobId => bytes32) private _links;
    // Open jobs their client released (it signed no step): cancelled without miss-slashes. Deleted at
    // cancel.
    mapping(uint256 jobId => bool) private _released;

    /// @param registry_ The NodeRegistry (its jobMarket() must be this contract).
    /// @param auditor_ Contract allowed to hold and resolve jobs; zero disables audits.
    /// @param commitTimeout_ Seconds after submission during which nodes may commit.
    /// @param challengeWindow_ Seconds after the last commit before finalization.
    /// @param disputeTimeout_ Seconds a held job waits for the auditor.
    /// @param missSlashBps_ Share of bond slashed for a missed commit (basis points).
    /// @param fraudSlashBps_ Share of bond slashed for a fraud verdict (basis points).
    /// @param auditRateBps_ Share of completed jobs drawn for a sampled audit (basis points); needs an auditor.
    /// @param hopFee_ Flat wei each committed hop earns per job (covers the gas of its commit), so a job
    /// whose client never shows up still costs the client.
    /// @param challengeBond_ Wei a challenger posts to dispute a committed job (0 disables challenges).
    constructor(
        INodeRegistry registry_,
        address auditor_,
        uint256 commitTimeout_,
        uint256 challengeWindow_,
        uint256 disputeTimeout_,
        uint256 missSlashBps_,
        uint256 fraudSlashBps_,
        uint256 auditRateBps_,
        uint256 hopFee_,
        uint256 challengeBond_
    ) EIP712("splitmesh", "1") {
        if (registry_.jobMarket() != address(this)) revert InvalidParameter("registry");
        if (commitTimeout_ == 0 || commitTimeout_ > 30 days) revert InvalidParameter("commitTimeout");
        if (challengeWindow_ == 0 || challengeWindow_ > 30 days) revert InvalidParameter("challengeWindow");
        if (disputeTimeout_ == 0 || disputeTimeout_ > 30 days) revert InvalidParameter("disputeTimeout");
        if (missSlashBps_ > BPS) revert InvalidParameter("missSlashBps");
        if (fraudSlashBps_ > BPS) revert InvalidParameter("fraudSlashBps");
        // Sampled jobs are disputed; without an auditor they would only be delayed.
        if (auditRateBps_ > BPS || (auditRateBps_ != 0 && auditor_ == address(0))) {
            revert InvalidParameter("auditRateBps");
        }
        // A node that unbonds right after being matched must still be slashable when the job settles.
        if (registry_.unbondingDelay() < commitTimeout_ + challengeWindow_ + disputeTimeout_) {
            revert InvalidParameter("unbondingDelay");
        }
        _registry = registry_;
        _auditor = auditor_;
        _commitTimeout = commitTimeout_;
        _challengeWindow = challengeWindow_;
        _disputeTimeout = disputeTimeout_;
        _missSlashBps = missSlashBps_;
        _fraudSlashBps = fraudSlashBps_;
        if (hopFee_ > type(uint64).max) revert InvalidParameter("hopFee");
        if (challengeBond_ > type(uint96).max || (challengeBond_ != 0 && auditor_ == address(0))) {
            revert InvalidParameter("challengeBond");
        }
        _auditRateBps = auditRateBps_;
        _hopFee = hopFee_;
        _challengeBond = challengeBond_;
    }

    /// @notice Accepts slash proceeds from the registry only.
    receive() external payable {
        if (msg.sender != address(_registry)) revert UnexpectedPayment(msg.sender);
    }

    // ------------------------------------------------------------------ job lifecycle

    /// @inheritdoc IJobMarket
    function submitJob(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata
    ) external payable returns (uint256 jobId) {
        return _submit(modelId, firstShard, maxTokens, maxPricePerToken, metadata, new uint32[](0), new address[](0));
    }

    /// @inheritdoc IJobMarket
    function submitJobWithHints(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata,
        uint32[] calldata hints
    ) external payable returns (uint256 jobId) {
        return _submit(modelId, firstShard, maxTokens, maxPricePerToken, metadata, hints, new address[](0));
    }

    /// @inheritdoc IJobMarket
    function submitJobAvoiding(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata,
        uint32[] calldata hints,
        address[] calldata avoid
    ) external payable returns (uint256 jobId) {
        return _submit(modelId, firstShard, maxTokens, maxPricePerToken, metadata, hints, avoid);
    }

    function _submit(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPricePerToken,
        bytes calldata metadata,
        uint32[] memory hints,
        address[] memory avoid
    ) private returns (uint256 jobId) {
        if (maxTokens == 0) revert ZeroMaxTokens();
        if (metadata.length > MAX_METADATA_LENGTH) revert MetadataTooLong(metadata.length);
        if (msg.value > type(uint96).max) revert EscrowTooLarge(msg.value);
        jobId = _nextJobId;

        // prevrandao and the job id are readable inside the transaction, so a client can choose whom it
        // hires (by timing or from a contract). Choosing gains it nothing: a matched node loses no stake to
        // a client (miss-slashes are burned and nodes commit every job they are matched to), and audit
        // panels are drawn from a block hash nobody knows in advance.
        uint256 seed = uint256(keccak256(abi.encode(block.prevrandao, jobId)));
        (bytes memory packedRoute, uint256 priceSum) = _registry.matchRoute(
            modelId,
            firstShard,
            maxPricePerToken,
            seed,
            hints,
            avoid
        );
        uint256 hops = packedRoute.length / JobTermsLib.HOP_LENGTH;
        uint256 required = uint256(maxTokens) * priceSum + hops * _hopFee;
        if (msg.value < required) revert EscrowTooSmall(required, msg.value);

        bytes memory terms = abi.encodePacked(
            msg.sender,
            modelId,
            firstShard,
            maxTokens,
            uint96(msg.value),
            packedRoute
        );
        _nextJobId = jobId + 1;
        _storeJob(
            jobId,
            Job({
                termsHash: JobTermsLib.hashOfMemory(jobId, terms),
                status: JobStatus.Open,
                committedMask: 0,
                billedTokens: 0,
                timestamp: uint40(block.timestamp)
            })
        );
        emit JobSubmitted(jobId, msg.sender, terms, metadata);
    }

    /// @inheritdoc IJobMarket
    function commit(
        uint256 jobId,
        bytes calldata terms,
        uint8 position,
        bytes32 inputCommitment,
        bytes32 outputCommitment,
        Receipt calldata receipt
    ) external {
        Job memory job = _loadJob(jobId, terms, JobStatus.Open);
        uint256 deadline = uint256(job.timestamp) + _commitTimeout;
        if (block.timestamp > deadline) revert CommitDeadlinePassed(jobId, deadline);
        uint256 hops = terms.hopCount();
        if (position >= hops) revert InvalidPosition(jobId, position);
        if (terms.route().hopNode(position) != msg.sender) revert NotRouteNode(jobId, msg.sender, position);
        uint8 bit = uint8(1 << position);
        if (job.committedMask & bit != 0) revert AlreadyCommitted(jobId, position);

        // Only a receipt that raises the billed count can change a payment, so only such a receipt is
        // checked: when all nodes hold the same last receipt, one signature is verified per job.
        if (receipt.tokens > job.billedTokens) job.billedTokens = _checkReceipt(jobId, terms, receipt);
        job.committedMask |= bit;
        bool complete = job.committedMask == uint8((1 << hops) - 1);
        bool mismatched;
        if (hops > 1) {
            bytes32 stored = _links[jobId];
            bytes32 links = stored;
            if (position > 0) links ^= keccak256(abi.encode(jobId, position, inputCommitment));
            if (position + 1 < hops) links ^= keccak256(abi.encode(jobId, position + 1, outputCommitment));
            if (!complete) {
                _links[jobId] = links;
            } else {
                mismatched = links != 0;
            }
        }
        if (complete) {
            job.status = mismatched ? JobStatus.Disputed : JobStatus.Committed;
            job.timestamp = uint40(block.timestamp);
            // The completing block's number replaces the accumulator when something will draw from its
            // hash (a sampled audit, or the panels of the dispute); otherwise the slot is freed (a refund).
            if (mismatched || _auditRateBps != 0) {
                _links[jobId] = bytes32(block.number);
            } else if (hops > 1) {
                delete _links[jobId];
            }
        }
        _storeJob(jobId, job);
        emit JobCommitted(jobId, position, inputCommitment, outputCommitment, job.billedTokens);
        if (mismatched) {
            emit JobDisputed(jobId);
            emit CommitmentsMismatched(jobId);
        }
    }

    /// @inheritdoc IJobMarket
    function checkpointReceipt(uint256 jobId, bytes calldata terms, Receipt calldata receipt) external {
        Job memory job = _loadJob(jobId, terms, JobStatus.Open);
        uint256 deadline = uint256(job.timestamp) + _commitTimeout;
        if (block.timestamp > deadline) revert CommitDeadlinePassed(jobId, deadline);
        if (receipt.tokens <= job.billedTokens) revert ReceiptNotNewer(jobId, receipt.tokens, job.billedTokens);
        job.billedTokens = _checkReceipt(jobId, terms, receipt);
        _storeJob(jobId, job);
        emit ReceiptCheckpointed(jobId, job.billedTokens);
    }

    /// @inheritdoc IJobMarket
    function challenge(uint256 jobId, bytes calldata terms) external payable {
        if (_challengeBond == 0) revert ChallengesDisabled();
        if (msg.value != _challengeBond) revert WrongChallengeBond(_challengeBond, msg.value);
        Job memory job = _loadJob(jobId, terms, JobStatus.Committed);
        uint256 endsAt = uint256(job.timestamp) + _challengeWindow;
        if (block.timestamp >= endsAt) revert ChallengeWindowClosed(jobId, endsAt);
        _challenges[jobId] = Challenge({challenger: msg.sender, bond: uint96(msg.value)});
        _challengeBonds += msg.value;
        _dispute(jobId, job);
        emit JobChallenged(jobId, msg.sender, msg.value);
    }

    /// @inheritdoc IJobMarket
    function sampleAudit(uint256 jobId, bytes calldata terms) external {
        if (_auditRateBps == 0) revert SamplingDisabled();
        Job memory job = _loadJob(jobId, terms, JobStatus.Committed);
        uint256 endsAt = uint256(job.timestamp) + _challengeWindow;
        if (block.timestamp >= endsAt) revert ChallengeWindowClosed(jobId, endsAt);
        (bool available, bool sampled) = _auditDraw(jobId);
        if (!available) revert DrawUnavailable(jobId, uint256(_links[jobId]));
        if (!sampled) revert NotSampled(jobId);
        _dispute(jobId, job);
        emit AuditSampled(jobId);
    }

    /// @inheritdoc IJobMarket
    function finalize(uint256 jobId, bytes calldata terms) external nonReentrant {
        Job storage stored = _jobs[jobId];
        Job memory job;
        uint256 perNode;
        if (stored.status == JobStatus.Disputed) {
            // The auditor did not resolve in time: settle as if no fraud was found; an open challenge's
            // bond goes to the nodes.
            job = _loadJob(jobId, terms, JobStatus.Disputed);
            uint256 timeoutAt = uint256(job.timestamp) + _disputeTimeout;
            if (block.timestamp < timeoutAt) revert ChallengeWindowOpen(jobId, timeoutAt);
            stored.status = JobStatus.Finalized;
            delete _links[jobId];
            (perNode, ) = _settleChallenge(jobId, terms, job.committedMask, false, false);
        } else {
            job = _loadJob(jobId, terms, JobStatus.Committed);
            uint256 endsAt = uint256(job.timestamp) + _challengeWindow;
            if (block.timestamp < endsAt) revert ChallengeWindowOpen(jobId, endsAt);
            stored.status = JobStatus.Finalized;
            // Only a sampling deployment keeps the completing block in the word (no challenge is open:
            // a challenged job is Disputed).
            if (_auditRateBps != 0) delete _links[jobId];
        }
        _settle(jobId, terms, job.billedTokens, job.committedMask, 0, perNode);
    }

    /// @inheritdoc IJobMarket
    function cancel(uint256 jobId, bytes calldata terms) external nonReentrant {
        Job memory job = _loadJob(jobId, terms, JobStatus.Open);
        uint256 deadline = uint256(job.timestamp) + _commitTimeout;
        if (block.timestamp <= deadline) revert CommitWindowOpen(jobId, deadline);
        _jobs[jobId].status = JobStatus.Cancelled;
        uint256 hops = terms.hopCount();
        if (hops > 1 && job.committedMask != 0) delete _links[jobId];

        uint8 missingMask = uint8(((1 << hops) - 1) & ~uint256(job.committedMask));
        (uint256 paid, uint256 refund) = _payments(terms, job.billedTokens, job.committedMask);
        // The client waived the miss-slashes (it signed no step, so no hop could have served). A waiver
        // only spares nodes: payments still follow the receipts committed.
        bool released = _released[jobId];
        if (released) delete _released[jobId];
        uint256 slashed = released ? 0 : _slashMissing(terms, missingMask);
        emit JobCancelled(jobId, missingMask, paid, slashed, refund);
        if (paid != 0) _registry.creditEarnings(terms.route(), job.billedTokens, job.committedMask, _hopFee);
        _refund(terms.client(), refund);
        // Burned, never refunded: a client that made a hop miss (a job it never sent) must not profit.
        if (slashed != 0) _send(BURN_ADDRESS, slashed);
    }

    /// @inheritdoc IJobMarket
    function releaseJob(uint256 jobId, bytes calldata terms) external {
        Job memory job = _loadJob(jobId, terms, JobStatus.Open);
        if (terms.client() != msg.sender) revert NotJobClient(jobId, msg.sender);
        if (job.billedTokens != 0) revert JobAlreadyServed(jobId, job.billedTokens);
        _released[jobId] = true;
        emit JobReleased(jobId);
    }

    // ------------------------------------------------------------------ auditor hooks

    /// @inheritdoc IJobMarket
    function holdForAudit(uint256 jobId, bytes calldata terms) external {
        if (msg.sender != _auditor || _auditor == address(0)) revert NotAuditor(msg.sender);
        if (_jobs[jobId].status == JobStatus.Disputed) {
            // Restart the dispute timeout; the dispute block (the panels' seed) stays as it is.
            Job memory held = _loadJob(jobId, terms, JobStatus.Disputed);
            held.timestamp = uint40(block.timestamp);
            _storeJob(jobId, held);
            emit JobDisputed(jobId);
            return;
        }
        Job memory job = _loadJob(jobId, terms, JobStatus.Committed);
        uint256 endsAt = uint256(job.timestamp) + _challengeWindow;
        if (block.timestamp >= endsAt) revert ChallengeWindowClosed(jobId, endsAt);
        _dispute(jobId, job);
    }

    /// @inheritdoc IJobMarket
    function resolveDispute(
        uint256 jobId,
        bytes calldata terms,
        uint8 fraudMask
    ) external nonReentrant returns (uint256 slashed, uint256 challengeShare) {
        if (msg.sender != _auditor || _auditor == address(0)) revert NotAuditor(msg.sender);
        Job memory job = _loadJob(jobId, terms, JobStatus.Disputed);
        if (uint256(fraudMask) >> terms.hopCount() != 0) revert InvalidFraudMask(fraudMask);
        _jobs[jobId].status = JobStatus.Finalized;
        delete _links[jobId];
        slashed = _slashPositions(terms, fraudMask, _fraudSlashBps);
        emit DisputeResolved(jobId, fraudMask, slashed);
        uint8 paidMask = job.committedMask & ~fraudMask;
        uint256 perNode;
        (perNode, challengeShare) = _settleChallenge(jobId, terms, paidMask, fraudMask != 0, true);
        _settle(jobId, terms, job.billedTokens, job.committedMask, fraudMask, perNode);
        if (slashed + challengeShare != 0) _send(msg.sender, slashed + challengeShare);
    }

    /// @inheritdoc IJobMarket
    function penalizeVerifier(address verifier, uint256 amount) external nonReentrant returns (uint256 slashed) {
        if (msg.sender != _auditor || _auditor == address(0)) revert NotAuditor(msg.sender);
        slashed = _registry.slash(verifier, amount);
        emit VerifierPenalized(verifier, slashed);
        if (slashed != 0) _send(msg.sender, slashed);
    }

    // ------------------------------------------------------------------ withdrawals

    /// @inheritdoc IJobMarket
    function withdrawEarnings() external nonReentrant {
        uint256 amount = _registry.takeEarnings(msg.sender);
        _send(msg.sender, amount);
    }

    /// @inheritdoc IJobMarket
    function withdrawCredit() external nonReentrant {
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _credits[msg.sender] = 0;
        _totalCredits -= amount;
        emit CreditWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IJobMarket
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @inheritdoc IJobMarket
    function linksOf(uint256 jobId) external view returns (bytes32) {
        return _links[jobId];
    }

    /// @inheritdoc IJobMarket
    function disputeBlockOf(uint256 jobId) external view returns (uint256) {
        return _jobs[jobId].status == JobStatus.Disputed ? uint256(_links[jobId]) : 0;
    }

    /// @inheritdoc IJobMarket
    function auditDraw(uint256 jobId) external view returns (bool available, bool sampled) {
        if (_auditRateBps == 0 || _jobs[jobId].status != JobStatus.Committed) return (false, false);
        return _auditDraw(jobId);
    }

    /// @inheritdoc IJobMarket
    function isReleased(uint256 jobId) external view returns (bool released) {
        return _released[jobId];
    }

    /// @inheritdoc IJobMarket
    function challengeOf(uint256 jobId) external view returns (address challenger, uint256 bond) {
        Challenge storage c = _challenges[jobId];
        return (c.challenger, c.bond);
    }

    /// @inheritdoc IJobMarket
    function hopFee() external view returns (uint256) {
        return _hopFee;
    }

    /// @inheritdoc IJobMarket
    function challengeBond() external view returns (uint256) {
        return _challengeBond;
    }

    /// @inheritdoc IJobMarket
    function jobCount() external view returns (uint256) {
        return _nextJobId - 1;
    }

    /// @inheritdoc IJobMarket
    function hashTerms(uint256 jobId, bytes calldata terms) external pure returns (bytes20) {
        return JobTermsLib.hashOf(jobId, terms);
    }

    /// @inheritdoc IJobMarket
    function decodeTerms(bytes calldata terms) external pure returns (JobTerms memory decoded) {
        uint256 hops = terms.hopCount();
        bytes calldata packedRoute = terms.route();
        RouteHop[] memory route = new RouteHop[](hops);
        for (uint256 i; i < hops; ++i) {
            route[i] = RouteHop({node: packedRoute.hopNode(i), pricePerToken: packedRoute.hopPrice(i)});
        }
        decoded = JobTerms({
            client: terms.client(),
            modelId: terms.modelId(),
            firstShard: terms.firstShard(),
            maxTokens: terms.maxTokens(),
            escrow: terms.escrow(),
            route: route
        });
    }

    /// @inheritdoc IJobMarket
    function envelopeDigest(
        uint256 jobId,
        uint32 step,
        uint32 tokens,
        bytes32 payloadHash
    ) external view returns (bytes32) {
        return _envelopeDigest(jobId, step, tokens, payloadHash);
    }

    /// @inheritdoc IJobMarket
    function creditOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    /// @inheritdoc IJobMarket
    function totalCredits() external view returns (uint256) {
        return _totalCredits;
    }

    /// @inheritdoc IJobMarket
    function registry() external view returns (address) {
        return address(_registry);
    }

    /// @inheritdoc IJobMarket
    function auditor() external view returns (address) {
        return _auditor;
    }

    /// @inheritdoc IJobMarket
    function auditRateBps() external view returns (uint256) {
        return _auditRateBps;
    }

    /// @inheritdoc IJobMarket
    function parameters()
        external
        view
        returns (
            uint256 commitTimeout,
            uint256 challengeWindow,
            uint256 disputeTimeout,
            uint256 missSlashBps,
            uint256 fraudSlashBps
        )
    {
        return (_commitTimeout, _challengeWindow, _disputeTimeout, _missSlashBps, _fraudSlashBps);
    }

    // ------------------------------------------------------------------ internals

    function _loadJob(uint256 jobId, bytes calldata terms, JobStatus expected) private view returns (Job memory job) {
        job = _jobs[jobId];
        if (job.status == JobStatus.None) revert UnknownJob(jobId);
        if (job.termsHash != JobTermsLib.hashOf(jobId, terms)) revert TermsMismatch(jobId);
        if (job.status != expected) revert WrongJobStatus(jobId, job.status);
    }

    /// @dev Writes the job's slot in one SSTORE (field-wise assignment costs a read-modify-write per field).
    /// The layout is Solidity's own packing of `Job`, so getJob() and _loadJob() read it back unchanged.
    function _storeJob(uint256 jobId, Job memory job) private {
        uint256 word = uint256(uint160(job.termsHash)) |
            (uint256(job.status) << 160) |
            (uint256(job.committedMask) << 168) |
            (uint256(job.billedTokens) << 176) |
            (uint256(job.timestamp) << 208);
        Job storage slot = _jobs[jobId];
        assembly ("memory-safe") {
            sstore(slot.slot, word)
        }
    }

    /// @dev The billed count a client receipt proves; reverts unless the client signed it (an EOA by ECDSA,
    /// a contract through ERC-1271) and it is within maxTokens.
    function _checkReceipt(
        uint256 jobId,
        bytes calldata terms,
        Receipt calldata receipt
    ) private view returns (uint32) {
        uint32 maxTokens = terms.maxTokens();
        if (receipt.tokens > maxTokens) revert TokensExceedMax(receipt.tokens, maxTokens);
        bytes32 digest = _envelopeDigest(jobId, receipt.step, receipt.tokens, receipt.payloadHash);
        address client = terms.client();
        (address signer, ECDSA.RecoverError err, ) = ECDSA.tryRecover(digest, receipt.signature);
        // A contract client (a smart wallet) signs through ERC-1271; an EOA never reaches that call.
        if (
            (err != ECDSA.RecoverError.NoError || signer != client) &&
            !SignatureChecker.isValidERC1271SignatureNowCalldata(client, digest, receipt.signature)
        ) {
            revert InvalidReceiptSignature(jobId, signer);
        }
        return receipt.tokens;
    }

    /// @dev Committed -> Disputed now; the dispute block's hash will seed the audit panels.
    function _dispute(uint256 jobId, Job memory job) private {
        job.status = JobStatus.Disputed;
        job.timestamp = uint40(block.timestamp);
        _storeJob(jobId, job);
        _links[jobId] = bytes32(block.number);
        emit JobDisputed(jobId);
    }

    /// @dev The sampled-audit draw of a Committed job, from the hash of the block its last commit was in:
    /// the last committer cannot know that hash when it sends the commit, so it cannot dodge the draw.
    function _auditDraw(uint256 jobId) private view returns (bool available, bool sampled) {
        bytes32 anchor = blockhash(uint256(_links[jobId]));
        if (anchor == 0) return (false, false);
        return (true, uint256(keccak256(abi.encode(anchor, jobId, "audit"))) % BPS < _auditRateBps);
    }

    /// @dev Settles an open challenge: on fraud the bond goes back to the challenger; otherwise (with a
    /// verdict) CHALLENGE_VERIFIER_BPS of it goes to the auditor for the honest verifiers and the rest to
    /// the paid route nodes, returned as the amount per node. Without a verdict it all goes to the nodes.
    function _settleChallenge(
        uint256 jobId,
        bytes calldata terms,
        uint8 paidMask,
        bool fraud,
        bool verdict
    ) private returns (uint256 perNode, uint256 toAuditor) {
        Challenge memory c = _challenges[jobId];
        if (c.challenger == address(0)) return (0, 0);
        delete _challenges[jobId];
        _challengeBonds -= c.bond;
        uint256 paidHops = _popcount(paidMask & uint8((1 << terms.hopCount()) - 1));
        if (fraud || paidHops == 0) {
            emit ChallengeSettled(jobId, c.challenger, c.bond, 0, 0);
            _refund(c.challenger, c.bond);
            return (0, 0);
        }
        uint256 forVerifiers = verdict ? (uint256(c.bond) * CHALLENGE_VERIFIER_BPS) / BPS : 0;
        perNode = (c.bond - forVerifiers) / paidHops;
        // Rounding dust goes with the auditor's share (or, without a verdict, is burned).
        uint256 dust = c.bond - forVerifiers - perNode * paidHops;
        toAuditor = verdict ? forVerifiers + dust : 0;
        emit ChallengeSettled(jobId, c.challenger, 0, perNode, toAuditor);
        if (!verdict && dust != 0) _send(BURN_ADDRESS, dust);
    }

    /// @dev Pays every committed, non-fraudulent position and refunds the rest of the escrow.
    function _settle(
        uint256 jobId,
        bytes calldata terms,
        uint32 billed,
        uint8 committedMask,
        uint8 fraudMask,
        uint256 bonus
    ) private {
        uint8 paidMask = committedMask & ~fraudMask;
        (uint256 paid, uint256 refund) = _payments(terms, billed, paidMask);
        emit JobFinalized(jobId, billed, paid, refund);
        if (paid != 0 || bonus != 0) _registry.creditEarnings(terms.route(), billed, paidMask, _hopFee + bonus);
        _refund(terms.client(), refund);
    }

    /// @dev What the escrow pays the hops of `paidMask` (price x billed + the hop fee each) and the refund.
    function _payments(
        bytes calldata terms,
        uint32 billed,
        uint8 paidMask
    ) private view returns (uint256 paid, uint256 refund) {
        uint256 hops = terms.hopCount();
        bytes calldata packedRoute = terms.route();
        for (uint256 i; i < hops; ++i) {
            if (paidMask & (1 << i) != 0) paid += uint256(packedRoute.hopPrice(i)) * billed + _hopFee;
        }
        // billed <= maxTokens and escrow >= maxTokens x sum(prices) + hops x hopFee were checked, so this
        // cannot underflow.
        refund = terms.escrow() - paid;
    }

    /// @dev Slashes each missing hop missSlashBps of its bond, capped at what the job offered it (its price
    /// x maxTokens + the hop fee): many jobs at once cannot take more than they put at risk.
    function _slashMissing(bytes calldata terms, uint8 missingMask) private returns (uint256 slashed) {
        if (missingMask == 0 || _missSlashBps == 0) return 0;
        uint256 hops = terms.hopCount();
        bytes calldata packedRoute = terms.route();
        uint256 maxTokens = terms.maxTokens();
        for (uint256 i; i < hops; ++i) {
            if (missingMask & (1 << i) == 0) continue;
            address node = packedRoute.hopNode(i);
            uint256 amount = (_registry.bondOf(node) * _missSlashBps) / BPS;
            uint256 cap = uint256(packedRoute.hopPrice(i)) * maxTokens + _hopFee;
            if (amount > cap) amount = cap;
            if (amount != 0) slashed += _registry.slash(node, amount);
        }
    }

    function _popcount(uint8 mask) private pure returns (uint256 count) {
        for (; mask != 0; mask &= mask - 1) ++count;
    }

    function _slashPositions(bytes calldata terms, uint8 mask, uint256 bps) private returns (uint256 slashed) {
        if (mask == 0 || bps == 0) return 0;
        uint256 hops = terms.hopCount();
        bytes calldata packedRoute = terms.route();
        for (uint256 i; i < hops; ++i) {
            if (mask & (1 << i) == 0) continue;
            address node = packedRoute.hopNode(i);
            uint256 amount = (_registry.bondOf(node) * bps) / BPS;
            if (amount != 0) slashed += _registry.slash(node, amount);
        }
    }

    /// @dev Pushes the refund; a client that cannot receive gets a credit instead, so it cannot block
    /// the nodes' payment.
    function _refund(address client, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        // Bounded gas and no return data copied: a hostile client cannot burn the caller's gas.
        assembly ("memory-safe") {
            ok := call(REFUND_GAS, client, amount, 0, 0, 0, 0)
        }
        if (!ok) {
            _credits[client] += amount;
            _totalCredits += amount;
            emit RefundCredited(client, amount);
        }
    }

    function _send(address to, uint256 amount) private {
        (bool ok, ) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }

    function _envelopeDigest(
        uint256 jobId,
        uint32 step,
        uint32 tokens,
        bytes32 payloadHash
    ) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(ENVELOPE_TYPEHASH, jobId, step, tokens, payloadHash)));
    }
}
