// JobMarket.releaseJob: a client whose job was refused before its first step (a full route) ends it
// without anyone slashed, and cannot use the release to shield a node that served it or to skip paying.
// Fixture routes start at shard 1, so a job's positions 0, 1, 2 are nodes[1], nodes[2], nodes[3].
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time } = require("@nomicfoundation/hardhat-network-helpers");
const {
  PARAMS,
  NODE_PRICES,
  NODE_STAKES,
  NO_RECEIPT,
  JobStatus,
  marketFixture,
  submit,
  receipt,
  expectMarketSolvent,
} = require("./fixtures");

const MAX_TOKENS = 64;
const HOP_FEE = PARAMS.hopFee;
const ESCROW = BigInt(MAX_TOKENS) * (NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3]) + 3n * HOP_FEE;
const BURN = "0x000000000000000000000000000000000000dEaD";
const IN = ethers.id("input commitment");
const OUT = ethers.id("output commitment");

async function openJobFixture() {
  const f = await marketFixture();
  const job = await submit(f.market, f.client, { maxTokens: MAX_TOKENS });
  const deadline = Number((await f.market.getJob(job.jobId)).timestamp) + PARAMS.commitTimeout;
  const route = [f.nodes[1], f.nodes[2], f.nodes[3]];
  return { ...f, job, deadline, route };
}

async function releasedJobFixture() {
  const f = await openJobFixture();
  await f.market.connect(f.client).releaseJob(f.job.jobId, f.job.terms);
  return f;
}

async function stakesOf(registry, route) {
  return Promise.all(route.map(async (n) => (await registry.getNode(n.address)).stake));
}

