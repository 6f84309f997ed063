// Issue 12, played by the attacker: one describe per attack. Each test runs the attack on the Hardhat chain
// and asserts that it fails, or that the attacker ends with less than it started with, and that no honest
// party lost anything (honest stakes unchanged, earnings at least what each was owed). Attacks 9 and 10
// target the node software and are covered by the Python tests.
//
// The arena: the 4-shard MODEL with nodes[s] on shard s (stakes 2..5 ETH), three verifiers on each of
// shards 1..3 priced above every client's limit (never matched, always in the audit pools), an AuditCourt,
// a hop fee large enough to pay for a commit's gas, and a challenge bond.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time, mine, setPrevRandao, takeSnapshot } = require("@nomicfoundation/hardhat-network-helpers");
const {
  PARAMS,
  CHALLENGE_BOND,
  COURT_PARAMS,
  MODEL,
  NODE_PRICES,
  NODE_STAKES,
  NO_RECEIPT,
  JobStatus,
  deployMarket,
  fundedWallets,
  submit,
  commitAll,
  link,
  receipt,
  isSampled,
  anchorHashOf,
  expectMarketSolvent,
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const HOP_FEE = ethers.parseEther("0.0005"); // ~100k gas at 5 gwei: more than a commit costs on this chain
const BOND = COURT_PARAMS.verifierBond;
const BPS = 10_000n;
const MAX_TOKENS = 64;
const BILLED = 40;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3];
const VERIFIER_PRICE = 10_000_000_000n;
const BURN = "0x000000000000000000000000000000000000dEaD";
const HONEST = 1;
const FRAUD = 2;
const coder = ethers.AbiCoder.defaultAbiCoder();
const balanceOf = (a) => ethers.provider.getBalance(a);

/// Wei a mined transaction cost its sender in gas.
async function gasOf(txPromise) {
  const rc = await (await txPromise).wait();
  return rc.gasUsed * rc.gasPrice;
}

/// Wei the transaction of the latest block cost its sender (for a transaction that reverted under expect()).
async function lastTxGas() {
  const block = await ethers.provider.getBlock("latest");
  const rc = await ethers.provider.getTransactionReceipt(block.transactions[block.transactions.length - 1]);
  return rc.gasUsed * rc.gasPrice;
}

/// What the node software commits for a job it never received anything for: zero chains, no receipt.
function zeroCommit(market, node, job, p) {
  return market.connect(node).commit(job.jobId, job.terms, p, ethers.ZeroHash, ethers.ZeroHash, NO_RECEIPT);
}

/// Stake + unbonding and earnings of each account.
async function ledger(registry, accounts) {
  const out = {};
  for (const a of accounts) {
    const n = await registry.getNode(a.address ?? a);
    out[a.address ?? a] = { bond: n.stake + n.unbonding, earnings: n.earnings };
  }
  return out;
}

/// Every honest account kept its bond and earned at least `owed[address]` more (default 0).
async function expectHonestWhole(registry, before, owed = {}) {
  const after = await ledger(registry, Object.keys(before));
  for (const [a, b] of Object.entries(before)) {
    expect(after[a].bond, `bond of ${a}`).to.equal(b.bond);
    expect(after[a].earnings - b.earnings, `earnings of ${a}`).to.be.gte(owed[a] ?? 0n);
  }
}

