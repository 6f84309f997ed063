// JobMarket: submission and matching, commits and receipts, finalize, cancel, audits, withdrawals.
// Fixture routes start at shard 1, so a job's positions 0, 1, 2 are nodes[1], nodes[2], nodes[3].
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time, setBalance, setPrevRandao } = require("@nomicfoundation/hardhat-network-helpers");
const {
  ENVELOPE_TYPES,
  domainOf,
  PARAMS,
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
  receipt,
  routeCost,
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const MAX_TOKENS = 64;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3]; // route from shard 1
const ESCROW = BigInt(MAX_TOKENS) * ROUTE_PRICE;
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
  const refund = ESCROW - ROUTE_PRICE * BigInt(BILLED);
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
      ...p,
    };
    return factory.deploy(registry, q.auditor, q.commitTimeout, q.challengeWindow, q.disputeTimeout, q.miss, q.fraud, q.auditRate);
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
      expect(await market.jobCount()).to.equal(0);
      expect(await market.totalCredits()).to.equal(0);
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
      expect(b.decoded.escrow).to.equal(3n * (ROUTE_PRICE + NODE_PRICES[0]));
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

    it("requires escrow of maxTokens x the route's price sum", async function () {
      const { market, client } = await loadFixture(marketFixture);
      await expect(market.connect(client).submitJob(1, 1, MAX_TOKENS, NODE_PRICES[3], "0x", { value: ESCROW - 1n }))
        .to.be.revertedWithCustomError(market, "EscrowTooSmall")
        .withArgs(ESCROW, ESCROW - 1n);
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
          expect(await market.linksOf(job.jobId)).to.equal(ethers.ZeroHash);
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
      const paid = ROUTE_PRICE * BigInt(BILLED);
      await expect(market.finalize(job.jobId, job.terms)).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, ESCROW - paid);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(NODE_PRICES[2] * BigInt(BILLED));
    });
  });

  describe("commit: sampled audits", function () {
    async function sampledMarket(rate) {
      const signers = await ethers.getSigners();
      const [, client, n0, n1, n2, n3, auditor] = signers;
      const { registry, market } = await deployMarket({ auditor: auditor.address, params: { auditRateBps: rate } });
      await registry.registerModel("m", ethers.id("w"), 30, [0, 4, 12, 21, 30]);
      const nodes = [n0, n1, n2, n3];
      for (let s = 0; s < 4; s++) {
        await registry.connect(nodes[s]).registerNode(1, s, "http://n", NODE_PRICES[s], ethers.id("k"), { value: NODE_STAKES[s] });
      }
      return { registry, market, client, nodes, auditor };
    }

    it("at rate 0 never samples", async function () {
      const { market, client, nodes } = await sampledMarket(0);
      for (let i = 0; i < 5; i++) {
        await setPrevRandao(1000n + BigInt(i));
        const job = await submit(market, client);
        await commitAll(market, nodes, job);
        expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
      }
      expect(await market.queryFilter(market.filters.AuditSampled())).to.have.length(0);
    });

    it("at rate 10000 samples every completed job, one hop or several, at the last commit only", async function () {
      const { market, client, nodes } = await sampledMarket(10_000);
      for (const firstShard of [1, 3]) {
        const job = await submit(market, client, { firstShard });
        const hops = job.decoded.route.length;
        for (let p = 0; p < hops; p++) {
          const node = nodes[firstShard + p];
          const tx = market.connect(node).commit(job.jobId, job.terms, p, link(job.jobId, p), link(job.jobId, p + 1), NO_RECEIPT);
          if (p < hops - 1) {
            await expect(tx).not.to.emit(market, "AuditSampled");
          } else {
            await expect(tx).to.emit(market, "JobDisputed").withArgs(job.jobId);
            await expect(tx).to.emit(market, "AuditSampled").withArgs(job.jobId);
          }
        }
        expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Disputed);
      }
    });

    it("a mismatched job is disputed for the mismatch, not sampled", async function () {
      const { market, client, nodes } = await sampledMarket(10_000);
      const job = await submit(market, client);
      await commitAll(market, nodes, job, NO_RECEIPT, { breakAt: 1 });
      expect(await market.queryFilter(market.filters.CommitmentsMismatched(job.jobId))).to.have.length(1);
      expect(await market.queryFilter(market.filters.AuditSampled(job.jobId))).to.have.length(0);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Disputed);
    });

    it("at 5000 bps samples exactly when keccak(prevrandao, jobId, 'audit') % 10000 < 5000", async function () {
      const { market, client, nodes, auditor } = await sampledMarket(5000);
      const seen = new Set();
      for (let randao = 1n; seen.size < 2; randao++) {
        const jobId = (await market.jobCount()) + 1n;
        const want = isSampled(randao, jobId, 5000);
        if (seen.has(want)) continue;
        seen.add(want);
        const job = await submit(market, client);
        for (let p = 0; p < 2; p++) {
          await market.connect(nodes[p + 1]).commit(jobId, job.terms, p, link(jobId, p), link(jobId, p + 1), NO_RECEIPT);
        }
        await setPrevRandao(randao);
        const last = market.connect(nodes[3]).commit(jobId, job.terms, 2, link(jobId, 2), link(jobId, 3), NO_RECEIPT);
        if (want) await expect(last).to.emit(market, "AuditSampled").withArgs(jobId);
        else await expect(last).not.to.emit(market, "AuditSampled");
        expect((await market.getJob(jobId)).status).to.equal(want ? JobStatus.Disputed : JobStatus.Committed);
        // A sampled job is the auditor's to resolve, like a held one.
        if (want) await expect(market.connect(auditor).resolveDispute(jobId, job.terms, 0)).to.emit(market, "DisputeResolved");
      }
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

    it("pays price x billed to every node and refunds the rest, exactly at the window end", async function () {
      const { registry, market, client, other, job, route, endsAt } = await loadFixture(committedJobFixture);
      const paid = ROUTE_PRICE * BigInt(BILLED);
      const refund = ESCROW - paid;
      await time.setNextBlockTimestamp(endsAt);
      const tx = market.connect(other).finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, refund);
      await expect(tx).to.changeEtherBalances([client, market, registry, other], [refund, -refund, 0, 0]);
      await expect(tx).not.to.emit(market, "RefundCredited");
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED));
      }
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Finalized);
      // What stays in the market is exactly the nodes' earnings.
      expect(await ethers.provider.getBalance(market)).to.equal(paid);
      expect(await market.creditOf(client.address)).to.equal(0);
      await expect(market.finalize(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Finalized);
    });

    it("refunds the whole escrow, overpayment included, when nothing was billed", async function () {
      const { registry, market, nodes, client } = await loadFixture(marketFixture);
      const job = await submit(market, client, { extra: 777n });
      await commitAll(market, nodes, job);
      await time.increase(PARAMS.challengeWindow);
      const tx = market.finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, 0, 0, ESCROW + 777n);
      await expect(tx).to.changeEtherBalances([client, market], [ESCROW + 777n, -(ESCROW + 777n)]);
      for (const n of nodes) expect((await registry.getNode(n.address)).earnings).to.equal(0);
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

    it("one second later pays the committed node, slashes the missing ones and refunds the client", async function () {
      const { registry, market, client, other, job, route, deadline } = await loadFixture(partialJobFixture);
      const paid = NODE_PRICES[1] * BigInt(BILLED);
      const slash1 = (NODE_STAKES[2] * BigInt(PARAMS.missSlashBps)) / BPS;
      const slash2 = (NODE_STAKES[3] * BigInt(PARAMS.missSlashBps)) / BPS;
      const slashed = slash1 + slash2;
      const refund = ESCROW - paid + slashed;
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.connect(other).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b110, paid, slashed, refund);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[1].address, slash1);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[2].address, slash2);
      await expect(tx).to.changeEtherBalances([client, market, registry, other], [refund, paid - ESCROW, -slashed, 0]);
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

    it("slashes unbonding stake too and pays nothing when no node committed", async function () {
      const { registry, market, client, job, route, deadline } = await loadFixture(openJobFixture);
      await registry.connect(route[0]).unbond(NODE_STAKES[1]); // all of it unbonding, still slashable
      const slashes = [1, 2, 3].map((s) => (NODE_STAKES[s] * BigInt(PARAMS.missSlashBps)) / BPS);
      const slashed = slashes.reduce((a, b) => a + b);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b111, 0, slashed, ESCROW + slashed);
      await expect(tx).to.changeEtherBalances([client, market, registry], [ESCROW + slashed, -ESCROW, -slashed]);
      const n = await registry.getNode(route[0].address);
      expect([n.stake, n.unbonding]).to.deep.equal([0n, NODE_STAKES[1] - slashes[0]]);
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
      await market.connect(auditor).holdForAudit(job.jobId, job.terms);
      await expect(market.connect(auditor).holdForAudit(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Disputed);
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
      const paid = ROUTE_PRICE * BigInt(BILLED);
      const tx = market.connect(other).finalize(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, ESCROW - paid);
      await expect(tx).to.changeEtherBalances([client, market, registry], [ESCROW - paid, paid - ESCROW, 0]);
      for (let i = 0; i < 3; i++) {
        expect((await registry.getNode(route[i].address)).earnings).to.equal(NODE_PRICES[i + 1] * BigInt(BILLED));
      }
    });
  });

  describe("resolveDispute", function () {
    it("slashes and does not pay the fraudulent position; slash proceeds go to the auditor", async function () {
      const { registry, market, auditor, client, job, route } = await loadFixture(disputedJobFixture);
      const slashed = (NODE_STAKES[2] * BigInt(PARAMS.fraudSlashBps)) / BPS;
      const paid = (NODE_PRICES[1] + NODE_PRICES[3]) * BigInt(BILLED);
      const refund = ESCROW - paid;
      expect(await market.connect(auditor).resolveDispute.staticCall(job.jobId, job.terms, 0b010)).to.equal(slashed);
      const tx = market.connect(auditor).resolveDispute(job.jobId, job.terms, 0b010);
      await expect(tx).to.emit(registry, "Slashed").withArgs(route[1].address, slashed);
      await expect(tx).to.emit(market, "DisputeResolved").withArgs(job.jobId, 0b010, slashed);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(job.jobId, BILLED, paid, refund);
      await expect(tx).to.changeEtherBalances([auditor, client, market, registry], [slashed, refund, -refund, -slashed]);
      expect((await registry.getNode(route[0].address)).earnings).to.equal(NODE_PRICES[1] * BigInt(BILLED));
      expect((await registry.getNode(route[1].address)).earnings).to.equal(0);
      expect((await registry.getNode(route[2].address)).earnings).to.equal(NODE_PRICES[3] * BigInt(BILLED));
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
      const paid = ROUTE_PRICE * BigInt(BILLED);
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

  describe("withdrawEarnings", function () {
    it("pays a node its earnings once", async function () {
      const { registry, market, route, job } = await loadFixture(committedJobFixture);
      await time.increase(PARAMS.challengeWindow);
      await market.finalize(job.jobId, job.terms);
      const amount = NODE_PRICES[2] * BigInt(BILLED);
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
      expect(routeCost(job.decoded.route, MAX_TOKENS)).to.equal(ESCROW);
      expect(routeCost(job.decoded.route, 1, 0b101)).to.equal(NODE_PRICES[1] + NODE_PRICES[3]);
    });
  });
});