describe("JobMarket.releaseJob", function () {
  describe("releaseJob", function () {
    it("records the release and emits JobReleased", async function () {
      const { market, client, job } = await loadFixture(openJobFixture);
      expect(await market.isReleased(job.jobId)).to.equal(false);
      await expect(market.connect(client).releaseJob(job.jobId, job.terms))
        .to.emit(market, "JobReleased")
        .withArgs(job.jobId);
      expect(await market.isReleased(job.jobId)).to.equal(true);
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Open);
    });

    it("is refused to anyone but the job's client", async function () {
      const { market, other, route, job } = await loadFixture(openJobFixture);
      for (const caller of [other, route[0]]) {
        await expect(market.connect(caller).releaseJob(job.jobId, job.terms))
          .to.be.revertedWithCustomError(market, "NotJobClient")
          .withArgs(job.jobId, caller.address);
      }
    });

    it("is refused once a client receipt is on-chain (a step was served)", async function () {
      const { market, client, route, job } = await loadFixture(openJobFixture);
      const rcpt = await receipt(market, client, job.jobId, 5);
      await market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, rcpt);
      await expect(market.connect(client).releaseJob(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "JobAlreadyServed")
        .withArgs(job.jobId, 5);
    });

    it("is refused with the wrong terms and for a job that is not Open", async function () {
      const { market, client, job, deadline } = await loadFixture(openJobFixture);
      const forged = job.terms.slice(0, -2) + "ff";
      await expect(market.connect(client).releaseJob(job.jobId, forged))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
      await time.setNextBlockTimestamp(deadline + 1);
      await market.cancel(job.jobId, job.terms);
      await expect(market.connect(client).releaseJob(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "WrongJobStatus")
        .withArgs(job.jobId, JobStatus.Cancelled);
    });
  });

  describe("cancel of a released job", function () {
    it("is still not possible exactly at the commit deadline", async function () {
      const { market, job, deadline } = await loadFixture(releasedJobFixture);
      await time.setNextBlockTimestamp(deadline);
      await expect(market.cancel(job.jobId, job.terms))
        .to.be.revertedWithCustomError(market, "CommitWindowOpen")
        .withArgs(job.jobId, deadline);
    });

    it("one second later slashes nobody and refunds the whole escrow", async function () {
      const { registry, market, client, other, job, route, deadline, nodes } = await loadFixture(releasedJobFixture);
      const before = await stakesOf(registry, route);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.connect(other).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b111, 0, 0, ESCROW);
      await expect(tx).not.to.emit(registry, "Slashed");
      await expect(tx).to.changeEtherBalances([client, market, registry, BURN], [ESCROW, -ESCROW, 0, 0]);
      expect(await stakesOf(registry, route)).to.deep.equal(before);
      expect(before).to.deep.equal([NODE_STAKES[1], NODE_STAKES[2], NODE_STAKES[3]]);
      expect(await market.isReleased(job.jobId)).to.equal(false);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("pays a hop that committed without a receipt its hop fee and slashes none of the others", async function () {
      const { registry, market, client, job, route, deadline, nodes } = await loadFixture(releasedJobFixture);
      await market.connect(route[1]).commit(job.jobId, job.terms, 1, IN, OUT, NO_RECEIPT);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b101, HOP_FEE, 0, ESCROW - HOP_FEE);
      await expect(tx).not.to.emit(registry, "Slashed");
      await expect(tx).to.changeEtherBalances([client, market], [ESCROW - HOP_FEE, -(ESCROW - HOP_FEE)]);
      expect((await registry.getNode(route[1].address)).earnings).to.equal(HOP_FEE);
      await expectMarketSolvent(market, [job], nodes);
    });
  });

  describe("abuse", function () {
    it("a client that signed steps and released anyway still pays the node that commits its receipt", async function () {
      // Griefing: served, then released hoping to get everything back. The job stays Open to its commit
      // deadline, so the served node commits the receipt and is paid price x billed + the hop fee.
      const { registry, market, client, job, route, deadline, nodes } = await loadFixture(releasedJobFixture);
      const rcpt = await receipt(market, client, job.jobId, 12);
      await market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, rcpt);
      await time.setNextBlockTimestamp(deadline + 1);
      const paid = NODE_PRICES[1] * 12n + HOP_FEE;
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled");
      expect((await registry.getNode(route[0].address)).earnings).to.equal(paid);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("a lazy hop is spared only by its own client's waiver: the served hop is still paid in full", async function () {
      // The client lied (it signed a step). The waiver spares the hops that never committed, which harms
      // nobody but the client that waived; the hop that served is paid exactly as without a release.
      const { registry, market, client, job, route, deadline, nodes } = await loadFixture(releasedJobFixture);
      await market.connect(route[0]).commit(job.jobId, job.terms, 0, IN, OUT, await receipt(market, client, job.jobId, 12));
      const paid = NODE_PRICES[1] * 12n + HOP_FEE;
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b110, paid, 0, ESCROW - paid);
      await expect(tx).not.to.emit(registry, "Slashed");
      await expect(tx).to.changeEtherBalances([client, BURN], [ESCROW - paid, 0]);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("a client cannot turn its release into a slash by checkpointing a receipt of its own afterwards", async function () {
      // Griefing: release (nodes that served nothing may then skip their commit), then publish a signed
      // receipt hoping the miss-slash comes back. It does not: the release stands until the cancel.
      const { registry, market, client, job, route, deadline, nodes } = await loadFixture(releasedJobFixture);
      await market.connect(client).checkpointReceipt(job.jobId, job.terms, await receipt(market, client, job.jobId, 3));
      const before = await stakesOf(registry, route);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b111, 0, 0, ESCROW);
      await expect(tx).not.to.emit(registry, "Slashed");
      expect(await stakesOf(registry, route)).to.deep.equal(before);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("without a release the same job's missing hops are slashed (the release is what spares them)", async function () {
      const { registry, market, job, route, deadline } = await loadFixture(openJobFixture);
      await time.setNextBlockTimestamp(deadline + 1);
      const tx = market.cancel(job.jobId, job.terms);
      for (const node of route) await expect(tx).to.emit(registry, "Slashed").withArgs(node.address, (a) => a > 0n);
    });

    it("a job that completes after a release settles as usual (the release changes only a cancel)", async function () {
      const { market, route, job, nodes } = await loadFixture(releasedJobFixture);
      for (let i = 0; i < 3; i++) {
        const c = (b) => ethers.id(`link-${job.jobId}-${b}`);
        await market.connect(route[i]).commit(job.jobId, job.terms, i, c(i), c(i + 1), NO_RECEIPT);
      }
      expect((await market.getJob(job.jobId)).status).to.equal(JobStatus.Committed);
      await time.increase(PARAMS.challengeWindow);
      await expect(market.finalize(job.jobId, job.terms))
        .to.emit(market, "JobFinalized")
        .withArgs(job.jobId, 0, 3n * HOP_FEE, ESCROW - 3n * HOP_FEE);
      await expectMarketSolvent(market, [job], nodes);
    });

    it("a release of another client's job with its own terms is refused", async function () {
      // The terms name the client; a stranger cannot release a job with terms that claim it is the client.
      const { market, other, job } = await loadFixture(openJobFixture);
      const coder = ethers.getBytes(job.terms);
      coder.set(ethers.getBytes(other.address), 0);
      await expect(market.connect(other).releaseJob(job.jobId, ethers.hexlify(coder)))
        .to.be.revertedWithCustomError(market, "TermsMismatch")
        .withArgs(job.jobId);
    });
  });
});
