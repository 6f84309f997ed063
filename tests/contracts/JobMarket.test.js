// JobMarket: submission and matching, commits and receipts, finalize, cancel, audits, withdrawals.
// Fixture routes start at shard 1, so a job's positions 0, 1, 2 are nodes[1], nodes[2], nodes[3].
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time, mine, setBalance, setPrevRandao } = require("@nomicfoundation/hardhat-network-helpers");
const {
  ENVELOPE_TYPES,
  domainOf,
  PARAMS,
  CHALLENGE_BOND,
  NODE_PRICES,
  NODE_STAKES,
  NO_RECEIPT,
  JobStatus,
  Mode,
  deployMarket,
  marketFixture,
  auditedMarketFixture,
  contractClient,
  contractNodeFixture,
  submit,
  commitAll,
  link,
  linkTerm,
  isSampled,
  anchorBlockOf,
  anchorHashOf,
  receipt,
  routeCost,
  expectMarketSolvent,
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const MAX_TOKENS = 64;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3]; // route from shard 1
const HOP_FEE = PARAMS.hopFee;
const FEES = 3n * HOP_FEE; // a 3-hop job's hop fees
const ESCROW = BigInt(MAX_TOKENS) * ROUTE_PRICE + FEES;
const BURN = "0x000000000000000000000000000000000000dEaD";
const BILLED = 40;
const IN = ethers.id("input commitment");
const OUT = ethers.id("output commitment");
const BPS = 10_000n;

/// Signs an envelope under an arbitrary domain (to test domain binding).
async function receiptWithDomain(market, signer, jobId, tokens, overrides) {
  const payloadHash = ethers.id(`frame-${tokens}`);
  const value = { jobId, step: tokens, tokens, payloadHash };
  const signature = await signer.signTypedData(await domainOf(market, overrides), ENVELOPE_TYPES, value);
  return { step: tokens, tokens, payloadHash, signature };
}

/// The address the market will recover for this receipt under job `jobId`.
async function recovered(market, jobId, r) {
  const digest = await market.envelopeDigest(jobId, r.step, r.tokens, r.payloadHash);
  return ethers.recoverAddress(digest, r.signature);
}

/// Expected packed terms.
function packTerms(client, modelId, firstShard, maxTokens, escrow, hops) {
  return ethers.solidityPacked(
    ["address", "uint32", "uint8", "uint32", "uint96", ...hops.flatMap(() => ["address", "uint64"])],
    [client, modelId, firstShard, maxTokens, escrow, ...hops.flatMap((h) => [h.node, h.price])],
  );
}

async function openJobFixture() {
  const f = await marketFixture();
  const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS });
  const deadline = Number((await f.market.getJob(job.jobId)).timestamp) + PARAMS.commitTimeout;
  const route = [f.nodes[1], f.nodes[2], f.nodes[3]];
  return { ...f, job, deadline, route };
}

async function committedJobFixture() {
  const f = await openJobFixture();
  await commitAll(f.market, f.nodes, f.job, await receipt(f.market, f.client, f.job.jobId, BILLED));
  const endsAt = Number((await f.market.getJob(f.job.jobId)).timestamp) + PARAMS.challengeWindow;
  return { ...f, endsAt };
}

async function auditedCommittedFixture() {
  const f = await auditedMarketFixture();
  const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS });
  await commitAll(f.market, f.nodes, job, await receipt(f.market, f.client, job.jobId, BILLED));
  const endsAt = Number((await f.market.getJob(job.jobId)).timestamp) + PARAMS.challengeWindow;
  return { ...f, job, endsAt, route: [f.nodes[1], f.nodes[2], f.nodes[3]] };
}

async function disputedJobFixture() {
  const f = await auditedCommittedFixture();
  await f.market.connect(f.auditor).holdForAudit(f.job.jobId, f.job.terms);
  const heldAt = Number((await f.market.getJob(f.job.jobId)).timestamp);
  return { ...f, heldAt };
}

/// A job of a contract client that rejects payments, committed and past its challenge window.
async function creditedRefundFixture() {
  const f = await marketFixture();
  const c = await contractClient("rejecting");
  await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
  const job = await submit(f.market, c, { maxTokens: MAX_TOKENS });
  await commitAll(f.market, f.nodes, job, await receipt(f.market, c.wallet, job.jobId, BILLED));
  await time.increase(PARAMS.challengeWindow);
  const refund = ESCROW - ROUTE_PRICE * BigInt(BILLED) - FEES;
  await expect(f.market.connect(f.other).finalize(job.jobId, job.terms))
    .to.emit(f.market, "RefundCredited")
    .withArgs(c.address, refund);
  return { ...f, c, job, refund };
}

/// Deploys a registry for the next-but-one address and returns a deploy() for a JobMarket with `params`.
async function marketDeployer({ delay = 365 * 86400, registryFor } = {}) {
  const [deployer] = await ethers.getSigners();
  const nonce = await ethers.provider.getTransactionCount(deployer.address);
  const predicted = registryFor ?? ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 1 });
  const registry = await ethers.deployContract("NodeRegistry", [predicted, ONE, delay]);
  const factory = await ethers.getContractFactory("JobMarket");
  const deploy = (p = {}) => {
    const q = {
      auditor: ethers.ZeroAddress,
      commitTimeout: 3600,
      challengeWindow: 600,
      disputeTimeout: 3600,
      miss: 1000,
      fraud: 5000,
      auditRate: 0,
      hopFee: 0n,
      challengeBond: 0n,
      ...p,
    };
    return factory.deploy(
      registry,
      q.auditor,
      q.commitTimeout,
      q.challengeWindow,
      q.disputeTimeout,
      q.miss,
      q.fraud,
      q.auditRate,
      q.hopFee,
      q.challengeBond,
    );
  };
  return { registry, factory, deploy };
}

