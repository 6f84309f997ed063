// AuditCourt: drawing verifiers, commit-reveal votes, verdicts, payouts, timing, reentrancy, conservation.
// The fixture job runs from shard 1 (positions 0, 1, 2 = nodes[1], nodes[2], nodes[3]) and is disputed by a
// commitment mismatch; each of shards 1..3 also has three verifier nodes (signers 9..17) priced above what
// clients accept, so they are never matched but always in the pool an audit draws from.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time, setPrevRandao } = require("@nomicfoundation/hardhat-network-helpers");
const {
  PARAMS,
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
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const BOND = COURT_PARAMS.verifierBond;
const BPS = 10_000n;
const MAX_TOKENS = 64;
const BILLED = 40;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3];
const ESCROW = BigInt(MAX_TOKENS) * ROUTE_PRICE;
const VERIFIER_PRICE = 10_000_000_000n; // above every client's limit: verifiers are never matched
const HONEST = 1;
const FRAUD = 2;
const Vote = { None: 0, Drawn: 1, Committed: 2, Honest: 3, Fraud: 4 };
const AuditStatus = { None: 0, Open: 1, Resolved: 2 };
const coder = ethers.AbiCoder.defaultAbiCoder();

const balanceOf = (a) => ethers.provider.getBalance(a);
const slashOf = (stake) => (stake * BigInt(PARAMS.fraudSlashBps)) / BPS;

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