async function arenaFixture(params = {}) {
  const signers = await ethers.getSigners();
  const [deployer, client, n0, n1, n2, n3, , other, client2] = signers;
  const verifiers = signers.slice(9, 18);
  const { registry, market, court } = await deployMarket({ court: true, params: { hopFee: HOP_FEE, ...params } });
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
const arena = () => arenaFixture();
const dodgeArena = () => arenaFixture({ auditRateBps: 9000 });

/// Opens the audit of `job` and returns its panels as signers.
async function openPanels(f, job) {
  await f.court.openAudit(job.jobId, job.terms);
  const openedAt = await time.latest();
  const panels = [];
  for (let p = 0; p < job.decoded.route.length; p++) {
    panels.push((await f.court.getPanel(job.jobId, p)).verifiers.map((a) => f.signers.find((s) => s.address === a)));
  }
  return {
    openedAt,
    commitDeadline: openedAt + COURT_PARAMS.commitWindow,
    revealDeadline: openedAt + COURT_PARAMS.commitWindow + COURT_PARAMS.revealWindow,
    panels,
  };
}

/// plan[p][i]: HONEST, FRAUD or null (never commits) for panel member i of position p; commits, waits for
/// the commit deadline, reveals, and mines a block at the reveal deadline (resolve works from the next
/// block on). Returns the gas each voter paid.
async function vote(f, job, audit, plan) {
  const salt = (p, v) => ethers.id(`salt ${job.jobId} ${p} ${v.address}`);
  const gas = new Map();
  const add = (v, g) => gas.set(v.address, (gas.get(v.address) ?? 0n) + g);
  for (const [p, votes] of Object.entries(plan)) {
    for (const [i, verdict] of votes.entries()) {
      if (verdict === null) continue;
      const v = audit.panels[p][i];
      const c = await f.court.voteCommitment(job.jobId, p, verdict, salt(p, v), v.address);
      add(v, await gasOf(f.court.connect(v).commitVote(job.jobId, p, c, { value: BOND })));
    }
  }
  await time.increaseTo(audit.commitDeadline + 1);
  for (const [p, votes] of Object.entries(plan)) {
    for (const [i, verdict] of votes.entries()) {
      if (verdict === null) continue;
      const v = audit.panels[p][i];
      add(v, await gasOf(f.court.connect(v).revealVote(job.jobId, p, verdict, salt(p, v))));
    }
  }
  await time.increaseTo(audit.revealDeadline);
  return gas;
}

describe("attacks (issue 12)", function () {
  describe("1. ghost jobs: a client that never shows up cannot take stake", function () {
    it("the honest nodes commit zero chains; the client pays hops x hopFee + gas and the nodes lose nothing", async function () {
      const { registry, market, client, nodes } = await loadFixture(arena);
      const route = [nodes[1], nodes[2], nodes[3]];
      const before = await ledger(registry, route);
      const start = await balanceOf(client.address);
      let clientGas = 0n;
      const job = await submit(market, client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      clientGas += await gasOf(job.tx);
      // The node software learns of the job from JobSubmitted and commits it although no frame came.
      const commitGas = {};
      for (const [p, n] of route.entries()) commitGas[n.address] = await gasOf(zeroCommit(market, n, job, p));
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
      // Waiting out the commit window gains the client nothing: the job can no longer be cancelled.
      await time.increase(PARAMS.commitTimeout + 1);
      await expect(market.connect(client).cancel(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Committed);
      clientGas += await lastTxGas();
      const fin = market.connect(client).finalize(job.jobId, job.terms);
      await expect(fin).to.emit(market, "JobFinalized").withArgs(job.jobId, 0, 3n * HOP_FEE, job.escrow - 3n * HOP_FEE);
      clientGas += await gasOf(fin);
      const end = await balanceOf(client.address);
      expect(end).to.be.lessThan(start);
      expect(start - end - clientGas).to.equal(3n * HOP_FEE);
      // Each node: bond intact, and the hop fee covers what its commit cost.
      await expectHonestWhole(registry, before, Object.fromEntries(route.map((n) => [n.address, HOP_FEE])));
      for (const n of route) expect(HOP_FEE).to.be.gte(commitGas[n.address]);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("a hop that really misses loses at most price x maxTokens + hopFee, burned; the client gets only its escrow back", async function () {
      const { registry, market, client, nodes } = await loadFixture(arena);
      const honest = [nodes[1], nodes[3]];
      const before = await ledger(registry, honest);
      const start = await balanceOf(client.address);
      const job = await submit(market, client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      let clientGas = await gasOf(job.tx);
      await zeroCommit(market, nodes[1], job, 0);
      await zeroCommit(market, nodes[3], job, 2); // nodes[2] is offline and never commits
      await time.increase(PARAMS.commitTimeout + 1);
      const cap = NODE_PRICES[2] * BigInt(MAX_TOKENS) + HOP_FEE;
      expect(cap).to.be.lessThan((NODE_STAKES[2] * BigInt(PARAMS.missSlashBps)) / BPS);
      const refund = job.escrow - 2n * HOP_FEE;
      const tx = market.connect(client).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b010, 2n * HOP_FEE, cap, refund);
      await expect(tx).to.emit(registry, "Slashed").withArgs(nodes[2].address, cap);
      await expect(tx).to.changeEtherBalances([client, BURN, registry], [refund, cap, -cap]);
      clientGas += await gasOf(tx);
      // The client paid the two committed hops' fees and gas; it got no part of the slash.
      expect(start - (await balanceOf(client.address))).to.equal(2n * HOP_FEE + clientGas);
      expect((await registry.getNode(nodes[2].address)).stake).to.equal(NODE_STAKES[2] - cap);
      await expectHonestWhole(registry, before, { [nodes[1].address]: HOP_FEE, [nodes[3].address]: HOP_FEE });
    });

    it("ten parallel ghost jobs against one offline victim take at most 10 x the cap from it, all burned", async function () {
      const { registry, market, client, nodes } = await loadFixture(arena);
      const victim = nodes[2];
      const honest = [nodes[1], nodes[3]];
      const before = await ledger(registry, honest);
      const start = await balanceOf(client.address);
      const burnStart = await balanceOf(BURN);
      let clientGas = 0n;
      const jobs = [];
      for (let i = 0; i < 10; i++) {
        const job = await submit(market, client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
        clientGas += await gasOf(job.tx);
        await zeroCommit(market, nodes[1], job, 0);
        await zeroCommit(market, nodes[3], job, 2);
        jobs.push(job);
      }
      await time.increase(PARAMS.commitTimeout + 1);
      for (const job of jobs) clientGas += await gasOf(market.connect(client).cancel(job.jobId, job.terms));
      const cap = NODE_PRICES[2] * BigInt(MAX_TOKENS) + HOP_FEE;
      const lost = NODE_STAKES[2] - (await registry.getNode(victim.address)).stake;
      expect(lost).to.equal(10n * cap);
      expect(lost).to.be.lessThan(NODE_STAKES[2] / 100n); // under 1% of its bond (the old rule took 65%)
      expect((await balanceOf(BURN)) - burnStart).to.equal(lost);
      expect(start - (await balanceOf(client.address))).to.equal(10n * 2n * HOP_FEE + clientGas);
      await expectHonestWhole(registry, before, { [nodes[1].address]: 10n * HOP_FEE, [nodes[3].address]: 10n * HOP_FEE });
      await expectMarketSolvent(market, jobs, nodes);
    });
  });

  describe("2. victim picking: a contract that submits only when the victim is on the route", function () {
    async function sniperFixture() {
      const f = await arenaFixture();
      // Shard 2 gets three more eligible nodes, so the pick depends on prevrandao and the job id.
      const more = await fundedWallets(3, "shard-2 node");
      for (const w of more) await f.registry.connect(w).registerNode(1, 2, "http://n2", NODE_PRICES[2], ethers.id("n"), { value: 2n * ONE });
      const sniper = await ethers.deployContract("RouteSniper", [await f.market.getAddress()], { value: ONE });
      return { ...f, sniper, more };
    }

    /// Calls snipe once per block (prevrandao 1, 2, ...) until it submits; returns the job, the gas paid
    /// and the number of calls.
    async function snipeUntilSubmitted(f, victim) {
      const escrow = BigInt(MAX_TOKENS) * ROUTE_PRICE + 3n * HOP_FEE;
      let gas = 0n;
      for (let randao = 1n; randao < 100n; randao++) {
        await setPrevRandao(randao);
        const before = await f.market.jobCount();
        gas += await gasOf(f.sniper.connect(f.other).snipe(1, 1, MAX_TOKENS, NODE_PRICES[3], escrow, victim.address, 2));
        if ((await f.market.jobCount()) !== before) {
          const jobId = await f.sniper.lastJobId();
          const terms = (await f.market.queryFilter(f.market.filters.JobSubmitted(jobId)))[0].args.terms;
          const decoded = await f.market.decodeTerms(terms);
          return { job: { jobId, terms, decoded: { escrow: decoded.escrow, route: decoded.route } }, gas, calls: Number(randao) };
        }
      }
      throw new Error("the victim was never picked");
    }

    it("it can pick its victim, but the ghost job then costs it the hop fees and the victim loses nothing", async function () {
      const f = await loadFixture(sniperFixture);
      const victim = f.nodes[2];
      const route = [f.nodes[1], victim, f.nodes[3]];
      const before = await ledger(f.registry, [...route, ...f.more]);
      const sniperStart = await balanceOf(f.sniper);
      const { job, gas, calls } = await snipeUntilSubmitted(f, victim);
      expect(job.decoded.route.map((h) => h.node)).to.deep.equal(route.map((n) => n.address));
      expect(await f.sniper.skipped()).to.equal(calls - 1); // every other block it held back
      for (const [p, n] of route.entries()) await zeroCommit(f.market, n, job, p);
      // It cannot cancel a committed job to collect a slash.
      await time.increase(PARAMS.commitTimeout + 1);
      await expect(f.sniper.callMarket(f.market.interface.encodeFunctionData("cancel", [job.jobId, job.terms])))
        .to.be.revertedWithCustomError(f.market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Committed);
      await f.sniper.callMarket(f.market.interface.encodeFunctionData("finalize", [job.jobId, job.terms]));
      expect(sniperStart - (await balanceOf(f.sniper))).to.equal(3n * HOP_FEE);
      expect(gas).to.be.greaterThan(0n); // and its operator paid gas on top
      await expectHonestWhole(f.registry, before, Object.fromEntries(route.map((n) => [n.address, HOP_FEE])));
    });

    it("even when the picked victim misses its commit, the slash is burned and the sniper still loses", async function () {
      const f = await loadFixture(sniperFixture);
      const victim = f.nodes[2];
      const others = [f.nodes[1], f.nodes[3]];
      const before = await ledger(f.registry, [...others, ...f.more]);
      const sniperStart = await balanceOf(f.sniper);
      const { job } = await snipeUntilSubmitted(f, victim);
      await zeroCommit(f.market, f.nodes[1], job, 0);
      await zeroCommit(f.market, f.nodes[3], job, 2);
      await time.increase(PARAMS.commitTimeout + 1);
      const cap = NODE_PRICES[2] * BigInt(MAX_TOKENS) + HOP_FEE;
      const cancel = f.sniper.callMarket(f.market.interface.encodeFunctionData("cancel", [job.jobId, job.terms]));
      await expect(cancel).to.changeEtherBalance(BURN, cap);
      expect(sniperStart - (await balanceOf(f.sniper))).to.equal(2n * HOP_FEE);
      expect((await f.registry.getNode(victim.address)).stake).to.equal(NODE_STAKES[2] - cap);
      await expectHonestWhole(f.registry, before, { [f.nodes[1].address]: HOP_FEE, [f.nodes[3].address]: HOP_FEE });
    });
  });

  describe("3. audit panel capture", function () {
    /// The arena with an AtomicCaller as shard 3's only eligible node (the attacker, last on every route
    /// from shard 1) and four 1-ETH Sybils in shard 2's pool beside the three honest verifiers.
    async function captureFixture() {
      const f = await arenaFixture();
      const attacker = await ethers.deployContract("AtomicCaller");
      await f.registry.connect(f.nodes[3]).deactivate();
      const register = f.registry.interface.encodeFunctionData("registerNode", [1, 3, "http://a", NODE_PRICES[3], ethers.id("a")]);
      await attacker.execute(f.registry, ONE, register, { value: ONE });
      const sybils = await fundedWallets(4, "sybil");
      for (const s of sybils) await f.registry.connect(s).registerNode(1, 2, "http://s", VERIFIER_PRICE, ethers.id("s"), { value: ONE });
      const job = await submit(f.market, f.client2, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      expect(job.decoded.route[2].node).to.equal(await attacker.getAddress());
      for (const p of [0, 1]) {
        await f.market.connect(f.nodes[p + 1]).commit(job.jobId, job.terms, p, link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);
      }
      // The false link word: an input that position 1 never sent.
      const falseCommit = f.market.interface.encodeFunctionData("commit", [job.jobId, job.terms, 2, ethers.id("lie"), ethers.id("out"), NO_RECEIPT]);
      return { ...f, attacker, sybils, job, falseCommit };
    }

    it("disputing and opening the audit in one transaction reverts AuditTooEarly", async function () {
      const f = await loadFixture(captureFixture);
      const open = f.court.interface.encodeFunctionData("openAudit", [f.job.jobId, f.job.terms]);
      const block = (await ethers.provider.getBlockNumber()) + 1;
      await expect(f.attacker.executeBoth(f.market, f.falseCommit, f.court, open))
        .to.be.revertedWithCustomError(f.court, "AuditTooEarly")
        .withArgs(f.job.jobId, block + 1);
      expect((await f.market.getJob(f.job.jobId)).status).to.equal(JobStatus.Open);
    });

    it("the panel is the same whichever later block opens it (block +1 or +5, any prevrandao)", async function () {
      const f = await loadFixture(captureFixture);
      await f.attacker.execute(f.market, 0, f.falseCommit);
      expect((await f.market.getJob(f.job.jobId)).status).to.equal(JobStatus.Disputed);
      const panelsOf = async (tx) => {
        const rc = await (await tx).wait();
        return rc.logs
          .map((l) => f.court.interface.parseLog(l))
          .filter((l) => l && l.name === "AuditOpened")
          .map((l) => [Number(l.args.position), l.args.node, [...l.args.verifiers]]);
      };
      const snapshot = await takeSnapshot();
      await setPrevRandao(1n);
      const soon = await panelsOf(f.court.openAudit(f.job.jobId, f.job.terms));
      await snapshot.restore();
      await mine(4);
      await setPrevRandao(0xdeadbeefn);
      const later = await panelsOf(f.court.connect(f.other).openAudit(f.job.jobId, f.job.terms));
      expect(later).to.deep.equal(soon);
      expect(soon).to.have.length(3);
      expect(soon[1][2]).to.have.length(3);
    });

    it("panels are drawn by stake: 4 Sybils at minStake beside 3 nodes at 10x take under 25% of the seats", async function () {
      const f = await loadFixture(arena);
      await f.registry.registerModel("sybil pool", ethers.id("sybil weights"), 1, [0, 1]);
      const sybils = await fundedWallets(4, "stake sybil");
      const honest = await fundedWallets(3, "stake honest", 20n * ONE);
      for (const s of sybils) await f.registry.connect(s).registerNode(2, 0, "http://s", 1n, ethers.id("s"), { value: ONE });
      for (const h of honest) await f.registry.connect(h).registerNode(2, 0, "http://h", 1n, ethers.id("h"), { value: 10n * ONE });
      const isSybil = new Set(sybils.map((s) => s.address));
      let seats = 0;
      let sybilSeats = 0;
      for (let seed = 0; seed < 300; seed++) {
        const drawn = await f.registry.samplePool(2, 0, ethers.ZeroAddress, 3, ethers.id(`panel seed ${seed}`));
        expect(drawn).to.have.length(3);
        seats += drawn.length;
        sybilSeats += drawn.filter((a) => isSybil.has(a)).length;
      }
      // Uniform by address would seat them 4/7 = 57% of the time; by stake about 12%.
      expect(sybilSeats / seats).to.be.lessThan(0.25);
    });

    it("one Sybil's fraud vote beside two abstainers slashes nobody; the Sybil loses its bond, abstainers one bond each", async function () {
      const f = await loadFixture(arena);
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED), { breakAt: 1 });
      const audit = await openPanels(f, job);
      const [sybil, abstainer1, abstainer2] = audit.panels[1];
      const honestVoters = [...audit.panels[0], ...audit.panels[2]];
      const route = [f.nodes[1], f.nodes[2], f.nodes[3]];
      const before = await ledger(f.registry, route);
      const sybilStart = await balanceOf(sybil.address);
      const gas = await vote(f, job, audit, { 0: [HONEST, HONEST, HONEST], 1: [FRAUD, null, null], 2: [HONEST, HONEST, HONEST] });
      const tx = f.court.resolve(job.jobId, job.terms);
      await expect(tx).to.emit(f.court, "PositionJudged").withArgs(job.jobId, 1, false, 0, 1, BOND);
      await expect(tx).to.emit(f.market, "DisputeResolved").withArgs(job.jobId, 0, 0);
      for (const a of [abstainer1, abstainer2]) await expect(tx).to.emit(f.market, "VerifierPenalized").withArgs(a.address, BOND);
      // The Sybil is out its bond and gas, and is owed nothing.
      expect(await f.court.creditOf(sybil.address)).to.equal(0);
      expect(sybilStart - (await balanceOf(sybil.address))).to.equal(BOND + gas.get(sybil.address));
      for (const a of [abstainer1, abstainer2]) expect((await f.registry.getNode(a.address)).stake).to.equal(ONE - BOND);
      // The honest voters of positions 0 and 2 share the Sybil's bond and the penalties.
      for (const v of honestVoters) expect(await f.court.creditOf(v.address)).to.be.greaterThan(BOND);
      const owed = Object.fromEntries(route.map((n, p) => [n.address, NODE_PRICES[p + 1] * BigInt(BILLED) + HOP_FEE]));
      await expectHonestWhole(f.registry, before, owed);
    });
  });

  describe("4. committed jobs can be challenged, and the last committer cannot dodge the audit draw", function () {
    /// A committed job whose position 1 (nodes[2]) served self-consistent garbage: the links match.
    async function garbageJob(f) {
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED));
      expect((await f.market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
      return job;
    }

    it("a client challenges garbage: verifiers find fraud, the cheat is slashed, the client gets its bond back and more", async function () {
      const f = await loadFixture(arena);
      const job = await garbageJob(f);
      const honestRoute = [f.nodes[1], f.nodes[3]];
      const before = await ledger(f.registry, honestRoute);
      const start = await balanceOf(f.client.address);
      const gas = await gasOf(f.market.connect(f.client).challenge(job.jobId, job.terms, { value: CHALLENGE_BOND }));
      const audit = await openPanels(f, job);
      await vote(f, job, audit, { 0: [HONEST, HONEST, HONEST], 1: [FRAUD, FRAUD, FRAUD], 2: [HONEST, HONEST, HONEST] });
      const slashed = (NODE_STAKES[2] * BigInt(PARAMS.fraudSlashBps)) / BPS;
      const refund = job.escrow - (NODE_PRICES[1] + NODE_PRICES[3]) * BigInt(BILLED) - 2n * HOP_FEE;
      const resolve = f.court.resolve(job.jobId, job.terms);
      await expect(resolve).to.emit(f.market, "ChallengeSettled").withArgs(job.jobId, f.client.address, CHALLENGE_BOND, 0, 0);
      await expect(resolve).to.emit(f.registry, "Slashed").withArgs(f.nodes[2].address, slashed);
      const resolved = (await (await resolve).wait()).logs.map((l) => f.court.interface.parseLog(l)).find((l) => l && l.name === "AuditResolved");
      const toClient = resolved.args.toClient;
      expect(toClient).to.be.greaterThan(0n);
      // The client's bond came back; it paid only the two honest hops and got part of the cheat's slash.
      expect((await balanceOf(f.client.address)) - start + gas).to.equal(refund + toClient);
      expect((await f.registry.getNode(f.nodes[2].address)).stake).to.equal(NODE_STAKES[2] - slashed);
      await expectHonestWhole(f.registry, before, {
        [f.nodes[1].address]: NODE_PRICES[1] * BigInt(BILLED) + HOP_FEE,
        [f.nodes[3].address]: NODE_PRICES[3] * BigInt(BILLED) + HOP_FEE,
      });
    });

    it("a griefer challenging an honest job loses its bond: half to the honest verifiers, half to the route's nodes", async function () {
      const f = await loadFixture(arena);
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED));
      const route = [f.nodes[1], f.nodes[2], f.nodes[3]];
      const before = await ledger(f.registry, route);
      const start = await balanceOf(f.other.address);
      const gas = await gasOf(f.market.connect(f.other).challenge(job.jobId, job.terms, { value: CHALLENGE_BOND }));
      const audit = await openPanels(f, job);
      await vote(f, job, audit, { 0: [HONEST, HONEST, HONEST], 1: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      const perNode = (CHALLENGE_BOND - CHALLENGE_BOND / 2n) / 3n;
      await expect(f.court.resolve(job.jobId, job.terms))
        .to.emit(f.market, "ChallengeSettled")
        .withArgs(job.jobId, f.other.address, 0, perNode, CHALLENGE_BOND - 3n * perNode);
      const lost = start - (await balanceOf(f.other.address));
      expect(lost).to.be.gte(CHALLENGE_BOND - 10n + gas).and.lte(CHALLENGE_BOND + gas); // at most pool dust back
      for (const v of audit.panels.flat()) expect(await f.court.creditOf(v.address)).to.be.greaterThan(BOND);
      const owed = Object.fromEntries(route.map((n, p) => [n.address, NODE_PRICES[p + 1] * BigInt(BILLED) + HOP_FEE + perNode]));
      await expectHonestWhole(f.registry, before, owed);
    });

    it("a last committer that commits only when the old prevrandao draw says 'not sampled' is still sampled at 90%", async function () {
      this.timeout(300_000);
      const f = await loadFixture(dodgeArena);
      const dodger = await ethers.deployContract("Dodger", [await f.market.getAddress()], { value: ONE });
      await f.registry.connect(f.nodes[3]).deactivate();
      const register = f.registry.interface.encodeFunctionData("registerNode", [1, 3, "http://d", NODE_PRICES[3], ethers.id("d")]);
      await dodger.execute(f.registry, ONE, register);
      const oldRuleSamples = (randao, jobId) => {
        const draw = BigInt(ethers.keccak256(coder.encode(["uint256", "uint256", "string"], [randao, jobId, "audit"])));
        return draw % BPS < 9000n;
      };
      let sampled = 0;
      let randao = 1n;
      for (let i = 0; i < 30; i++) {
        const job = await submit(f.market, f.client, { maxTokens: 4, maxPrice: NODE_PRICES[3] });
        expect(job.decoded.route[2].node).to.equal(await dodger.getAddress());
        for (const p of [0, 1]) {
          await f.market.connect(f.nodes[p + 1]).commit(job.jobId, job.terms, p, link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);
        }
        const skippedBefore = await dodger.skipped();
        // A block the old rule would sample: the dodger holds back.
        while (!oldRuleSamples(randao, job.jobId)) randao++;
        await setPrevRandao(randao++);
        await dodger.dodgeCommit(job.jobId, job.terms, 2, link(job.jobId, 2), link(job.jobId, 3), 9000);
        expect(await dodger.skipped()).to.equal(skippedBefore + 1n);
        expect((await f.market.getJob(job.jobId)).status).to.equal(JobStatus.Open);
        // A block it would not: it commits, and inside that block the new draw is not even available.
        while (oldRuleSamples(randao, job.jobId)) randao++;
        await setPrevRandao(randao++);
        await dodger.dodgeCommit(job.jobId, job.terms, 2, link(job.jobId, 2), link(job.jobId, 3), 9000);
        expect((await f.market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
        expect(await dodger.lastAvailable()).to.equal(false);
        // From the next block on, anyone draws from the completing block's hash.
        await mine(1);
        const [available, drawn] = await f.market.auditDraw(job.jobId);
        expect(available).to.equal(true);
        expect(drawn).to.equal(isSampled(await anchorHashOf(f.market, job.jobId), job.jobId, 9000));
        if (drawn) {
          await expect(f.market.connect(f.other).sampleAudit(job.jobId, job.terms)).to.emit(f.market, "AuditSampled").withArgs(job.jobId);
          sampled++;
        } else {
          await expect(f.market.connect(f.other).sampleAudit(job.jobId, job.terms))
            .to.be.revertedWithCustomError(f.market, "NotSampled")
            .withArgs(job.jobId);
        }
      }
      // Binomial(30, 0.9): P(fewer than 18) < 1e-6.
      expect(sampled).to.be.gte(18);
    });
  });

  describe("5. verifier incentives", function () {
    async function disputed(f) {
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED), { breakAt: 2 });
      return job;
    }

    it("a minority voter loses its bond to the majority; honest voters are paid more than their bond", async function () {
      const f = await loadFixture(arena);
      const job = await disputed(f);
      const audit = await openPanels(f, job);
      const [h1, h2, liar] = audit.panels[0];
      const liarStart = await balanceOf(liar.address);
      const h1Start = await balanceOf(h1.address);
      const gas = await vote(f, job, audit, { 0: [HONEST, HONEST, FRAUD], 1: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      await expect(f.court.resolve(job.jobId, job.terms)).to.emit(f.court, "PositionJudged").withArgs(job.jobId, 0, false, 2, 1, BOND);
      // 8 winners share the liar's bond.
      const share = BOND / 8n;
      expect(await f.court.creditOf(h1.address)).to.equal(BOND + share);
      expect(await f.court.creditOf(liar.address)).to.equal(0);
      expect(liarStart - (await balanceOf(liar.address))).to.equal(BOND + gas.get(liar.address));
      await f.court.connect(h1).withdrawCredit();
      // Net of its bond and the gas of commit, reveal and withdraw, honest verification paid.
      expect(await balanceOf(h1.address)).to.be.greaterThan(h1Start);
      expect(await f.court.creditOf(h2.address)).to.equal(BOND + share);
    });

    it("honest-verdict voters are paid from the challenger's lost bond", async function () {
      const f = await loadFixture(arena);
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED));
      await f.market.connect(f.other).challenge(job.jobId, job.terms, { value: CHALLENGE_BOND });
      const audit = await openPanels(f, job);
      await vote(f, job, audit, { 0: [HONEST, HONEST, HONEST], 1: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      const challengeShare = CHALLENGE_BOND - 3n * ((CHALLENGE_BOND - CHALLENGE_BOND / 2n) / 3n);
      const tx = f.court.resolve(job.jobId, job.terms);
      for (const v of audit.panels.flat()) {
        await expect(tx).to.emit(f.court, "VerifierRewarded").withArgs(job.jobId, audit.panels.findIndex((pl) => pl.includes(v)), v.address, BOND + challengeShare / 9n);
      }
    });

    it("a drawn verifier that never commits is slashed one bond, and the honest voters get it", async function () {
      const f = await loadFixture(arena);
      const job = await disputed(f);
      const audit = await openPanels(f, job);
      const idle = audit.panels[2][0];
      const before = (await f.registry.getNode(idle.address)).stake;
      await vote(f, job, audit, { 0: [HONEST, HONEST, HONEST], 1: [HONEST, HONEST, HONEST], 2: [null, HONEST, HONEST] });
      const tx = f.court.resolve(job.jobId, job.terms);
      await expect(tx).to.emit(f.market, "VerifierPenalized").withArgs(idle.address, BOND);
      await expect(tx).to.emit(f.registry, "Slashed").withArgs(idle.address, BOND);
      expect((await f.registry.getNode(idle.address)).stake).to.equal(before - BOND);
      expect(await f.court.creditOf(audit.panels[2][1].address)).to.equal(BOND + BOND / 8n);
    });
  });

  describe("6. pool stuffing: overpriced Sybils cannot hide the eligible node", function () {
    async function stuffedFixture() {
      const f = await arenaFixture();
      await f.registry.registerModel("one shard", ethers.id("one shard weights"), 30, [0, 30]);
      const eligible = f.signers[18];
      await f.registry.connect(eligible).registerNode(2, 0, "http://eligible", NODE_PRICES[1], ethers.id("e"), { value: 2n * ONE });
      const sybils = await fundedWallets(24, "stuffing sybil");
      for (const s of sybils) await f.registry.connect(s).registerNode(2, 0, "http://sybil", VERIFIER_PRICE, ethers.id("s"), { value: ONE });
      return { ...f, eligible, sybils };
    }

    /// Whether submitJob's 8 probes (seeded by prevrandao and the next job id) reach pool index `index`.
    function probesReach(randao, jobId, size, index) {
      const seed = ethers.keccak256(coder.encode(["uint256", "uint256"], [randao, jobId]));
      const start = Number(BigInt(ethers.keccak256(coder.encode(["uint256", "uint8"], [seed, 0]))) % BigInt(size));
      return (index - start + size) % size < 8;
    }

    it("submitJob may miss (NoEligibleNode); with the eligible node's index as a hint 30 of 30 submissions match it", async function () {
      const f = await loadFixture(stuffedFixture);
      const size = Number(await f.registry.poolSize(2, 0));
      expect(size).to.equal(25);
      let index = 0;
      while ((await f.registry.poolAt(2, 0, index)).node !== f.eligible.address) index++;
      const escrow = 10n * NODE_PRICES[1] + HOP_FEE;
      let misses = 0;
      for (let i = 1n; i <= 30n; i++) {
        const jobId = (await f.market.jobCount()) + 1n;
        await setPrevRandao(i);
        const tx = f.market.connect(f.client).submitJob(2, 0, 10, NODE_PRICES[1], "0x", { value: escrow });
        if (probesReach(i, jobId, size, index)) {
          await expect(tx).to.emit(f.market, "JobSubmitted");
        } else {
          await expect(tx).to.be.revertedWithCustomError(f.registry, "NoEligibleNode").withArgs(2, 0);
          misses++;
        }
      }
      expect(misses).to.be.greaterThan(0);
      const before = await ledger(f.registry, f.sybils);
      for (let i = 1n; i <= 30n; i++) {
        await setPrevRandao(1000n + i);
        const job = await submit(f.market, f.client, { modelId: 2, firstShard: 0, maxTokens: 10, maxPrice: NODE_PRICES[1], hints: [index + 1] });
        expect(job.decoded.route[0].node).to.equal(f.eligible.address);
      }
      // The Sybils were never matched, so never at risk, and never paid.
      await expectHonestWhole(f.registry, before);
    });
  });

  describe("7. revoked smart-wallet receipts", function () {
    it("a receipt checkpointed before the wallet revokes still bills the job; the nodes are paid for it", async function () {
      const f = await loadFixture(arena);
      const wallet = await ethers.deployContract("RevocableWallet", [f.client.address], { value: ONE });
      const data = f.market.interface.encodeFunctionData("submitJob", [1, 1, MAX_TOKENS, NODE_PRICES[3], "0x"]);
      const escrow = BigInt(MAX_TOKENS) * ROUTE_PRICE + 3n * HOP_FEE;
      await wallet.connect(f.client).execute(await f.market.getAddress(), data, escrow);
      const jobId = await f.market.jobCount();
      const terms = (await f.market.queryFilter(f.market.filters.JobSubmitted(jobId)))[0].args.terms;
      const route = [f.nodes[1], f.nodes[2], f.nodes[3]];
      const before = await ledger(f.registry, route);
      // Mid-job, a node checkpoints the wallet's latest receipt (signed by its key, valid through ERC-1271).
      await expect(f.market.connect(f.nodes[1]).checkpointReceipt(jobId, terms, await receipt(f.market, f.client, jobId, 10)))
        .to.emit(f.market, "ReceiptCheckpointed")
        .withArgs(jobId, 10);
      // After more service the wallet revokes its key: later receipts no longer validate.
      await wallet.connect(f.client).revoke();
      const late = await receipt(f.market, f.client, jobId, 20);
      await expect(f.market.connect(f.nodes[1]).commit(jobId, terms, 0, link(jobId, 0), link(jobId, 1), late))
        .to.be.revertedWithCustomError(f.market, "InvalidReceiptSignature")
        .withArgs(jobId, f.client.address);
      for (const [p, n] of route.entries()) {
        await expect(f.market.connect(n).commit(jobId, terms, p, link(jobId, p), link(jobId, p + 1), NO_RECEIPT))
          .to.emit(f.market, "JobCommitted")
          .withArgs(jobId, p, link(jobId, p), link(jobId, p + 1), 10);
      }
      await time.increase(PARAMS.challengeWindow);
      const paid = ROUTE_PRICE * 10n + 3n * HOP_FEE;
      await expect(f.market.finalize(jobId, terms)).to.emit(f.market, "JobFinalized").withArgs(jobId, 10, paid, escrow - paid);
      const owed = Object.fromEntries(route.map((n, p) => [n.address, NODE_PRICES[p + 1] * 10n + HOP_FEE]));
      await expectHonestWhole(f.registry, before, owed);
    });
  });

  describe("8. an honest node is never slashed for another node's failure", function () {
    it("middle hop offline: the downstream hop that got nothing commits zero chains; only the offline hop is slashed", async function () {
      const f = await loadFixture(arena);
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      const honest = [f.nodes[1], f.nodes[3]];
      const before = await ledger(f.registry, honest);
      // Position 0 served the client's frames; position 1 went down; position 2 never received anything.
      await f.market.connect(f.nodes[1]).commit(job.jobId, job.terms, 0, link(job.jobId, 0), link(job.jobId, 1), await receipt(f.market, f.client, job.jobId, BILLED));
      await zeroCommit(f.market, f.nodes[3], job, 2);
      await time.increase(PARAMS.commitTimeout + 1);
      const cap = NODE_PRICES[2] * BigInt(MAX_TOKENS) + HOP_FEE;
      const paid = NODE_PRICES[1] * BigInt(BILLED) + NODE_PRICES[3] * BigInt(BILLED) + 2n * HOP_FEE;
      const tx = f.market.connect(f.other).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(f.market, "JobCancelled").withArgs(job.jobId, 0b010, paid, cap, job.escrow - paid);
      const rc = await (await tx).wait();
      const slashes = rc.logs.map((l) => f.registry.interface.parseLog(l)).filter((l) => l && l.name === "Slashed");
      expect(slashes.map((l) => [l.args.node, l.args.amount])).to.deep.equal([[f.nodes[2].address, cap]]);
      await expectHonestWhole(f.registry, before, {
        [f.nodes[1].address]: NODE_PRICES[1] * BigInt(BILLED) + HOP_FEE,
        [f.nodes[3].address]: NODE_PRICES[3] * BigInt(BILLED) + HOP_FEE,
      });
      // The capped slash leaves the offline 3-ETH node far above the minimum stake: it stays in the pool.
      expect((await f.registry.getNode(f.nodes[2].address)).pooled).to.equal(true);
    });
  });

  describe("11. finalize can no longer pre-empt resolve", function () {
    it("once the audit is opened, finalize waits a whole dispute timeout from the opening; resolve gets its window", async function () {
      const f = await loadFixture(arena);
      const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS, maxPrice: NODE_PRICES[3] });
      await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED), { breakAt: 1 });
      const disputedAt = Number((await f.market.getJob(job.jobId)).timestamp);
      // Opened as late as allowed: under the old rule resolve had one second before finalize could run.
      const latest = disputedAt + PARAMS.disputeTimeout - COURT_PARAMS.commitWindow - COURT_PARAMS.revealWindow - 2;
      await time.setNextBlockTimestamp(latest);
      const audit = await openPanels(f, job);
      expect(audit.openedAt).to.equal(latest);
      await vote(f, job, audit, { 1: [FRAUD, FRAUD, FRAUD], 0: [HONEST, HONEST, HONEST], 2: [HONEST, HONEST, HONEST] });
      const snapshot = await takeSnapshot();
      for (const t of [audit.revealDeadline + 1, disputedAt + PARAMS.disputeTimeout, latest + PARAMS.disputeTimeout - 1]) {
        await time.setNextBlockTimestamp(t);
        await expect(f.market.connect(f.nodes[2]).finalize(job.jobId, job.terms))
          .to.be.revertedWithCustomError(f.market, "ChallengeWindowOpen")
          .withArgs(job.jobId, latest + PARAMS.disputeTimeout);
      }
      await expect(f.court.resolve(job.jobId, job.terms)).to.emit(f.market, "DisputeResolved").withArgs(job.jobId, 0b010, (NODE_STAKES[2] * BigInt(PARAMS.fraudSlashBps)) / BPS);
      await snapshot.restore();
      await time.setNextBlockTimestamp(audit.revealDeadline + 1);
      await expect(f.market.connect(f.nodes[2]).finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(f.market, "ChallengeWindowOpen")
        .withArgs(job.jobId, latest + PARAMS.disputeTimeout);
      await expect(f.court.resolve(job.jobId, job.terms)).to.emit(f.court, "AuditResolved");
      await expect(f.market.connect(f.nodes[2]).finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(f.market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });
  });

  describe("property: random action sequences", function () {
    /// mulberry32: a small seeded PRNG, so the action sequence is the same on every run.
    function prng(seed) {
      let s = seed >>> 0;
      return () => {
        s = (s + 0x6d2b79f5) >>> 0;
        let t = s;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
      };
    }

    const CHEATER_PRICE = 6_000_000_000n;
    const LAZY_PRICE = 7_000_000_000n;

    /// The arena at a 50% audit rate, plus a cheater on shard 2 (serves garbage, sometimes a false link) and
    /// a lazy node on shard 3 (never commits anything); both also sit in the audit pools and never vote.
    /// They ask more than the honest nodes, so only clients with a higher price limit can be matched to them
    /// (matching probes consecutive pool entries, which would otherwise favour the last-registered node).
    async function sequenceFixture() {
      const f = await arenaFixture({ auditRateBps: 5000 });
      const [cheater, lazy] = [f.signers[18], f.signers[19]];
      await f.registry.connect(cheater).registerNode(1, 2, "http://cheat", CHEATER_PRICE, ethers.id("c"), { value: 3n * ONE });
      await f.registry.connect(lazy).registerNode(1, 3, "http://lazy", LAZY_PRICE, ethers.id("l"), { value: 2n * ONE });
      return { ...f, cheater, lazy };
    }

    it("a protocol-following node never loses stake and is paid exactly what it is owed; no client ends above its refunds", async function () {
      this.timeout(600_000);
      const f = await loadFixture(sequenceFixture);
      const { registry, market, court, client, client2, other, nodes, verifiers, cheater, lazy } = f;
      const rand = prng(0x5eed12);
      const int = (n) => Math.floor(rand() * n);
      const choose = (xs) => xs[int(xs.length)];
      const honest = [...nodes, ...verifiers];
      const isHonest = new Set(honest.map((s) => s.address));
      const nodeAccounts = [...honest, cheater, lazy];
      const signerOfAddress = (a) => f.signers.find((s) => s.address === a);
      const clients = [client, client2];
      const bondsAtStart = await ledger(registry, honest);
      const money = new Map(); // per client: start balance, gas, escrow and bonds paid in, what came back
      for (const c of [...clients, other]) money.set(c.address, { start: await balanceOf(c.address), gas: 0n, paidIn: 0n, back: 0n });
      const expectedEarnings = new Map(nodeAccounts.map((s) => [s.address, 0n]));
      const burnStart = await balanceOf(BURN);
      let burned = 0n;
      const jobs = [];
      const audits = new Map(); // jobId -> { job, commitDeadline, revealDeadline, seats: [{ p, verifier, committed, revealed }] }
      const counts = {};
      let now = await time.latest();
      const at = () => time.setNextBlockTimestamp(++now);
      const jobOf = (id) => jobs.find((j) => j.jobId === BigInt(id));
      const stateOf = (j) => market.getJob(j.jobId);
      const truth = (j, p) => (j.decoded.route[p].node === cheater.address ? FRAUD : HONEST);

      /// Sends a transaction at the next second, charges its gas to `payer` when tracked, and books what its
      /// events say (refunds, challenge bonds back, court payouts, burns, and every node's earnings).
      async function send(payer, fn, j) {
        const before = j ? await stateOf(j) : undefined;
        const challenger = j ? (await market.challengeOf(j.jobId)).challenger : undefined;
        await at();
        const rc = await (await fn()).wait();
        if (money.has(payer.address)) money.get(payer.address).gas += rc.gasUsed * rc.gasPrice;
        const logs = rc.logs
          .map((l) => {
            const c = [market, court].find((x) => x.target === l.address);
            return c ? c.interface.parseLog(l) : null;
          })
          .filter((l) => l);
        let fraudMask = 0;
        let settled;
        let challenge;
        for (const l of logs) {
          if (l.name === "JobFinalized" || l.name === "JobCancelled") {
            expect(l.args.paid + l.args.refund, "no slash is ever refunded").to.equal(j.decoded.escrow);
            settled = { billed: l.name === "JobFinalized" ? l.args.billedTokens : before.billedTokens, refund: l.args.refund };
            if (l.name === "JobCancelled") burned += l.args.slashed;
          }
          if (l.name === "DisputeResolved") {
            fraudMask = Number(l.args.fraudMask);
            if (fraudMask !== 0) counts.fraudFound = (counts.fraudFound ?? 0) + 1;
          }
          if (l.name === "ChallengeSettled") challenge = l.args;
          if (l.name === "AuditResolved") {
            const recipient = challenger !== ethers.ZeroAddress ? challenger : jobOf(l.args.jobId).client.address;
            if (money.has(recipient)) money.get(recipient).back += l.args.toClient;
          }
        }
        let paidMask = 0;
        if (settled) {
          money.get(j.client.address).back += settled.refund;
          paidMask = Number(before.committedMask) & ~fraudMask;
          for (const [p, hop] of j.decoded.route.entries()) {
            if (!((paidMask >> p) & 1)) continue;
            const owed = hop.pricePerToken * BigInt(settled.billed) + HOP_FEE + (challenge ? challenge.perNode : 0n);
            expectedEarnings.set(hop.node, expectedEarnings.get(hop.node) + owed);
          }
        }
        if (challenge) {
          if (money.has(challenge.challenger)) money.get(challenge.challenger).back += challenge.toChallenger;
          if (challenge.toChallenger === 0n && challenge.toAuditor === 0n) {
            const hops = [...Array(j.decoded.route.length).keys()].filter((p) => (paidMask >> p) & 1).length;
            burned += CHALLENGE_BOND - challenge.perNode * BigInt(hops); // no verdict: rounding dust burned
          }
        }
        return { rc, logs };
      }

      async function checkInvariants() {
        const bonds = await ledger(registry, honest);
        for (const s of honest) expect(bonds[s.address].bond, `bond of honest ${s.address}`).to.be.gte(bondsAtStart[s.address].bond);
        let staked = 0n;
        let earnings = 0n;
        for (const s of nodeAccounts) {
          const n = await registry.getNode(s.address);
          staked += n.stake + n.unbonding;
          earnings += n.earnings;
        }
        expect(await balanceOf(registry)).to.equal(staked);
        let held = 0n;
        for (const j of jobs) {
          const st = Number((await stateOf(j)).status);
          if ([JobStatus.Open, JobStatus.Committed, JobStatus.Disputed].includes(st)) held += j.decoded.escrow;
          held += (await market.challengeOf(j.jobId)).bond;
        }
        expect(await balanceOf(market)).to.equal(held + (await market.totalCredits()) + earnings);
        expect(await balanceOf(court)).to.equal((await court.bondsHeld()) + (await court.totalCredits()));
        expect((await balanceOf(BURN)) - burnStart).to.equal(burned);
      }

      /// What protocol-following parties do at `now`: honest verifiers commit truthful votes while they may
      /// and reveal once they may; with `commitJobs`, every node but the lazy one commits its open hops.
      async function duties(commitJobs) {
        for (const a of audits.values()) {
          if (a.resolved) continue;
          for (const seat of a.seats) {
            if (!isHonest.has(seat.verifier)) continue;
            const v = signerOfAddress(seat.verifier);
            const verdict = truth(a.job, seat.p);
            const salt = ethers.id(`salt ${a.job.jobId} ${seat.p} ${seat.verifier}`);
            if (!seat.committed && now + 1 <= a.commitDeadline) {
              const c = await court.voteCommitment(a.job.jobId, seat.p, verdict, salt, seat.verifier);
              await send(v, () => court.connect(v).commitVote(a.job.jobId, seat.p, c, { value: BOND }));
              seat.committed = true;
            } else if (seat.committed && !seat.revealed && now + 1 > a.commitDeadline && now + 1 <= a.revealDeadline) {
              await send(v, () => court.connect(v).revealVote(a.job.jobId, seat.p, verdict, salt));
              seat.revealed = true;
            }
          }
        }
        if (!commitJobs) return;
        for (const j of jobs) {
          const s = await stateOf(j);
          if (Number(s.status) !== JobStatus.Open || now + 1 > Number(s.timestamp) + PARAMS.commitTimeout) continue;
          for (let p = 0; p < j.decoded.route.length; p++) if (!((Number(s.committedMask) >> p) & 1)) await commitHop(j, p);
        }
      }

      /// Position p commits (the lazy node never does): a served job's linked commitments, sometimes with
      /// the client's receipt; a ghost job's zero chains; the cheater sometimes a false link.
      async function commitHop(j, p) {
        const node = j.decoded.route[p].node;
        if (node === lazy.address) return false;
        const signer = signerOfAddress(node);
        let input = j.served ? link(j.jobId, p) : ethers.ZeroHash;
        const output = j.served ? link(j.jobId, p + 1) : ethers.ZeroHash;
        if (node === cheater.address && rand() < 0.3) input = ethers.id(`false link ${j.jobId}`);
        const r = j.served && rand() < 0.5 ? await receipt(market, j.client, j.jobId, 1 + int(Number(j.decoded.maxTokens))) : NO_RECEIPT;
        await send(signer, () => market.connect(signer).commit(j.jobId, j.terms, p, input, output, r));
        return true;
      }

      async function advance(delta) {
        const target = now + delta;
        for (;;) {
          await duties(true);
          let next = Infinity;
          for (const a of audits.values()) {
            if (a.resolved) continue;
            const pending = a.seats.some((s) => s.committed && !s.revealed);
            if (pending && a.commitDeadline + 1 > now) next = Math.min(next, a.commitDeadline + 1);
          }
          if (next > target) break;
          now = Math.max(now, next - 1);
        }
        now = Math.max(now, target);
      }

      const actions = {
        async submit() {
          const cl = choose(clients);
          const firstShard = int(3);
          const maxTokens = 1 + int(100);
          const hops = BigInt(4 - firstShard);
          const r = rand();
          const maxPrice = r < 0.55 ? NODE_PRICES[3] : r < 0.85 ? CHEATER_PRICE : LAZY_PRICE;
          const value = BigInt(maxTokens) * maxPrice * hops + hops * HOP_FEE + BigInt(int(1000));
          await setPrevRandao(1n + BigInt(int(2 ** 31)));
          await send(cl, () => market.connect(cl).submitJob(1, firstShard, maxTokens, maxPrice, "0x", { value }));
          money.get(cl.address).paidIn += value;
          const jobId = await market.jobCount();
          const terms = (await market.queryFilter(market.filters.JobSubmitted(jobId)))[0].args.terms;
          const t = await market.decodeTerms(terms);
          const decoded = { escrow: t.escrow, maxTokens: t.maxTokens, route: t.route.map((h) => ({ node: h.node, pricePerToken: h.pricePerToken })) };
          jobs.push({ jobId, terms, decoded, client: cl, served: rand() < 0.6 });
          return true;
        },
        async commit() {
          const open = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            if (Number(s.status) !== JobStatus.Open || now + 1 > Number(s.timestamp) + PARAMS.commitTimeout) continue;
            for (let p = 0; p < j.decoded.route.length; p++) {
              if (!((Number(s.committedMask) >> p) & 1) && j.decoded.route[p].node !== lazy.address) open.push([j, p]);
            }
          }
          if (open.length === 0) return false;
          return commitHop(...choose(open));
        },
        async checkpoint() {
          const open = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            if (j.served && Number(s.status) === JobStatus.Open && Number(s.billedTokens) < Number(j.decoded.maxTokens)) {
              if (now + 1 <= Number(s.timestamp) + PARAMS.commitTimeout) open.push([j, Number(s.billedTokens)]);
            }
          }
          if (open.length === 0) return false;
          const [j, billed] = choose(open);
          const tokens = billed + 1 + int(Number(j.decoded.maxTokens) - billed);
          const node = signerOfAddress(j.decoded.route[0].node);
          await send(node, async () => market.connect(node).checkpointReceipt(j.jobId, j.terms, await receipt(market, j.client, j.jobId, tokens)));
          return true;
        },
        async challenge() {
          const ready = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            if (Number(s.status) === JobStatus.Committed && now + 1 < Number(s.timestamp) + PARAMS.challengeWindow) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          const who = rand() < 0.5 ? j.client : other;
          await send(who, () => market.connect(who).challenge(j.jobId, j.terms, { value: CHALLENGE_BOND }));
          money.get(who.address).paidIn += CHALLENGE_BOND;
          return true;
        },
        async sample() {
          const ready = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            if (Number(s.status) !== JobStatus.Committed || now + 1 >= Number(s.timestamp) + PARAMS.challengeWindow) continue;
            const [available, sampled] = await market.auditDraw(j.jobId);
            if (available && sampled) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await send(other, () => market.connect(other).sampleAudit(j.jobId, j.terms));
          return true;
        },
        async openAudit() {
          const ready = [];
          const block = await ethers.provider.getBlockNumber();
          for (const j of jobs) {
            const s = await stateOf(j);
            if (Number(s.status) !== JobStatus.Disputed || audits.has(Number(j.jobId))) continue;
            const latest = Number(s.timestamp) + PARAMS.disputeTimeout - COURT_PARAMS.commitWindow - COURT_PARAMS.revealWindow - 2;
            if (now + 1 <= latest && Number(await market.disputeBlockOf(j.jobId)) <= block) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          const { logs } = await send(other, () => court.connect(other).openAudit(j.jobId, j.terms));
          const opened = logs.filter((l) => l.name === "AuditOpened");
          if (opened.length === 0) return true; // anchored to a fresh block; a later call opens it
          const seats = opened.flatMap((l) => [...l.args.verifiers].map((v) => ({ p: Number(l.args.position), verifier: v, committed: false, revealed: false })));
          audits.set(Number(j.jobId), { job: j, commitDeadline: now + COURT_PARAMS.commitWindow, revealDeadline: now + COURT_PARAMS.commitWindow + COURT_PARAMS.revealWindow, seats });
          return true;
        },
        async resolve() {
          const ready = [...audits.values()].filter((a) => !a.resolved && now + 1 > a.revealDeadline);
          if (ready.length === 0) return false;
          const a = choose(ready);
          await send(other, () => court.connect(other).resolve(a.job.jobId, a.job.terms), a.job);
          a.resolved = true;
          return true;
        },
        async finalize() {
          const ready = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            const st = Number(s.status);
            if (st === JobStatus.Committed && now + 1 >= Number(s.timestamp) + PARAMS.challengeWindow) ready.push(j);
            if (st === JobStatus.Disputed && now + 1 >= Number(s.timestamp) + PARAMS.disputeTimeout) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await send(other, () => market.connect(other).finalize(j.jobId, j.terms), j);
          return true;
        },
        async cancel() {
          const ready = [];
          for (const j of jobs) {
            const s = await stateOf(j);
            if (Number(s.status) === JobStatus.Open && now + 1 > Number(s.timestamp) + PARAMS.commitTimeout) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          // The client itself cancels: it would collect a slash if any came its way.
          await send(j.client, () => market.connect(j.client).cancel(j.jobId, j.terms), j);
          return true;
        },
        async advance() {
          await advance(rand() < 0.1 ? 4000 : 1 + int(900));
          return true;
        },
      };
      const schedule = [
        ...Array(4).fill("submit"),
        ...Array(5).fill("commit"),
        "checkpoint",
        ...Array(2).fill("challenge"),
        ...Array(2).fill("sample"),
        ...Array(2).fill("openAudit"),
        ...Array(2).fill("resolve"),
        ...Array(2).fill("finalize"),
        ...Array(2).fill("cancel"),
        ...Array(3).fill("advance"),
      ];
      for (let done = 0; done < 60; ) {
        const name = choose(schedule);
        if (await actions[name]()) {
          counts[name] = (counts[name] ?? 0) + 1;
          done++;
          await duties(false);
          await checkInvariants();
        }
      }
      // Drain: let every window pass, resolve what was opened, settle every job.
      for (let round = 0; round < 40; round++) {
        await advance(700);
        while (await actions.resolve()) counts.resolve = (counts.resolve ?? 0) + 1;
        while (await actions.finalize()) counts.finalize = (counts.finalize ?? 0) + 1;
        while (await actions.cancel()) counts.cancel = (counts.cancel ?? 0) + 1;
        await checkInvariants();
        const states = await Promise.all(jobs.map(async (j) => Number((await stateOf(j)).status)));
        if (states.every((st) => st === JobStatus.Finalized || st === JobStatus.Cancelled) && [...audits.values()].every((a) => a.resolved)) break;
      }
      console.log(`      actions: ${JSON.stringify(counts)}; jobs ${jobs.length}, audits ${audits.size}`);
      for (const j of jobs) expect([JobStatus.Finalized, JobStatus.Cancelled]).to.include(Number((await stateOf(j)).status));
      // Every node was credited exactly what the settlements owed it (nothing twice, nothing lost).
      for (const s of nodeAccounts) expect((await registry.getNode(s.address)).earnings, `earnings of ${s.address}`).to.equal(expectedEarnings.get(s.address));
      // Honest bonds never moved; the cheater or the lazy node paid for what went wrong.
      await expectHonestWhole(registry, bondsAtStart);
      // Each client (and the outside challenger) ends with exactly start - gas - what it paid in + what the
      // events gave back to it: refunds, challenge bonds returned, court payouts. Nothing else reaches it.
      for (const [address, m] of money) {
        const end = await balanceOf(address);
        expect(end, `balance of ${address}`).to.equal(m.start - m.gas - m.paidIn + m.back);
      }
      expect(jobs.length).to.be.gte(5);
      expect(counts.commit ?? 0).to.be.gte(5);
    });
  });
});
