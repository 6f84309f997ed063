// AuditCourt: drawing verifiers, commit-reveal votes, verdicts, payouts, timing, reentrancy, conservation.
// The fixture job runs from shard 1 (positions 0, 1, 2 = nodes[1], nodes[2], nodes[3]) and is disputed by a
// commitment mismatch; each of shards 1..3 also has three verifier nodes (signers 9..17) priced above what
// clients accept, so they are never matched but always in the pool an audit draws from. A pool of 4 is at
// most k + 1, so each position's panel is exactly its three verifiers.
// Economics (issue 12): bonds stay held until resolve; a position is fraud iff more than half of its DRAWN
// verifiers revealed fraud; winners (revealed the verdict) get bond + share of the pool; committed
// non-winners forfeit their bond; a drawn verifier that never committed is slashed one bond.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time, mine, setPrevRandao } = require("@nomicfoundation/hardhat-network-helpers");
const {
  PARAMS,
  CHALLENGE_BOND,
  COURT_PARAMS,
  MODEL,
  NODE_PRICES,
  NODE_STAKES,
  NO_RECEIPT,
  JobStatus,
  Mode,
  deployMarket,
  contractClient,
  fundedWallets,
  submit,
  commitAll,
  link,
  receipt,
  anchorBlockOf,
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const BOND = COURT_PARAMS.verifierBond;
const BPS = 10_000n;
const MAX_TOKENS = 64;
const BILLED = 40;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3];
const HOP_FEE = PARAMS.hopFee;
const FEES = 3n * HOP_FEE;
const ESCROW = BigInt(MAX_TOKENS) * ROUTE_PRICE + FEES;
/// What the fixture job pays its hops when the positions in `fraudMask` are not paid.
const paidExcept = (fraudMask = 0) =>
  [1, 2, 3].reduce((a, s, p) => ((fraudMask >> p) & 1 ? a : a + NODE_PRICES[s] * BigInt(BILLED) + HOP_FEE), 0n);
const VERIFIER_PRICE = 10_000_000_000n; // above every client's limit: verifiers are never matched
const HONEST = 1;
const FRAUD = 2;
const Vote = { None: 0, Drawn: 1, Committed: 2, Honest: 3, Fraud: 4 };
const AuditStatus = { None: 0, Open: 1, Resolved: 2 };
const coder = ethers.AbiCoder.defaultAbiCoder();

const balanceOf = (a) => ethers.provider.getBalance(a);
const slashOf = (stake) => (stake * BigInt(PARAMS.fraudSlashBps)) / BPS;

/// What resolve pays out: pool = slashed x rewardBps + forfeited bonds + abstainers' penalties + the
/// challenge share, split evenly among the winners (each also gets its bond back); the rest (all of it
/// when nobody won) goes to the challenger or the client.
function payout({ slashed = 0n, forfeited = 0n, penalties = 0n, challengeShare = 0n, winners }) {
  const pool = (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS + forfeited + penalties + challengeShare;
  const share = winners === 0 ? 0n : pool / BigInt(winners);
  const rewarded = share * BigInt(winners);
  return { pool, share, rewarded, toClient: slashed + forfeited + penalties + challengeShare - rewarded };
}

/// The panel seed of position p: keccak(abi.encode(blockhash(anchor), jobId, p)).
function panelSeed(blockHash, jobId, p) {
  return ethers.keccak256(coder.encode(["bytes32", "uint256", "uint256"], [blockHash, jobId, p]));
}

/// Registry, market and court; model 1 with nodes[s] on shard s and three verifiers on each of shards 1..3.
async function courtMarketFixture(params = {}) {
  const signers = await ethers.getSigners();
  const [deployer, client, n0, n1, n2, n3, , other, client2] = signers;
  const verifiers = signers.slice(9, 18);
  const { registry, market, court } = await deployMarket({ court: true, params });
  await registry.registerModel(MODEL.name, MODEL.weightsHash, MODEL.numLayers, MODEL.boundaries);
  const nodes = [n0, n1, n2, n3];
  for (let s = 0; s < 4; s++) {
    await registry.connect(nodes[s]).registerNode(1, s, `http://10.0.0.${s}`, NODE_PRICES[s], ethers.id("k"), { value: NODE_STAKES[s] });
  }
  for (const [i, v] of verifiers.entries()) {
    await registry.connect(v).registerNode(1, 1 + Math.floor(i / 3), "http://verifier", VERIFIER_PRICE, ethers.id("v"), { value: ONE });
  }
  return { registry, market, court, deployer, client, client2, other, nodes, verifiers, signers };
}

/// A job disputed by a mismatch at boundary 1, client receipt for BILLED tokens.
async function disputedJob(f, client = f.client) {
  const job = await submit(f.market, client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
  const signer = client.wallet ?? client;
  await commitAll(f.market, f.nodes, job, await receipt(f.market, signer, job.jobId, BILLED), { breakAt: 1 });
  const disputedAt = Number((await f.market.getJob(job.jobId)).timestamp);
  return { job, disputedAt };
}

async function disputedFixture() {
  const f = await courtMarketFixture();
  return { ...f, ...(await disputedJob(f)) };
}

/// Opens the audit of the fixture job; panels[p] are the signers drawn for position p.
async function openAudit(f) {
  await f.court.openAudit(f.job.jobId, f.job.terms);
  const openedAt = await time.latest();
  const panels = [];
  for (let p = 0; p < 3; p++) {
    const { verifiers } = await f.court.getPanel(f.job.jobId, p);
    panels.push(verifiers.map((a) => f.signers.find((s) => s.address === a)));
  }
  return {
    ...f,
    openedAt,
    commitDeadline: openedAt + COURT_PARAMS.commitWindow,
    revealDeadline: openedAt + COURT_PARAMS.commitWindow + COURT_PARAMS.revealWindow,
    panels,
  };
}

async function openedFixture() {
  return openAudit(await disputedFixture());
}

const saltOf = (p, who) => ethers.id(`salt ${p} ${who.address ?? who}`);

/// commitVote by `who` on position p for `verdict`, with the exact bond.
async function commitVote(f, p, who, verdict, { value = BOND, salt = saltOf(p, who) } = {}) {
  const c = await f.court.voteCommitment(f.job.jobId, p, verdict, salt, who.address);
  return f.court.connect(who).commitVote(f.job.jobId, p, c, { value });
}

function revealVote(f, p, who, verdict, salt = saltOf(p, who)) {
  return f.court.connect(who).revealVote(f.job.jobId, p, verdict, salt);
}

/// Votes: plan[p] is a list per panel member of HONEST, FRAUD, "silent" (commits, never reveals) or null
/// (never commits). Commits everything, waits for the commit deadline, reveals, then waits past the reveal
/// deadline.
async function runVotes(f, plan) {
  for (const [p, votes] of Object.entries(plan)) {
    for (const [i, v] of votes.entries()) if (v !== null) await commitVote(f, Number(p), f.panels[p][i], v === "silent" ? FRAUD : v);
  }
  await time.increaseTo(f.commitDeadline + 1);
  for (const [p, votes] of Object.entries(plan)) {
    for (const [i, v] of votes.entries()) if (v === HONEST || v === FRAUD) await revealVote(f, Number(p), f.panels[p][i], v);
  }
  await time.increaseTo(f.revealDeadline + 1);
}

/// The three ledgers: court == bonds + credits; market == unsettled escrow + credits + earnings + open
/// challenge bonds; registry == stakes + unbonding of every node account.
async function expectConserved(f, jobs = [f.job]) {
  expect(await balanceOf(f.court)).to.equal((await f.court.bondsHeld()) + (await f.court.totalCredits()));
  let bonds = 0n;
  let earnings = 0n;
  for (const s of f.signers) {
    const n = await f.registry.getNode(s.address);
    bonds += n.stake + n.unbonding;
    earnings += n.earnings;
  }
  for (const extra of f.extraNodes ?? []) {
    const n = await f.registry.getNode(extra);
    bonds += n.stake + n.unbonding;
    earnings += n.earnings;
  }
  expect(await balanceOf(f.registry)).to.equal(bonds);
  let escrow = 0n;
  for (const j of jobs) {
    const status = Number((await f.market.getJob(j.jobId)).status);
    if ([JobStatus.Open, JobStatus.Committed, JobStatus.Disputed].includes(status)) escrow += j.decoded.escrow;
    escrow += (await f.market.challengeOf(j.jobId)).bond;
  }
  expect(await balanceOf(f.market)).to.equal(escrow + (await f.market.totalCredits()) + earnings);
}

/// Deploys a registry and a market whose auditor is the address the next deployment will get, and
/// returns a deploy() for an AuditCourt with overridable parameters.
async function courtDeployer({ auditorIsCourt = true, disputeTimeout = PARAMS.disputeTimeout } = {}) {
  const [deployer, , , , , , , other] = await ethers.getSigners();
  const nonce = await ethers.provider.getTransactionCount(deployer.address);
  const predictedMarket = ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 1 });
  const predictedCourt = ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 2 });
  const registry = await ethers.deployContract("NodeRegistry", [predictedMarket, ONE, PARAMS.unbondingDelay]);
  const market = await ethers.deployContract("JobMarket", [
    registry,
    auditorIsCourt ? predictedCourt : other.address,
    PARAMS.commitTimeout,
    PARAMS.challengeWindow,
    disputeTimeout,
    PARAMS.missSlashBps,
    PARAMS.fraudSlashBps,
    0,
    PARAMS.hopFee,
    CHALLENGE_BOND,
  ]);
  const factory = await ethers.getContractFactory("AuditCourt");
  const deploy = (p = {}) => {
    const q = { ...COURT_PARAMS, ...p };
    return factory.deploy(market, q.verifiersPerPosition, q.verifierBond, q.commitWindow, q.revealWindow, q.rewardBps);
  };
  return { registry, market, factory, deploy };
}

