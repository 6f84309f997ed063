// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IAuditCourt} from "./interfaces/IAuditCourt.sol";
import {IJobMarket} from "./interfaces/IJobMarket.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {JobStatus, AuditStatus, VoteStatus} from "./libraries/SplitmeshTypes.sol";
import {JobTermsLib} from "./libraries/JobTermsLib.sol";

/// @title AuditCourt
/// @notice The JobMarket's auditor: no admin, no arbiter. A Disputed job (commitments that do not link
/// up, or a sampled audit) is judged position by position by verifiers drawn from the nodes that serve
/// the same shard. Votes are commit-reveal with a bond; a strict majority of the revealed votes decides,
/// and no majority means honest. The court then settles the job in the JobMarket (which slashes the
/// fraudulent nodes and sends the slash here) and splits the slash between the winning verifiers and the
/// job's client.
/// @dev Timing, for an audit opened at T with windows C (commit) and R (reveal):
///   commitVote while now <= T + C; revealVote while T + C < now <= T + C + R, or earlier once every
///   verifier of the position committed; resolve once now > T + C + R.
/// openAudit refuses to start unless T + C + R <= disputedAt + disputeTimeout - 2, so resolve always
/// has at least one second in which it works and the JobMarket's timed-out finalize does not.
/// Balance invariant: address(this).balance == bondsHeld() + totalCredits() between transactions.
contract AuditCourt is IAuditCourt, ReentrancyGuardTransient {
    using JobTermsLib for bytes;

    /// @notice Verdict of a vote: the audited node's work matched the re-execution.
    uint8 public constant HONEST = 1;
    /// @notice Verdict of a vote: it did not (or the node withheld its transcript).
    uint8 public constant FRAUD = 2;
    /// @notice Most verifiers per position (a seat index is position x MAX_VERIFIERS + i).
    uint256 public constant MAX_VERIFIERS = 16;
    /// @notice Gas forwarded with a push to the client; a client needing more is credited instead.
    uint256 public constant PAYOUT_GAS = 50_000;
    uint256 private constant BPS = 10_000;
    // Bit offsets of the four 8-bit counters of a position inside its 32-bit lane of Audit.tallies.
    uint256 private constant DRAWN = 0;
    uint256 private constant COMMITTED = 8;
    uint256 private constant HONEST_VOTES = 16;
    uint256 private constant FRAUD_VOTES = 24;

    struct Audit {
        // slot 0
        AuditStatus status;
        uint8 hops;
        uint8 unverifiableMask;
        uint8 fraudMask;
        uint40 openedAt;
        // slot 1: per position p, bits [32 p, 32 p + 32): drawn | committed | honest | fraud, 8 bits each
        uint256 tallies;
    }

    struct Seat {
        address verifier;
        VoteStatus vote;
    }

    IJobMarket private immutable _market;
    INodeRegistry private immutable _registry;
    uint256 private immutable _verifiersPerPosition;
    uint256 private immutable _verifierBond;
    uint256 private immutable _commitWindow;
    uint256 private immutable _revealWindow;
    uint256 private immutable _rewardBps;
    uint256 private immutable _disputeTimeout;

    uint256 private _bondsHeld;
    uint256 private _totalCredits;
    mapping(uint256 jobId => Audit) private _audits;
    mapping(uint256 jobId => mapping(uint256 seat => Seat)) private _seats;
    mapping(uint256 jobId => mapping(uint256 seat => bytes32)) private _commitments;
    mapping(address account => uint256) private _credits;
    mapping(uint256 jobId => uint256) private _anchors; // fallback seed block when the dispute block is too old

    /// @param market_ The JobMarket (its auditor() must be this contract; the registry is read from it).
    /// @param verifiersPerPosition_ Verifiers drawn per route position, 1..MAX_VERIFIERS.
    /// @param verifierBond_ Wei each verifier posts with its vote commitment (positive).
    /// @param commitWindow_ Seconds from opening during which votes are committed.
    /// @param revealWindow_ Seconds after the commit deadline during which votes are revealed.
    /// @param rewardBps_ Share of a fraud slash paid to the winning verifiers (basis points).
    constructor(
        IJobMarket market_,
        uint256 verifiersPerPosition_,
        uint256 verifierBond_,
        uint256 commitWindow_,
        uint256 revealWindow_,
        uint256 rewardBps_
    ) {
        if (market_.auditor() != address(this)) revert InvalidParameter("market");
        if (verifiersPerPosition_ == 0 || verifiersPerPosition_ > MAX_VERIFIERS) {
            revert InvalidParameter("verifiersPerPosition");
        }
        if (verifierBond_ == 0) revert InvalidParameter("verifierBond");
        if (commitWindow_ == 0 || commitWindow_ > 30 days) revert InvalidParameter("commitWindow");
        if (revealWindow_ == 0 || revealWindow_ > 30 days) revert InvalidParameter("revealWindow");
        if (rewardBps_ > BPS) revert InvalidParameter("rewardBps");
        (, , uint256 disputeTimeout, , ) = market_.parameters();
        // An audit opened the moment its job is disputed must be resolvable before the dispute times out.
        if (disputeTimeout < commitWindow_ + revealWindow_ + 2) revert InvalidParameter("disputeTimeout");
        _market = market_;
        _registry = INodeRegistry(market_.registry());
        _verifiersPerPosition = verifiersPerPosition_;
        _verifierBond = verifierBond_;
        _commitWindow = commitWindow_;
        _revealWindow = revealWindow_;
        _rewardBps = rewardBps_;
        _disputeTimeout = disputeTimeout;
    }

    /// @notice Accepts fraud-slash proceeds from the JobMarket only.
    receive() external payable {
        if (msg.sender != address(_market)) revert UnexpectedPayment(msg.sender);
    }

    // ------------------------------------------------------------------ audit lifecycle

    /// @inheritdoc IAuditCourt
    function openAudit(uint256 jobId, bytes calldata terms) external {
        if (_audits[jobId].status != AuditStatus.None) revert AuditAlreadyOpened(jobId);
        IJobMarket.Job memory job = _market.getJob(jobId);
        if (job.status == JobStatus.None) revert UnknownJob(jobId);
        if (job.termsHash != JobTermsLib.hashOf(jobId, terms)) revert TermsMismatch(jobId);
        if (job.status != JobStatus.Disputed) revert JobNotDisputed(jobId, job.status);
        // No underflow: the constructor checked disputeTimeout >= commitWindow + revealWindow + 2.
        uint256 latestOpenAt = uint256(job.timestamp) + _disputeTimeout - _commitWindow - _revealWindow - 2;
        if (block.timestamp > latestOpenAt) revert AuditTooLate(jobId, latestOpenAt);

        bytes32 anchor = _anchorHash(jobId);
        if (anchor == 0) return;

        uint256 hops = terms.hopCount();
        bytes calldata route = terms.route();
        uint32 modelId = terms.modelId();
        uint8 firstShard = terms.firstShard();
        address[][] memory panels = new address[][](hops);
        uint256 tallies;
        uint8 unverifiableMask;
        for (uint256 p; p < hops; ++p) {
            uint256 seed = uint256(keccak256(abi.encode(anchor, jobId, p)));
            address[] memory drawn = _registry.samplePool(
                modelId,
                uint8(firstShard + p),
                route.hopNode(p),
                _verifiersPerPosition,
                seed
            );
            panels[p] = drawn;
            tallies |= drawn.length << (32 * p + DRAWN);
            if (drawn.length == 0) unverifiableMask |= uint8(1 << p);
            for (uint256 i; i < drawn.length; ++i) {
                _seats[jobId][p * MAX_VERIFIERS + i] = Seat({verifier: drawn[i], vote: VoteStatus.Drawn});
            }
        }
        _audits[jobId] = Audit({
            status: AuditStatus.Open,
            hops: uint8(hops),
            unverifiableMask: unverifiableMask,
            fraudMask: 0,
            openedAt: uint40(block.timestamp),
            tallies: tallies
        });
        for (uint256 p; p < hops; ++p) {
            emit AuditOpened(jobId, uint8(p), route.hopNode(p), panels[p]);
        }
        // The JobMarket trusts its auditor; restarting the timeout means the accused cannot finalize the
        // job unaudited in the last second before resolve.
        _market.holdForAudit(jobId, terms);
    }

    /// @inheritdoc IAuditCourt
    function commitVote(uint256 jobId, uint8 position, bytes32 commitment) external payable nonReentrant {
        Audit storage audit = _openAudit(jobId, position);
        uint256 deadline = uint256(audit.openedAt) + _commitWindow;
        if (block.timestamp > deadline) revert CommitPhaseClosed(jobId, deadline);
        uint256 tallies = audit.tallies;
        (uint256 seat, VoteStatus vote) = _seatOf(jobId, position, msg.sender, tallies);
        if (msg.value != _verifierBond) revert WrongBond(_verifierBond, msg.value);
        if (vote != VoteStatus.Drawn) revert AlreadyCommitted(jobId, position, msg.sender);

        _seats[jobId][seat].vote = VoteStatus.Committed;
        _commitments[jobId][seat] = commitment;
        audit.tallies = tallies + (1 << (32 * uint256(position) + COMMITTED));
        _bondsHeld += msg.value;
        emit VoteCommitted(jobId, position, msg.sender, commitment);
    }

    /// @inheritdoc IAuditCourt
    function revealVote(uint256 jobId, uint8 position, uint8 verdict, bytes32 salt) external nonReentrant {
        Audit storage audit = _openAudit(jobId, position);
        uint256 commitDeadline = uint256(audit.openedAt) + _commitWindow;
        uint256 tallies = audit.tallies;
        // Early reveals are safe once every drawn verifier has committed: no vote can change any more.
        bool allCommitted = _count(tallies, position, COMMITTED) == _count(tallies, position, DRAWN);
        if (block.timestamp <= commitDeadline && !allCommitted) revert RevealNotOpen(jobId, position, commitDeadline);
        uint256 revealDeadline = commitDeadline + _revealWindow;
        if (block.timestamp > revealDeadline) revert RevealPhaseClosed(jobId, revealDeadline);
        (uint256 seat, VoteStatus vote) = _seatOf(jobId, position, msg.sender, tallies);
        if (vote != VoteStatus.Committed) revert NothingToReveal(jobId, position, msg.sender, vote);
        if (verdict != HONEST && verdict != FRAUD) revert InvalidVerdict(verdict);
        if (keccak256(abi.encode(jobId, position, verdict, salt, msg.sender)) != _commitments[jobId][seat]) {
            revert CommitmentMismatch(jobId, position, msg.sender);
        }

        bool fraud = verdict == FRAUD;
        _seats[jobId][seat].vote = fraud ? VoteStatus.Fraud : VoteStatus.Honest;
        delete _commitments[jobId][seat];
        audit.tallies = tallies + (1 << (32 * uint256(position) + (fraud ? FRAUD_VOTES : HONEST_VOTES)));
        emit VoteRevealed(jobId, position, msg.sender, verdict);
    }

    /// @inheritdoc IAuditCourt
    function resolve(uint256 jobId, bytes calldata terms) external nonReentrant {
        Audit storage audit = _audits[jobId];
        if (audit.status != AuditStatus.Open) revert AuditNotOpen(jobId, audit.status);
        uint256 revealDeadline = uint256(audit.openedAt) + _commitWindow + _revealWindow;
        if (block.timestamp <= revealDeadline) revert RevealPhaseOpen(jobId, revealDeadline);
        IJobMarket.Job memory job = _market.getJob(jobId);
        if (job.termsHash != JobTermsLib.hashOf(jobId, terms)) revert TermsMismatch(jobId);

        uint256 hops = audit.hops;
        uint256 tallies = audit.tallies;
        (uint8 fraudMask, uint256 winners, uint256 forfeited, uint256 held) = _judge(jobId, tallies, hops);
        audit.status = AuditStatus.Resolved;
        audit.fraudMask = fraudMask;
        _bondsHeld -= held;
        uint256 penalties = _penalizeAbstainers(jobId, tallies, hops);

        uint256 slashed;
        uint256 challengeShare;
        (address challenger, ) = _market.challengeOf(jobId);
        if (job.status == JobStatus.Disputed) {
            // The JobMarket is fixed at construction and trusted; it sends slash and bond share to receive().
            (slashed, challengeShare) = _market.resolveDispute(jobId, terms, fraudMask);
        } else {
            // Only Finalized follows Disputed: someone finalized the job after its dispute timed out.
            emit JobSettledBeforeVerdict(jobId);
        }
        uint256 pool = (slashed * _rewardBps) / BPS + forfeited + penalties + challengeShare;
        uint256 share = winners == 0 ? 0 : pool / winners;
        uint256 rewarded = share * winners;
        // The challenger's (or client's) part: the rest of the slash, a pool nobody won, rounding dust.
        uint256 toClient = slashed + forfeited + penalties + challengeShare - rewarded;
        if (winners != 0) {
            _totalCredits += rewarded + winners * _verifierBond;
            _creditWinners(jobId, tallies, fraudMask, hops, share + _verifierBond);
        }
        emit AuditResolved(jobId, fraudMask, slashed, rewarded, toClient);
        _pay(challenger != address(0) ? challenger : terms.client(), toClient);
    }

    /// @inheritdoc IAuditCourt
    function withdrawCredit() external nonReentrant {
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _credits[msg.sender] = 0;
        _totalCredits -= amount;
        emit CreditWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IAuditCourt
    function getAudit(uint256 jobId) external view returns (AuditInfo memory info) {
        Audit storage audit = _audits[jobId];
        info = AuditInfo({
            status: audit.status,
            hops: audit.hops,
            unverifiableMask: audit.unverifiableMask,
            fraudMask: audit.fraudMask,
            openedAt: audit.openedAt,
            commitDeadline: 0,
            revealDeadline: 0
        });
        if (audit.status != AuditStatus.None) {
            info.commitDeadline = uint256(audit.openedAt) + _commitWindow;
            info.revealDeadline = info.commitDeadline + _revealWindow;
        }
    }

    /// @inheritdoc IAuditCourt
    function getPanel(uint256 jobId, uint8 position) external view returns (PanelInfo memory panel) {
        uint256 tallies = _audits[jobId].tallies;
        uint256 drawn = position < 8 ? _count(tallies, position, DRAWN) : 0;
        panel.verifiers = new address[](drawn);
        panel.votes = new VoteStatus[](drawn);
        panel.commitments = new bytes32[](drawn);
        for (uint256 i; i < drawn; ++i) {
            uint256 seat = uint256(position) * MAX_VERIFIERS + i;
            Seat storage s = _seats[jobId][seat];
            panel.verifiers[i] = s.verifier;
            panel.votes[i] = s.vote;
            panel.commitments[i] = _commitments[jobId][seat];
        }
        if (drawn != 0) {
            panel.committed = uint8(_count(tallies, position, COMMITTED));
            panel.honestVotes = uint8(_count(tallies, position, HONEST_VOTES));
            panel.fraudVotes = uint8(_count(tallies, position, FRAUD_VOTES));
        }
    }

    /// @inheritdoc IAuditCourt
    function voteCommitment(
        uint256 jobId,
        uint8 position,
        uint8 verdict,
        bytes32 salt,
        address verifier
    ) external pure returns (bytes32) {
        return keccak256(abi.encode(jobId, position, verdict, salt, verifier));
    }

    /// @inheritdoc IAuditCourt
    function creditOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    /// @inheritdoc IAuditCourt
    function totalCredits() external view returns (uint256) {
        return _totalCredits;
    }

    /// @inheritdoc IAuditCourt
    function bondsHeld() external view returns (uint256) {
        return _bondsHeld;
    }

    /// @inheritdoc IAuditCourt
    function market() external view returns (address) {
        return address(_market);
    }

    /// @inheritdoc IAuditCourt
    function registry() external view returns (address) {
        return address(_registry);
    }

    /// @inheritdoc IAuditCourt
    function parameters()
        external
        view
        returns (
            uint256 verifiersPerPosition,
            uint256 verifierBond,
            uint256 commitWindow,
            uint256 revealWindow,
            uint256 rewardBps
        )
    {
        return (_verifiersPerPosition, _verifierBond, _commitWindow, _revealWindow, _rewardBps);
    }

    // ------------------------------------------------------------------ internals

    /// @dev The audit of `jobId`, which must be Open and have `position`.
    function _openAudit(uint256 jobId, uint8 position) private view returns (Audit storage audit) {
        audit = _audits[jobId];
        if (audit.status != AuditStatus.Open) revert AuditNotOpen(jobId, audit.status);
        if (position >= audit.hops) revert InvalidPosition(jobId, position);
    }

    /// @dev The seat of `verifier` on the panel of `position` (at most MAX_VERIFIERS probes).
    function _seatOf(
        uint256 jobId,
        uint8 position,
        address verifier,
        uint256 tallies
    ) private view returns (uint256 seat, VoteStatus vote) {
        uint256 drawn = _count(tallies, position, DRAWN);
        uint256 first = uint256(position) * MAX_VERIFIERS;
        for (seat = first; seat < first + drawn; ++seat) {
            Seat storage s = _seats[jobId][seat];
            if (s.verifier == verifier) return (seat, s.vote);
        }
        revert NotVerifier(jobId, position, verifier);
    }

    /// @dev The verdict per position and the bond accounting: fraud iff more than half of the drawn
    /// verifiers revealed fraud. Winners revealed the verdict; the bonds of everyone else who committed
    /// (the minority, and whoever never revealed) are forfeited. `held`: every committed bond.
    function _judge(
        uint256 jobId,
        uint256 tallies,
        uint256 hops
    ) private returns (uint8 fraudMask, uint256 winners, uint256 forfeited, uint256 held) {
        for (uint256 p; p < hops; ++p) {
            uint256 drawn = _count(tallies, p, DRAWN);
            uint256 committed = _count(tallies, p, COMMITTED);
            uint256 honest = _count(tallies, p, HONEST_VOTES);
            uint256 fraud = _count(tallies, p, FRAUD_VOTES);
            bool found = drawn != 0 && 2 * fraud > drawn;
            if (found) fraudMask |= uint8(1 << p);
            uint256 won = found ? fraud : honest;
            uint256 lost = (committed - won) * _verifierBond;
            winners += won;
            forfeited += lost;
            held += committed * _verifierBond;
            emit PositionJudged(jobId, uint8(p), found, uint8(honest), uint8(fraud), lost);
        }
    }

    /// @dev Slashes one bond from every drawn verifier that never committed a vote (a rational verifier
    /// must not gain by abstaining); the JobMarket sends the proceeds here. Bounded: 8 x MAX_VERIFIERS.
    function _penalizeAbstainers(uint256 jobId, uint256 tallies, uint256 hops) private returns (uint256 total) {
        for (uint256 p; p < hops; ++p) {
            uint256 drawn = _count(tallies, p, DRAWN);
            if (_count(tallies, p, COMMITTED) == drawn) continue;
            for (uint256 i; i < drawn; ++i) {
                Seat storage s = _seats[jobId][p * MAX_VERIFIERS + i];
                if (s.vote == VoteStatus.Drawn) total += _market.penalizeVerifier(s.verifier, _verifierBond);
            }
        }
    }

    /// @dev Credits `amount` to every verifier who revealed its position's verdict. Bounded: at most 8
    /// positions x MAX_VERIFIERS seats.
    function _creditWinners(uint256 jobId, uint256 tallies, uint8 fraudMask, uint256 hops, uint256 amount) private {
        for (uint256 p; p < hops; ++p) {
            VoteStatus winning = (fraudMask >> p) & 1 == 1 ? VoteStatus.Fraud : VoteStatus.Honest;
            uint256 drawn = _count(tallies, p, DRAWN);
            for (uint256 i; i < drawn; ++i) {
                Seat storage s = _seats[jobId][p * MAX_VERIFIERS + i];
                if (s.vote != winning) continue;
                address verifier = s.verifier;
                _credits[verifier] += amount;
                emit VerifierRewarded(jobId, uint8(p), verifier, amount);
            }
        }
    }

    /// @dev The hash the panels are drawn from: the dispute block's, or, when that is over 256 blocks old,
    /// a fallback anchor block's recorded by an earlier call. Zero (after recording an anchor) means "call
    /// again from the next block".
    function _anchorHash(uint256 jobId) private returns (bytes32 anchor) {
        uint256 disputed = _market.disputeBlockOf(jobId);
        if (block.number <= disputed) revert AuditTooEarly(jobId, disputed + 1);
        anchor = blockhash(disputed);
        if (anchor != 0) return anchor;
        uint256 own = _anchors[jobId];
        if (own != 0 && own < block.number) anchor = blockhash(own);
        if (anchor == 0 && own != block.number) {
            _anchors[jobId] = block.number;
            emit AuditAnchored(jobId, block.number);
        }
    }

    /// @dev One of the four 8-bit counters of a position.
    function _count(uint256 tallies, uint256 position, uint256 field) private pure returns (uint256) {
        return uint8(tallies >> (32 * position + field));
    }

    /// @dev Pushes a payment with bounded gas; an account that cannot take it is credited instead, so it
    /// cannot block a resolution.
    function _pay(address to, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        assembly ("memory-safe") {
            ok := call(PAYOUT_GAS, to, amount, 0, 0, 0, 0)
        }
        if (!ok) {
            _credits[to] += amount;
            _totalCredits += amount;
            emit PaymentCredited(to, amount);
        }
    }

    function _send(address to, uint256 amount) private {
        (bool ok, ) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