describe("JobMarket", function () {
  describe("constructor", function () {
    it("stores the registry, auditor and parameters", async function () {
      const { registry, market, auditor } = await loadFixture(auditedMarketFixture);
      expect(await market.registry()).to.equal(await registry.getAddress());
      expect(await registry.jobMarket()).to.equal(await market.getAddress());
      expect(await market.auditor()).to.equal(auditor.address);
      const p = await market.parameters();
      expect(p.map(Number)).to.deep.equal([
        PARAMS.commitTimeout,
        PARAMS.challengeWindow,
        PARAMS.disputeTimeout,
        PARAMS.missSlashBps,
        PARAMS.fraudSlashBps,
      ]);
      expect(await market.auditRateBps()).to.equal(0);
      expect(await market.hopFee()).to.equal(HOP_FEE);
      expect(await market.challengeBond()).to.equal(CHALLENGE_BOND);
      expect(await market.BURN_ADDRESS()).to.equal(BURN);
      expect(await market.CHALLENGE_VERIFIER_BPS()).to.equal(5000);
      expect(await market.jobCount()).to.equal(0);
      expect(await market.totalCredits()).to.equal(0);
    });

    it("rejects a hop fee above 64 bits, accepts the 64-bit maximum", async function () {
      let d = await marketDeployer();
      await expect(d.deploy({ hopFee: 1n << 64n })).to.be.revertedWithCustomError(d.factory, "InvalidParameter").withArgs("hopFee");
      d = await marketDeployer();
      const market = await d.deploy({ hopFee: (1n << 64n) - 1n });
      expect(await market.hopFee()).to.equal((1n << 64n) - 1n);
    });

    it("rejects a challenge bond above 96 bits or without an auditor, accepts the 96-bit maximum with one", async function () {
      const [, , , , , , auditor] = await ethers.getSigners();
      let d = await marketDeployer();
      await expect(d.deploy({ challengeBond: 1n })).to.be.revertedWithCustomError(d.factory, "InvalidParameter").withArgs("challengeBond");
      d = await marketDeployer();
      await expect(d.deploy({ auditor: auditor.address, challengeBond: 1n << 96n }))
        .to.be.revertedWithCustomError(d.factory, "InvalidParameter")
        .withArgs("challengeBond");
      d = await marketDeployer();
      const market = await d.deploy({ auditor: auditor.address, challengeBond: (1n << 96n) - 1n });
      expect(await market.challengeBond()).to.equal((1n << 96n) - 1n);
    });

    it("rejects an audit rate above 10000 bps or without an auditor, accepts 10000 with one", async function () {
      const [, , , , , , auditor] = await ethers.getSigners();
      let d = await marketDeployer();
      await expect(d.deploy({ auditor: auditor.address, auditRate: 10_001 }))
        .to.be.revertedWithCustomError(d.factory, "InvalidParameter")
        .withArgs("auditRateBps");
      d = await marketDeployer();
      await expect(d.deploy({ auditRate: 1 })).to.be.revertedWithCustomError(d.factory, "InvalidParameter").withArgs("auditRateBps");
      d = await marketDeployer();
      const market = await d.deploy({ auditor: auditor.address, auditRate: 10_000 });
      expect(await market.auditRateBps()).to.equal(10_000);
    });

    it("rejects a registry bound to another JobMarket", async function () {
      const [, , , , , , , other] = await ethers.getSigners();
      const { factory, deploy } = await marketDeployer({ registryFor: other.address });
      await expect(deploy()).to.be.revertedWithCustomError(factory, "InvalidParameter").withArgs("registry");
    });

    for (const [name, key, max] of [
      ["commitTimeout", "commitTimeout", 30 * 86400],
      ["challengeWindow", "challengeWindow", 30 * 86400],
      ["disputeTimeout", "disputeTimeout", 30 * 86400],
    ]) {
      it(`rejects a ${name} of zero or above 30 days, accepts 30 days`, async function () {
        for (const bad of [0, max + 1]) {
          const { factory, deploy } = await marketDeployer();
          await expect(deploy({ [key]: bad }))
            .to.be.revertedWithCustomError(factory, "InvalidParameter")
            .withArgs(name);
        }
        const { deploy } = await marketDeployer();
        const market = await deploy({ [key]: max });
        const p = await market.parameters();
        expect(p[["commitTimeout", "challengeWindow", "disputeTimeout"].indexOf(key)]).to.equal(max);
      });
    }

    it("rejects slash shares above 10000 bps, accepts 10000", async function () {
      // A reverted deployment is still mined and uses the nonce, so each attempt gets a fresh registry.
      let d = await marketDeployer();
      await expect(d.deploy({ miss: 10_001 })).to.be.revertedWithCustomError(d.factory, "InvalidParameter").withArgs("missSlashBps");
      d = await marketDeployer();
      await expect(d.deploy({ fraud: 10_001 }))
        .to.be.revertedWithCustomError(d.factory, "InvalidParameter")
        .withArgs("fraudSlashBps");
      d = await marketDeployer();
      const market = await d.deploy({ miss: 10_000, fraud: 10_000 });
      const p = await market.parameters();
      expect([p.missSlashBps, p.fraudSlashBps]).to.deep.equal([10_000n, 10_000n]);
    });

    it("rejects an unbonding delay shorter than commit + challenge + dispute, accepts exactly that", async function () {
      const sum = 3600 + 600 + 3600;
      const short = await marketDeployer({ delay: sum - 1 });
      await expect(short.deploy()).to.be.revertedWithCustomError(short.factory, "InvalidParameter").withArgs("unbondingDelay");
      const exact = await marketDeployer({ delay: sum });
      const market = await exact.deploy();
      expect(await market.registry()).to.equal(await exact.registry.getAddress());
    });
  });

  describe("submitJob", function () {
    it("escrows, matches one node per shard from firstShard and emits the packed terms", async function () {
      const { market, client, nodes } = await loadFixture(marketFixture);
      const meta = ethers.toUtf8Bytes('{"eps":8,"delta":1e-5}');
      expect(await market.connect(client).submitJob.staticCall(1, 1, MAX_TOKENS, NODE_PRICES[3], meta, { value: ESCROW })).to.equal(1);
      const t = (await time.latest()) + 5;
      await time.setNextBlockTimestamp(t);
      const tx = market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], meta, { value: ESCROW });
      const hops = [1, 2, 3].map((s) => ({ node: nodes[s].address, price: NODE_PRICES[s] }));
      const terms = packTerms(client.address, 1, 1, MAX_TOKENS, ESCROW, hops);
      await expect(tx).to.emit(market, "JobSubmitted").withArgs(1, client.address, terms, ethers.hexlify(meta));
      await expect(tx).to.changeEtherBalances([client, market], [-ESCROW, ESCROW]);
      const job = await market.getJob(1);
      expect(job.termsHash).to.equal(await market.hashTerms(1, terms));
      expect(job.termsHash).to.equal(ethers.dataSlice(ethers.keccak256(ethers.solidityPacked(["uint256", "bytes"], [1, terms])), 0, 20));
      expect([job.status, job.committedMask, job.billedTokens, job.timestamp]).to.deep.equal([
        BigInt(JobStatus.Open),
        0n,
        0n,
        BigInt(t),
      ]);
      expect(await market.jobCount()).to.equal(1);

      const d = await market.decodeTerms(terms);
      expect([d.client, d.modelId, d.firstShard, d.maxTokens, d.escrow]).to.deep.equal([client.address, 1n, 1n, 64n, ESCROW]);
      expect(d.route.map((h) => [h.node, h.pricePerToken])).to.deep.equal(hops.map((h) => [h.node, h.price]));
    });

    it("numbers jobs from 1, keeps any overpayment in escrow, and routes from shard 0 over all shards", async function () {
      const { market, client, client2, nodes } = await loadFixture(marketFixture);
      const a = await submit(market, client, { extra: 12345n });
      const b = await submit(market, client2, { firstShard: 0, maxTokens: 3 });
      expect([a.jobId, b.jobId]).to.deep.equal([1n, 2n]);
      expect(a.decoded.escrow).to.equal(ESCROW + 12345n);
      expect(b.decoded.client).to.equal(client2.address);
      expect(b.decoded.route.map((h) => h.node)).to.deep.equal(nodes.map((n) => n.address));
      expect(b.decoded.escrow).to.equal(3n * (ROUTE_PRICE + NODE_PRICES[0]) + 4n * HOP_FEE);
      expect(await ethers.provider.getBalance(market)).to.equal(a.escrow + b.escrow);
    });

    it("picks each hop from the shard's pool by the prevrandao/job-id seed, skipping prices above the limit", async function () {
      const { registry, market, client, nodes, signers } = await loadFixture(marketFixture);
      // Shard 2 pool: nodes[2] @3 gwei, then three more; the one at index 2 is above the limit.
      const extra = [
        [signers[9], 2_500_000_000n],
        [signers[10], 9_000_000_000n],
        [signers[11], 2_200_000_000n],
      ];
      for (const [s, price] of extra) await registry.connect(s).registerNode(1, 2, "http://x", price, ethers.id("k"), { value: ONE });
      const pool = [[nodes[2].address, NODE_PRICES[2]], ...extra.map(([s, p]) => [s.address, p])];
      const maxPrice = 5_000_000_000n;
      const coder = ethers.AbiCoder.defaultAbiCoder();
      const expectedPick = (randao, jobId) => {
        const seed = ethers.keccak256(coder.encode(["uint256", "uint256"], [randao, jobId]));
        const start = Number(BigInt(ethers.keccak256(coder.encode(["uint256", "uint8"], [seed, 2]))) % 4n);
        for (let k = 0; k < 4; k++) {
          const [node, price] = pool[(start + k) % 4];
          if (price <= maxPrice) return { start, node, price };
        }
        throw new Error("unreachable");
      };
      // Find prevrandao values for which the pick starts at each pool index (index 2 is skipped to 3).
      const seen = new Set();
      let randao = 1n;
      for (let jobId = 1n; seen.size < 4; randao++) {
        const want = expectedPick(randao, jobId);
        if (seen.has(want.start)) continue;
        seen.add(want.start);
        await setPrevRandao(randao);
        const job = await submit(market, client, { maxPrice, value: ONE });
        expect(job.jobId).to.equal(jobId);
        const hop = job.decoded.route[1];
        expect([hop.node, hop.pricePerToken]).to.deep.equal([want.node, want.price]);
        if (want.start === 2) expect(hop.node).to.equal(signers[11].address);
        expect(job.decoded.route[0].node).to.equal(nodes[1].address);
        expect(job.decoded.route[2].node).to.equal(nodes[3].address);
        jobId++;
      }
    });

    it("rejects zero maxTokens and metadata over 256 bytes, accepts 256 bytes", async function () {
      const { market, client } = await loadFixture(marketFixture);
      await expect(market.connect(client).submitJob(1, 1, 0, NODE_PRICES[3], "0x", { value: ESCROW }))
        .to.be.revertedWithCustomError(market, "ZeroMaxTokens")
        .withArgs();
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], new Uint8Array(257), { value: ESCROW }))
        .to.be.revertedWithCustomError(market, "MetadataTooLong")
        .withArgs(257);
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], new Uint8Array(256), { value: ESCROW }))
        .to.emit(market, "JobSubmitted")
        .withArgs(1, client.address, (t) => t.length === 2 + 2 * (41 + 3 * 28), ethers.hexlify(new Uint8Array(256)));
    });

    it("requires escrow of maxTokens x the route's price sum + hops x hopFee", async function () {
      const { market, client } = await loadFixture(marketFixture);
      for (const short of [ESCROW - 1n, ESCROW - FEES]) {
        await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", { value: short }))
          .to.be.revertedWithCustomError(market, "EscrowTooSmall")
          .withArgs(ESCROW, short);
      }
      // A one-hop job owes one hop fee.
      const oneHop = BigInt(MAX_TOKENS) * NODE_PRICES[3] + HOP_FEE;
      await expect(market.connect(client).submitJob(1, 3, MAX_TOKENS, NODE_PRICES[3], "0x", { value: oneHop - 1n }))
        .to.be.revertedWithCustomError(market, "EscrowTooSmall")
        .withArgs(oneHop, oneHop - 1n);
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", { value: ESCROW })).to.emit(
        market,
        "JobSubmitted",
      );
    });

    it("rejects escrow above 96 bits, accepts the 96-bit maximum", async function () {
      const { market, client } = await loadFixture(marketFixture);
      await setBalance(client.address, 1n << 100n);
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", { value: 1n << 96n }))
        .to.be.revertedWithCustomError(market, "EscrowTooLarge")
        .withArgs(1n << 96n);
      const job = await submit(market, client, { value: (1n << 96n) - 1n });
      expect(job.decoded.escrow).to.equal((1n << 96n) - 1n);
    });

    it("passes the registry's matching errors through", async function () {
      const { registry, market, client } = await loadFixture(marketFixture);
      await expect(market.connect(client).submitJob(7, 0, 1, 1n, "0x"))
        .to.be.revertedWithCustomError(registry, "UnknownModel")
        .withArgs(7);
      await expect(market.connect(client).submitJob(1, 4, 1, 1n, "0x"))
        .to.be.revertedWithCustomError(registry, "InvalidShard")
        .withArgs(1, 4);
      await expect(market.connect(client).submitJob(1, 1, 1, NODE_PRICES[3] - 1n, "0x", { value: ONE }))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
    });
  });

  describe("commit", function () {
    it("records one position's commit and the client's receipt", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      const before = await market.getJob(job.jobId);
      const r = await receipt(market, client, job.jobId, BILLED);
      await expect(market.connect(route[1]).commit(job.jobId, job.terms, 1, IN, OUT, r))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 1, IN, OUT, BILLED);
      const after = await market.getJob(job.jobId);
      expect([after.status, after.committedMask, after.billedTokens, after.timestamp, after.termsHash]).to.deep.equal([
        BigInt(JobStatus.Open),
        0b010n,
        BigInt(BILLED),
        before.timestamp,
        before.termsHash,
      ]);
    });

    it("moves the job to Committed at the last commit, timestamped with that block", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      const id = job.jobId;
      await market.connect(route[2]).commit(id, job.terms, 2, link(id, 2), link(id, 3), NO_RECEIPT);
      await market.connect(route[0]).commit(id, job.terms, 0, link(id, 0), link(id, 1), NO_RECEIPT);
      const t = (await time.latest()) + 100;
      await time.setNextBlockTimestamp(t);
      const last = market.connect(route[1]).commit(id, job.terms, 1, link(id, 1), link(id, 2), await receipt(market, client, id, 7));
      await expect(last).not.to.emit(market, "JobDisputed");
      const j = await market.getJob(job.jobId);
      expect([j.status, j.committedMask, j.billedTokens, j.timestamp]).to.deep.equal([
        BigInt(JobStatus.Committed),
        0b111n,
        7n,
        BigInt(t),
      ]);
    });

    it("bills the highest receipt; lower or empty receipts are accepted without a signature check", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, client, job.jobId, 20)))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 0, IN, OUT, 20);
      await expect(market.connect(route[1]).commit(job.jobId, job.terms, 1, IN, OUT, await receipt(market, client, job.jobId, 40)))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 1, IN, OUT, 40);
      // Not raising the count: not verified, so even a garbage signature passes and changes nothing.
      const stale = { step: 30, tokens: 30, payloadHash: ethers.ZeroHash, signature: "0x1234" };
      await expect(market.connect(route[2]).commit(job.jobId, job.terms, 2, IN, OUT, stale))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 2, IN, OUT, 40);
      expect((await market.getJob(job.jobId)).billedTokens).to.equal(40);
    });

    it("accepts an empty receipt when nothing was billed yet", async function () {
      const { market, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 0, IN, OUT, 0);
      expect((await market.getJob(job.jobId)).billedTokens).to.equal(0);
    });

    it("accepts a receipt for exactly maxTokens", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, client, job.jobId, MAX_TOKENS)))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 0, IN, OUT, MAX_TOKENS);
    });

    it("rejects an unknown job and terms that do not match", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(99, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "UnknownJob")
        .withArgs(99);
      // Raise the escrow field (bytes 29..41) and, separately, the first hop's price.
      const bytes = ethers.getBytes(job.terms);
      const richer = Uint8Array.from(bytes);
      richer[40] ^= 1;
      const pricier = Uint8Array.from(bytes);
      pricier[41 + 27] ^= 1;
      for (const altered of [richer, pricier, bytes.slice(0, bytes.length - 28)]) {
        await expect(market.connect(route[0]).commit(job.jobId, altered, 0, IN, OUT, NO_RECEIPT))
          .to.be.revertedWithCustomError(market, "TermsMismatch")
          .withArgs(job.jobId);
      }
      // The terms of job 1 do not open job 2 (same route, one wei more escrow).
      const other = await submit(market, client, { extra: 1n });
      await expect(market.connect(route[0]).commit(other.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(other.jobId);
    });

    it("rejects commits to a Committed or Cancelled job", async function () {
      const { market, nodes, client, job, route } = await loadFixture(openJobFixture);
      await commitAll(market, nodes, job);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Committed);
      const second = await submit(market, client);
      await time.increase(PARAMS.commitTimeout + 1);
      await market.cancel(second.jobId, second.terms);
      await expect(market.connect(route[0]).commit(second.jobId, second.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(second.jobId, JobStatus.Cancelled);
    });

    it("accepts a commit exactly at the deadline", async function () {
      const { market, job, route, deadline } = await loadFixture(openJobFixture);
      await time.setNextBlockTimestamp(deadline);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT)).to.emit(market, "JobCommitted");
    });

    it("rejects a commit one second after the deadline", async function () {
      const { market, job, route, deadline } = await loadFixture(openJobFixture);
      await time.setNextBlockTimestamp(deadline + 1);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "CommitDeadlinePassed")
        .withArgs(job.jobId, deadline);
    });

    it("rejects a position outside the route, a caller not at the position, and a second commit", async function () {
      const { market, job, route, other } = await loadFixture(openJobFixture);
      for (const p of [3, 255]) {
        await expect(market.connect(route[0]).commit(job.jobId, job.terms, p, IN, OUT, NO_RECEIPT))
          .to.be.revertedWithCustomError(market, "InvalidPosition")
          .withArgs(job.jobId, p);
      }
      await expect(market.connect(route[1]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "NotRouteNode")
        .withArgs(job.jobId, route[1].address, 0);
      await expect(market.connect(other).commit(job.jobId, job.terms, 2, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "NotRouteNode")
        .withArgs(job.jobId, other.address, 2);
      await market.connect(route[1]).commit(job.jobId, job.terms, 1, IN, OUT, NO_RECEIPT);
      await expect(market.connect(route[1]).commit(job.jobId, job.terms, 1, IN, OUT, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "AlreadyCommitted")
        .withArgs(job.jobId, 1);
    });

    it("rejects a receipt above maxTokens even when validly signed", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, client, job.jobId, MAX_TOKENS + 1)))
        .to.be.revertedWithCustomError(market, "TokensExceedMax")
        .withArgs(MAX_TOKENS + 1, MAX_TOKENS);
    });

    it("rejects a receipt signed by anyone but the client", async function () {
      const { market, job, route, other } = await loadFixture(openJobFixture);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, other, job.jobId, 5)))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(job.jobId, other.address);
      // The node signing for itself fails the same way.
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, route[0], job.jobId, 5)))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(job.jobId, route[0].address);
    });

    it("binds receipts to the job id, the chain id, the contract and the signed token count", async function () {
      const { registry, market, client, job, route } = await loadFixture(openJobFixture);
      const forged = [
        await receipt(market, client, job.jobId + 1n, 5), // another job
        await receiptWithDomain(market, client, job.jobId, 5, { chainId: 1 }), // another chain
        await receiptWithDomain(market, client, job.jobId, 5, { verifyingContract: await registry.getAddress() }), // another contract
        await receiptWithDomain(market, client, job.jobId, 5, { version: "2" }),
        { ...(await receipt(market, client, job.jobId, 5)), tokens: 50 }, // tokens raised after signing
      ];
      for (const r of forged) {
        const signer = await recovered(market, job.jobId, r);
        expect(signer).to.not.equal(client.address);
        await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, r))
          .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
          .withArgs(job.jobId, signer);
      }
    });

    it("rejects malformed and malleable signatures with a zero signer", async function () {
      const { market, client, job, route } = await loadFixture(openJobFixture);
      const good = await receipt(market, client, job.jobId, 5);
      const sig = ethers.Signature.from(good.signature);
      const n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
      const highS = ethers.concat([sig.r, ethers.toBeHex(n - BigInt(sig.s), 32), sig.v === 27 ? "0x1c" : "0x1b"]);
      for (const signature of ["0x", ethers.dataSlice(good.signature, 0, 64), highS]) {
        await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, { ...good, signature }))
          .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
          .withArgs(job.jobId, ethers.ZeroAddress);
      }
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, good)).to.emit(market, "JobCommitted");
    });
  });


  describe("commit: commitment links", function () {
    /// Commits position p of job with (input, output); `bad` makes the input side of boundary p lie.
    const commitAt = (market, route, job, p, bad = false) =>
      market
        .connect(route[p])
        .commit(job.jobId, job.terms, p, bad ? ethers.id(`bad-${p}`) : link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);

    const PERMUTATIONS = [
      [0, 1, 2],
      [0, 2, 1],
      [1, 0, 2],
      [1, 2, 0],
      [2, 0, 1],
      [2, 1, 0],
    ];

    it("keeps the XOR of the committed positions' link terms while Open, and frees the slot at completion", async function () {
      const { market, job, route } = await loadFixture(openJobFixture);
      const id = job.jobId;
      expect(await market.linksOf(id)).to.equal(ethers.ZeroHash);
      await commitAt(market, route, job, 1);
      // Position 1 contributes its input side of boundary 1 and its output side of boundary 2.
      const afterOne = BigInt(linkTerm(id, 1, link(id, 1))) ^ BigInt(linkTerm(id, 2, link(id, 2)));
      expect(BigInt(await market.linksOf(id))).to.equal(afterOne);
      await commitAt(market, route, job, 0); // boundary 1 now matched from both sides: its term cancels
      expect(BigInt(await market.linksOf(id))).to.equal(BigInt(linkTerm(id, 2, link(id, 2))));
      await commitAt(market, route, job, 2);
      expect(await market.linksOf(id)).to.equal(ethers.ZeroHash);
      expect((await market.getJob(id)).status).to.equal(JobStatus.Committed);
    });

    for (const order of PERMUTATIONS) {
      it(`commit order ${order.join(",")}: linked commitments complete the job as Committed`, async function () {
        const { market, job, route } = await loadFixture(openJobFixture);
        for (const p of order.slice(0, 2)) await commitAt(market, route, job, p);
        const tx = commitAt(market, route, job, order[2]);
        await expect(tx).not.to.emit(market, "JobDisputed");
        await expect(tx).not.to.emit(market, "CommitmentsMismatched");
        expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
        expect(await market.linksOf(job.jobId)).to.equal(ethers.ZeroHash);
      });

      for (const boundary of [1, 2]) {
        it(`commit order ${order.join(",")}: a mismatch at boundary ${boundary} disputes the job at the last commit`, async function () {
          const { market, job, route } = await loadFixture(openJobFixture);
          for (const p of order.slice(0, 2)) {
            await expect(commitAt(market, route, job, p, p === boundary)).not.to.emit(market, "JobDisputed");
          }
          const t = (await time.latest()) + 7;
          await time.setNextBlockTimestamp(t);
          const tx = commitAt(market, route, job, order[2], order[2] === boundary);
          await expect(tx).to.emit(market, "JobDisputed").withArgs(job.jobId);
          await expect(tx).to.emit(market, "CommitmentsMismatched").withArgs(job.jobId);
          await expect(tx).not.to.emit(market, "AuditSampled");
          const j = await market.getJob(job.jobId);
          expect([j.status, j.committedMask, j.timestamp]).to.deep.equal([BigInt(JobStatus.Disputed), 0b111n, BigInt(t)]);
          // The word now holds the dispute block, whose hash will seed the audit panels.
          const block = (await (await tx).wait()).blockNumber;
          expect(await market.linksOf(job.jobId)).to.equal(ethers.toBeHex(block, 32));
          expect(await market.disputeBlockOf(job.jobId)).to.equal(block);
        });
      }
    }

    it("an output that lies is caught like an input that lies", async function () {
      const { market, job, route } = await loadFixture(openJobFixture);
      const id = job.jobId;
      await market.connect(route[0]).commit(id, job.terms, 0, link(id, 0), ethers.id("not what position 1 got"), NO_RECEIPT);
      await commitAt(market, route, job, 1);
      await expect(commitAt(market, route, job, 2)).to.emit(market, "CommitmentsMismatched").withArgs(id);
    });

    it("ignores the outer ends: the first input and the last output are not links", async function () {
      const { market, job, route } = await loadFixture(openJobFixture);
      const id = job.jobId;
      await market.connect(route[0]).commit(id, job.terms, 0, ethers.id("anything"), link(id, 1), NO_RECEIPT);
      await market.connect(route[1]).commit(id, job.terms, 1, link(id, 1), link(id, 2), NO_RECEIPT);
      await expect(market.connect(route[2]).commit(id, job.terms, 2, link(id, 2), ethers.id("anything else"), NO_RECEIPT)).not.to.emit(
        market,
        "JobDisputed",
      );
      expect((await market.getJob(id)).status).to.equal(JobStatus.Committed);
    });

    it("values that would cancel out in a plain XOR still mismatch: each term names its boundary", async function () {
      // Boundary 1 carries X out and Y in, boundary 2 Y out and X in: without the boundary index in each
      // term, H(X) ^ H(Y) ^ H(Y) ^ H(X) would be zero.
      const { market, job, route } = await loadFixture(openJobFixture);
      const [id, X, Y] = [job.jobId, ethers.id("X"), ethers.id("Y")];
      await market.connect(route[0]).commit(id, job.terms, 0, link(id, 0), X, NO_RECEIPT);
      await market.connect(route[1]).commit(id, job.terms, 1, Y, Y, NO_RECEIPT);
      await expect(market.connect(route[2]).commit(id, job.terms, 2, X, link(id, 3), NO_RECEIPT)).to.emit(
        market,
        "CommitmentsMismatched",
      );
    });

    it("checks every boundary of a 4-hop route, and none of a 1-hop route", async function () {
      const { market, client, nodes } = await loadFixture(marketFixture);
      for (const breakAt of [undefined, 1, 2, 3]) {
        const job = await submit(market, client, { firstShard: 0, maxTokens: 2 });
        await commitAll(market, nodes, job, NO_RECEIPT, { breakAt });
        expect((await market.getJob(job.jobId)).status).to.equal(breakAt === undefined ? JobStatus.Committed : JobStatus.Disputed);
      }
      const single = await submit(market, client, { firstShard: 3, maxTokens: 2 });
      await expect(market.connect(nodes[3]).commit(single.jobId, single.terms, 0, IN, OUT, NO_RECEIPT)).not.to.emit(market, "JobDisputed");
      expect(await market.linksOf(single.jobId)).to.equal(ethers.ZeroHash);
    });

    it("cancel frees the accumulator of a partly committed job", async function () {
      const { market, job, route, deadline } = await loadFixture(openJobFixture);
      await commitAt(market, route, job, 0);
      expect(await market.linksOf(job.jobId)).to.not.equal(ethers.ZeroHash);
      await time.setNextBlockTimestamp(deadline + 1);
      await market.cancel(job.jobId, job.terms);
      expect(await market.linksOf(job.jobId)).to.equal(ethers.ZeroHash);
    });

    it("a mismatched job without an auditor is paid in full after the dispute timeout", async function () {
      const { registry, market, client, nodes } = await loadFixture(marketFixture);
      const job = await submit(market, client, { maxTokens: MAX_TOKENS });
      await commitAll(market, nodes, job, await receipt(market, client, job.jobId, BILLED), { breakAt: 2 });
      const disputedAt = Number((await market.getJob(job.jobId)).timestamp);
      await time.setNextBlockTimestamp(disputedAt + PARAMS.disputeTimeout - 1);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowOpen")
        .withArgs(job.jobId, disputedAt + PARAMS.disputeTimeout);
      const paid = ROUTE_PRICE * BigInt(BILLED) + FEES;
      await expect(market.finalize(job.jobId, job.terms)).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, ESCROW - paid);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(NODE_PRICES[2] * BigInt(BILLED) + HOP_FEE);
      // finalize frees the word.
      expect(await market.linksOf(job.jobId)).to.equal(ethers.ZeroHash);
      expect(await market.disputeBlockOf(job.jobId)).to.equal(0);
    });
  });

  describe("sampleAudit", function () {
    /// Market with an EOA auditor (signer 6) at `rate`; model 1 with nodes[s] on shard s. With `contractLast`,
    /// shard 3 is served by an AtomicCaller (nodes[3] deactivated), so its commit can share a transaction.
    async function sampledMarket(rate, { contractLast = false } = {}) {
      const signers = await ethers.getSigners();
      const [, client, n0, n1, n2, n3, auditor, other] = signers;
      const { registry, market } = await deployMarket({ auditor: auditor.address, params: { auditRateBps: rate } });
      await registry.registerModel("m", ethers.id("w"), 30, [0, 4, 12, 21, 30]);
      const nodes = [n0, n1, n2, n3];
      for (let s = 0; s < 4; s++) {
        await registry.connect(nodes[s]).registerNode(1, s, "http://n", NODE_PRICES[s], ethers.id("k"), { value: NODE_STAKES[s] });
      }
      let caller;
      if (contractLast) {
        caller = await ethers.deployContract("AtomicCaller");
        await registry.connect(n3).deactivate();
        const register = registry.interface.encodeFunctionData("registerNode", [1, 3, "http://c", NODE_PRICES[3], ethers.id("c")]);
        await caller.execute(registry, NODE_STAKES[3], register, { value: NODE_STAKES[3] });
      }
      return { registry, market, client, nodes, auditor, other, caller };
    }
    const rate10k = () => sampledMarket(10_000);
    const contractLast = () => sampledMarket(10_000, { contractLast: true });

    it("at rate 0 reverts SamplingDisabled; the draw is unavailable and the word is freed at completion", async function () {
      const { market, client, nodes, other } = await sampledMarket(0);
      const job = await submit(market, client);
      await commitAll(market, nodes, job);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
      expect(await market.linksOf(job.jobId)).to.equal(ethers.ZeroHash);
      await mine(1);
      expect(await market.auditDraw(job.jobId)).to.deep.equal([false, false]);
      await expect(market.connect(other).sampleAudit(job.jobId, job.terms)).to.be.revertedWithCustomError(market, "SamplingDisabled").withArgs();
    });

    it("the last commit never disputes a linked job; it records its block, and a later call draws from its hash", async function () {
      const { market, client, nodes, other } = await loadFixture(rate10k);
      for (const firstShard of [1, 3]) {
        const job = await submit(market, client, { firstShard });
        const hops = job.decoded.route.length;
        let last;
        for (let p = 0; p < hops; p++) {
          const tx = market.connect(nodes[firstShard + p]).commit(job.jobId, job.terms, p, link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);
          await expect(tx).not.to.emit(market, "JobDisputed");
          last = await tx;
        }
        const completed = (await last.wait()).blockNumber;
        expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
        expect(await anchorBlockOf(market, job.jobId)).to.equal(completed);
        expect(await market.disputeBlockOf(job.jobId)).to.equal(0);
        await mine(1); // the completing block's hash exists once a later block does
        expect(await market.auditDraw(job.jobId)).to.deep.equal([true, true]);
        const t = (await time.latest()) + 3;
        await time.setNextBlockTimestamp(t);
        const tx = market.connect(other).sampleAudit(job.jobId, job.terms);
        await expect(tx).to.emit(market, "JobDisputed").withArgs(job.jobId);
        await expect(tx).to.emit(market, "AuditSampled").withArgs(job.jobId);
        const sampledIn = (await (await tx).wait()).blockNumber;
        const j = await market.getJob(job.jobId);
        expect([j.status, j.committedMask, j.timestamp]).to.deep.equal([BigInt(JobStatus.Disputed), BigInt((1 << hops) - 1), BigInt(t)]);
        expect(await market.disputeBlockOf(job.jobId)).to.equal(sampledIn);
        expect(await market.auditDraw(job.jobId)).to.deep.equal([false, false]); // not Committed any more
      }
    });

    it("in the completing block itself the draw is unavailable: DrawUnavailable, and auditDraw agrees", async function () {
      const { market, client, nodes, caller } = await loadFixture(contractLast);
      const job = await submit(market, client);
      expect(job.decoded.route[2].node).to.equal(await caller.getAddress());
      for (let p = 0; p < 2; p++) {
        await market.connect(nodes[p + 1]).commit(job.jobId, job.terms, p, link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);
      }
      const commit = market.interface.encodeFunctionData("commit", [job.jobId, job.terms, 2, link(job.jobId, 2), ethers.id("out"), NO_RECEIPT]);
      const sample = market.interface.encodeFunctionData("sampleAudit", [job.jobId, job.terms]);
      const block = (await ethers.provider.getBlockNumber()) + 1;
      await expect(caller.executeBoth(market, commit, market, sample))
        .to.be.revertedWithCustomError(market, "DrawUnavailable")
        .withArgs(job.jobId, block);
      // The commit alone goes through; the draw waits for the next block.
      await caller.execute(market, 0, commit);
      await expect(market.sampleAudit(job.jobId, job.terms)).to.emit(market, "AuditSampled").withArgs(job.jobId);
    });

    it("draws up to 256 blocks after completion, not 257", async function () {
      const { market, client, nodes, other } = await loadFixture(rate10k);
      const a = await submit(market, client);
      await commitAll(market, nodes, a);
      const completed = await anchorBlockOf(market, a.jobId);
      await mine(255); // the next transaction is in block completed + 256
      await expect(market.connect(other).sampleAudit(a.jobId, a.terms)).to.emit(market, "AuditSampled");
      const b = await submit(market, client);
      await commitAll(market, nodes, b);
      const bCompleted = await anchorBlockOf(market, b.jobId);
      await mine(256); // next: completed + 257, the hash is gone
      await expect(market.connect(other).sampleAudit(b.jobId, b.terms))
        .to.be.revertedWithCustomError(market, "DrawUnavailable")
        .withArgs(b.jobId, bCompleted);
      expect(completed).to.be.lessThan(bCompleted);
    });

    it("at 5000 bps samples exactly when keccak(blockhash(completing block), jobId, 'audit') % 10000 < 5000", async function () {
      const { market, client, nodes, auditor, other } = await sampledMarket(5000);
      const seen = new Set();
      for (let i = 0; seen.size < 2; i++) {
        expect(i).to.be.lessThan(40); // each outcome has probability 1/2 per job
        const job = await submit(market, client);
        await setPrevRandao(BigInt(i) + 1n); // the last committer's prevrandao plays no part
        await commitAll(market, nodes, job);
        await mine(1);
        const want = isSampled(await anchorHashOf(market, job.jobId), job.jobId, 5000);
        seen.add(want);
        expect(await market.auditDraw(job.jobId)).to.deep.equal([true, want]);
        if (want) {
          await expect(market.connect(other).sampleAudit(job.jobId, job.terms)).to.emit(market, "AuditSampled").withArgs(job.jobId);
          // A sampled job is the auditor's to resolve, like a held one.
          await expect(market.connect(auditor).resolveDispute(job.jobId, job.terms, 0)).to.emit(market, "DisputeResolved");
        } else {
          await expect(market.connect(other).sampleAudit(job.jobId, job.terms))
            .to.be.revertedWithCustomError(market, "NotSampled")
            .withArgs(job.jobId);
          expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
        }
      }
    });

    it("a mismatched job is disputed for the mismatch, so it cannot be sampled", async function () {
      const { market, client, nodes } = await loadFixture(rate10k);
      const job = await submit(market, client);
      await commitAll(market, nodes, job, NO_RECEIPT, { breakAt: 1 });
      expect(await market.queryFilter(market.filters.CommitmentsMismatched(job.jobId))).to.have.length(1);
      expect(await market.auditDraw(job.jobId)).to.deep.equal([false, false]);
      await expect(market.sampleAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Disputed);
    });

    it("is open until one second before the challenge window ends", async function () {
      const { market, client, nodes } = await loadFixture(rate10k);
      for (const [offset, ok] of [
        [-1, true],
        [0, false],
      ]) {
        const job = await submit(market, client);
        await commitAll(market, nodes, job);
        const endsAt = Number((await market.getJob(job.jobId)).timestamp) + PARAMS.challengeWindow;
        await time.setNextBlockTimestamp(endsAt + offset);
        if (ok) await expect(market.sampleAudit(job.jobId, job.terms)).to.emit(market, "AuditSampled");
        else {
          await expect(market.sampleAudit(job.jobId, job.terms))
            .to.be.revertedWithCustomError(market, "ChallengeWindowClosed")
            .withArgs(job.jobId, endsAt);
        }
      }
    });

    it("rejects an unknown job, mismatched terms and an Open job", async function () {
      const { market, client } = await loadFixture(rate10k);
      const job = await submit(market, client);
      await expect(market.sampleAudit(9, job.terms)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(9);
      await expect(market.sampleAudit(job.jobId, "0x")).to.be.revertedWithCustomError(market, "TermsMismatch").withArgs(job.jobId);
      await expect(market.sampleAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Open);
    });
  });

  describe("finalize", function () {
    it("is closed one second before the challenge window ends", async function () {
      const { market, job, endsAt } = await loadFixture(committedJobFixture);
      await time.setNextBlockTimestamp(endsAt - 1);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowOpen")
        .withArgs(job.jobId, endsAt);
    });

    it("pays price x billed + the hop fee to every node and refunds the rest, exactly at the window end", async function () {
      const { registry, market, client, other, job, route, endsAt } = await loadFixture(committedJobFixture);
      const paid = ROUTE_PRICE * BigInt(BILLED) + FEES;
      const refund = ESCROW - paid;
      await time.setNextBlockTimestamp(endsAt);
      const tx = market.connect(other).finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, refund);
      await expect(tx).to.changeEtherBalances([client, market, registry, other], [refund, -refund, 0, 0]);
      await expect(tx).not.to.emit(market, "RefundCredited");
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED) + HOP_FEE);
      }
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Finalized);
      // What stays in the market is exactly the nodes' earnings.
      expect(await ethers.provider.getBalance(market)).to.equal(paid);
      expect(await market.creditOf(client.address)).to.equal(0);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });

    it("pays only the hop fees and refunds the rest, overpayment included, when nothing was billed", async function () {
      const { registry, market, nodes, client } = await loadFixture(marketFixture);
      const job = await submit(market, client, { extra: 777n });
      await commitAll(market, nodes, job);
      await time.increase(PARAMS.challengeWindow);
      const tx = market.finalize(job.jobId, job.terms);
      const refund = ESCROW + 777n - FEES;
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, 0, FEES, refund);
      await expect(tx).to.changeEtherBalances([client, market], [refund, -refund]);
      expect((await registry.getNode(nodes[0].address)).earnings).to.equal(0); // not on the route
      for (const n of nodes.slice(1)) expect((await registry.getNode(n.address)).earnings).to.equal(HOP_FEE);
    });

    it("with a hop fee of zero, a job billing nothing pays nothing and credits no earnings", async function () {
      const [, client, n1] = await ethers.getSigners();
      const { registry, market } = await deployMarket({ params: { hopFee: 0n } });
      await registry.registerModel("m", ethers.id("w"), 1, [0, 1]);
      await registry.connect(n1).registerNode(1, 0, "http://n", 5n, ethers.id("k"), { value: ONE });
      const job = await submit(market, client, { firstShard: 0, maxTokens: 3 });
      expect(job.escrow).to.equal(15n);
      await market.connect(n1).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT);
      await time.increase(PARAMS.challengeWindow);
      await expect(market.finalize(job.jobId, job.terms)).to.emit(market, "JobFinalized").withArgs(job.jobId, 0, 0, 15n);
      expect((await registry.getNode(n1.address)).earnings).to.equal(0);
    });

    it("rejects an unknown job, mismatched terms and a job that is not Committed", async function () {
      const { market, client, job } = await loadFixture(committedJobFixture);
      await expect(market.finalize(42, job.terms)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(42);
      await expect(market.finalize(job.jobId, ethers.concat([job.terms, "0x00"])))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
      const open = await submit(market, client);
      await expect(market.finalize(open.jobId, open.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(open.jobId, JobStatus.Open);
      await time.increase(PARAMS.commitTimeout + 1);
      await market.cancel(open.jobId, open.terms);
      await expect(market.finalize(open.jobId, open.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(open.jobId, JobStatus.Cancelled);
    });
  });

  describe("cancel", function () {
    /// Position 0 (nodes[1]) committed with a 40-token receipt; positions 1 and 2 never commit.
    async function partialJobFixture() {
      const f = await openJobFixture();
      await f.market
        .connect(f.route[0])
        .commit(f.job.jobId, f.job.terms, 0, IN, OUT, await receipt(f.market, f.client, f.job.jobId, BILLED));
      return f;
    }

    it("is not possible exactly at the commit deadline", async function () {
      const { market, job, deadline } = await loadFixture(partialJobFixture);
      await time.setNextBlockTimestamp(deadline);
      await expect(market.cancel(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "CommitWindowOpen")
        .withArgs(job.jobId, deadline);
    });

    it("one second later pays the committed node, slashes the missing ones (capped) to the burn address, refunds the rest", async function () {
      const { registry, market, client, other, job, route, deadline } = await loadFixture(partialJobFixture);
      const paid = NODE_PRICES[1] * BigInt(BILLED) + HOP_FEE;
      // 10% of a 3-4 ETH bond is far above what this job put at risk: each slash is capped at
      // price x maxTokens + hopFee.
      const slash1 = NODE_PRICES[2] * BigInt(MAX_TOKENS) + HOP_FEE;
      const slash2 = NODE_PRICES[3] * BigInt(MAX_TOKENS) + HOP_FEE;
      expect(slash1).to.be.lessThan((NODE_STAKES[2] * BigInt(PARAMS.missSlashBps)) / BPS);
      const slashed = slash1 + slash2;
      const refund = ESCROW - paid; // the slash is never refunded
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.connect(other).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b110, paid, slashed, refund);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[1].address, slash1);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[2].address, slash2);
      await expect(tx).to.changeEtherBalances([client, market, registry, other, BURN], [refund, paid - ESCROW, -slashed, 0, slashed]);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Cancelled);
      expect((await registry.getNode(route[0].address)).earnings).to.equal(paid);
      expect((await registry.getNode(route[0].address)).stake).to.equal(NODE_STAKES[1]);
      expect((await registry.getNode(route[1].address)).stake).to.equal(NODE_STAKES[2] - slash1);
      expect((await registry.getNode(route[2].address)).stake).to.equal(NODE_STAKES[3] - slash2);
      expect((await registry.getNode(route[1].address)).earnings).to.equal(0);
      expect(await ethers.provider.getBalance(market)).to.equal(paid);
      await expect(market.cancel(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Cancelled);
    });

    it("slashes unbonding stake too and pays nothing when no node committed; the client gets exactly its escrow", async function () {
      const { registry, market, client, job, route, deadline } = await loadFixture(openJobFixture);
      await registry.connect(route[0]).unbond(NODE_STAKES[1]); // all of it unbonding, still slashable
      const slashes = [1, 2, 3].map((s) => NODE_PRICES[s] * BigInt(MAX_TOKENS) + HOP_FEE);
      const slashed = slashes.reduce((a, b) => a + b);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b111, 0, slashed, ESCROW);
      await expect(tx).to.changeEtherBalances([client, market, registry, BURN], [ESCROW, -ESCROW, -slashed, slashed]);
      const n = await registry.getNode(route[0].address);
      expect([n.stake, n.unbonding]).to.deep.equal([0n, NODE_STAKES[1] - slashes[0]]);
    });

    it("slashes missSlashBps of the bond when that is below the cap", async function () {
      const { registry, market, client, nodes } = await loadFixture(marketFixture);
      // 200M tokens at 2-5 gwei put 0.4-1 ETH at risk per hop: above 10% of each 3-5 ETH bond.
      const maxTokens = 200_000_000;
      const job = await submit(market, client, { maxTokens });
      const deadline = Number((await market.getJob(job.jobId)).timestamp) + PARAMS.commitTimeout;
      const slashes = [1, 2, 3].map((s) => (NODE_STAKES[s] * BigInt(PARAMS.missSlashBps)) / BPS);
      [1, 2, 3].forEach((s, i) => expect(slashes[i]).to.be.lessThan(NODE_PRICES[s] * BigInt(maxTokens) + HOP_FEE));
      const slashed = slashes.reduce((a, b) => a + b);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b111, 0, slashed, job.escrow);
      await expect(tx).to.changeEtherBalances([client, BURN], [job.escrow, slashed]);
      for (const [i, s] of [1, 2, 3].entries()) {
        expect((await registry.getNode(nodes[s].address)).stake).to.equal(NODE_STAKES[s] - slashes[i]);
      }
    });

    it("with a miss slash of 0 bps slashes nothing and burns nothing", async function () {
      const [, client, n1] = await ethers.getSigners();
      const { registry, market } = await deployMarket({ params: { missSlashBps: 0 } });
      await registry.registerModel("m", ethers.id("w"), 1, [0, 1]);
      await registry.connect(n1).registerNode(1, 0, "http://n", 5n, ethers.id("k"), { value: ONE });
      const job = await submit(market, client, { firstShard: 0, maxTokens: 3 });
      await time.increase(PARAMS.commitTimeout + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 1, 0, 0, job.escrow);
      await expect(tx).not.to.emit(registry, "Slashed");
      await expect(tx).to.changeEtherBalances([client, BURN], [job.escrow, 0]);
    });

    it("rejects an unknown job, mismatched terms and a Committed job", async function () {
      const { market, job } = await loadFixture(committedJobFixture);
      await time.increase(PARAMS.commitTimeout + 1);
      await expect(market.cancel(5, job.terms)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(5);
      await expect(market.cancel(job.jobId, "0x")).to.be.revertedWithCustomError(market, "TermsMismatch").withArgs(job.jobId);
      await expect(market.cancel(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Committed);
    });
  });

  describe("holdForAudit", function () {
    it("holds a committed job one second before the window ends", async function () {
      const { market, auditor, job, endsAt } = await loadFixture(auditedCommittedFixture);
      await time.setNextBlockTimestamp(endsAt - 1);
      await expect(market.connect(auditor).holdForAudit(job.jobId, job.terms)).to.emit(market, "JobDisputed").withArgs(job.jobId);
      const j = await market.getJob(job.jobId);
      expect([j.status, j.committedMask, j.billedTokens, j.timestamp]).to.deep.equal([
        BigInt(JobStatus.Disputed),
        0b111n,
        BigInt(BILLED),
        BigInt(endsAt - 1),
      ]);
    });

    it("is closed exactly at the window end", async function () {
      const { market, auditor, job, endsAt } = await loadFixture(auditedCommittedFixture);
      await time.setNextBlockTimestamp(endsAt);
      await expect(market.connect(auditor).holdForAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowClosed")
        .withArgs(job.jobId, endsAt);
    });

    it("is reserved to the auditor, and to nobody when audits are disabled", async function () {
      const { market, job, other, nodes } = await loadFixture(auditedCommittedFixture);
      await expect(market.connect(other).holdForAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "NotAuditor")
        .withArgs(other.address);
      await expect(market.connect(nodes[1]).holdForAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "NotAuditor")
        .withArgs(nodes[1].address);
      const plain = await loadFixture(committedJobFixture);
      expect(await plain.market.auditor()).to.equal(ethers.ZeroAddress);
      await expect(plain.market.connect(plain.auditor).holdForAudit(plain.job.jobId, plain.job.terms))
        .to.be.revertedWithCustomError(plain.market, "NotAuditor")
        .withArgs(plain.auditor.address);
    });

    it("rejects an unknown job, mismatched terms, and jobs that are Open or already Disputed", async function () {
      const { market, auditor, client, job } = await loadFixture(auditedCommittedFixture);
      await expect(market.connect(auditor).holdForAudit(9, job.terms)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(9);
      await expect(market.connect(auditor).holdForAudit(job.jobId, "0x01"))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
      const open = await submit(market, client);
      await expect(market.connect(auditor).holdForAudit(open.jobId, open.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(open.jobId, JobStatus.Open);
      await time.increase(PARAMS.commitTimeout + 1);
      await market.cancel(open.jobId, open.terms);
      await expect(market.connect(auditor).holdForAudit(open.jobId, open.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(open.jobId, JobStatus.Cancelled);
    });

    it("records the dispute block; on a Disputed job restarts the dispute timeout and keeps that block", async function () {
      const { market, auditor, job } = await loadFixture(auditedCommittedFixture);
      const held = await (await market.connect(auditor).holdForAudit(job.jobId, job.terms)).wait();
      expect(await market.disputeBlockOf(job.jobId)).to.equal(held.blockNumber);
      expect(await anchorBlockOf(market, job.jobId)).to.equal(held.blockNumber);
      const t = (await time.latest()) + 1000; // past the challenge window: a Disputed job is not bound by it
      await time.setNextBlockTimestamp(t);
      await expect(market.connect(auditor).holdForAudit(job.jobId, job.terms)).to.emit(market, "JobDisputed").withArgs(job.jobId);
      const j = await market.getJob(job.jobId);
      expect([j.status, j.timestamp]).to.deep.equal([BigInt(JobStatus.Disputed), BigInt(t)]);
      expect(await market.disputeBlockOf(job.jobId)).to.equal(held.blockNumber);
      // finalize now waits a whole dispute timeout from the restart.
      await time.setNextBlockTimestamp(t + PARAMS.disputeTimeout - 1);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowOpen")
        .withArgs(job.jobId, t + PARAMS.disputeTimeout);
      await expect(market.finalize(job.jobId, job.terms)).to.emit(market, "JobFinalized");
      await expect(market.connect(auditor).holdForAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });
  });

  describe("finalize of a Disputed job", function () {
    it("waits for the dispute timeout: closed one second before, pays everyone exactly at it", async function () {
      const { registry, market, client, other, job, route, heldAt } = await loadFixture(disputedJobFixture);
      const timeoutAt = heldAt + PARAMS.disputeTimeout;
      await time.setNextBlockTimestamp(timeoutAt - 1);
      await expect(market.connect(other).finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowOpen")
        .withArgs(job.jobId, timeoutAt);
      await time.setNextBlockTimestamp(timeoutAt);
      const paid = ROUTE_PRICE * BigInt(BILLED) + FEES;
      const tx = market.connect(other).finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).not.to.emit(market, "ChallengeSettled"); // held by the auditor, not challenged
      await expect(tx).to.changeEtherBalances([client, market, registry], [ESCROW - paid, paid - ESCROW, 0]);
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED) + HOP_FEE);
      }
    });
  });

  describe("resolveDispute", function () {
    it("slashes and does not pay the fraudulent position; slash proceeds go to the auditor", async function () {
      const { registry, market, auditor, client, job, route } = await loadFixture(disputedJobFixture);
      const slashed = (NODE_STAKES[2] * BigInt(PARAMS.fraudSlashBps)) / BPS;
      const paid = (NODE_PRICES[1] + NODE_PRICES[3]) * BigInt(BILLED) + 2n * HOP_FEE;
      const refund = ESCROW - paid;
      expect(await market.connect(auditor).resolveDispute.staticCall(job.jobId, job.terms, 0b010)).to.deep.equal([slashed, 0n]);
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0b010);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[1].address, slashed);
      await expect(tx).to.emit(market, "DisputeResolved").withArgs(job.jobId, 0b010, slashed);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, refund);
      await expect(tx).to.changeEtherBalances([auditor, client, market, registry], [slashed, refund, -refund, -slashed]);
      expect((await registry.getNode(route[0].address)).earnings).to.equal(NODE_PRICES[1] * BigInt(BILLED) + HOP_FEE);
      expect((await registry.getNode(route[1].address)).earnings).to.equal(0);
      expect((await registry.getNode(route[2].address)).earnings).to.equal(NODE_PRICES[3] * BigInt(BILLED) + HOP_FEE);
      expect((await registry.getNode(route[1].address)).stake).to.equal(NODE_STAKES[2] - slashed);
      expect((await registry.getNode(route[0].address)).stake).to.equal(NODE_STAKES[1]);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Finalized);
      expect(await ethers.provider.getBalance(market)).to.equal(paid);
      await expect(market.connect(auditor).resolveDispute(job.jobId, job.terms, 0))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });

    it("with no fraud pays everyone and sends the auditor nothing", async function () {
      const { market, auditor, client, job } = await loadFixture(disputedJobFixture);
      const paid = ROUTE_PRICE * BigInt(BILLED) + FEES;
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0);
      await expect(tx).to.emit(market, "DisputeResolved").withArgs(job.jobId, 0, 0);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.changeEtherBalances([auditor, client], [0, ESCROW - paid]);
    });

    it("with every position fraudulent refunds the whole escrow", async function () {
      const { registry, market, auditor, client, job } = await loadFixture(disputedJobFixture);
      const slashed = [1, 2, 3].reduce((a, s) => a + (NODE_STAKES[s] * BigInt(PARAMS.fraudSlashBps)) / BPS, 0n);
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0b111);
      await expect(tx).to.emit(market, "DisputeResolved").withArgs(job.jobId, 0b111, slashed);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, 0, ESCROW);
      await expect(tx).to.changeEtherBalances([auditor, client, market, registry], [slashed, ESCROW, -ESCROW, -slashed]);
    });

    it("rejects other callers, a mask outside the route, a job that is not Disputed", async function () {
      const { market, auditor, other, job, client, nodes } = await loadFixture(disputedJobFixture);
      await expect(market.connect(other).resolveDispute(job.jobId, job.terms, 0))
        .to.be.revertedWithCustomError(market, "NotAuditor")
        .withArgs(other.address);
      for (const mask of [0b1000, 0b1000_0000, 0xff]) {
        await expect(market.connect(auditor).resolveDispute(job.jobId, job.terms, mask))
          .to.be.revertedWithCustomError(market, "InvalidFraudMask")
          .withArgs(mask);
      }
      await expect(market.connect(auditor).resolveDispute(77, job.terms, 0)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(77);
      await expect(market.connect(auditor).resolveDispute(job.jobId, "0x", 0))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
      const second = await submit(market, client);
      await commitAll(market, nodes, second);
      await expect(market.connect(auditor).resolveDispute(second.jobId, second.terms, 0))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(second.jobId, JobStatus.Committed);
    });

    it("is no longer possible once the timed-out dispute was finalized", async function () {
      const { market, auditor, job, heldAt } = await loadFixture(disputedJobFixture);
      await time.setNextBlockTimestamp(heldAt + PARAMS.disputeTimeout);
      await market.finalize(job.jobId, job.terms);
      await expect(market.connect(auditor).resolveDispute(job.jobId, job.terms, 0b001))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });

    it("reverts with TransferFailed when the auditor cannot take the slash proceeds", async function () {
      const [, client, n0, n1, n2, n3] = await ethers.getSigners();
      const auditor = await ethers.deployContract("ReentrantReceiver");
      await auditor.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      const { registry, market } = await deployMarket({ auditor: await auditor.getAddress() });
      await registry.registerModel("m", ethers.id("w"), 2, [0, 1, 2]);
      for (const [s, n] of [n0, n1].entries()) {
        await registry.connect(n).registerNode(1, s, "http://n", 1n, ethers.id("k"), { value: ONE });
      }
      const job = await submit(market, client, { firstShard: 0, maxTokens: 1 });
      await commitAll(market, [n0, n1, n2, n3], job);
      await auditor.execute(market, 0, market.interface.encodeFunctionData("holdForAudit", [job.jobId, job.terms]));
      const resolve = market.interface.encodeFunctionData("resolveDispute", [job.jobId, job.terms, 0b01]);
      await expect(auditor.execute(market, 0, resolve))
        .to.be.revertedWithCustomError(market, "TransferFailed")
        .withArgs(await auditor.getAddress(), ONE / 2n);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Disputed);
    });
  });

  describe("submitJobWithHints", function () {
    /// Shard 3's pool: nodes[3] (index 0) and 8 nodes priced above every limit; prevrandao set so that the
    /// next job's 8 probes of shard 3 start at index 1 and miss nodes[3].
    async function stuffedFixture() {
      const f = await marketFixture();
      for (const s of f.signers.slice(9, 17)) {
        await f.registry.connect(s).registerNode(1, 3, "http://sybil", 10n ** 17n, ethers.id("s"), { value: ONE });
      }
      const coder = ethers.AbiCoder.defaultAbiCoder();
      const jobId = (await f.market.jobCount()) + 1n;
      let randao = 1n;
      for (; ; randao++) {
        const seed = ethers.keccak256(coder.encode(["uint256", "uint256"], [randao, jobId]));
        if (BigInt(ethers.keccak256(coder.encode(["uint256", "uint8"], [seed, 3]))) % 9n === 1n) break;
      }
      await setPrevRandao(randao);
      return { ...f, randao };
    }

    it("submitJob misses the only eligible node; with its pool index as a hint the job is matched to it", async function () {
      const { registry, market, client, nodes, randao } = await loadFixture(stuffedFixture);
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", { value: ESCROW }))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
      await setPrevRandao(randao);
      const job = await submit(market, client, { maxPrice: NODE_PRICES[3], hints: [0, 0, 1] });
      expect(job.decoded.route.map((h) => h.node)).to.deep.equal([1, 2, 3].map((s) => nodes[s].address));
      expect(job.decoded.escrow).to.equal(ESCROW);
    });

    it("passes the registry's hint errors through", async function () {
      const { registry, market, client, randao } = await loadFixture(stuffedFixture);
      await expect(market.connect(client).submitJobWithHints(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", [0, 0, 0, 1], { value: ESCROW }))
        .to.be.revertedWithCustomError(registry, "TooManyHints")
        .withArgs(4, 3);
      await setPrevRandao(randao); // the same job id and seed: the probes miss again, and so does hint 2
      await expect(market.connect(client).submitJobWithHints(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", [0, 0, 2], { value: ESCROW }))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
    });
  });

  describe("submitJobAvoiding", function () {
    /// Shard 3's pool: nodes[3] and a second node (signer 9) at the same price.
    async function twoNodeFixture() {
      const f = await marketFixture();
      const spare = f.signers[9];
      await f.registry.connect(spare).registerNode(1, 3, "http://spare", NODE_PRICES[3], ethers.id("spare"), { value: ONE });
      return { ...f, spare };
    }

    async function submitAvoiding(market, client, avoid, hints = []) {
      return market.connect(client).submitJobAvoiding(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", hints, avoid, { value: ESCROW });
    }

    it("never matches an avoided node, whatever the seed; the other shards are matched as before", async function () {
      const { market, client, nodes, spare } = await loadFixture(twoNodeFixture);
      const seen = new Set();
      for (let randao = 1n; randao <= 12n; randao++) {
        await setPrevRandao(randao);
        const { decoded } = await submit(market, client, { maxPrice: NODE_PRICES[3], avoid: [nodes[3].address] });
        expect(decoded.route.slice(0, 2).map((h) => h.node)).to.deep.equal([nodes[1].address, nodes[2].address]);
        seen.add(decoded.route[2].node);
      }
      expect([...seen]).to.deep.equal([spare.address]);
    });

    it("without the avoid list the same seeds match both nodes of the pool", async function () {
      const { market, client, nodes, spare } = await loadFixture(twoNodeFixture);
      const seen = new Set();
      for (let randao = 1n; randao <= 12n; randao++) {
        await setPrevRandao(randao);
        const { decoded } = await submit(market, client, { maxPrice: NODE_PRICES[3], avoid: [] });
        seen.add(decoded.route[2].node);
      }
      expect([...seen].sort()).to.deep.equal([nodes[3].address, spare.address].sort());
    });

    it("reverts NoEligibleNode when every eligible node of a shard is avoided, even when hinted", async function () {
      const { registry, market, client, nodes, spare } = await loadFixture(twoNodeFixture);
      await expect(submitAvoiding(market, client, [nodes[3].address, spare.address]))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
      await expect(submitAvoiding(market, client, [nodes[3].address, spare.address], [0, 0, 1]))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
    });

    it("reverts TooManyAvoided above MAX_AVOID nodes; exactly MAX_AVOID is accepted", async function () {
      const { registry, market, client, nodes } = await loadFixture(twoNodeFixture);
      const max = await registry.MAX_AVOID();
      const strangers = Array.from({ length: Number(max) }, (_, i) => ethers.getAddress(ethers.zeroPadValue(ethers.toBeHex(i + 1), 20)));
      await expect(submitAvoiding(market, client, [...strangers, nodes[3].address]))
        .to.be.revertedWithCustomError(registry, "TooManyAvoided")
        .withArgs(max + 1n, max);
      await expect(submitAvoiding(market, client, strangers)).to.emit(market, "JobSubmitted");
    });
  });

  describe("checkpointReceipt", function () {
    it("lets anyone record a higher client receipt while the job is Open; later commits bill from it", async function () {
      const { market, client, other, job, route } = await loadFixture(openJobFixture);
      await expect(market.connect(other).checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, 20)))
        .to.emit(market, "ReceiptCheckpointed")
        .withArgs(job.jobId, 20);
      const j = await market.getJob(job.jobId);
      expect([j.status, j.committedMask, j.billedTokens]).to.deep.equal([BigInt(JobStatus.Open), 0n, 20n]);
      await expect(market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, NO_RECEIPT))
        .to.emit(market, "JobCommitted")
        .withArgs(job.jobId, 0, IN, OUT, 20);
      await expect(market.connect(route[1]).checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, 30)))
        .to.emit(market, "ReceiptCheckpointed")
        .withArgs(job.jobId, 30);
    });

    it("rejects a receipt that does not raise the billed count, exceeds maxTokens, or is not the client's", async function () {
      const { market, client, other, job } = await loadFixture(openJobFixture);
      await expect(market.checkpointReceipt(job.jobId, job.terms, NO_RECEIPT))
        .to.be.revertedWithCustomError(market, "ReceiptNotNewer")
        .withArgs(job.jobId, 0, 0);
      await market.checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, 20));
      for (const tokens of [20, 19]) {
        await expect(market.checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, tokens)))
          .to.be.revertedWithCustomError(market, "ReceiptNotNewer")
          .withArgs(job.jobId, tokens, 20);
      }
      await expect(market.checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, MAX_TOKENS + 1)))
        .to.be.revertedWithCustomError(market, "TokensExceedMax")
        .withArgs(MAX_TOKENS + 1, MAX_TOKENS);
      await expect(market.checkpointReceipt(job.jobId, job.terms, await receipt(market, other, job.jobId, 25)))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(job.jobId, other.address);
    });

    it("is accepted exactly at the commit deadline, not one second later", async function () {
      const { market, client, job, deadline } = await loadFixture(openJobFixture);
      await time.setNextBlockTimestamp(deadline);
      await expect(market.checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, 5))).to.emit(
        market,
        "ReceiptCheckpointed",
      );
      const late = await receipt(market, client, job.jobId, 6);
      await time.setNextBlockTimestamp(deadline + 1);
      await expect(market.checkpointReceipt(job.jobId, job.terms, late))
        .to.be.revertedWithCustomError(market, "CommitDeadlinePassed")
        .withArgs(job.jobId, deadline);
    });

    it("rejects an unknown job, mismatched terms and a job that is not Open", async function () {
      const { market, client, job } = await loadFixture(committedJobFixture);
      const r = await receipt(market, client, job.jobId, MAX_TOKENS);
      await expect(market.checkpointReceipt(8, job.terms, r)).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(8);
      await expect(market.checkpointReceipt(job.jobId, "0x", r)).to.be.revertedWithCustomError(market, "TermsMismatch").withArgs(job.jobId);
      await expect(market.checkpointReceipt(job.jobId, job.terms, r))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Committed);
    });
  });

  describe("challenge", function () {
    const BOND = CHALLENGE_BOND;
    /// The audited committed job, challenged by `other` one second before the window ends.
    async function challengedFixture() {
      const f = await auditedCommittedFixture();
      await time.setNextBlockTimestamp(f.endsAt - 1);
      const tx = await f.market.connect(f.other).challenge(f.job.jobId, f.job.terms, { value: BOND });
      const heldAt = f.endsAt - 1;
      return { ...f, heldAt, challengedIn: (await tx.wait()).blockNumber };
    }
    const everyone = (f) => [...f.nodes];

    it("disputes a Committed job for exactly the bond, up to one second before the window ends; anyone may", async function () {
      const { market, other, job, endsAt, nodes } = await loadFixture(auditedCommittedFixture);
      await time.setNextBlockTimestamp(endsAt - 1);
      const tx = market.connect(other).challenge(job.jobId, job.terms, { value: BOND });
      await expect(tx).to.emit(market, "JobDisputed").withArgs(job.jobId);
      await expect(tx).to.emit(market, "JobChallenged").withArgs(job.jobId, other.address, BOND);
      await expect(tx).to.changeEtherBalances([other, market], [-BOND, BOND]);
      const j = await market.getJob(job.jobId);
      expect([j.status, j.timestamp]).to.deep.equal([BigInt(JobStatus.Disputed), BigInt(endsAt - 1)]);
      expect(await market.challengeOf(job.jobId)).to.deep.equal([other.address, BOND]);
      expect(await market.disputeBlockOf(job.jobId)).to.equal((await (await tx).wait()).blockNumber);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("is closed exactly at the window end", async function () {
      const { market, other, job, endsAt } = await loadFixture(auditedCommittedFixture);
      await time.setNextBlockTimestamp(endsAt);
      await expect(market.connect(other).challenge(job.jobId, job.terms, { value: BOND }))
        .to.be.revertedWithCustomError(market, "ChallengeWindowClosed")
        .withArgs(job.jobId, endsAt);
    });

    it("requires exactly the bond, and is disabled when the bond is zero", async function () {
      const { market, other, job } = await loadFixture(auditedCommittedFixture);
      for (const value of [0n, BOND - 1n, BOND + 1n]) {
        await expect(market.connect(other).challenge(job.jobId, job.terms, { value }))
          .to.be.revertedWithCustomError(market, "WrongChallengeBond")
          .withArgs(BOND, value);
      }
      const plain = await loadFixture(committedJobFixture);
      expect(await plain.market.challengeBond()).to.equal(0);
      await expect(plain.market.connect(plain.other).challenge(plain.job.jobId, plain.job.terms))
        .to.be.revertedWithCustomError(plain.market, "ChallengesDisabled")
        .withArgs();
    });

    it("rejects an unknown job, mismatched terms, an Open job and a job already Disputed", async function () {
      const { market, client, other, job } = await loadFixture(challengedFixture);
      await expect(market.challenge(5, job.terms, { value: BOND })).to.be.revertedWithCustomError(market, "UnknownJob").withArgs(5);
      await expect(market.challenge(job.jobId, "0x", { value: BOND }))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
      await expect(market.connect(client).challenge(job.jobId, job.terms, { value: BOND }))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Disputed);
      const open = await submit(market, client);
      await expect(market.connect(other).challenge(open.jobId, open.terms, { value: BOND }))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(open.jobId, JobStatus.Open);
    });

    it("fraud verdict: the bond goes back to the challenger, the slash to the auditor", async function () {
      const f = await loadFixture(challengedFixture);
      const { market, auditor, other, job } = f;
      const slashed = (NODE_STAKES[2] * BigInt(PARAMS.fraudSlashBps)) / BPS;
      expect(await market.connect(auditor).resolveDispute.staticCall(job.jobId, job.terms, 0b010)).to.deep.equal([slashed, 0n]);
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0b010);
      await expect(tx).to.emit(market, "ChallengeSettled").withArgs(job.jobId, other.address, BOND, 0, 0);
      await expect(tx).to.changeEtherBalances([other, auditor], [BOND, slashed]);
      expect(await market.challengeOf(job.jobId)).to.deep.equal([ethers.ZeroAddress, 0n]);
      await expectMarketSolvent(market, [job], everyone(f));
    });

    it("honest verdict: half the bond (and the dust) to the auditor for the verifiers, the rest split among the hops", async function () {
      const f = await loadFixture(challengedFixture);
      const { registry, market, auditor, other, job, route } = f;
      const forVerifiers = (BOND * 5000n) / BPS;
      const perNode = (BOND - forVerifiers) / 3n;
      const toAuditor = BOND - 3n * perNode;
      expect(toAuditor - forVerifiers).to.equal(1n); // one wei of dust
      expect(await market.connect(auditor).resolveDispute.staticCall(job.jobId, job.terms, 0)).to.deep.equal([0n, toAuditor]);
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0);
      await expect(tx).to.emit(market, "ChallengeSettled").withArgs(job.jobId, other.address, 0, perNode, toAuditor);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, ROUTE_PRICE * BigInt(BILLED) + FEES, ESCROW - ROUTE_PRICE * BigInt(BILLED) - FEES);
      await expect(tx).to.changeEtherBalances([other, auditor], [0, toAuditor]);
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED) + HOP_FEE + perNode);
      }
      await expectMarketSolvent(market, [job], everyone(f));
    });

    it("honest verdict with a fraudulent position elsewhere is still fraud: the challenger wins", async function () {
      const f = await loadFixture(challengedFixture);
      const tx = f.market.connect(f.auditor).resolveDispute(f.job.jobId, f.job.terms, 0b111);
      await expect(tx).to.emit(f.market, "ChallengeSettled").withArgs(f.job.jobId, f.other.address, BOND, 0, 0);
      await expect(tx).to.emit(f.market, "JobFinalized").withArgs(f.job.jobId, BILLED, 0, ESCROW);
    });

    it("no verdict before the dispute timeout: the whole bond to the hops, the rounding dust burned", async function () {
      const f = await loadFixture(challengedFixture);
      const { registry, market, other, job, route, heldAt } = f;
      const perNode = BOND / 3n;
      const dust = BOND - 3n * perNode;
      await time.setNextBlockTimestamp(heldAt + PARAMS.disputeTimeout - 1);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "ChallengeWindowOpen")
        .withArgs(job.jobId, heldAt + PARAMS.disputeTimeout);
      const tx = market.finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "ChallengeSettled").withArgs(job.jobId, other.address, 0, perNode, 0);
      await expect(tx).to.changeEtherBalances([other, BURN], [0, dust]);
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED) + HOP_FEE + perNode);
      }
      await expectMarketSolvent(market, [job], everyone(f));
    });

    it("a challenger that cannot take its bond back is credited instead", async function () {
      const f = await loadFixture(auditedCommittedFixture);
      const challenger = await ethers.deployContract("ReentrantReceiver");
      await challenger.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      const data = f.market.interface.encodeFunctionData("challenge", [f.job.jobId, f.job.terms]);
      await challenger.execute(f.market, BOND, data, { value: BOND });
      const address = await challenger.getAddress();
      await expect(f.market.connect(f.auditor).resolveDispute(f.job.jobId, f.job.terms, 0b001))
        .to.emit(f.market, "RefundCredited")
        .withArgs(address, BOND);
      expect(await f.market.creditOf(address)).to.equal(BOND);
      await expectMarketSolvent(f.market, [f.job], f.nodes);
    });
  });

  describe("penalizeVerifier", function () {
    it("slashes up to the amount from the verifier's bond and sends it to the auditor", async function () {
      const { registry, market, auditor, nodes, other } = await loadFixture(auditedMarketFixture);
      const amount = ethers.parseEther("0.01");
      expect(await market.connect(auditor).penalizeVerifier.staticCall(nodes[0].address, amount)).to.equal(amount);
      const tx = market.connect(auditor).penalizeVerifier(nodes[0].address, amount);
      await expect(tx).to.emit(registry, "Slashed").withArgs(nodes[0].address, amount);
      await expect(tx).to.emit(market, "VerifierPenalized").withArgs(nodes[0].address, amount);
      await expect(tx).to.changeEtherBalances([auditor, market, registry], [amount, 0, -amount]);
      expect((await registry.getNode(nodes[0].address)).stake).to.equal(NODE_STAKES[0] - amount);
      // Capped at the bond; nothing from an account without one.
      await expect(market.connect(auditor).penalizeVerifier(nodes[1].address, 100n * ONE))
        .to.emit(market, "VerifierPenalized")
        .withArgs(nodes[1].address, NODE_STAKES[1]);
      const none = market.connect(auditor).penalizeVerifier(other.address, amount);
      await expect(none).to.emit(market, "VerifierPenalized").withArgs(other.address, 0);
      await expect(none).to.changeEtherBalances([auditor, registry], [0, 0]);
    });

    it("is reserved to the auditor", async function () {
      const { market, other, nodes } = await loadFixture(auditedMarketFixture);
      await expect(market.connect(other).penalizeVerifier(nodes[0].address, 1n))
        .to.be.revertedWithCustomError(market, "NotAuditor")
        .withArgs(other.address);
      const plain = await loadFixture(marketFixture);
      await expect(plain.market.connect(plain.auditor).penalizeVerifier(plain.nodes[0].address, 1n))
        .to.be.revertedWithCustomError(plain.market, "NotAuditor")
        .withArgs(plain.auditor.address);
    });
  });

  describe("withdrawEarnings", function () {
    it("pays a node its earnings once", async function () {
      const { registry, market, route, job } = await loadFixture(committedJobFixture);
      await time.increase(PARAMS.challengeWindow);
      await market.finalize(job.jobId, job.terms);
      const amount = NODE_PRICES[2] * BigInt(BILLED) + HOP_FEE;
      const tx = market.connect(route[1]).withdrawEarnings();
      await expect(tx).to.emit(registry, "EarningsWithdrawn").withArgs(route[1].address, amount);
      await expect(tx).to.changeEtherBalances([route[1], market, registry], [amount, -amount, 0]);
      expect((await registry.getNode(route[1].address)).earnings).to.equal(0);
      await expect(market.connect(route[1]).withdrawEarnings())
        .to.be.revertedWithCustomError(registry, "NothingToWithdraw")
        .withArgs(route[1].address);
    });

    it("rejects an account without earnings", async function () {
      const { registry, market, other } = await loadFixture(marketFixture);
      await expect(market.connect(other).withdrawEarnings())
        .to.be.revertedWithCustomError(registry, "NothingToWithdraw")
        .withArgs(other.address);
    });

    it("reverts with TransferFailed when the node cannot receive, keeping the earnings", async function () {
      const { registry, market, node, nodeAddress, earned } = await loadFixture(contractNodeFixture);
      await node.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      await expect(node.execute(market, 0, market.interface.encodeFunctionData("withdrawEarnings")))
        .to.be.revertedWithCustomError(market, "TransferFailed")
        .withArgs(nodeAddress, earned);
      expect((await registry.getNode(nodeAddress)).earnings).to.equal(earned);
    });
  });

  describe("withdrawCredit", function () {
    it("rejects an account without credit", async function () {
      const { market, other } = await loadFixture(marketFixture);
      await expect(market.connect(other).withdrawCredit())
        .to.be.revertedWithCustomError(market, "NothingToWithdraw")
        .withArgs(other.address);
    });

    it("pays a credited refund once", async function () {
      const { market, c, refund } = await loadFixture(creditedRefundFixture);
      expect(await market.creditOf(c.address)).to.equal(refund);
      expect(await market.totalCredits()).to.equal(refund);
      await c.contract.configure(Mode.Accept, ethers.ZeroAddress, "0x");
      const tx = c.contract.execute(market, 0, market.interface.encodeFunctionData("withdrawCredit"));
      await expect(tx).to.emit(market, "CreditWithdrawn").withArgs(c.address, refund);
      await expect(tx).to.changeEtherBalances([c.address, market], [refund, -refund]);
      expect(await market.creditOf(c.address)).to.equal(0);
      expect(await market.totalCredits()).to.equal(0);
      await expect(c.contract.execute(market, 0, market.interface.encodeFunctionData("withdrawCredit")))
        .to.be.revertedWithCustomError(market, "NothingToWithdraw")
        .withArgs(c.address);
    });

    it("reverts with TransferFailed while the account still rejects, keeping the credit", async function () {
      const { market, c, refund } = await loadFixture(creditedRefundFixture);
      await expect(c.contract.execute(market, 0, market.interface.encodeFunctionData("withdrawCredit")))
        .to.be.revertedWithCustomError(market, "TransferFailed")
        .withArgs(c.address, refund);
      expect(await market.creditOf(c.address)).to.equal(refund);
    });
  });

  describe("receive", function () {
    it("rejects payments from anyone but the registry", async function () {
      const { market, other, nodes } = await loadFixture(marketFixture);
      for (const s of [other, nodes[0]]) {
        await expect(s.sendTransaction({ to: await market.getAddress(), value: 1n }))
          .to.be.revertedWithCustomError(market, "UnexpectedPayment")
          .withArgs(s.address);
      }
      expect(await ethers.provider.getBalance(market)).to.equal(0);
    });
  });

  describe("views", function () {
    it("getJob of an unknown id is empty", async function () {
      const { market } = await loadFixture(marketFixture);
      const j = await market.getJob(1);
      expect([j.termsHash, j.status, j.committedMask, j.billedTokens, j.timestamp]).to.deep.equal([
        ethers.ZeroHash.slice(0, 42),
        0n,
        0n,
        0n,
        0n,
      ]);
    });

    it("envelopeDigest is the EIP-712 digest of the Envelope under the market's domain", async function () {
      const { market } = await loadFixture(marketFixture);
      const value = { jobId: 3n, step: 9, tokens: 17, payloadHash: ethers.id("p") };
      const expected = ethers.TypedDataEncoder.hash(await domainOf(market), ENVELOPE_TYPES, value);
      expect(await market.envelopeDigest(3, 9, 17, ethers.id("p"))).to.equal(expected);
      expect(await market.ENVELOPE_TYPEHASH()).to.equal(ethers.id("Envelope(uint256 jobId,uint32 step,uint32 tokens,bytes32 payloadHash)"));
    });

    it("decodeTerms rejects bytes without the packed layout", async function () {
      const { market } = await loadFixture(marketFixture);
      for (const length of [0, 41, 68, 70, 41 + 28 * 9]) {
        await expect(market.decodeTerms(new Uint8Array(length)))
          .to.be.revertedWithCustomError(market, "MalformedTerms")
          .withArgs(length);
      }
      const eight = await market.decodeTerms(new Uint8Array(41 + 28 * 8));
      expect(eight.route.length).to.equal(8);
    });

    it("routeCost helper agrees with the registry's prices", async function () {
      const { market, client } = await loadFixture(marketFixture);
      const job = await submit(market, client);
      expect(routeCost(job.decoded.route, MAX_TOKENS) + FEES).to.equal(ESCROW);
      expect(routeCost(job.decoded.route, 1, 0b101)).to.equal(NODE_PRICES[1] + NODE_PRICES[3]);
    });
  });
});
