// Security properties: reentrancy on every payout, hostile clients, a Sybil client inflating its own
// node's pay, and conservation of value over a seeded random sequence of actions.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time } = require("@nomicfoundation/hardhat-network-helpers");
const {
  PARAMS,
  NODE_PRICES,
  NODE_STAKES,
  NO_RECEIPT,
  JobStatus,
  Mode,
  marketFixture,
  auditedMarketFixture,
  contractClient,
  contractNodeFixture,
  submit,
  signerOf,
  commitAll,
  link,
  receipt,
} = require("./fixtures");

const ONE = ethers.parseEther("1");
const MAX_TOKENS = 64;
const BILLED = 40;
const ROUTE_PRICE = NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3];
const HOP_FEE = PARAMS.hopFee;
const FEES = 3n * HOP_FEE;
const ESCROW = BigInt(MAX_TOKENS) * ROUTE_PRICE + FEES;
const BURN = "0x000000000000000000000000000000000000dEaD";

const balanceOf = (a) => ethers.provider.getBalance(a);

/// Number of logs of `event` emitted by `contract` in a mined transaction.
async function countEvents(txPromise, contract, event) {
  const rc = await (await txPromise).wait();
  const topic = contract.interface.getEvent(event).topicHash;
  const address = await contract.getAddress();
  return rc.logs.filter((l) => l.address === address && l.topics[0] === topic).length;
}

/// Two committed jobs (A, B) of a contract client, both past their challenge window.
async function twoJobsOfContractClientFixture() {
  const f = await marketFixture();
  const c = await contractClient("reentrant");
  const a = await submit(f.market, c);
  const b = await submit(f.market, c, { extra: 1n });
  for (const job of [a, b]) await commitAll(f.market, f.nodes, job, await receipt(f.market, c.wallet, job.jobId, BILLED));
  await time.increase(PARAMS.challengeWindow);
  const paid = ROUTE_PRICE * BigInt(BILLED) + FEES;
  return { ...f, c, a, b, paid, refundA: ESCROW - paid, refundB: ESCROW + 1n - paid };
}