describe("AuditCourt", function () {
  describe("constructor", function () {
    it("is bound to the market, reads the registry from it and stores its parameters", async function () {
      const { registry, market, court } = await loadFixture(courtMarketFixture);
      expect(await market.auditor()).to.equal(await court.getAddress());
      expect(await court.market()).to.equal(await market.getAddress());
      expect(await court.registry()).to.equal(await registry.getAddress());
      const p = await court.parameters();
      expect([p.verifiersPerPosition, p.verifierBond, p.commitWindow, p.revealWindow, p.rewardBps]).to.deep.equal([
        3n,
        BOND,
        300n,
        300n,
        5000n,
      ]);
      expect([await court.HONEST(), await court.FRAUD(), await court.MAX_VERIFIERS()]).to.deep.equal([1n, 2n, 16n]);
      expect([await court.bondsHeld(), await court.totalCredits()]).to.deep.equal([0n, 0n]);
    });

    it("rejects a market whose auditor is another address", async function () {
      const { factory, deploy } = await courtDeployer({ auditorIsCourt: false });
      await expect(deploy()).to.be.revertedWithCustomError(factory, "InvalidParameter").withArgs("market");
    });

    for (const [name, bad, good] of [
      ["verifiersPerPosition", [0, 17], 16],
      ["verifierBond", [0], 1],
      ["commitWindow", [0, 30 * 86400 + 1], 1],
      ["revealWindow", [0, 30 * 86400 + 1], 1],
      ["rewardBps", [10_001], 10_000],
    ]) {
      it(`rejects ${name} of ${bad.join(" or ")}, accepts ${good}`, async function () {
        for (const value of bad) {
          const { factory, deploy } = await courtDeployer();
          await expect(deploy({ [name]: value })).to.be.revertedWithCustomError(factory, "InvalidParameter").withArgs(name);
        }
        const { deploy } = await courtDeployer();
        const court = await deploy({ [name]: good });
        const p = await court.parameters();
        expect(p[name]).to.equal(good);
      });
    }

    it("requires the dispute timeout to cover commit + reveal + 2 s, accepts exactly that", async function () {
      const need = COURT_PARAMS.commitWindow + COURT_PARAMS.revealWindow + 2;
      const short = await courtDeployer({ disputeTimeout: need - 1 });
      await expect(short.deploy()).to.be.revertedWithCustomError(short.factory, "InvalidParameter").withArgs("disputeTimeout");
      const exact = await courtDeployer({ disputeTimeout: need });
      const court = await exact.deploy();
      expect(await court.market()).to.equal(await exact.market.getAddress());
    });
  });

  describe("openAudit", function () {
    it("draws k verifiers per position from the shard's pool, seeded by the dispute block's hash, job and position", async function () {
      const { registry, market, court, nodes, verifiers, job } = await loadFixture(disputedFixture);
      const disputed = await market.disputeBlockOf(job.jobId);
      expect(disputed).to.equal(await anchorBlockOf(market, job.jobId));
      const hash = (await ethers.provider.getBlock(Number(disputed))).hash;
      await setPrevRandao(0xabcdefn); // plays no part
      const tx = court.openAudit(job.jobId, job.terms);
      await tx;
      const openedAt = await time.latest();
      // Opening restarts the market's dispute timeout (holdForAudit on a Disputed job).
      await expect(tx).to.emit(market, "JobDisputed").withArgs(job.jobId);
      expect((await market.getJob(job.jobId)).timestamp).to.equal(openedAt);
      expect(await market.disputeBlockOf(job.jobId)).to.equal(disputed);
      for (let p = 0; p < 3; p++) {
        const seed = panelSeed(hash, job.jobId, p);
        const expected = await registry.samplePool(1, 1 + p, nodes[1 + p].address, 3, seed);
        expect(expected).to.have.length(3);
        expect([...expected].sort()).to.deep.equal(verifiers.slice(3 * p, 3 * p + 3).map((v) => v.address).sort());
        await expect(tx).to.emit(court, "AuditOpened").withArgs(job.jobId, p, nodes[1 + p].address, expected);
        const panel = await court.getPanel(job.jobId, p);
        expect(panel.verifiers).to.deep.equal(expected);
        expect(panel.votes).to.deep.equal([Vote.Drawn, Vote.Drawn, Vote.Drawn].map(BigInt));
        expect(panel.commitments).to.deep.equal([ethers.ZeroHash, ethers.ZeroHash, ethers.ZeroHash]);
        expect([panel.committed, panel.honestVotes, panel.fraudVotes]).to.deep.equal([0n, 0n, 0n]);
      }
      const a = await court.getAudit(job.jobId);
      expect([a.status, a.hops, a.unverifiableMask, a.fraudMask, a.openedAt, a.commitDeadline, a.revealDeadline]).to.deep.equal(
        [AuditStatus.Open, 3, 0, 0, openedAt, openedAt + 300, openedAt + 600].map(BigInt),
      );
    });

    it("from a larger pool draws distinct verifiers, never the audited node, as samplePool does", async function () {
      const f = await loadFixture(courtMarketFixture);
      // A pool of 8: above k + 1, so probed at random; at most MAX_PROBES, so matching still finds nodes[2].
      const extra = await fundedWallets(4, "shard-2 verifier");
      for (const w of extra) {
        await f.registry.connect(w).registerNode(1, 2, "http://more", VERIFIER_PRICE, ethers.id("v"), { value: ONE });
      }
      let short = 0;
      for (let i = 0; i < 6; i++) {
        const { job } = await disputedJob(f);
        await f.court.openAudit(job.jobId, job.terms);
        const hash = (await ethers.provider.getBlock(Number(await f.market.disputeBlockOf(job.jobId)))).hash;
        const seed = panelSeed(hash, job.jobId, 1);
        const drawn = (await f.court.getPanel(job.jobId, 1)).verifiers;
        expect(drawn).to.deep.equal(await f.registry.samplePool(1, 2, f.nodes[2].address, 3, seed));
        expect(new Set(drawn).size).to.equal(drawn.length);
        expect(drawn).to.not.include(f.nodes[2].address);
        expect(drawn.length).to.be.within(1, 3);
        if (drawn.length < 3) short++;
      }
      expect(short).to.be.lessThan(6);
    });

    it("records a position whose pool holds no other node as unverifiable", async function () {
      const f = await loadFixture(disputedFixture);
      for (const v of f.verifiers.slice(6, 9)) await f.registry.connect(v).deactivate(); // shard 3
      await expect(f.court.openAudit(f.job.jobId, f.job.terms))
        .to.emit(f.court, "AuditOpened")
        .withArgs(f.job.jobId, 2, f.nodes[3].address, []);
      expect((await f.court.getAudit(f.job.jobId)).unverifiableMask).to.equal(0b100);
      expect((await f.court.getPanel(f.job.jobId, 2)).verifiers).to.deep.equal([]);
    });

    it("audits a job disputed by a sampled audit like one disputed by a mismatch", async function () {
      const f = await courtMarketFixture({ auditRateBps: 10_000 });
      const job = await submit(f.market, f.client, { maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job);
      await f.market.connect(f.other).sampleAudit(job.jobId, job.terms);
      expect(await f.market.queryFilter(f.market.filters.AuditSampled(job.jobId))).to.have.length(1);
      await expect(f.court.openAudit(job.jobId, job.terms)).to.emit(f.court, "AuditOpened");
    });

    it("cannot open in the dispute block itself: AuditTooEarly, then opens from the next block", async function () {
      const f = await loadFixture(courtMarketFixture);
      const job = await submit(f.market, f.client, { maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job);
      // A contract challenges (disputing the job) and opens the audit in the same transaction.
      const attacker = await ethers.deployContract("AtomicCaller");
      const challenge = f.market.interface.encodeFunctionData("challenge", [job.jobId, job.terms]);
      const open = f.court.interface.encodeFunctionData("openAudit", [job.jobId, job.terms]);
      const block = (await ethers.provider.getBlockNumber()) + 1;
      await expect(attacker.executeBoth(f.market, challenge, f.court, open, { value: CHALLENGE_BOND }))
        .to.be.revertedWithCustomError(f.court, "AuditTooEarly")
        .withArgs(job.jobId, block + 1);
      await attacker.execute(f.market, CHALLENGE_BOND, challenge, { value: CHALLENGE_BOND });
      await expect(f.court.openAudit(job.jobId, job.terms)).to.emit(f.court, "AuditOpened");
    });

    it("when the dispute block's hash is gone, anchors to the current block and opens from the next call", async function () {
      const f = await loadFixture(disputedFixture);
      const disputed = Number(await f.market.disputeBlockOf(f.job.jobId));
      await mine(256); // the next block is disputed + 257: blockhash(disputed) is 0
      const first = await f.court.openAudit(f.job.jobId, f.job.terms);
      const anchor = (await first.wait()).blockNumber;
      expect(anchor).to.equal(disputed + 257);
      await expect(first).to.emit(f.court, "AuditAnchored").withArgs(f.job.jobId, anchor);
      await expect(first).not.to.emit(f.court, "AuditOpened");
      expect((await f.court.getAudit(f.job.jobId)).status).to.equal(AuditStatus.None);
      // An anchor that is itself too old is replaced.
      await mine(256);
      const second = await f.court.openAudit(f.job.jobId, f.job.terms);
      const anchor2 = (await second.wait()).blockNumber;
      await expect(second).to.emit(f.court, "AuditAnchored").withArgs(f.job.jobId, anchor2);
      const hash = (await ethers.provider.getBlock(anchor2)).hash;
      const tx = f.court.openAudit(f.job.jobId, f.job.terms);
      const expected = await f.registry.samplePool(1, 1, f.nodes[1].address, 3, panelSeed(hash, f.job.jobId, 0));
      await expect(tx).to.emit(f.court, "AuditOpened").withArgs(f.job.jobId, 0, f.nodes[1].address, expected);
      await expect(tx).not.to.emit(f.court, "AuditAnchored");
      expect((await f.court.getAudit(f.job.jobId)).status).to.equal(AuditStatus.Open);
    });

    it("may be opened exactly at the latest opening time, not one second later", async function () {
      const latest = (f) => f.disputedAt + PARAMS.disputeTimeout - COURT_PARAMS.commitWindow - COURT_PARAMS.revealWindow - 2;
      let f = await loadFixture(disputedFixture);
      await time.setNextBlockTimestamp(latest(f) + 1);
      await expect(f.court.openAudit(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.court, "AuditTooLate")
        .withArgs(f.job.jobId, latest(f));
      f = await loadFixture(disputedFixture);
      await time.setNextBlockTimestamp(latest(f));
      await expect(f.court.openAudit(f.job.jobId, f.job.terms)).to.emit(f.court, "AuditOpened");
      const revealDeadline = latest(f) + COURT_PARAMS.commitWindow + COURT_PARAMS.revealWindow;
      expect((await f.court.getAudit(f.job.jobId)).revealDeadline).to.equal(revealDeadline);
      // Opening restarted the dispute timeout: nobody can finalize the job unaudited before resolve opens,
      // nor for a whole dispute timeout after the opening.
      await time.setNextBlockTimestamp(revealDeadline + 1);
      await expect(f.market.finalize(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.market, "ChallengeWindowOpen")
        .withArgs(f.job.jobId, latest(f) + PARAMS.disputeTimeout);
      await expect(f.court.resolve(f.job.jobId, f.job.terms)).to.emit(f.court, "AuditResolved");
    });

    it("rejects an unknown job, mismatched terms, a job that is not Disputed, and a second audit", async function () {
      const f = await loadFixture(disputedFixture);
      const { court, market, job } = f;
      await expect(court.openAudit(99, job.terms)).to.be.revertedWithCustomError(court, "UnknownJob").withArgs(99);
      await expect(court.openAudit(job.jobId, ethers.concat([job.terms, "0x00"])))
        .to.be.revertedWithCustomError(court, "TermsMismatch")
        .withArgs(job.jobId);
      const open = await submit(market, f.client, { maxPrice: NODE_PRICES[3] });
      await expect(court.openAudit(open.jobId, open.terms))
        .to.be.revertedWithCustomError(court, "JobNotDisputed")
        .withArgs(open.jobId, JobStatus.Open);
      const committed = await submit(market, f.client, { maxPrice: NODE_PRICES[3] });
      await commitAll(market, f.nodes, committed);
      await expect(court.openAudit(committed.jobId, committed.terms))
        .to.be.revertedWithCustomError(court, "JobNotDisputed")
        .withArgs(committed.jobId, JobStatus.Committed);
      await time.increase(PARAMS.commitTimeout + 1);
      await market.cancel(open.jobId, open.terms);
      await expect(court.openAudit(open.jobId, open.terms))
        .to.be.revertedWithCustomError(court, "JobNotDisputed")
        .withArgs(open.jobId, JobStatus.Cancelled);
      await market.finalize(committed.jobId, committed.terms);
      await expect(court.openAudit(committed.jobId, committed.terms))
        .to.be.revertedWithCustomError(court, "JobNotDisputed")
        .withArgs(committed.jobId, JobStatus.Finalized);

      const g = await loadFixture(openedFixture);
      await expect(g.court.openAudit(g.job.jobId, g.job.terms)).to.be.revertedWithCustomError(g.court, "AuditAlreadyOpened").withArgs(g.job.jobId);
      await time.increaseTo(g.revealDeadline + 1);
      await g.court.resolve(g.job.jobId, g.job.terms);
      await expect(g.court.openAudit(g.job.jobId, g.job.terms)).to.be.revertedWithCustomError(g.court, "AuditAlreadyOpened").withArgs(g.job.jobId);
    });
  });

  describe("commitVote", function () {
    it("records a drawn verifier's commitment and holds its bond", async function () {
      const f = await loadFixture(openedFixture);
      const v = f.panels[1][2];
      const c = await f.court.voteCommitment(f.job.jobId, 1, FRAUD, saltOf(1, v), v.address);
      const tx = f.court.connect(v).commitVote(f.job.jobId, 1, c, { value: BOND });
      await expect(tx).to.emit(f.court, "VoteCommitted").withArgs(f.job.jobId, 1, v.address, c);
      await expect(tx).to.changeEtherBalances([v, f.court], [-BOND, BOND]);
      const panel = await f.court.getPanel(f.job.jobId, 1);
      expect(panel.votes.map(Number)).to.deep.equal([Vote.Drawn, Vote.Drawn, Vote.Committed]);
      expect(panel.commitments[2]).to.equal(c);
      expect(panel.committed).to.equal(1);
      expect(await f.court.bondsHeld()).to.equal(BOND);
      await expectConserved(f);
    });

    it("accepts a commitment exactly at the commit deadline, not one second later", async function () {
      const f = await loadFixture(openedFixture);
      await time.setNextBlockTimestamp(f.commitDeadline);
      await expect(commitVote(f, 0, f.panels[0][0], HONEST)).to.emit(f.court, "VoteCommitted");
      await time.setNextBlockTimestamp(f.commitDeadline + 1);
      await expect(commitVote(f, 0, f.panels[0][1], HONEST))
        .to.be.revertedWithCustomError(f.court, "CommitPhaseClosed")
        .withArgs(f.job.jobId, f.commitDeadline);
    });

    it("is reserved to the position's drawn verifiers, with exactly the bond, once", async function () {
      const f = await loadFixture(openedFixture);
      const id = f.job.jobId;
      for (const who of [f.nodes[1], f.other, f.panels[1][0]]) {
        await expect(commitVote(f, 0, who, FRAUD))
          .to.be.revertedWithCustomError(f.court, "NotVerifier")
          .withArgs(id, 0, who.address);
      }
      const v = f.panels[0][0];
      for (const value of [0n, BOND - 1n, BOND + 1n]) {
        await expect(commitVote(f, 0, v, FRAUD, { value }))
          .to.be.revertedWithCustomError(f.court, "WrongBond")
          .withArgs(BOND, value);
      }
      await commitVote(f, 0, v, FRAUD);
      await expect(commitVote(f, 0, v, HONEST)).to.be.revertedWithCustomError(f.court, "AlreadyCommitted").withArgs(id, 0, v.address);
      for (const p of [3, 255]) {
        await expect(f.court.connect(v).commitVote(id, p, ethers.ZeroHash, { value: BOND }))
          .to.be.revertedWithCustomError(f.court, "InvalidPosition")
          .withArgs(id, p);
      }
    });

    it("needs an open audit", async function () {
      const f = await loadFixture(openedFixture);
      await expect(f.court.connect(f.panels[0][0]).commitVote(77, 0, ethers.ZeroHash, { value: BOND }))
        .to.be.revertedWithCustomError(f.court, "AuditNotOpen")
        .withArgs(77, AuditStatus.None);
      await time.increaseTo(f.revealDeadline + 1);
      await f.court.resolve(f.job.jobId, f.job.terms);
      await expect(commitVote(f, 0, f.panels[0][0], HONEST))
        .to.be.revertedWithCustomError(f.court, "AuditNotOpen")
        .withArgs(f.job.jobId, AuditStatus.Resolved);
    });
  });

  describe("revealVote", function () {
    it("opens one second after the commit deadline while a verifier of the position has not committed", async function () {
      const f = await loadFixture(openedFixture);
      const [a, b] = f.panels[0];
      await commitVote(f, 0, a, HONEST);
      await commitVote(f, 0, b, FRAUD);
      await time.setNextBlockTimestamp(f.commitDeadline);
      await expect(revealVote(f, 0, a, HONEST))
        .to.be.revertedWithCustomError(f.court, "RevealNotOpen")
        .withArgs(f.job.jobId, 0, f.commitDeadline);
      await time.setNextBlockTimestamp(f.commitDeadline + 1);
      await expect(revealVote(f, 0, a, HONEST)).to.emit(f.court, "VoteRevealed").withArgs(f.job.jobId, 0, a.address, HONEST);
    });

    it("opens at once for a position whose whole panel committed; other positions wait", async function () {
      const f = await loadFixture(openedFixture);
      for (const v of f.panels[0]) await commitVote(f, 0, v, FRAUD);
      await commitVote(f, 1, f.panels[1][0], FRAUD);
      await expect(revealVote(f, 0, f.panels[0][0], FRAUD)).to.emit(f.court, "VoteRevealed");
      await expect(revealVote(f, 1, f.panels[1][0], FRAUD))
        .to.be.revertedWithCustomError(f.court, "RevealNotOpen")
        .withArgs(f.job.jobId, 1, f.commitDeadline);
    });

    it("records the verdict and clears the commitment, but keeps the bond held until resolve", async function () {
      const f = await loadFixture(openedFixture);
      const [a, b] = f.panels[2];
      await commitVote(f, 2, a, FRAUD);
      await commitVote(f, 2, b, HONEST);
      await time.increaseTo(f.commitDeadline + 1);
      const tx = revealVote(f, 2, a, FRAUD);
      await expect(tx).to.emit(f.court, "VoteRevealed").withArgs(f.job.jobId, 2, a.address, FRAUD);
      await expect(tx).to.changeEtherBalances([a, f.court], [0, 0]);
      await revealVote(f, 2, b, HONEST);
      const panel = await f.court.getPanel(f.job.jobId, 2);
      expect(panel.votes.map(Number)).to.deep.equal([Vote.Fraud, Vote.Honest, Vote.Drawn]);
      expect(panel.commitments).to.deep.equal([ethers.ZeroHash, ethers.ZeroHash, ethers.ZeroHash]);
      expect([panel.committed, panel.honestVotes, panel.fraudVotes]).to.deep.equal([2n, 1n, 1n]);
      expect(await f.court.bondsHeld()).to.equal(2n * BOND);
      await expectConserved(f);
    });

    it("accepts a reveal exactly at the reveal deadline, not one second later", async function () {
      const f = await loadFixture(openedFixture);
      const [a, b] = f.panels[0];
      await commitVote(f, 0, a, HONEST);
      await commitVote(f, 0, b, HONEST);
      await time.setNextBlockTimestamp(f.revealDeadline);
      await expect(revealVote(f, 0, a, HONEST)).to.emit(f.court, "VoteRevealed");
      await time.setNextBlockTimestamp(f.revealDeadline + 1);
      await expect(revealVote(f, 0, b, HONEST))
        .to.be.revertedWithCustomError(f.court, "RevealPhaseClosed")
        .withArgs(f.job.jobId, f.revealDeadline);
    });

    it("rejects a reveal that does not open the commitment, an invalid verdict, and nothing to reveal", async function () {
      const f = await loadFixture(openedFixture);
      const id = f.job.jobId;
      const [a, b, c] = f.panels[1];
      await commitVote(f, 1, a, FRAUD);
      await commitVote(f, 1, b, HONEST);
      // Verifier c copies a's commitment: it binds a's address, so c can never open it.
      const copied = (await f.court.getPanel(id, 1)).commitments[0];
      await f.court.connect(c).commitVote(id, 1, copied, { value: BOND });
      await time.increaseTo(f.commitDeadline + 1);
      await expect(revealVote(f, 1, a, HONEST)).to.be.revertedWithCustomError(f.court, "CommitmentMismatch").withArgs(id, 1, a.address);
      await expect(revealVote(f, 1, a, FRAUD, ethers.id("wrong salt")))
        .to.be.revertedWithCustomError(f.court, "CommitmentMismatch")
        .withArgs(id, 1, a.address);
      for (const verdict of [0, 3]) {
        await expect(revealVote(f, 1, a, verdict)).to.be.revertedWithCustomError(f.court, "InvalidVerdict").withArgs(verdict);
      }
      await revealVote(f, 1, a, FRAUD);
      await expect(revealVote(f, 1, c, FRAUD, saltOf(1, a)))
        .to.be.revertedWithCustomError(f.court, "CommitmentMismatch")
        .withArgs(id, 1, c.address);
      await expect(revealVote(f, 1, a, FRAUD))
        .to.be.revertedWithCustomError(f.court, "NothingToReveal")
        .withArgs(id, 1, a.address, Vote.Fraud);
      const silent = f.panels[0][0];
      await expect(revealVote(f, 0, silent, FRAUD))
        .to.be.revertedWithCustomError(f.court, "NothingToReveal")
        .withArgs(id, 0, silent.address, Vote.Drawn);
      await expect(revealVote(f, 0, f.other, FRAUD)).to.be.revertedWithCustomError(f.court, "NotVerifier").withArgs(id, 0, f.other.address);
      await expect(revealVote(f, 3, a, FRAUD)).to.be.revertedWithCustomError(f.court, "InvalidPosition").withArgs(id, 3);
      await expect(f.court.connect(a).revealVote(5, 0, FRAUD, ethers.ZeroHash))
        .to.be.revertedWithCustomError(f.court, "AuditNotOpen")
        .withArgs(5, AuditStatus.None);
    });
  });

  describe("resolve", function () {
    /// Verifiers of positions `plan` leaves out, or marks null, never committed: one penalty each.
    const abstainers = (plan) => [0, 1, 2].reduce((a, p) => a + (plan[p] ? plan[p].filter((v) => v === null).length : 3), 0);

    it("is possible one second after the reveal deadline, once; with nobody voting every verifier is penalized", async function () {
      const f = await loadFixture(openedFixture);
      await time.setNextBlockTimestamp(f.revealDeadline);
      await expect(f.court.resolve(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.court, "RevealPhaseOpen")
        .withArgs(f.job.jobId, f.revealDeadline);
      await time.setNextBlockTimestamp(f.revealDeadline + 1);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, 0, 9n * BOND);
      for (const v of f.panels.flat()) await expect(tx).to.emit(f.market, "VerifierPenalized").withArgs(v.address, BOND);
      await expect(tx).to.changeEtherBalances([f.client, f.registry], [ESCROW - paidExcept(0) + 9n * BOND, -9n * BOND]);
      for (const v of f.panels.flat()) expect((await f.registry.getNode(v.address)).stake).to.equal(ONE - BOND);
      expect((await f.court.getAudit(f.job.jobId)).status).to.equal(AuditStatus.Resolved);
      await expect(f.court.resolve(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.court, "AuditNotOpen")
        .withArgs(f.job.jobId, AuditStatus.Resolved);
      await expectConserved(f);
    });

    it("rejects an audit never opened and mismatched terms", async function () {
      const f = await loadFixture(openedFixture);
      await expect(f.court.resolve(42, f.job.terms)).to.be.revertedWithCustomError(f.court, "AuditNotOpen").withArgs(42, AuditStatus.None);
      await time.increaseTo(f.revealDeadline + 1);
      await expect(f.court.resolve(f.job.jobId, "0x"))
        .to.be.revertedWithCustomError(f.court, "TermsMismatch")
        .withArgs(f.job.jobId);
    });

    it("a fraud majority of the panel slashes the node; winners get bond + share, the minority and abstainers pay", async function () {
      const f = await loadFixture(openedFixture);
      const [w1, w2, loser] = f.panels[1];
      const plan = { 1: [FRAUD, FRAUD, HONEST], 0: [HONEST, HONEST, null] };
      await runVotes(f, plan);
      const slashed = slashOf(NODE_STAKES[2]);
      const penalties = BigInt(abstainers(plan)) * BOND;
      expect(penalties).to.equal(4n * BOND);
      const { share, rewarded, toClient } = payout({ slashed, forfeited: BOND, penalties, winners: 4 });
      const paid = paidExcept(0b010);
      const refund = ESCROW - paid;
      const tx = f.court.connect(f.other).resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.registry, "Slashed").withArgs(f.nodes[2].address, slashed);
      await expect(tx).to.emit(f.market, "VerifierPenalized").withArgs(f.panels[0][2].address, BOND);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(f.job.jobId, 0b010, slashed);
      await expect(tx).to.emit(f.market, "JobFinalized").withArgs(f.job.jobId, BILLED, paid, refund);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 2, 0, 0);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 1, true, 1, 2, BOND);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 2, false, 0, 0, 0);
      for (const w of [w1, w2]) await expect(tx).to.emit(f.court, "VerifierRewarded").withArgs(f.job.jobId, 1, w.address, share + BOND);
      for (const w of f.panels[0].slice(0, 2)) {
        await expect(tx).to.emit(f.court, "VerifierRewarded").withArgs(f.job.jobId, 0, w.address, share + BOND);
      }
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b010, slashed, rewarded, toClient);
      // The court held 5 bonds; it now owes 4 x (bond + share).
      await expect(tx).to.changeEtherBalances(
        [f.client, f.court, f.market, f.registry, w1, w2, loser, f.nodes[2]],
        [refund + toClient, rewarded - BOND, -refund, -slashed - penalties, 0, 0, 0, 0],
      );
      expect(await f.court.creditOf(w1.address)).to.equal(share + BOND);
      expect(await f.court.creditOf(loser.address)).to.equal(0);
      expect((await f.registry.getNode(f.panels[0][2].address)).stake).to.equal(ONE - BOND);
      expect((await f.registry.getNode(f.nodes[2].address)).stake).to.equal(NODE_STAKES[2] - slashed);
      expect((await f.registry.getNode(f.nodes[2].address)).earnings).to.equal(0);
      expect((await f.registry.getNode(f.nodes[1].address)).earnings).to.equal(NODE_PRICES[1] * BigInt(BILLED) + HOP_FEE);
      const a = await f.court.getAudit(f.job.jobId);
      expect([a.status, a.fraudMask]).to.deep.equal([BigInt(AuditStatus.Resolved), 0b010n]);
      expect((await f.market.getJob(f.job.jobId)).status).to.equal(JobStatus.Finalized);
      expect(await f.court.bondsHeld()).to.equal(0);
      await expectConserved(f);
      await expect(f.court.connect(w1).withdrawCredit()).to.changeEtherBalances([w1, f.court], [share + BOND, -(share + BOND)]);
      await expectConserved(f);
    });

    it("two fraud reveals of three drawn are a majority even beside an abstainer", async function () {
      const f = await loadFixture(openedFixture);
      await runVotes(f, { 1: [FRAUD, null, FRAUD], 0: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 1, true, 0, 2, 0);
      await expect(tx).to.emit(f.market, "VerifierPenalized").withArgs(f.panels[1][1].address, BOND);
      expect((await f.court.getAudit(f.job.jobId)).fraudMask).to.equal(0b010);
      await expectConserved(f);
    });

    it("quorum: one fraud reveal beside two abstainers does not slash; the fraud voter forfeits, abstainers pay", async function () {
      const f = await loadFixture(openedFixture);
      const plan = { 1: [FRAUD, null, null] };
      await runVotes(f, plan);
      const penalties = BigInt(abstainers(plan)) * BOND;
      expect(penalties).to.equal(8n * BOND);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 1, false, 0, 1, BOND);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(f.job.jobId, 0, 0);
      // Nobody revealed the verdict: the forfeit and the penalties all go to the client.
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, 0, BOND + penalties);
      await expect(tx).to.changeEtherBalance(f.client, ESCROW - paidExcept(0) + BOND + penalties);
      expect((await f.registry.getNode(f.nodes[2].address)).stake).to.equal(NODE_STAKES[2]);
      expect(await f.court.creditOf(f.panels[1][0].address)).to.equal(0);
      await expectConserved(f);
    });

    it("forfeits the bond of a verifier who never reveals: to the winners, the rounding dust to the client", async function () {
      const f = await loadFixture(openedFixture);
      const silent = f.panels[1][0];
      const plan = { 2: [FRAUD, FRAUD, FRAUD], 1: ["silent", null, null] };
      await runVotes(f, plan);
      const slashed = slashOf(NODE_STAKES[3]);
      const penalties = BigInt(abstainers(plan)) * BOND;
      const { pool, share, rewarded, toClient } = payout({ slashed, forfeited: BOND, penalties, winners: 3 });
      const dust = pool - rewarded;
      expect(dust).to.be.greaterThan(0n);
      expect(toClient).to.equal(slashed - (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS + dust);
      const refund = ESCROW - paidExcept(0b100);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 1, false, 0, 0, BOND);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b100, slashed, rewarded, toClient);
      // The court held 4 bonds, took the penalties and the slash, paid the client its part.
      await expect(tx).to.changeEtherBalances([f.client, f.court, silent], [refund + toClient, rewarded + 3n * BOND - 4n * BOND, 0]);
      for (const w of f.panels[2]) expect(await f.court.creditOf(w.address)).to.equal(share + BOND);
      expect(await f.court.creditOf(silent.address)).to.equal(0);
      expect(await f.court.bondsHeld()).to.equal(0);
      await expectConserved(f);
    });

    it("an honest majority outvotes one lying verifier: nothing is slashed, the liar's bond goes to the honest voters", async function () {
      const f = await loadFixture(openedFixture);
      const liar = f.panels[0][2];
      const liarBefore = await balanceOf(liar.address);
      const plan = { 0: [HONEST, HONEST, FRAUD] };
      await runVotes(f, plan);
      const penalties = BigInt(abstainers(plan)) * BOND;
      const { share, rewarded, toClient } = payout({ forfeited: BOND, penalties, winners: 2 });
      const paid = paidExcept(0);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 2, 1, BOND);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(f.job.jobId, 0, 0);
      await expect(tx).to.emit(f.market, "JobFinalized").withArgs(f.job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, rewarded, toClient);
      await expect(tx).to.changeEtherBalance(f.client, ESCROW - paid + toClient);
      for (let s = 1; s <= 3; s++) {
        const n = await f.registry.getNode(f.nodes[s].address);
        expect([n.stake, n.earnings]).to.deep.equal([NODE_STAKES[s], NODE_PRICES[s] * BigInt(BILLED) + HOP_FEE]);
      }
      for (const h of f.panels[0].slice(0, 2)) expect(await f.court.creditOf(h.address)).to.equal(share + BOND);
      // The liar lost its bond (and gas), and is owed nothing.
      const lost = liarBefore - (await balanceOf(liar.address));
      expect(lost).to.be.greaterThan(BOND).and.lessThan(BOND + ethers.parseEther("0.001"));
      expect(await f.court.creditOf(liar.address)).to.equal(0);
      await expectConserved(f);
    });

    it("one fraud and one honest reveal is no majority: honest; the fraud voter and the silent one forfeit to the honest voter", async function () {
      const f = await loadFixture(openedFixture);
      const plan = { 0: [FRAUD, HONEST, "silent"] };
      await runVotes(f, plan);
      const penalties = BigInt(abstainers(plan)) * BOND;
      const { share, rewarded, toClient } = payout({ forfeited: 2n * BOND, penalties, winners: 1 });
      const paid = paidExcept(0);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 1, 1, 2n * BOND);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, rewarded, toClient);
      await expect(tx).to.changeEtherBalances([f.client, f.court], [ESCROW - paid + toClient, rewarded + BOND - 3n * BOND]);
      expect(await f.court.creditOf(f.panels[0][1].address)).to.equal(share + BOND);
      await expectConserved(f);
    });

    it("no revealed vote and an unverifiable position are honest; forfeits and penalties go to the client", async function () {
      const f = await loadFixture(disputedFixture);
      for (const v of f.verifiers.slice(6, 9)) await f.registry.connect(v).deactivate();
      const g = await openAudit(f);
      await runVotes(g, { 0: ["silent", "silent", null], 2: [] });
      const penalties = 4n * BOND; // one at position 0, three at position 1, none at the unverifiable position 2
      const paid = paidExcept(0);
      const tx = g.court.resolve(g.job.jobId, g.job.terms);
      await expect(tx).to.emit(g.court, "PositionJudged").withArgs(g.job.jobId, 0, false, 0, 0, 2n * BOND);
      await expect(tx).to.emit(g.court, "PositionJudged").withArgs(g.job.jobId, 2, false, 0, 0, 0);
      await expect(tx).to.emit(g.market, "JobFinalized").withArgs(g.job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.emit(g.court, "AuditResolved").withArgs(g.job.jobId, 0, 0, 0, 2n * BOND + penalties);
      const a = await g.court.getAudit(g.job.jobId);
      expect([a.unverifiableMask, a.fraudMask]).to.deep.equal([0b100n, 0n]);
      await expectConserved(g);
    });

    it("after the dispute timed out and the job was finalized, settles the bonds but slashes nothing", async function () {
      const f = await loadFixture(openedFixture);
      const plan = { 0: [FRAUD, FRAUD, "silent"] };
      await runVotes(f, plan);
      // Opening restarted the dispute timeout: finalize waits until openedAt + disputeTimeout.
      await time.increaseTo(f.openedAt + PARAMS.disputeTimeout);
      await f.market.connect(f.other).finalize(f.job.jobId, f.job.terms);
      const penalties = BigInt(abstainers(plan)) * BOND;
      const { share, rewarded } = payout({ forfeited: BOND, penalties, winners: 2 });
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "JobSettledBeforeVerdict").withArgs(f.job.jobId);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b001, 0, rewarded, 0);
      await expect(tx).not.to.emit(f.market, "DisputeResolved");
      await expect(tx).to.changeEtherBalances([f.client, f.court, f.registry], [0, penalties, -penalties]);
      expect(await f.court.creditOf(f.panels[0][0].address)).to.equal(share + BOND);
      expect((await f.registry.getNode(f.nodes[1].address)).stake).to.equal(NODE_STAKES[1]);
      await expectConserved(f);
    });

    it("credits the client's part when the client cannot receive it", async function () {
      const f = await loadFixture(courtMarketFixture);
      const c = await contractClient("court client");
      await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      const g = await openAudit({ ...f, ...(await disputedJob(f, c)) });
      const plan = { 0: [FRAUD, FRAUD, FRAUD] };
      await runVotes(g, plan);
      const slashed = slashOf(NODE_STAKES[1]);
      const { toClient } = payout({ slashed, penalties: BigInt(abstainers(plan)) * BOND, winners: 3 });
      const tx = g.court.resolve(g.job.jobId, g.job.terms);
      await expect(tx).to.emit(g.court, "PaymentCredited").withArgs(c.address, toClient);
      await expect(tx).to.emit(g.market, "RefundCredited");
      expect(await g.court.creditOf(c.address)).to.equal(toClient);
      await expectConserved(g);
      await c.contract.configure(Mode.Accept, ethers.ZeroAddress, "0x");
      const w = c.contract.execute(g.court, 0, g.court.interface.encodeFunctionData("withdrawCredit"));
      await expect(w).to.emit(g.court, "CreditWithdrawn").withArgs(c.address, toClient);
      await expect(w).to.changeEtherBalances([c.address, g.court], [toClient, -toClient]);
      await expectConserved(g);
    });
  });

  describe("resolve of a challenged job", function () {
    /// A committed (linked) job challenged by `other`, its audit opened in the next block.
    async function challengedFixture() {
      const f = await courtMarketFixture();
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED));
      await f.market.connect(f.other).challenge(job.jobId, job.terms, { value: CHALLENGE_BOND });
      const disputedAt = Number((await f.market.getJob(job.jobId)).timestamp);
      return openAudit({ ...f, job, disputedAt });
    }

    it("fraud: the challenger gets its bond back plus the client's part; the client only its refund", async function () {
      const f = await loadFixture(challengedFixture);
      const plan = { 1: [FRAUD, FRAUD, FRAUD], 0: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] };
      await runVotes(f, plan);
      const slashed = slashOf(NODE_STAKES[2]);
      const { share, rewarded, toClient } = payout({ slashed, winners: 9 });
      const refund = ESCROW - paidExcept(0b010);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.market, "ChallengeSettled").withArgs(f.job.jobId, f.other.address, CHALLENGE_BOND, 0, 0);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b010, slashed, rewarded, toClient);
      await expect(tx).to.changeEtherBalances([f.other, f.client], [CHALLENGE_BOND + toClient, refund]);
      for (const v of f.panels.flat()) expect(await f.court.creditOf(v.address)).to.equal(share + BOND);
      await expectConserved(f);
    });

    it("honest: the challenger loses its bond, half to the honest verifiers, half to the route's nodes", async function () {
      const f = await loadFixture(challengedFixture);
      await runVotes(f, { 0: [HONEST, HONEST, HONEST], 1: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      const perNode = (CHALLENGE_BOND - CHALLENGE_BOND / 2n) / 3n;
      const challengeShare = CHALLENGE_BOND - 3n * perNode; // half + rounding dust
      const { share, rewarded, toClient } = payout({ challengeShare, winners: 9 });
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.market, "ChallengeSettled").withArgs(f.job.jobId, f.other.address, 0, perNode, challengeShare);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, rewarded, toClient);
      // Only the pool's rounding dust (if any) reaches the challenger.
      await expect(tx).to.changeEtherBalances([f.other, f.client], [toClient, ESCROW - paidExcept(0)]);
      expect(toClient).to.be.lessThan(9n);
      for (const v of f.panels.flat()) expect(await f.court.creditOf(v.address)).to.equal(share + BOND);
      for (let s = 1; s <= 3; s++) {
        expect((await f.registry.getNode(f.nodes[s].address)).earnings).to.equal(NODE_PRICES[s] * BigInt(BILLED) + HOP_FEE + perNode);
      }
      await expectConserved(f);
    });
  });

  describe("withdrawCredit", function () {
    it("rejects an account without credit", async function () {
      const { court, other } = await loadFixture(courtMarketFixture);
      await expect(court.connect(other).withdrawCredit()).to.be.revertedWithCustomError(court, "NothingToWithdraw").withArgs(other.address);
    });

    it("pays a reward (bond + share) once", async function () {
      const f = await loadFixture(openedFixture);
      await runVotes(f, { 2: [FRAUD, FRAUD, FRAUD] });
      await f.court.resolve(f.job.jobId, f.job.terms);
      const w = f.panels[2][0];
      const { share } = payout({ slashed: slashOf(NODE_STAKES[3]), penalties: 6n * BOND, winners: 3 });
      const credit = share + BOND;
      const tx = f.court.connect(w).withdrawCredit();
      await expect(tx).to.emit(f.court, "CreditWithdrawn").withArgs(w.address, credit);
      await expect(tx).to.changeEtherBalances([w, f.court], [credit, -credit]);
      expect(await f.court.totalCredits()).to.equal(2n * credit);
      await expect(f.court.connect(w).withdrawCredit()).to.be.revertedWithCustomError(f.court, "NothingToWithdraw").withArgs(w.address);
    });
  });

  describe("reentrancy", function () {
    /// The opened fixture, with a ReentrantReceiver node replacing one verifier of shard 2 (position 1).
    async function contractVerifierFixture() {
      const f = await courtMarketFixture();
      const node = await ethers.deployContract("ReentrantReceiver");
      await f.registry.connect(f.verifiers[3]).deactivate();
      const register = f.registry.interface.encodeFunctionData("registerNode", [1, 2, "http://contract", VERIFIER_PRICE, ethers.id("c")]);
      await node.execute(f.registry, ONE, register, { value: ONE });
      const g = await openAudit({ ...f, ...(await disputedJob(f)), extraNodes: [await node.getAddress()] });
      const address = await node.getAddress();
      expect((await g.court.getPanel(g.job.jobId, 1)).verifiers).to.include(address);
      const salt = ethers.id("contract salt");
      const c = await g.court.voteCommitment(g.job.jobId, 1, FRAUD, salt, address);
      await node.execute(g.court, BOND, g.court.interface.encodeFunctionData("commitVote", [g.job.jobId, 1, c]), { value: BOND });
      const reveal = g.court.interface.encodeFunctionData("revealVote", [g.job.jobId, 1, FRAUD, salt]);
      return { ...g, node, address, reveal };
    }

    /// The contract verifier and the EOAs beside it vote fraud at position 1; resolved; its credit.
    async function creditedContractVerifierFixture() {
      const g = await contractVerifierFixture();
      const others = g.panels[1].filter((s) => s !== undefined); // the EOA verifiers beside the contract
      for (const v of others) await commitVote(g, 1, v, FRAUD);
      await time.increaseTo(g.commitDeadline + 1);
      await g.node.execute(g.court, 0, g.reveal);
      for (const v of others) await revealVote(g, 1, v, FRAUD);
      await time.increaseTo(g.revealDeadline + 1);
      await g.court.resolve(g.job.jobId, g.job.terms);
      const credit = await g.court.creditOf(g.address);
      expect(credit).to.be.greaterThan(BOND);
      return { ...g, credit };
    }

    const guardOf = (court) => court.interface.getError("ReentrancyGuardReentrantCall").selector;
    const withdraw = (g) => g.court.interface.encodeFunctionData("withdrawCredit");

    for (const [what, data] of [
      ["revealVote", (g) => g.reveal],
      ["withdrawCredit", withdraw],
      ["resolve", (g) => g.court.interface.encodeFunctionData("resolve", [g.job.jobId, g.job.terms])],
    ]) {
      it(`the payout of withdrawCredit cannot re-enter ${what}`, async function () {
        const g = await loadFixture(creditedContractVerifierFixture);
        await g.node.configure(Mode.Reenter, g.court, data(g));
        const tx = g.node.execute(g.court, 0, withdraw(g));
        await expect(tx).to.emit(g.court, "CreditWithdrawn").withArgs(g.address, g.credit);
        await expect(tx).to.changeEtherBalances([g.address, g.court], [g.credit, -g.credit]);
        expect(await g.node.reentryAttempted()).to.equal(true);
        expect(await g.node.reentryOk()).to.equal(false);
        expect(await g.node.reentryError()).to.equal(guardOf(g.court));
        expect(await g.court.creditOf(g.address)).to.equal(0);
        await expectConserved(g);
      });
    }

    it("revealing pays nothing, so a verifier that rejects payments still reveals; its bond stays held", async function () {
      const g = await loadFixture(contractVerifierFixture);
      await g.node.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      await time.increaseTo(g.commitDeadline + 1);
      const tx = g.node.execute(g.court, 0, g.reveal);
      await expect(tx).to.emit(g.court, "VoteRevealed").withArgs(g.job.jobId, 1, g.address, FRAUD);
      await expect(tx).to.changeEtherBalances([g.address, g.court], [0, 0]);
      expect(await g.court.bondsHeld()).to.equal(BOND);
      await expectConserved(g);
    });

    it("a rejecting verifier keeps its credit until it accepts payments", async function () {
      const g = await loadFixture(creditedContractVerifierFixture);
      await g.node.configure(Mode.ReenterAndBubble, g.court, withdraw(g));
      await expect(g.node.execute(g.court, 0, withdraw(g)))
        .to.be.revertedWithCustomError(g.court, "TransferFailed")
        .withArgs(g.address, g.credit);
      expect(await g.court.creditOf(g.address)).to.equal(g.credit);
      await g.node.configure(Mode.Accept, ethers.ZeroAddress, "0x");
      await expect(g.node.execute(g.court, 0, withdraw(g))).to.changeEtherBalances([g.address, g.court], [g.credit, -g.credit]);
      await expectConserved(g);
    });

    it("a client re-entering the court from its payouts is stopped by the guard and still paid", async function () {
      const f = await loadFixture(courtMarketFixture);
      const c = await contractClient("reentrant court client");
      const g = await openAudit({ ...f, ...(await disputedJob(f, c)) });
      await runVotes(g, { 0: [FRAUD, FRAUD, FRAUD] });
      await c.contract.configure(Mode.Reenter, g.court, g.court.interface.encodeFunctionData("resolve", [g.job.jobId, g.job.terms]));
      const { toClient } = payout({ slashed: slashOf(NODE_STAKES[1]), penalties: 6n * BOND, winners: 3 });
      const refund = ESCROW - paidExcept(0b001);
      const tx = g.court.resolve(g.job.jobId, g.job.terms);
      await expect(tx).to.changeEtherBalance(c.address, refund + toClient);
      await expect(tx).not.to.emit(g.court, "PaymentCredited");
      expect(await c.contract.reentryAttempted()).to.equal(true);
      expect(await c.contract.reentryError()).to.equal(guardOf(g.court));
      await expectConserved(g);
    });
  });

  describe("receive", function () {
    it("rejects payments from anyone but the market", async function () {
      const { court, other, nodes } = await loadFixture(courtMarketFixture);
      for (const s of [other, nodes[1]]) {
        await expect(s.sendTransaction({ to: await court.getAddress(), value: 1n }))
          .to.be.revertedWithCustomError(court, "UnexpectedPayment")
          .withArgs(s.address);
      }
    });
  });

  describe("views", function () {
    it("voteCommitment is keccak256(abi.encode(jobId, position, verdict, salt, verifier))", async function () {
      const { court, other } = await loadFixture(courtMarketFixture);
      const salt = ethers.id("s");
      const expected = ethers.keccak256(
        coder.encode(["uint256", "uint8", "uint8", "bytes32", "address"], [7, 2, FRAUD, salt, other.address]),
      );
      expect(await court.voteCommitment(7, 2, FRAUD, salt, other.address)).to.equal(expected);
    });

    it("an audit never opened is empty", async function () {
      const { court } = await loadFixture(courtMarketFixture);
      const a = await court.getAudit(3);
      expect([a.status, a.hops, a.openedAt, a.commitDeadline, a.revealDeadline]).to.deep.equal([0n, 0n, 0n, 0n, 0n]);
      const panel = await court.getPanel(3, 0);
      expect([panel.verifiers, panel.votes, panel.committed]).to.deep.equal([[], [], 0n]);
      expect((await court.getPanel(3, 200)).verifiers).to.deep.equal([]);
    });
  });

  describe("a full audit round", function () {
    it("keeps all three ledgers exact after every step", async function () {
      const f = await loadFixture(openedFixture);
      const second = await disputedJob(f);
      const jobs = [f.job, second.job];
      await expectConserved(f, jobs);
      for (let p = 0; p < 3; p++) {
        for (const [i, v] of f.panels[p].entries()) {
          await commitVote(f, p, v, p === 2 && i < 2 ? FRAUD : HONEST);
          await expectConserved(f, jobs);
        }
      }
      await time.increaseTo(f.commitDeadline + 1);
      for (let p = 0; p < 3; p++) {
        for (const [i, v] of f.panels[p].entries()) {
          if (p === 0 && i === 0) continue; // one silent verifier
          await revealVote(f, p, v, p === 2 && i < 2 ? FRAUD : HONEST);
          await expectConserved(f, jobs);
        }
      }
      await time.increaseTo(f.revealDeadline + 1);
      await f.court.resolve(f.job.jobId, f.job.terms);
      await expectConserved(f, jobs);
      expect((await f.court.getAudit(f.job.jobId)).fraudMask).to.equal(0b100);
      // Seven winners (2 + 3 + 2); the silent verifier and the honest minority at position 2 forfeited.
      const winners = [...f.panels[0].slice(1), ...f.panels[1], ...f.panels[2].slice(0, 2)];
      const { share } = payout({ slashed: slashOf(NODE_STAKES[3]), forfeited: 2n * BOND, winners: 7 });
      for (const v of f.panels.flat()) {
        expect(await f.court.creditOf(v.address)).to.equal(winners.includes(v) ? share + BOND : 0n);
      }
      for (const v of winners) await f.court.connect(v).withdrawCredit();
      await expectConserved(f, jobs);
      expect(await balanceOf(f.court)).to.equal(0);
      expect(await f.court.totalCredits()).to.equal(0);
      // The other disputed job was never audited: it settles as honest after its timeout.
      await time.increaseTo(second.disputedAt + PARAMS.disputeTimeout);
      await f.market.finalize(second.job.jobId, second.job.terms);
      await expectConserved(f, jobs);
    });
  });
});