/// The three ledgers: court == bonds + credits; market == unsettled escrow + credits + earnings; registry
/// == stakes + unbonding of every node account.
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
    it("draws k verifiers per position from the shard's pool, seeded by prevrandao, job and position", async function () {
      const { registry, court, nodes, verifiers, job } = await loadFixture(disputedFixture);
      const randao = 0xabcdefn;
      await setPrevRandao(randao);
      const tx = court.openAudit(job.jobId, job.terms);
      await tx;
      const openedAt = await time.latest();
      for (let p = 0; p < 3; p++) {
        const seed = ethers.keccak256(coder.encode(["uint256", "uint256", "uint256"], [randao, job.jobId, p]));
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
        const randao = 1000n + BigInt(i);
        await setPrevRandao(randao);
        await f.court.openAudit(job.jobId, job.terms);
        const seed = ethers.keccak256(coder.encode(["uint256", "uint256", "uint256"], [randao, job.jobId, 1]));
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
      expect(await f.market.queryFilter(f.market.filters.AuditSampled(job.jobId))).to.have.length(1);
      await expect(f.court.openAudit(job.jobId, job.terms)).to.emit(f.court, "AuditOpened");
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
      // Resolvable one second before anyone may finalize the job unaudited.
      expect((await f.court.getAudit(f.job.jobId)).revealDeadline).to.equal(f.disputedAt + PARAMS.disputeTimeout - 2);
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

    it("returns the bond, records the verdict and clears the commitment", async function () {
      const f = await loadFixture(openedFixture);
      const [a, b] = f.panels[2];
      await commitVote(f, 2, a, FRAUD);
      await commitVote(f, 2, b, HONEST);
      await time.increaseTo(f.commitDeadline + 1);
      const tx = revealVote(f, 2, a, FRAUD);
      await expect(tx).to.emit(f.court, "VoteRevealed").withArgs(f.job.jobId, 2, a.address, FRAUD);
      await expect(tx).to.changeEtherBalances([a, f.court], [BOND, -BOND]);
      await revealVote(f, 2, b, HONEST);
      const panel = await f.court.getPanel(f.job.jobId, 2);
      expect(panel.votes.map(Number)).to.deep.equal([Vote.Fraud, Vote.Honest, Vote.Drawn]);
      expect(panel.commitments).to.deep.equal([ethers.ZeroHash, ethers.ZeroHash, ethers.ZeroHash]);
      expect([panel.committed, panel.honestVotes, panel.fraudVotes]).to.deep.equal([2n, 1n, 1n]);
      expect(await f.court.bondsHeld()).to.equal(0);
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
    it("is possible one second after the reveal deadline, once", async function () {
      const f = await loadFixture(openedFixture);
      await time.setNextBlockTimestamp(f.revealDeadline);
      await expect(f.court.resolve(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.court, "RevealPhaseOpen")
        .withArgs(f.job.jobId, f.revealDeadline);
      await time.setNextBlockTimestamp(f.revealDeadline + 1);
      await expect(f.court.resolve(f.job.jobId, f.job.terms)).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, 0, 0);
      expect((await f.court.getAudit(f.job.jobId)).status).to.equal(AuditStatus.Resolved);
      await expect(f.court.resolve(f.job.jobId, f.job.terms))
        .to.be.revertedWithCustomError(f.court, "AuditNotOpen")
        .withArgs(f.job.jobId, AuditStatus.Resolved);
    });

    it("rejects an audit never opened and mismatched terms", async function () {
      const f = await loadFixture(openedFixture);
      await expect(f.court.resolve(42, f.job.terms)).to.be.revertedWithCustomError(f.court, "AuditNotOpen").withArgs(42, AuditStatus.None);
      await time.increaseTo(f.revealDeadline + 1);
      await expect(f.court.resolve(f.job.jobId, "0x"))
        .to.be.revertedWithCustomError(f.court, "TermsMismatch")
        .withArgs(f.job.jobId);
    });

    it("a fraud majority slashes the node, pays the winning verifiers their share and the client the rest", async function () {
      const f = await loadFixture(openedFixture);
      const [w1, w2, loser] = f.panels[1];
      await runVotes(f, { 1: [FRAUD, FRAUD, HONEST], 0: [HONEST, HONEST, null] });
      const slashed = slashOf(NODE_STAKES[2]);
      const reward = (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS;
      const share = reward / 2n;
      const toClient = slashed - 2n * share;
      const paid = (NODE_PRICES[1] + NODE_PRICES[3]) * BigInt(BILLED);
      const refund = ESCROW - paid;
      const tx = f.court.connect(f.other).resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.registry, "Slashed").withArgs(f.nodes[2].address, slashed);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(f.job.jobId, 0b010, slashed);
      await expect(tx).to.emit(f.market, "JobFinalized").withArgs(f.job.jobId, BILLED, paid, refund);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 2, 0, 0);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 1, true, 1, 2, 0);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 2, false, 0, 0, 0);
      await expect(tx).to.emit(f.court, "VerifierRewarded").withArgs(f.job.jobId, 1, w1.address, share);
      await expect(tx).to.emit(f.court, "VerifierRewarded").withArgs(f.job.jobId, 1, w2.address, share);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b010, slashed, 2n * share, toClient);
      await expect(tx).to.changeEtherBalances(
        [f.client, f.court, f.market, f.registry, w1, w2, loser, f.nodes[2]],
        [refund + toClient, 2n * share, -refund, -slashed, 0, 0, 0, 0],
      );
      expect(await f.court.creditOf(w1.address)).to.equal(share);
      expect(await f.court.creditOf(loser.address)).to.equal(0);
      expect((await f.registry.getNode(f.nodes[2].address)).stake).to.equal(NODE_STAKES[2] - slashed);
      expect((await f.registry.getNode(f.nodes[2].address)).earnings).to.equal(0);
      expect((await f.registry.getNode(f.nodes[1].address)).earnings).to.equal(NODE_PRICES[1] * BigInt(BILLED));
      const a = await f.court.getAudit(f.job.jobId);
      expect([a.status, a.fraudMask]).to.deep.equal([BigInt(AuditStatus.Resolved), 0b010n]);
      expect((await f.market.getJob(f.job.jobId)).status).to.equal(JobStatus.Finalized);
      await expectConserved(f);
      await expect(f.court.connect(w1).withdrawCredit()).to.changeEtherBalances([w1, f.court], [share, -share]);
      await expectConserved(f);
    });

    it("forfeits the bond of a verifier who never reveals: to the winners, the rounding dust to the client", async function () {
      const f = await loadFixture(openedFixture);
      const silent = f.panels[2][1];
      await runVotes(f, { 1: [FRAUD, FRAUD, FRAUD], 2: [HONEST, "silent", null] });
      const slashed = slashOf(NODE_STAKES[2]);
      const pool = (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS + BOND;
      const share = pool / 3n;
      const dust = pool - 3n * share;
      expect(dust).to.be.greaterThan(0n);
      const toClient = slashed - (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS + dust;
      const refund = ESCROW - (NODE_PRICES[1] + NODE_PRICES[3]) * BigInt(BILLED);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 2, false, 1, 0, BOND);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b010, slashed, 3n * share, toClient);
      await expect(tx).to.changeEtherBalances([f.client, f.court, silent], [refund + toClient, 3n * share - BOND, 0]);
      for (const w of f.panels[1]) expect(await f.court.creditOf(w.address)).to.equal(share);
      expect(await f.court.bondsHeld()).to.equal(0);
      await expectConserved(f);
    });

    it("an honest majority outvotes one lying verifier: nothing is slashed, everyone is paid", async function () {
      const f = await loadFixture(openedFixture);
      const liar = f.panels[0][2];
      const liarBefore = await balanceOf(liar.address);
      await runVotes(f, { 0: [HONEST, HONEST, FRAUD] });
      const paid = ROUTE_PRICE * BigInt(BILLED);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 2, 1, 0);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(f.job.jobId, 0, 0);
      await expect(tx).to.emit(f.market, "JobFinalized").withArgs(f.job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, 0, 0);
      await expect(tx).not.to.emit(f.registry, "Slashed");
      await expect(tx).to.changeEtherBalances([f.client, f.court], [ESCROW - paid, 0]);
      for (let s = 1; s <= 3; s++) {
        const n = await f.registry.getNode(f.nodes[s].address);
        expect([n.stake, n.earnings]).to.deep.equal([NODE_STAKES[s], NODE_PRICES[s] * BigInt(BILLED)]);
      }
      // The liar got its bond back when it revealed and nothing more (gas aside).
      const gasPaid = liarBefore - (await balanceOf(liar.address));
      expect(gasPaid).to.be.greaterThan(0n).and.lessThan(ethers.parseEther("0.001"));
      expect(await f.court.creditOf(liar.address)).to.equal(0);
      await expectConserved(f);
    });

    it("a tie is honest, even with a bond forfeited; the forfeit goes to the client when nobody won", async function () {
      const f = await loadFixture(openedFixture);
      await runVotes(f, { 0: [FRAUD, HONEST, "silent"] });
      const paid = ROUTE_PRICE * BigInt(BILLED);
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(f.job.jobId, 0, false, 1, 1, BOND);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0, 0, 0, BOND);
      await expect(tx).to.changeEtherBalances([f.client, f.court], [ESCROW - paid + BOND, -BOND]);
      await expectConserved(f);
    });

    it("no revealed vote and an unverifiable position are honest", async function () {
      const f = await loadFixture(disputedFixture);
      for (const v of f.verifiers.slice(6, 9)) await f.registry.connect(v).deactivate();
      const g = await openAudit(f);
      await runVotes(g, { 0: ["silent", "silent", null] });
      const paid = ROUTE_PRICE * BigInt(BILLED);
      const tx = g.court.resolve(g.job.jobId, g.job.terms);
      await expect(tx).to.emit(g.court, "PositionJudged").withArgs(g.job.jobId, 0, false, 0, 0, 2n * BOND);
      await expect(tx).to.emit(g.court, "PositionJudged").withArgs(g.job.jobId, 2, false, 0, 0, 0);
      await expect(tx).to.emit(g.market, "JobFinalized").withArgs(g.job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.emit(g.court, "AuditResolved").withArgs(g.job.jobId, 0, 0, 0, 2n * BOND);
      const a = await g.court.getAudit(g.job.jobId);
      expect([a.unverifiableMask, a.fraudMask]).to.deep.equal([0b100n, 0n]);
      await expectConserved(g);
    });

    it("after the dispute timed out and the job was finalized, settles the bonds but slashes nothing", async function () {
      const f = await loadFixture(openedFixture);
      await runVotes(f, { 0: [FRAUD, FRAUD, "silent"] });
      await time.increaseTo(f.disputedAt + PARAMS.disputeTimeout);
      await f.market.connect(f.other).finalize(f.job.jobId, f.job.terms);
      const share = BOND / 2n;
      const tx = f.court.resolve(f.job.jobId, f.job.terms);
      await expect(tx).to.emit(f.court, "JobSettledBeforeVerdict").withArgs(f.job.jobId);
      await expect(tx).to.emit(f.court, "AuditResolved").withArgs(f.job.jobId, 0b001, 0, 2n * share, 0);
      await expect(tx).not.to.emit(f.market, "DisputeResolved");
      await expect(tx).to.changeEtherBalances([f.client, f.court, f.registry], [0, 0, 0]);
      expect(await f.court.creditOf(f.panels[0][0].address)).to.equal(share);
      expect((await f.registry.getNode(f.nodes[1].address)).stake).to.equal(NODE_STAKES[1]);
      await expectConserved(f);
    });

    it("credits the client's part when the client cannot receive it", async function () {
      const f = await loadFixture(courtMarketFixture);
      const c = await contractClient("court client");
      await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      const g = await openAudit({ ...f, ...(await disputedJob(f, c)) });
      await runVotes(g, { 0: [FRAUD, FRAUD, FRAUD] });
      const slashed = slashOf(NODE_STAKES[1]);
      const toClient = slashed - (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS;
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

  describe("withdrawCredit", function () {
    it("rejects an account without credit", async function () {
      const { court, other } = await loadFixture(courtMarketFixture);
      await expect(court.connect(other).withdrawCredit()).to.be.revertedWithCustomError(court, "NothingToWithdraw").withArgs(other.address);
    });

    it("pays a reward once", async function () {
      const f = await loadFixture(openedFixture);
      await runVotes(f, { 2: [FRAUD, FRAUD, FRAUD] });
      await f.court.resolve(f.job.jobId, f.job.terms);
      const w = f.panels[2][0];
      const share = (slashOf(NODE_STAKES[3]) * BigInt(COURT_PARAMS.rewardBps)) / BPS / 3n;
      const tx = f.court.connect(w).withdrawCredit();
      await expect(tx).to.emit(f.court, "CreditWithdrawn").withArgs(w.address, share);
      await expect(tx).to.changeEtherBalances([w, f.court], [share, -share]);
      expect(await f.court.totalCredits()).to.equal(2n * share);
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

    const guardOf = (court) => court.interface.getError("ReentrancyGuardReentrantCall").selector;

    for (const [what, data] of [
      ["revealVote", (g) => g.reveal],
      ["withdrawCredit", (g) => g.court.interface.encodeFunctionData("withdrawCredit")],
      ["resolve", (g) => g.court.interface.encodeFunctionData("resolve", [g.job.jobId, g.job.terms])],
    ]) {
      it(`the bond refund of revealVote cannot re-enter ${what}`, async function () {
        const g = await loadFixture(contractVerifierFixture);
        await g.node.configure(Mode.Reenter, g.court, data(g));
        await time.increaseTo(g.commitDeadline + 1);
        const tx = g.node.execute(g.court, 0, g.reveal);
        await expect(tx).to.emit(g.court, "VoteRevealed").withArgs(g.job.jobId, 1, g.address, FRAUD);
        await expect(tx).to.changeEtherBalances([g.address, g.court], [BOND, -BOND]);
        expect(await g.node.reentryAttempted()).to.equal(true);
        expect(await g.node.reentryOk()).to.equal(false);
        expect(await g.node.reentryError()).to.equal(guardOf(g.court));
        await expectConserved(g);
      });
    }

    it("a verifier that cannot take its bond back cannot reveal, and keeps nothing twice", async function () {
      const g = await loadFixture(contractVerifierFixture);
      await g.node.configure(Mode.ReenterAndBubble, g.court, g.reveal);
      await time.increaseTo(g.commitDeadline + 1);
      await expect(g.node.execute(g.court, 0, g.reveal)).to.be.revertedWithCustomError(g.court, "TransferFailed").withArgs(g.address, BOND);
      expect(await g.court.bondsHeld()).to.equal(BOND);
      await expectConserved(g);
    });

    it("withdrawCredit cannot be re-entered; a rejecting verifier keeps its credit", async function () {
      const g = await loadFixture(contractVerifierFixture);
      const others = g.panels[1].filter((s) => s !== undefined); // the EOA verifiers beside the contract
      for (const v of others) await commitVote(g, 1, v, FRAUD);
      await time.increaseTo(g.commitDeadline + 1);
      await g.node.execute(g.court, 0, g.reveal);
      for (const v of others) await revealVote(g, 1, v, FRAUD);
      await time.increaseTo(g.revealDeadline + 1);
      await g.court.resolve(g.job.jobId, g.job.terms);
      const credit = await g.court.creditOf(g.address);
      expect(credit).to.be.greaterThan(0n);
      const withdraw = g.court.interface.encodeFunctionData("withdrawCredit");
      await g.node.configure(Mode.ReenterAndBubble, g.court, withdraw);
      await expect(g.node.execute(g.court, 0, withdraw)).to.be.revertedWithCustomError(g.court, "TransferFailed").withArgs(g.address, credit);
      expect(await g.court.creditOf(g.address)).to.equal(credit);
      await g.node.configure(Mode.Reenter, g.court, withdraw);
      const tx = g.node.execute(g.court, 0, withdraw);
      await expect(tx).to.changeEtherBalances([g.address, g.court], [credit, -credit]);
      expect(await g.node.reentryError()).to.equal(guardOf(g.court));
      expect(await g.court.creditOf(g.address)).to.equal(0);
      await expectConserved(g);
    });

    it("a client re-entering the court from its payouts is stopped by the guard and still paid", async function () {
      const f = await loadFixture(courtMarketFixture);
      const c = await contractClient("reentrant court client");
      const g = await openAudit({ ...f, ...(await disputedJob(f, c)) });
      await runVotes(g, { 0: [FRAUD, FRAUD, FRAUD] });
      await c.contract.configure(Mode.Reenter, g.court, g.court.interface.encodeFunctionData("resolve", [g.job.jobId, g.job.terms]));
      const slashed = slashOf(NODE_STAKES[1]);
      const toClient = slashed - (slashed * BigInt(COURT_PARAMS.rewardBps)) / BPS;
      const refund = ESCROW - (NODE_PRICES[2] + NODE_PRICES[3]) * BigInt(BILLED);
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
      for (const v of f.panels[2].slice(0, 2)) await f.court.connect(v).withdrawCredit();
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