describe("security", function () {
  describe("reentrancy on payouts", function () {
    it("withdrawUnbonded cannot be re-entered from the node's receive()", async function () {
      const { registry, node, nodeAddress } = await loadFixture(contractNodeFixture);
      const guard = registry.interface.getError("ReentrancyGuardReentrantCall").selector;
      await node.execute(registry, 0, registry.interface.encodeFunctionData("unbond", [ONE]));
      await time.increase(PARAMS.unbondingDelay + 1);
      const withdraw = registry.interface.encodeFunctionData("withdrawUnbonded");
      await node.configure(Mode.Reenter, registry, withdraw);

      const tx = node.execute(registry, 0, withdraw);
      await expect(tx).to.changeEtherBalances([nodeAddress, registry], [ONE, -ONE]);
      expect(await countEvents(tx, registry, "UnbondedWithdrawn")).to.equal(1);
      expect(await node.reentryAttempted()).to.equal(true);
      expect(await node.reentryOk()).to.equal(false);
      expect(await node.reentryError()).to.equal(guard);
      const n = await registry.getNode(nodeAddress);
      expect([n.stake, n.unbonding]).to.deep.equal([NODE_STAKES[3] - ONE, 0n]);
    });

    it("a node that fails the payout when its re-entry fails gets nothing and keeps its unbonding", async function () {
      const { registry, node, nodeAddress, nodes } = await loadFixture(contractNodeFixture);
      await node.execute(registry, 0, registry.interface.encodeFunctionData("unbond", [ONE]));
      await time.increase(PARAMS.unbondingDelay + 1);
      const withdraw = registry.interface.encodeFunctionData("withdrawUnbonded");
      await node.configure(Mode.ReenterAndBubble, registry, withdraw);
      const before = await balanceOf(registry);
      await expect(node.execute(registry, 0, withdraw))
        .to.be.revertedWithCustomError(registry, "TransferFailed")
        .withArgs(nodeAddress, ONE);
      expect((await registry.getNode(nodeAddress)).unbonding).to.equal(ONE);
      expect(await balanceOf(registry)).to.equal(before);
      // The registry still holds exactly every bond.
      let bonds = 0n;
      for (const a of [...nodes.map((s) => s.address), nodeAddress]) bonds += await registry.bondOf(a);
      expect(await balanceOf(registry)).to.equal(bonds);
    });

    for (const [what, reentry] of [
      ["withdrawEarnings", (m) => m.interface.encodeFunctionData("withdrawEarnings")],
      ["withdrawCredit", (m) => m.interface.encodeFunctionData("withdrawCredit")],
      ["finalize", (m, job) => m.interface.encodeFunctionData("finalize", [job.jobId, job.terms])],
    ]) {
      it(`withdrawEarnings cannot be re-entered into ${what} from the node's receive()`, async function () {
        const { registry, market, node, nodeAddress, earned, job } = await loadFixture(contractNodeFixture);
        const guard = market.interface.getError("ReentrancyGuardReentrantCall").selector;
        await node.configure(Mode.Reenter, market, reentry(market, job));
        const tx = node.execute(market, 0, market.interface.encodeFunctionData("withdrawEarnings"));
        await expect(tx).to.emit(registry, "EarningsWithdrawn").withArgs(nodeAddress, earned);
        await expect(tx).to.changeEtherBalances([nodeAddress, market], [earned, -earned]);
        expect(await countEvents(tx, registry, "EarningsWithdrawn")).to.equal(1);
        expect(await node.reentryAttempted()).to.equal(true);
        expect(await node.reentryOk()).to.equal(false);
        expect(await node.reentryError()).to.equal(guard);
        expect((await registry.getNode(nodeAddress)).earnings).to.equal(0);
        expect(await balanceOf(market)).to.equal(0);
      });
    }

    it("a node that fails the earnings payout when its re-entry fails keeps its earnings", async function () {
      const { registry, market, node, nodeAddress, earned } = await loadFixture(contractNodeFixture);
      const withdraw = market.interface.encodeFunctionData("withdrawEarnings");
      await node.configure(Mode.ReenterAndBubble, market, withdraw);
      await expect(node.execute(market, 0, withdraw))
        .to.be.revertedWithCustomError(market, "TransferFailed")
        .withArgs(nodeAddress, earned);
      expect((await registry.getNode(nodeAddress)).earnings).to.equal(earned);
      expect(await balanceOf(market)).to.equal(earned);
    });
  });

  describe("hostile clients", function () {
    it("a client re-entering finalize from its refund is credited instead; the other job is untouched", async function () {
      const { registry, market, nodes, other, c, a, b, paid, refundA, refundB } = await loadFixture(
        twoJobsOfContractClientFixture,
      );
      await c.contract.configure(Mode.ReenterAndBubble, market, market.interface.encodeFunctionData("finalize", [b.jobId, b.terms]));
      const tx = market.connect(other).finalize(a.jobId, a.terms);
      await expect(tx).to.emit(market, "JobFinalized").withArgs(a.jobId, BILLED, paid, refundA);
      await expect(tx).to.emit(market, "RefundCredited").withArgs(c.address, refundA);
      await expect(tx).to.changeEtherBalances([c.address, market], [0, 0]);
      expect(await countEvents(tx, market, "JobFinalized")).to.equal(1);
      expect((await market.getJob(b.jobId)).status).to.equal(JobStatus.Committed);
      expect(await market.creditOf(c.address)).to.equal(refundA);
      expect(await market.totalCredits()).to.equal(refundA);
      for (let i = 1; i <= 3; i++) {
        expect((await registry.getNode(nodes[i].address)).earnings).to.equal(NODE_PRICES[i] * BigInt(BILLED) + HOP_FEE);
      }

      // Once it accepts payments again, job B's refund is pushed and the credit can be withdrawn.
      await c.contract.configure(Mode.Accept, ethers.ZeroAddress, "0x");
      const fin = market.connect(other).finalize(b.jobId, b.terms);
      await expect(fin).to.changeEtherBalance(c.address, refundB);
      await expect(fin).not.to.emit(market, "RefundCredited");
      const w = c.contract.execute(market, 0, market.interface.encodeFunctionData("withdrawCredit"));
      await expect(w).to.emit(market, "CreditWithdrawn").withArgs(c.address, refundA);
      await expect(w).to.changeEtherBalances([c.address, market], [refundA, -refundA]);
      expect(await market.creditOf(c.address)).to.equal(0);
      expect(await market.totalCredits()).to.equal(0);
      expect(await balanceOf(market)).to.equal(2n * paid); // the nodes' earnings, nothing else
    });

    it("a client swallowing its failed re-entry is refunded normally; the guard stopped the re-entry", async function () {
      const { market, other, c, a, b, refundA } = await loadFixture(twoJobsOfContractClientFixture);
      await c.contract.configure(Mode.Reenter, market, market.interface.encodeFunctionData("finalize", [b.jobId, b.terms]));
      const tx = market.connect(other).finalize(a.jobId, a.terms);
      await expect(tx).to.changeEtherBalances([c.address, market], [refundA, -refundA]);
      await expect(tx).not.to.emit(market, "RefundCredited");
      expect(await c.contract.reentryAttempted()).to.equal(true);
      expect(await c.contract.reentryOk()).to.equal(false);
      expect(await c.contract.reentryError()).to.equal(market.interface.getError("ReentrancyGuardReentrantCall").selector);
      expect((await market.getJob(b.jobId)).status).to.equal(JobStatus.Committed);
    });

    for (const [label, mode] of [
      ["reverts on receive", Mode.Reject],
      ["burns all gas on receive", Mode.BurnGas],
    ]) {
      it(`a client that ${label} cannot block finalize: nodes are paid, the refund is credited`, async function () {
        const { registry, market, nodes, other, c, a, paid, refundA } = await loadFixture(twoJobsOfContractClientFixture);
        await c.contract.configure(mode, ethers.ZeroAddress, "0x");
        const tx = market.connect(other).finalize(a.jobId, a.terms);
        await expect(tx).to.emit(market, "JobFinalized").withArgs(a.jobId, BILLED, paid, refundA);
        await expect(tx).to.emit(market, "RefundCredited").withArgs(c.address, refundA);
        // The refund push is capped at REFUND_GAS (50k + 2300 stipend): a plain finalize (~63k) plus the
        // capped push plus the credit bookkeeping (~46k) stays under 200k whatever the client does.
        expect((await (await tx).wait()).gasUsed).to.be.lessThan(200_000n);
        expect(await market.creditOf(c.address)).to.equal(refundA);
        for (let i = 1; i <= 3; i++) {
          const amount = NODE_PRICES[i] * BigInt(BILLED) + HOP_FEE;
          expect((await registry.getNode(nodes[i].address)).earnings).to.equal(amount);
          await expect(market.connect(nodes[i]).withdrawEarnings()).to.changeEtherBalance(nodes[i], amount);
        }
      });
    }

    it("a rejecting client cannot block cancel: the refund (without the slash, which is burned) is credited", async function () {
      const { registry, market, nodes, other } = await loadFixture(marketFixture);
      const c = await contractClient("rejecting-cancel");
      await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      const job = await submit(market, c);
      await market.connect(nodes[1]).commit(job.jobId, job.terms, 0, ethers.ZeroHash, ethers.ZeroHash, await receipt(market, c.wallet, job.jobId, 5));
      await time.increase(PARAMS.commitTimeout + 1);
      const paid = NODE_PRICES[1] * 5n + HOP_FEE;
      const slashed = (NODE_PRICES[2] + NODE_PRICES[3]) * BigInt(MAX_TOKENS) + 2n * HOP_FEE; // capped per hop
      const refund = ESCROW - paid;
      const tx = market.connect(other).cancel(job.jobId, job.terms);
      await expect(tx).to.emit(market, "JobCancelled").withArgs(job.jobId, 0b110, paid, slashed, refund);
      await expect(tx).to.emit(market, "RefundCredited").withArgs(c.address, refund);
      await expect(tx).to.changeEtherBalance(BURN, slashed);
      expect(await market.creditOf(c.address)).to.equal(refund);
      expect((await registry.getNode(nodes[1].address)).earnings).to.equal(paid);
      expect(await balanceOf(market)).to.equal(refund + paid);
    });
  });

  describe("Sybil client paying its own node", function () {
    it("cannot bill more than it signed, above maxTokens, or on another client's job", async function () {
      const { registry, market, nodes, client, client2: sybil } = await loadFixture(marketFixture);
      const own = nodes[3]; // the Sybil's node: position 2 of routes from shard 1
      const honest = await submit(market, client, { extra: 5n });
      const job = await submit(market, sybil);
      const stakesBefore = await Promise.all(nodes.map((n) => registry.bondOf(n.address)));
      const honestBalance = await balanceOf(client.address);

      // Tokens raised above what was signed: the signature no longer recovers to the client.
      const signed = await receipt(market, sybil, job.jobId, 10);
      const raised = { ...signed, tokens: 50 };
      const garbage = ethers.recoverAddress(
        await market.envelopeDigest(job.jobId, raised.step, raised.tokens, raised.payloadHash),
        raised.signature,
      );
      await expect(market.connect(own).commit(job.jobId, job.terms, 2, ethers.ZeroHash, ethers.ZeroHash, raised))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(job.jobId, garbage);
      // A genuine signature above maxTokens.
      await expect(market.connect(own).commit(job.jobId, job.terms, 2, ethers.ZeroHash, ethers.ZeroHash, await receipt(market, sybil, job.jobId, MAX_TOKENS + 1)))
        .to.be.revertedWithCustomError(market, "TokensExceedMax")
        .withArgs(MAX_TOKENS + 1, MAX_TOKENS);
      // Billing the honest client's job with the Sybil's own signature.
      await expect(market.connect(own).commit(honest.jobId, honest.terms, 2, ethers.ZeroHash, ethers.ZeroHash, await receipt(market, sybil, honest.jobId, MAX_TOKENS)))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(honest.jobId, sybil.address);
      // Replaying an honest receipt of another job.
      const replay = await receipt(market, client, honest.jobId, 60);
      const replaySigner = ethers.recoverAddress(
        await market.envelopeDigest(job.jobId, replay.step, replay.tokens, replay.payloadHash),
        replay.signature,
      );
      await expect(market.connect(own).commit(job.jobId, job.terms, 2, ethers.ZeroHash, ethers.ZeroHash, replay))
        .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
        .withArgs(job.jobId, replaySigner);

      await market.connect(own).commit(job.jobId, job.terms, 2, ethers.ZeroHash, ethers.ZeroHash, signed);
      for (const p of [0, 1]) {
        await market.connect(signerOf(nodes, job.decoded.route[p].node)).commit(job.jobId, job.terms, p, ethers.ZeroHash, ethers.ZeroHash, NO_RECEIPT);
      }
      await time.increase(PARAMS.challengeWindow);
      const paid = ROUTE_PRICE * 10n + FEES;
      await expect(market.finalize(job.jobId, job.terms)).to.emit(market, "JobFinalized").withArgs(job.jobId, 10, paid, ESCROW - paid);

      expect((await registry.getNode(own.address)).earnings).to.equal(NODE_PRICES[3] * 10n + HOP_FEE);
      expect((await registry.getNode(nodes[1].address)).earnings).to.equal(NODE_PRICES[1] * 10n + HOP_FEE);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(NODE_PRICES[2] * 10n + HOP_FEE);
      // Nobody else's escrow or stake moved.
      const h = await market.getJob(honest.jobId);
      expect([h.status, h.committedMask, h.billedTokens]).to.deep.equal([BigInt(JobStatus.Open), 0n, 0n]);
      expect(await balanceOf(market)).to.equal(honest.escrow + paid);
      expect(await balanceOf(client.address)).to.equal(honestBalance);
      expect(await Promise.all(nodes.map((n) => registry.bondOf(n.address)))).to.deep.equal(stakesBefore);
    });
  });

  describe("stake and escrow accounting over a random sequence", function () {
    /// mulberry32: a small seeded PRNG, so the sequence is the same on every run.
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

    async function sequenceFixture() {
      const f = await auditedMarketFixture();
      const extra = [
        [f.signers[9], 1, 1_500_000_000n],
        [f.signers[10], 2, 2_500_000_000n],
        [f.signers[11], 3, 4_000_000_000n],
      ];
      for (const [s, shard, price] of extra) {
        await f.registry.connect(s).registerNode(1, shard, "http://extra", price, ethers.id("k"), { value: ONE + ONE / 2n });
      }
      const c = await contractClient("sequence");
      await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
      return { ...f, allNodes: [...f.nodes, ...extra.map(([s]) => s)], c };
    }

    it("registry balance == sum(stake + unbonding); market balance == open escrow + credits + earnings + challenge bonds", async function () {
      const { registry, market, allNodes, client, client2, auditor, other, c } = await loadFixture(sequenceFixture);
      const rand = prng(20240611);
      const int = (n) => Math.floor(rand() * n);
      const choose = (xs) => xs[int(xs.length)];
      const nodeAddrs = allNodes.map((n) => n.address);
      const clients = [
        { signer: client, key: client, address: client.address },
        { signer: client2, key: client2, address: client2.address },
        { signer: c, key: c.wallet, address: c.address },
      ];
      const jobs = [];
      const counts = {};
      // Open may go straight to Disputed: a last commit whose commitments do not link up.
      const allowed = { 1: [1, 2, 3, 5], 2: [2, 3, 4], 3: [3, 4], 4: [4], 5: [5] };
      // Every transaction is mined at an explicit time, so boundaries never depend on the wall clock.
      let now = await time.latest();
      const at = async () => time.setNextBlockTimestamp(++now);
      const nodeInfo = (s) => registry.getNode(s.address);
      const jobInfo = (j) => market.getJob(j.jobId);

      async function earningsSum() {
        let sum = 0n;
        for (const a of nodeAddrs) sum += (await registry.getNode(a)).earnings;
        return sum;
      }

      async function checkInvariants() {
        let bonds = 0n;
        let earnings = 0n;
        for (const a of nodeAddrs) {
          const n = await registry.getNode(a);
          bonds += n.stake + n.unbonding;
          earnings += n.earnings;
        }
        expect(await balanceOf(registry)).to.equal(bonds);
        let escrow = 0n;
        for (const j of jobs) {
          const status = Number((await jobInfo(j)).status);
          expect(allowed[j.status]).to.include(status, `job ${j.jobId} moved from ${j.status} to ${status}`);
          j.status = status;
          if (status === JobStatus.Open || status === JobStatus.Committed || status === JobStatus.Disputed) {
            escrow += j.decoded.escrow;
          }
        }
        let challengeBonds = 0n;
        for (const j of jobs) challengeBonds += (await market.challengeOf(j.jobId)).bond;
        expect(await balanceOf(market)).to.equal(escrow + (await market.totalCredits()) + earnings + challengeBonds);
      }

      /// Settles a job and checks the earnings credited equal the event's `paid`, plus a settled challenge's
      /// share per paid hop (nothing paid twice).
      async function settle(send, event, j) {
        const before = await earningsSum();
        const committedMask = Number((await jobInfo(j)).committedMask);
        await at();
        const rc = await (await send()).wait();
        const logs = rc.logs.map((l) => market.interface.parseLog(l)).filter((l) => l);
        const log = logs.find((l) => l.name === event);
        const settled = logs.find((l) => l.name === "ChallengeSettled");
        const fraudMask = Number(logs.find((l) => l.name === "DisputeResolved")?.args.fraudMask ?? 0);
        let paidHops = 0;
        for (let p = 0; p < j.decoded.route.length; p++) if (((committedMask & ~fraudMask) >> p) & 1) paidHops++;
        const bonus = settled ? settled.args.perNode * BigInt(paidHops) : 0n;
        expect((await earningsSum()) - before).to.equal(log.args.paid + bonus);
      }

      const actions = {
        async submit() {
          const cl = choose(clients);
          const firstShard = int(4);
          const maxTokens = 1 + int(100);
          const maxPrice = 6_000_000_000n;
          const hops = BigInt(4 - firstShard);
          // Unbonds and slashes can empty a pool; then there is nothing to submit to.
          // Only a revert means "no route"; anything else (a wrong call) must fail the test.
          const matchable = await registry.matchRoute(1, firstShard, maxPrice, 0, [], []).then(
            () => true,
            (e) => {
              if (!/reverted with custom error/.test(String(e.message))) throw e;
              return false;
            },
          );
          if (!matchable) return false;
          await at();
          const job = await submit(market, cl.signer, {
            firstShard,
            maxTokens,
            maxPrice,
            value: BigInt(maxTokens) * maxPrice * hops + hops * HOP_FEE + BigInt(int(1000)),
          });
          jobs.push({ ...job, status: JobStatus.Open, client: cl });
          return true;
        },
        async commit() {
          const open = [];
          for (const j of jobs) {
            const s = await jobInfo(j);
            if (Number(s.status) !== JobStatus.Open || now + 1 > Number(s.timestamp) + PARAMS.commitTimeout) continue;
            for (let p = 0; p < j.decoded.route.length; p++) if (!((Number(s.committedMask) >> p) & 1)) open.push([j, p]);
          }
          if (open.length === 0) return false;
          const [j, p] = choose(open);
          const r = rand() < 0.5 ? NO_RECEIPT : await receipt(market, j.client.key, j.jobId, 1 + int(Number(j.decoded.maxTokens)));
          await at();
          // Mostly linked commitments; sometimes an input that does not match the previous output.
          const input = rand() < 0.15 ? ethers.id("bad link") : link(j.jobId, p);
          await market.connect(signerOf(allNodes, j.decoded.route[p].node)).commit(j.jobId, j.terms, p, input, link(j.jobId, p + 1), r);
          return true;
        },
        async advance() {
          now += rand() < 0.05 ? PARAMS.unbondingDelay : 1 + int(1500);
          return true;
        },
        async finalize() {
          const ready = [];
          for (const j of jobs) {
            const s = await jobInfo(j);
            const st = Number(s.status);
            if (st === JobStatus.Committed && now + 1 >= Number(s.timestamp) + PARAMS.challengeWindow) ready.push(j);
            if (st === JobStatus.Disputed && now + 1 >= Number(s.timestamp) + PARAMS.disputeTimeout) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await settle(() => market.connect(other).finalize(j.jobId, j.terms), "JobFinalized", j);
          return true;
        },
        async cancel() {
          const ready = [];
          for (const j of jobs) {
            const s = await jobInfo(j);
            if (Number(s.status) === JobStatus.Open && now + 1 > Number(s.timestamp) + PARAMS.commitTimeout) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await settle(() => market.connect(other).cancel(j.jobId, j.terms), "JobCancelled", j);
          return true;
        },
        async hold() {
          const ready = [];
          for (const j of jobs) {
            const s = await jobInfo(j);
            if (Number(s.status) === JobStatus.Committed && now + 1 < Number(s.timestamp) + PARAMS.challengeWindow) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await at();
          await market.connect(auditor).holdForAudit(j.jobId, j.terms);
          return true;
        },
        async challenge() {
          const ready = [];
          for (const j of jobs) {
            const s = await jobInfo(j);
            if (Number(s.status) === JobStatus.Committed && now + 1 < Number(s.timestamp) + PARAMS.challengeWindow) ready.push(j);
          }
          if (ready.length === 0) return false;
          const j = choose(ready);
          await at();
          await market.connect(other).challenge(j.jobId, j.terms, { value: await market.challengeBond() });
          return true;
        },
        async resolve() {
          const held = [];
          for (const j of jobs) if (Number((await jobInfo(j)).status) === JobStatus.Disputed) held.push(j);
          if (held.length === 0) return false;
          const j = choose(held);
          const mask = int(1 << j.decoded.route.length);
          await settle(() => market.connect(auditor).resolveDispute(j.jobId, j.terms, mask), "JobFinalized", j);
          return true;
        },
        async stake() {
          await at();
          await registry.connect(choose(allNodes)).stake({ value: ONE / BigInt(1 + int(10)) });
          return true;
        },
        async unbond() {
          const s = choose(allNodes);
          const { stake } = await nodeInfo(s);
          if (stake === 0n) return false;
          await at();
          await registry.connect(s).unbond(1n + (stake * BigInt(int(60))) / 100n);
          return true;
        },
        async withdrawUnbonded() {
          const ready = [];
          for (const s of allNodes) {
            const n = await nodeInfo(s);
            if (n.unbonding > 0n && now + 1 > Number(n.unlockAt)) ready.push(s);
          }
          if (ready.length === 0) return false;
          await at();
          await registry.connect(choose(ready)).withdrawUnbonded();
          return true;
        },
        async withdrawEarnings() {
          const ready = [];
          for (const s of allNodes) if ((await nodeInfo(s)).earnings > 0n) ready.push(s);
          if (ready.length === 0) return false;
          await at();
          await market.connect(choose(ready)).withdrawEarnings();
          return true;
        },
        async withdrawCredit() {
          if ((await market.creditOf(c.address)) === 0n) return false;
          await at();
          await c.contract.configure(Mode.Accept, ethers.ZeroAddress, "0x");
          await at();
          await c.contract.execute(market, 0, market.interface.encodeFunctionData("withdrawCredit"));
          await at();
          await c.contract.configure(Mode.Reject, ethers.ZeroAddress, "0x");
          return true;
        },
      };
      // Weighted: the job lifecycle dominates.
      const schedule = [
        ...Array(5).fill("submit"),
        ...Array(8).fill("commit"),
        ...Array(4).fill("advance"),
        ...Array(3).fill("finalize"),
        ...Array(2).fill("cancel"),
        "hold",
        "challenge",
        "resolve",
        "stake",
        "unbond",
        "withdrawUnbonded",
        ...Array(2).fill("withdrawEarnings"),
        "withdrawCredit",
      ];

      for (let done = 0; done < 90; ) {
        const name = choose(schedule);
        if (await actions[name]()) {
          counts[name] = (counts[name] ?? 0) + 1;
          done++;
          await checkInvariants();
        }
      }

      // Drain: settle every job, withdraw everything, and the market must be empty.
      now += PARAMS.commitTimeout + PARAMS.challengeWindow + PARAMS.disputeTimeout + 1;
      for (const j of jobs) {
        const st = Number((await jobInfo(j)).status);
        if (st === JobStatus.Open) await settle(() => market.connect(other).cancel(j.jobId, j.terms), "JobCancelled", j);
        if (st === JobStatus.Committed || st === JobStatus.Disputed) {
          await settle(() => market.connect(other).finalize(j.jobId, j.terms), "JobFinalized", j);
        }
      }
      await checkInvariants();
      while (await actions.withdrawEarnings()) await checkInvariants();
      await actions.withdrawCredit();
      await checkInvariants();
      expect(await market.totalCredits()).to.equal(0);
      expect(await balanceOf(market)).to.equal(0);
      for (const j of jobs) expect([JobStatus.Finalized, JobStatus.Cancelled]).to.include(j.status);
      expect(jobs.length).to.be.greaterThan(5);
      expect(counts.commit).to.be.greaterThan(5);
    });
  });
});
