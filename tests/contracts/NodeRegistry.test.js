// NodeRegistry: models, stakes, pools and the JobMarket hooks. The registry here is bound to an EOA
// standing in for the JobMarket, so slash / creditEarnings / takeEarnings are driven directly.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time } = require("@nomicfoundation/hardhat-network-helpers");
const { MODEL, NODE_PRICES, NodeStatus } = require("./fixtures");

const ONE = ethers.parseEther("1");
const MIN_STAKE = ONE;
const DELAY = 7 * 24 * 3600;
const UINT96_MAX = (1n << 96n) - 1n;
const KEY = ethers.id("node enc key");

/// Bare registry (no model), bound to signer 1 as its "JobMarket".
async function registryFixture() {
  const [deployer, hook, n0, n1, n2, n3, other, ...rest] = await ethers.getSigners();
  const registry = await ethers.deployContract("NodeRegistry", [hook.address, MIN_STAKE, DELAY]);
  return { registry, deployer, hook, nodes: [n0, n1, n2, n3], other, rest };
}

/// Registry with MODEL as id 1 and no nodes.
async function modelFixture() {
  const f = await registryFixture();
  await f.registry.registerModel(MODEL.name, MODEL.weightsHash, MODEL.numLayers, MODEL.boundaries);
  return f;
}

/// Registry with MODEL and node i registered on shard i at NODE_PRICES[i] with 2 ETH stake.
async function nodesFixture() {
  const f = await modelFixture();
  for (let s = 0; s < 4; s++) {
    await f.registry
      .connect(f.nodes[s])
      .registerNode(1, s, `http://node${s}`, NODE_PRICES[s], KEY, { value: 2n * ONE });
  }
  return f;
}

/// Packs hops the way JobTermsLib does: node (20 bytes) | price (8 bytes) per hop.
function packRoute(hops) {
  return ethers.solidityPacked(
    hops.flatMap(() => ["address", "uint64"]),
    hops.flatMap((h) => [h.node, h.price]),
  );
}

/// Mirrors NodeRegistry._pick's start index.
function pickStart(seed, shard, size) {
  const h = ethers.keccak256(ethers.AbiCoder.defaultAbiCoder().encode(["uint256", "uint8"], [seed, shard]));
  return Number(BigInt(h) % BigInt(size));
}

describe("NodeRegistry", function () {
  describe("constructor", function () {
    it("stores the JobMarket, minimum stake and unbonding delay", async function () {
      const { registry, hook } = await loadFixture(registryFixture);
      expect(await registry.jobMarket()).to.equal(hook.address);
      expect(await registry.minStake()).to.equal(MIN_STAKE);
      expect(await registry.unbondingDelay()).to.equal(DELAY);
      expect(await registry.modelCount()).to.equal(0);
    });

    it("rejects a zero JobMarket", async function () {
      const factory = await ethers.getContractFactory("NodeRegistry");
      await expect(factory.deploy(ethers.ZeroAddress, MIN_STAKE, DELAY))
        .to.be.revertedWithCustomError(factory, "InvalidParameter")
        .withArgs("jobMarket");
    });

    it("rejects a minimum stake of zero or above 96 bits, accepts the 96-bit maximum", async function () {
      const [, hook] = await ethers.getSigners();
      const factory = await ethers.getContractFactory("NodeRegistry");
      for (const bad of [0n, UINT96_MAX + 1n]) {
        await expect(factory.deploy(hook.address, bad, DELAY))
          .to.be.revertedWithCustomError(factory, "InvalidParameter")
          .withArgs("minStake");
      }
      const ok = await factory.deploy(hook.address, UINT96_MAX, DELAY);
      expect(await ok.minStake()).to.equal(UINT96_MAX);
    });

    it("rejects an unbonding delay of zero or above 365 days, accepts exactly 365 days", async function () {
      const [, hook] = await ethers.getSigners();
      const factory = await ethers.getContractFactory("NodeRegistry");
      for (const bad of [0, 365 * 86400 + 1]) {
        await expect(factory.deploy(hook.address, MIN_STAKE, bad))
          .to.be.revertedWithCustomError(factory, "InvalidParameter")
          .withArgs("unbondingDelay");
      }
      const ok = await factory.deploy(hook.address, MIN_STAKE, 365 * 86400);
      expect(await ok.unbondingDelay()).to.equal(365 * 86400);
    });
  });

  describe("registerModel", function () {
    it("registers the model, emits ModelRegistered and returns id 1 then 2", async function () {
      const { registry, deployer } = await loadFixture(registryFixture);
      const { name, weightsHash, numLayers, boundaries } = MODEL;
      expect(await registry.registerModel.staticCall(name, weightsHash, numLayers, boundaries)).to.equal(1);
      await expect(registry.registerModel(name, weightsHash, numLayers, boundaries))
        .to.emit(registry, "ModelRegistered")
        .withArgs(1, weightsHash, name, numLayers, boundaries);
      expect(await registry.modelCount()).to.equal(1);
      const m = await registry.getModel(1);
      expect(m.name).to.equal(name);
      expect(m.weightsHash).to.equal(weightsHash);
      expect(m.registrant).to.equal(deployer.address);
      expect(m.numLayers).to.equal(numLayers);
      expect(m.boundaries.map(Number)).to.deep.equal(boundaries);
      for (let s = 0; s < 4; s++) expect(await registry.poolSize(1, s)).to.equal(0);

      // Same weights, another plan: a new model.
      await expect(registry.registerModel(name, weightsHash, numLayers, [0, 15, 30]))
        .to.emit(registry, "ModelRegistered")
        .withArgs(2, weightsHash, name, numLayers, [0, 15, 30]);
      expect((await registry.getModel(2)).boundaries.map(Number)).to.deep.equal([0, 15, 30]);
    });

    it("accepts a single shard and the maximum of 8 shards", async function () {
      const { registry } = await loadFixture(registryFixture);
      await registry.registerModel("one", ethers.id("a"), 1, [0, 1]);
      const eight = [0, 1, 2, 3, 4, 5, 6, 7, 65535];
      await registry.registerModel("eight", ethers.id("b"), 65535, eight);
      expect((await registry.getModel(1)).boundaries.map(Number)).to.deep.equal([0, 1]);
      expect((await registry.getModel(2)).boundaries.map(Number)).to.deep.equal(eight);
    });

    it("rejects an empty or over-long name, accepts 64 bytes", async function () {
      const { registry } = await loadFixture(registryFixture);
      const { weightsHash, numLayers, boundaries } = MODEL;
      await expect(registry.registerModel("", weightsHash, numLayers, boundaries))
        .to.be.revertedWithCustomError(registry, "InvalidModelName")
        .withArgs(0);
      await expect(registry.registerModel("x".repeat(65), weightsHash, numLayers, boundaries))
        .to.be.revertedWithCustomError(registry, "InvalidModelName")
        .withArgs(65);
      await registry.registerModel("x".repeat(64), weightsHash, numLayers, boundaries);
      expect((await registry.getModel(1)).name).to.equal("x".repeat(64));
    });

    it("rejects a zero weights hash", async function () {
      const { registry } = await loadFixture(registryFixture);
      await expect(registry.registerModel("m", ethers.ZeroHash, 30, [0, 30]))
        .to.be.revertedWithCustomError(registry, "ZeroWeightsHash")
        .withArgs();
    });

    it("rejects 0 shards and 9 shards", async function () {
      const { registry } = await loadFixture(registryFixture);
      const h = ethers.id("w");
      await expect(registry.registerModel("m", h, 30, []))
        .to.be.revertedWithCustomError(registry, "InvalidShardCount")
        .withArgs(0);
      await expect(registry.registerModel("m", h, 0, [0]))
        .to.be.revertedWithCustomError(registry, "InvalidShardCount")
        .withArgs(0);
      await expect(registry.registerModel("m", h, 9, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
        .to.be.revertedWithCustomError(registry, "InvalidShardCount")
        .withArgs(9);
    });

    it("rejects boundaries not starting at 0, not strictly increasing, or not ending at numLayers", async function () {
      const { registry } = await loadFixture(registryFixture);
      const h = ethers.id("w");
      const cases = [
        [[1, 30], 30, 0],
        [[0, 4, 4, 30], 30, 2], // equal
        [[0, 12, 4, 30], 30, 2], // decreasing
        [[0, 0, 30], 30, 1],
        [[0, 4, 29], 30, 2], // ends short
        [[0, 4, 31], 30, 2], // ends past
      ];
      for (const [b, layers, index] of cases) {
        await expect(registry.registerModel("m", h, layers, b))
          .to.be.revertedWithCustomError(registry, "InvalidBoundaries")
          .withArgs(index);
      }
      expect(await registry.modelCount()).to.equal(0);
    });

    it("rejects the same weights with the same plan under any name", async function () {
      const { registry } = await loadFixture(modelFixture);
      await expect(registry.registerModel("another name", MODEL.weightsHash, MODEL.numLayers, MODEL.boundaries))
        .to.be.revertedWithCustomError(registry, "ModelAlreadyRegistered")
        .withArgs(1);
    });
  });

  describe("stake", function () {
    it("rejects zero", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      await expect(registry.connect(nodes[0]).stake({ value: 0 }))
        .to.be.revertedWithCustomError(registry, "ZeroAmount")
        .withArgs();
    });

    it("adds to the stake of an unregistered address without pooling it", async function () {
      const { registry, other } = await loadFixture(modelFixture);
      const tx = registry.connect(other).stake({ value: 2n * ONE });
      await expect(tx).to.emit(registry, "Staked").withArgs(other.address, 2n * ONE, 2n * ONE);
      await expect(tx).to.changeEtherBalances([other, registry], [-2n * ONE, 2n * ONE]);
      await expect(tx).not.to.emit(registry, "PoolMembershipChanged");
      await expect(registry.connect(other).stake({ value: 5n }))
        .to.emit(registry, "Staked")
        .withArgs(other.address, 5n, 2n * ONE + 5n);
      const n = await registry.getNode(other.address);
      expect(n.status).to.equal(NodeStatus.None);
      expect(n.stake).to.equal(2n * ONE + 5n);
      expect(n.pooled).to.equal(false);
      expect(await registry.bondOf(other.address)).to.equal(2n * ONE + 5n);
    });

    it("pools an active node once its stake reaches minStake exactly", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      const node = nodes[1];
      await registry.connect(node).registerNode(1, 2, "http://n", 7n, KEY, { value: ONE / 2n });
      expect((await registry.getNode(node.address)).pooled).to.equal(false);
      expect(await registry.poolSize(1, 2)).to.equal(0);
      await expect(registry.connect(node).stake({ value: ONE / 2n - 1n })).not.to.emit(
        registry,
        "PoolMembershipChanged",
      );
      await expect(registry.connect(node).stake({ value: 1n }))
        .to.emit(registry, "PoolMembershipChanged")
        .withArgs(node.address, true);
      expect(await registry.poolSize(1, 2)).to.equal(1);
      const hop = await registry.poolAt(1, 2, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([node.address, 7n]);
      // More stake on a pooled node does not pool it twice.
      await expect(registry.connect(node).stake({ value: ONE })).not.to.emit(registry, "PoolMembershipChanged");
      expect(await registry.poolSize(1, 2)).to.equal(1);
    });

    it("does not pool an inactive node", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[0]).deactivate();
      await expect(registry.connect(nodes[0]).stake({ value: ONE })).not.to.emit(registry, "PoolMembershipChanged");
      expect(await registry.poolSize(1, 0)).to.equal(0);
    });
  });

  describe("registerNode", function () {
    it("registers, adds the value to the stake and pools the node", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      const node = nodes[2];
      const tx = registry.connect(node).registerNode(1, 3, "http://10.1.1.1:9000", 1234n, KEY, { value: 3n * ONE });
      await expect(tx)
        .to.emit(registry, "NodeRegistered")
        .withArgs(node.address, 1, 3, "http://10.1.1.1:9000", 1234n, KEY);
      await expect(tx).to.emit(registry, "Staked").withArgs(node.address, 3n * ONE, 3n * ONE);
      await expect(tx).to.emit(registry, "PoolMembershipChanged").withArgs(node.address, true);
      await expect(tx).to.changeEtherBalances([node, registry], [-3n * ONE, 3n * ONE]);
      const n = await registry.getNode(node.address);
      expect(n.status).to.equal(NodeStatus.Active);
      expect(n.modelId).to.equal(1);
      expect(n.shard).to.equal(3);
      expect(n.pricePerToken).to.equal(1234n);
      expect(n.stake).to.equal(3n * ONE);
      expect(n.unbonding).to.equal(0);
      expect(n.unlockAt).to.equal(0);
      expect(n.earnings).to.equal(0);
      expect(n.pooled).to.equal(true);
      expect(n.encryptionKey).to.equal(KEY);
      expect(n.endpoint).to.equal("http://10.1.1.1:9000");
      expect(await registry.poolSize(1, 3)).to.equal(1);
      const hop = await registry.poolAt(1, 3, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([node.address, 1234n]);
    });

    it("registers without value: active but not pooled, no Staked event", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      const tx = registry.connect(nodes[0]).registerNode(1, 0, "http://n", 1n, KEY);
      await expect(tx).to.emit(registry, "NodeRegistered");
      await expect(tx).not.to.emit(registry, "Staked");
      await expect(tx).not.to.emit(registry, "PoolMembershipChanged");
      const n = await registry.getNode(nodes[0].address);
      expect(n.status).to.equal(NodeStatus.Active);
      expect(n.pooled).to.equal(false);
    });

    it("rejects an unknown model and a shard outside the plan", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      await expect(registry.connect(nodes[0]).registerNode(2, 0, "http://n", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "UnknownModel")
        .withArgs(2);
      await expect(registry.connect(nodes[0]).registerNode(0, 0, "http://n", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "UnknownModel")
        .withArgs(0);
      await expect(registry.connect(nodes[0]).registerNode(1, 4, "http://n", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "InvalidShard")
        .withArgs(1, 4);
      await expect(registry.connect(nodes[0]).registerNode(1, 255, "http://n", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "InvalidShard")
        .withArgs(1, 255);
    });

    it("rejects an empty or over-long endpoint, accepts 256 bytes", async function () {
      const { registry, nodes } = await loadFixture(modelFixture);
      await expect(registry.connect(nodes[0]).registerNode(1, 0, "", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "InvalidEndpoint")
        .withArgs(0);
      await expect(registry.connect(nodes[0]).registerNode(1, 0, "h".repeat(257), 1n, KEY))
        .to.be.revertedWithCustomError(registry, "InvalidEndpoint")
        .withArgs(257);
      await registry.connect(nodes[0]).registerNode(1, 0, "h".repeat(256), 1n, KEY);
      expect((await registry.getNode(nodes[0].address)).endpoint).to.equal("h".repeat(256));
    });

    it("rejects a node that is already active", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await expect(registry.connect(nodes[0]).registerNode(1, 1, "http://n", 1n, KEY))
        .to.be.revertedWithCustomError(registry, "NodeAlreadyActive")
        .withArgs(nodes[0].address);
    });

    it("re-registers a deactivated node on another shard, moving it between pools", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const node = nodes[1]; // shard 1, 2 ETH
      await registry.connect(node).deactivate();
      const tx = registry.connect(node).registerNode(1, 3, "http://moved", 99n, ethers.id("k2"), { value: ONE });
      await expect(tx).to.emit(registry, "NodeRegistered").withArgs(node.address, 1, 3, "http://moved", 99n, ethers.id("k2"));
      await expect(tx).to.emit(registry, "Staked").withArgs(node.address, ONE, 3n * ONE);
      await expect(tx).to.emit(registry, "PoolMembershipChanged").withArgs(node.address, true);
      expect(await registry.poolSize(1, 1)).to.equal(0);
      expect(await registry.poolSize(1, 3)).to.equal(2);
      const hop = await registry.poolAt(1, 3, 1);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([node.address, 99n]);
      const n = await registry.getNode(node.address);
      expect([n.status, n.shard, n.stake, n.endpoint]).to.deep.equal([NodeStatus.Active, 3n, 3n * ONE, "http://moved"]);
    });

    it("keeps the pool consistent across swap-and-pop removals", async function () {
      const { registry, nodes, rest } = await loadFixture(nodesFixture);
      // Shard 2 pool: nodes[2], rest[0], rest[1]
      for (const [i, s] of [rest[0], rest[1]].entries()) {
        await registry.connect(s).registerNode(1, 2, "http://r", 10n + BigInt(i), KEY, { value: ONE });
      }
      expect(await registry.poolSize(1, 2)).to.equal(3);
      await registry.connect(nodes[2]).deactivate(); // slot 0: the last entry moves in
      expect(await registry.poolSize(1, 2)).to.equal(2);
      let hop = await registry.poolAt(1, 2, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([rest[1].address, 11n]);
      // The moved node's slot was updated: removing it removes the right entry.
      await registry.connect(rest[1]).deactivate();
      expect(await registry.poolSize(1, 2)).to.equal(1);
      hop = await registry.poolAt(1, 2, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([rest[0].address, 10n]);
      await registry.connect(rest[0]).deactivate();
      expect(await registry.poolSize(1, 2)).to.equal(0);
      for (const s of [nodes[2], rest[0], rest[1]]) expect((await registry.getNode(s.address)).pooled).to.equal(false);
    });
  });

  describe("updateNode", function () {
    it("changes endpoint and price, and the pool entry's price", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await expect(registry.connect(nodes[2]).updateNode("http://new", 42n))
        .to.emit(registry, "NodeUpdated")
        .withArgs(nodes[2].address, "http://new", 42n);
      const n = await registry.getNode(nodes[2].address);
      expect([n.endpoint, n.pricePerToken]).to.deep.equal(["http://new", 42n]);
      const hop = await registry.poolAt(1, 2, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([nodes[2].address, 42n]);
      const [route, sum] = await registry.matchRoute(1, 2, NODE_PRICES[3], 0, [], []);
      expect(sum).to.equal(42n + NODE_PRICES[3]);
      expect(route).to.equal(packRoute([{ node: nodes[2].address, price: 42n }, { node: nodes[3].address, price: NODE_PRICES[3] }]));
    });

    it("updates an inactive node without touching the pool", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[0]).deactivate();
      await registry.connect(nodes[0]).updateNode("http://later", 5n);
      expect((await registry.getNode(nodes[0].address)).pricePerToken).to.equal(5n);
      expect(await registry.poolSize(1, 0)).to.equal(0);
      // Re-activation pools it at the new price given at registration.
      await registry.connect(nodes[0]).registerNode(1, 0, "http://back", 6n, KEY);
      expect((await registry.poolAt(1, 0, 0)).pricePerToken).to.equal(6n);
    });

    it("rejects an unregistered caller and a bad endpoint", async function () {
      const { registry, nodes, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(other).updateNode("http://x", 1n))
        .to.be.revertedWithCustomError(registry, "NodeNotRegistered")
        .withArgs(other.address);
      await expect(registry.connect(nodes[0]).updateNode("", 1n))
        .to.be.revertedWithCustomError(registry, "InvalidEndpoint")
        .withArgs(0);
      await expect(registry.connect(nodes[0]).updateNode("e".repeat(257), 1n))
        .to.be.revertedWithCustomError(registry, "InvalidEndpoint")
        .withArgs(257);
    });
  });

  describe("setEncryptionKey", function () {
    const NEW_KEY = "0x" + "ab".repeat(32);

    it("rotates an active node's key without touching its pool entry", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const before = await registry.poolSize(1, 2);
      await expect(registry.connect(nodes[2]).setEncryptionKey(NEW_KEY))
        .to.emit(registry, "EncryptionKeyChanged")
        .withArgs(nodes[2].address, NEW_KEY);
      const n = await registry.getNode(nodes[2].address);
      expect([n.encryptionKey, n.status, n.pooled]).to.deep.equal([NEW_KEY, 1n, true]);
      expect(await registry.poolSize(1, 2)).to.equal(before);
    });

    it("lets an inactive node change its key", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[0]).deactivate();
      await registry.connect(nodes[0]).setEncryptionKey(NEW_KEY);
      expect((await registry.getNode(nodes[0].address)).encryptionKey).to.equal(NEW_KEY);
    });

    it("rejects an unregistered caller", async function () {
      const { registry, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(other).setEncryptionKey(NEW_KEY))
        .to.be.revertedWithCustomError(registry, "NodeNotRegistered")
        .withArgs(other.address);
    });
  });

  describe("deactivate", function () {
    it("removes the node from its pool and keeps its stake", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const tx = registry.connect(nodes[3]).deactivate();
      await expect(tx).to.emit(registry, "NodeDeactivated").withArgs(nodes[3].address);
      await expect(tx).to.emit(registry, "PoolMembershipChanged").withArgs(nodes[3].address, false);
      await expect(tx).to.changeEtherBalance(registry, 0);
      const n = await registry.getNode(nodes[3].address);
      expect([n.status, n.stake, n.pooled]).to.deep.equal([NodeStatus.Inactive, 2n * ONE, false]);
      expect(await registry.poolSize(1, 3)).to.equal(0);
    });

    it("rejects a node that is not active", async function () {
      const { registry, nodes, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(other).deactivate())
        .to.be.revertedWithCustomError(registry, "NodeNotActive")
        .withArgs(other.address);
      await registry.connect(nodes[0]).deactivate();
      await expect(registry.connect(nodes[0]).deactivate())
        .to.be.revertedWithCustomError(registry, "NodeNotActive")
        .withArgs(nodes[0].address);
    });
  });

  describe("unbond", function () {
    it("moves stake to unbonding with unlockAt = now + delay; the node stays pooled at minStake", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const node = nodes[1];
      const t = (await time.latest()) + 10;
      await time.setNextBlockTimestamp(t);
      const tx = registry.connect(node).unbond(ONE);
      await expect(tx).to.emit(registry, "UnbondingStarted").withArgs(node.address, ONE, t + DELAY);
      await expect(tx).not.to.emit(registry, "PoolMembershipChanged");
      await expect(tx).to.changeEtherBalance(registry, 0);
      const n = await registry.getNode(node.address);
      expect([n.stake, n.unbonding, n.unlockAt, n.pooled]).to.deep.equal([ONE, ONE, BigInt(t + DELAY), true]);
      expect(await registry.bondOf(node.address)).to.equal(2n * ONE);
    });

    it("drops the node from its pool one wei below minStake", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[1]).unbond(ONE);
      await expect(registry.connect(nodes[1]).unbond(1n))
        .to.emit(registry, "PoolMembershipChanged")
        .withArgs(nodes[1].address, false);
      expect(await registry.poolSize(1, 1)).to.equal(0);
      // Staking back re-enters the pool.
      await expect(registry.connect(nodes[1]).stake({ value: 1n }))
        .to.emit(registry, "PoolMembershipChanged")
        .withArgs(nodes[1].address, true);
    });

    it("restarts the delay for everything unbonding", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[0]).unbond(ONE / 2n);
      await time.increase(1000);
      const t = (await time.latest()) + 1;
      await time.setNextBlockTimestamp(t);
      await registry.connect(nodes[0]).unbond(ONE / 4n);
      const n = await registry.getNode(nodes[0].address);
      expect([n.stake, n.unbonding, n.unlockAt]).to.deep.equal([(ONE * 5n) / 4n, (ONE * 3n) / 4n, BigInt(t + DELAY)]);
    });

    it("rejects zero and more than the stake", async function () {
      const { registry, nodes, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(nodes[0]).unbond(0))
        .to.be.revertedWithCustomError(registry, "ZeroAmount")
        .withArgs();
      await expect(registry.connect(nodes[0]).unbond(2n * ONE + 1n))
        .to.be.revertedWithCustomError(registry, "InsufficientStake")
        .withArgs(2n * ONE, 2n * ONE + 1n);
      await expect(registry.connect(other).unbond(1n))
        .to.be.revertedWithCustomError(registry, "InsufficientStake")
        .withArgs(0, 1n);
    });
  });

  describe("withdrawUnbonded", function () {
    async function unbondedFixture() {
      const f = await nodesFixture();
      await f.registry.connect(f.nodes[2]).unbond(ONE + 7n);
      const unlockAt = Number((await f.registry.getNode(f.nodes[2].address)).unlockAt);
      return { ...f, node: f.nodes[2], unlockAt };
    }

    it("rejects a node with nothing unbonding", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await expect(registry.connect(nodes[0]).withdrawUnbonded())
        .to.be.revertedWithCustomError(registry, "NothingToWithdraw")
        .withArgs(nodes[0].address);
    });

    it("is locked exactly at unlockAt", async function () {
      const { registry, node, unlockAt } = await loadFixture(unbondedFixture);
      await time.setNextBlockTimestamp(unlockAt);
      await expect(registry.connect(node).withdrawUnbonded())
        .to.be.revertedWithCustomError(registry, "UnbondingLocked")
        .withArgs(unlockAt);
    });

    it("pays out one second after unlockAt, once", async function () {
      const { registry, node, unlockAt } = await loadFixture(unbondedFixture);
      await time.setNextBlockTimestamp(unlockAt + 1);
      const tx = registry.connect(node).withdrawUnbonded();
      await expect(tx).to.emit(registry, "UnbondedWithdrawn").withArgs(node.address, ONE + 7n);
      await expect(tx).to.changeEtherBalances([node, registry], [ONE + 7n, -(ONE + 7n)]);
      const n = await registry.getNode(node.address);
      expect([n.stake, n.unbonding]).to.deep.equal([ONE - 7n, 0n]);
      await expect(registry.connect(node).withdrawUnbonded())
        .to.be.revertedWithCustomError(registry, "NothingToWithdraw")
        .withArgs(node.address);
    });

    it("reverts with TransferFailed when the node cannot receive", async function () {
      const { registry } = await loadFixture(modelFixture);
      const receiver = await ethers.deployContract("ReentrantReceiver");
      const addr = await receiver.getAddress();
      await receiver.configure(1 /* Reject */, ethers.ZeroAddress, "0x");
      await receiver.execute(registry, 2n * ONE, registry.interface.encodeFunctionData("stake"), { value: 2n * ONE });
      await receiver.execute(registry, 0, registry.interface.encodeFunctionData("unbond", [ONE]));
      await time.increase(DELAY + 1);
      await expect(receiver.execute(registry, 0, registry.interface.encodeFunctionData("withdrawUnbonded")))
        .to.be.revertedWithCustomError(registry, "TransferFailed")
        .withArgs(addr, ONE);
      expect((await registry.getNode(addr)).unbonding).to.equal(ONE);
    });
  });

  describe("slash", function () {
    it("rejects callers other than the JobMarket", async function () {
      const { registry, nodes, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(other).slash(nodes[0].address, 1n))
        .to.be.revertedWithCustomError(registry, "NotJobMarket")
        .withArgs(other.address);
      await expect(registry.connect(nodes[0]).slash(nodes[0].address, 1n))
        .to.be.revertedWithCustomError(registry, "NotJobMarket")
        .withArgs(nodes[0].address);
    });

    it("takes from stake and sends the proceeds to the JobMarket", async function () {
      const { registry, hook, nodes } = await loadFixture(nodesFixture);
      const node = nodes[0];
      expect(await registry.connect(hook).slash.staticCall(node.address, ONE / 4n)).to.equal(ONE / 4n);
      const tx = registry.connect(hook).slash(node.address, ONE / 4n);
      await expect(tx).to.emit(registry, "Slashed").withArgs(node.address, ONE / 4n);
      await expect(tx).to.changeEtherBalances([registry, hook], [-ONE / 4n, ONE / 4n]);
      await expect(tx).not.to.emit(registry, "PoolMembershipChanged");
      const n = await registry.getNode(node.address);
      expect([n.stake, n.unbonding, n.pooled]).to.deep.equal([(ONE * 7n) / 4n, 0n, true]);
    });

    it("takes stake first, then unbonding, capped at the bond; drops the node below minStake", async function () {
      const { registry, hook, nodes } = await loadFixture(nodesFixture);
      const node = nodes[1];
      await registry.connect(node).unbond(ONE / 2n); // stake 1.5, unbonding 0.5
      let tx = registry.connect(hook).slash(node.address, ONE + ONE / 2n + 1n);
      await expect(tx).to.emit(registry, "Slashed").withArgs(node.address, ONE + ONE / 2n + 1n);
      await expect(tx).to.emit(registry, "PoolMembershipChanged").withArgs(node.address, false);
      let n = await registry.getNode(node.address);
      expect([n.stake, n.unbonding]).to.deep.equal([0n, ONE / 2n - 1n]);
      tx = registry.connect(hook).slash(node.address, 10n * ONE);
      await expect(tx).to.emit(registry, "Slashed").withArgs(node.address, ONE / 2n - 1n);
      await expect(tx).to.changeEtherBalances([registry, hook], [-(ONE / 2n - 1n), ONE / 2n - 1n]);
      n = await registry.getNode(node.address);
      expect([n.stake, n.unbonding]).to.deep.equal([0n, 0n]);
      expect(await registry.poolSize(1, 1)).to.equal(0);
    });

    it("returns 0 and emits nothing for a node with no bond", async function () {
      const { registry, hook, other } = await loadFixture(nodesFixture);
      expect(await registry.connect(hook).slash.staticCall(other.address, ONE)).to.equal(0);
      await expect(registry.connect(hook).slash(other.address, ONE)).not.to.emit(registry, "Slashed");
    });
  });

  describe("creditEarnings", function () {
    it("credits price x billed + perHop to the positions in the mask, cumulatively", async function () {
      const { registry, hook, nodes } = await loadFixture(nodesFixture);
      const route = packRoute([
        { node: nodes[1].address, price: 3n },
        { node: nodes[2].address, price: 5n },
        { node: nodes[3].address, price: 11n },
      ]);
      await expect(registry.connect(hook).creditEarnings(route, 7, 0b101, 0)).to.changeEtherBalance(registry, 0);
      expect((await registry.getNode(nodes[1].address)).earnings).to.equal(21n);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(0n);
      expect((await registry.getNode(nodes[3].address)).earnings).to.equal(77n);
      await registry.connect(hook).creditEarnings(route, 2, 0b111, 1000n);
      expect((await registry.getNode(nodes[1].address)).earnings).to.equal(1027n);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(1010n);
      expect((await registry.getNode(nodes[3].address)).earnings).to.equal(1099n);
      // Nothing billed: the hop fee alone, to the masked positions only.
      await registry.connect(hook).creditEarnings(route, 0, 0b010, 5n);
      expect((await registry.getNode(nodes[1].address)).earnings).to.equal(1027n);
      expect((await registry.getNode(nodes[2].address)).earnings).to.equal(1015n);
    });

    it("rejects callers other than the JobMarket", async function () {
      const { registry, nodes, other } = await loadFixture(nodesFixture);
      const route = packRoute([{ node: nodes[1].address, price: 3n }]);
      await expect(registry.connect(other).creditEarnings(route, 7, 1, 0))
        .to.be.revertedWithCustomError(registry, "NotJobMarket")
        .withArgs(other.address);
    });
  });

  describe("takeEarnings", function () {
    it("zeroes the earnings and returns them without moving value", async function () {
      const { registry, hook, nodes } = await loadFixture(nodesFixture);
      await registry.connect(hook).creditEarnings(packRoute([{ node: nodes[0].address, price: 1000n }]), 3, 1, 0);
      expect(await registry.connect(hook).takeEarnings.staticCall(nodes[0].address)).to.equal(3000n);
      const tx = registry.connect(hook).takeEarnings(nodes[0].address);
      await expect(tx).to.emit(registry, "EarningsWithdrawn").withArgs(nodes[0].address, 3000n);
      await expect(tx).to.changeEtherBalances([registry, hook], [0, 0]);
      expect((await registry.getNode(nodes[0].address)).earnings).to.equal(0);
    });

    it("rejects a node without earnings and callers other than the JobMarket", async function () {
      const { registry, hook, nodes, other } = await loadFixture(nodesFixture);
      await expect(registry.connect(hook).takeEarnings(nodes[0].address))
        .to.be.revertedWithCustomError(registry, "NothingToWithdraw")
        .withArgs(nodes[0].address);
      await expect(registry.connect(other).takeEarnings(nodes[0].address))
        .to.be.revertedWithCustomError(registry, "NotJobMarket")
        .withArgs(other.address);
    });
  });

  describe("matchRoute", function () {
    it("returns one packed hop per shard from firstShard and the price sum", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const [route, sum] = await registry.matchRoute(1, 1, NODE_PRICES[3], 12345, [], []);
      expect(route).to.equal(packRoute([1, 2, 3].map((s) => ({ node: nodes[s].address, price: NODE_PRICES[s] }))));
      expect(sum).to.equal(NODE_PRICES[1] + NODE_PRICES[2] + NODE_PRICES[3]);
      const [all] = await registry.matchRoute(1, 0, NODE_PRICES[3], 0, [], []);
      expect(all).to.equal(packRoute([0, 1, 2, 3].map((s) => ({ node: nodes[s].address, price: NODE_PRICES[s] }))));
      const [last, lastSum] = await registry.matchRoute(1, 3, NODE_PRICES[3], 0, [], []);
      expect(last).to.equal(packRoute([{ node: nodes[3].address, price: NODE_PRICES[3] }]));
      expect(lastSum).to.equal(NODE_PRICES[3]);
    });

    it("packs a full 8-hop route", async function () {
      const { registry, rest } = await loadFixture(registryFixture);
      await registry.registerModel("eight", ethers.id("8"), 8, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
      const hops = [];
      for (let s = 0; s < 8; s++) {
        await registry.connect(rest[s]).registerNode(1, s, "http://n", 100n + BigInt(s), KEY, { value: ONE });
        hops.push({ node: rest[s].address, price: 100n + BigInt(s) });
      }
      const [route, sum] = await registry.matchRoute(1, 0, 1000n, 1, [], []);
      expect(route).to.equal(packRoute(hops));
      expect(sum).to.equal(800n + 28n);
    });

    it("rejects an unknown model and a first shard outside the plan", async function () {
      const { registry } = await loadFixture(nodesFixture);
      await expect(registry.matchRoute(9, 0, 1n, 0, [], [])).to.be.revertedWithCustomError(registry, "UnknownModel").withArgs(9);
      await expect(registry.matchRoute(1, 4, 1n, 0, [], []))
        .to.be.revertedWithCustomError(registry, "InvalidShard")
        .withArgs(1, 4);
    });

    it("fails with NoEligibleNode on an empty pool or when every price is above the limit", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await expect(registry.matchRoute(1, 1, NODE_PRICES[1] - 1n, 0, [], []))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 1);
      await expect(registry.matchRoute(1, 1, NODE_PRICES[3] - 1n, 0, [], []))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 3);
      await registry.connect(nodes[2]).deactivate();
      await expect(registry.matchRoute(1, 0, 10n ** 18n, 0, [], []))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 2);
    });

    it("probes at most MAX_PROBES entries from the seeded start", async function () {
      const { registry, rest } = await loadFixture(registryFixture);
      await registry.registerModel("one", ethers.id("1"), 1, [0, 1]);
      // Pool of 9 on shard 0; only entry 4 is within the price limit.
      for (let i = 0; i < 9; i++) {
        await registry.connect(rest[i]).registerNode(1, 0, "http://n", i === 4 ? 1n : 100n, KEY, { value: ONE });
      }
      let reach;
      let miss;
      for (let seed = 0; reach === undefined || miss === undefined; seed++) {
        const start = pickStart(seed, 0, 9);
        if (start === 5) miss = seed; // entry 4 is the 9th probe from 5: not inspected
        else if (reach === undefined) reach = seed;
      }
      const [route, sum] = await registry.matchRoute(1, 0, 1n, reach, [], []);
      expect(route).to.equal(packRoute([{ node: rest[4].address, price: 1n }]));
      expect(sum).to.equal(1n);
      await expect(registry.matchRoute(1, 0, 1n, miss, [], []))
        .to.be.revertedWithCustomError(registry, "NoEligibleNode")
        .withArgs(1, 0);
      // With a limit every entry meets, the pick is the start entry itself.
      const [any] = await registry.matchRoute(1, 0, 100n, miss, [], []);
      expect(any).to.equal(packRoute([{ node: rest[5].address, price: 100n }]));
    });

    /// Pool of 9 on shard 0 of a one-shard model where only entry 4 is within a price limit of 1, and a seed
    /// whose 8 probes (from entry 5) miss it.
    async function hiddenNodeFixture() {
      const f = await registryFixture();
      await f.registry.registerModel("one", ethers.id("1"), 1, [0, 1]);
      for (let i = 0; i < 9; i++) {
        await f.registry.connect(f.rest[i]).registerNode(1, 0, "http://n", i === 4 ? 1n : 100n, KEY, { value: ONE });
      }
      let miss = 0;
      while (pickStart(miss, 0, 9) !== 5) miss++;
      return { ...f, miss };
    }

    it("falls back to the caller's hint (1 + pool index) when the probes find no node within the price", async function () {
      const { registry, rest, miss } = await loadFixture(hiddenNodeFixture);
      await expect(registry.matchRoute(1, 0, 1n, miss, [], [])).to.be.revertedWithCustomError(registry, "NoEligibleNode").withArgs(1, 0);
      await expect(registry.matchRoute(1, 0, 1n, miss, [0], [])).to.be.revertedWithCustomError(registry, "NoEligibleNode").withArgs(1, 0);
      const [route, sum] = await registry.matchRoute(1, 0, 1n, miss, [5], []);
      expect(route).to.equal(packRoute([{ node: rest[4].address, price: 1n }]));
      expect(sum).to.equal(1n);
    });

    it("ignores a hint past the pool or at an overpriced entry, and never prefers a hint to the probes", async function () {
      const { registry, rest, miss } = await loadFixture(hiddenNodeFixture);
      for (const hint of [3, 10, 2 ** 32 - 1]) {
        await expect(registry.matchRoute(1, 0, 1n, miss, [hint], []))
          .to.be.revertedWithCustomError(registry, "NoEligibleNode")
          .withArgs(1, 0);
      }
      // A limit the probed start entry meets: the hint is not consulted.
      const [any] = await registry.matchRoute(1, 0, 100n, miss, [5], []);
      expect(any).to.equal(packRoute([{ node: rest[5].address, price: 100n }]));
    });

    it("takes hints per shard from firstShard and rejects more hints than shards", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      const [route] = await registry.matchRoute(1, 2, NODE_PRICES[3], 0, [1, 1], []);
      expect(route).to.equal(packRoute([2, 3].map((s) => ({ node: nodes[s].address, price: NODE_PRICES[s] }))));
      await expect(registry.matchRoute(1, 2, NODE_PRICES[3], 0, [1, 1, 1], []))
        .to.be.revertedWithCustomError(registry, "TooManyHints")
        .withArgs(3, 2);
      await expect(registry.matchRoute(1, 0, NODE_PRICES[3], 0, [0, 0, 0, 0, 0], []))
        .to.be.revertedWithCustomError(registry, "TooManyHints")
        .withArgs(5, 4);
    });
  });

  describe("samplePool", function () {
    /// Mirrors NodeRegistry.samplePool over a pool read back with poolAt.
    async function expectedSample(registry, shard, exclude, count, seed) {
      const size = Number(await registry.poolSize(1, shard));
      const pool = [];
      for (let i = 0; i < size; i++) pool.push((await registry.poolAt(1, shard, i)).node);
      const out = [];
      if (size === 0 || count === 0) return out;
      if (size <= count + 1) {
        const start = Number(BigInt(seed) % BigInt(size));
        for (let i = 0; i < size && out.length < count; i++) {
          const node = pool[(start + i) % size];
          if (node !== exclude) out.push(node);
        }
        return out;
      }
      // Up to 4 x count distinct candidates from at most 8 x count uniform probes, then `count` of them
      // without replacement, each pick proportional to stake.
      const coder = ethers.AbiCoder.defaultAbiCoder();
      const wanted = 4 * count;
      const candidates = [];
      const weights = [];
      for (let i = 0; i < 2 * wanted && candidates.length < wanted; i++) {
        const node = pool[Number(BigInt(ethers.keccak256(coder.encode(["uint256", "uint256"], [seed, i]))) % BigInt(size))];
        if (node === exclude || candidates.includes(node)) continue;
        candidates.push(node);
        weights.push((await registry.getNode(node)).stake);
      }
      let total = weights.reduce((a, b) => a + b, 0n);
      for (let found = 0; found < count && total !== 0n; found++) {
        let r = BigInt(ethers.keccak256(coder.encode(["uint256", "string", "uint256"], [seed, "stake", found]))) % total;
        let k = 0;
        while (r >= weights[k]) r -= weights[k++];
        out.push(candidates[k]);
        total -= weights[k];
        weights[k] = 0n;
      }
      return out;
    }

    /// Model 1 with `size` nodes on shard 0 (signers from `rest`).
    async function poolOf(size) {
      const f = await loadFixture(modelFixture);
      for (let i = 0; i < size; i++) {
        await f.registry.connect(f.rest[i]).registerNode(1, 0, "http://n", 1n, KEY, { value: ONE });
      }
      return { ...f, members: f.rest.slice(0, size).map((s) => s.address) };
    }

    it("returns nothing for an empty pool or a count of zero, and rejects more than MAX_SAMPLE", async function () {
      const { registry, members } = await poolOf(3);
      expect(await registry.samplePool(1, 1, ethers.ZeroAddress, 3, 7)).to.deep.equal([]);
      expect(await registry.samplePool(9, 0, ethers.ZeroAddress, 3, 7)).to.deep.equal([]);
      expect(await registry.samplePool(1, 0, ethers.ZeroAddress, 0, 7)).to.deep.equal([]);
      expect(await registry.MAX_SAMPLE()).to.equal(16);
      await expect(registry.samplePool(1, 0, ethers.ZeroAddress, 17, 7))
        .to.be.revertedWithCustomError(registry, "SampleTooLarge")
        .withArgs(17, 16);
      expect(await registry.samplePool(1, 0, members[0], 16, 7)).to.have.length(2);
    });

    it("takes a pool of at most count + 1 whole, from the seeded start, without the excluded node", async function () {
      const { registry, members } = await poolOf(4);
      for (let seed = 0; seed < 8; seed++) {
        const got = await registry.samplePool(1, 0, members[1], 3, seed);
        expect(got).to.deep.equal(await expectedSample(registry, 0, members[1], 3, seed));
        expect([...got].sort()).to.deep.equal([members[0], members[2], members[3]].sort());
      }
      // The excluded node is not in the pool: the first three from the seeded start.
      const got = await registry.samplePool(1, 0, ethers.ZeroAddress, 3, 2);
      expect(got).to.deep.equal([members[2], members[3], members[0]]);
      // Only the excluded node pooled: nothing to draw.
      const single = await poolOf(1);
      expect(await single.registry.samplePool(1, 0, single.members[0], 3, 5)).to.deep.equal([]);
    });

    it("probes a larger pool at random: distinct nodes, never the excluded one, as the mirror predicts", async function () {
      const { registry, members } = await poolOf(10);
      let short = 0;
      for (let seed = 0; seed < 40; seed++) {
        const exclude = members[seed % 10];
        const got = await registry.samplePool(1, 0, exclude, 3, seed);
        expect(got).to.deep.equal(await expectedSample(registry, 0, exclude, 3, seed));
        expect(new Set(got).size).to.equal(got.length);
        expect(got).to.not.include(exclude);
        for (const node of got) expect(members).to.include(node);
        if (got.length < 3) short++;
      }
      expect(short).to.equal(0); // up to 24 probes for 12 candidates among 9 others: always 3 found
    });

    it("draws by stake among the probed candidates: a 10x stake takes most seats", async function () {
      const f = await loadFixture(modelFixture);
      // 4 nodes at minStake and 3 at 10x on shard 0; none excluded.
      for (let i = 0; i < 7; i++) {
        await f.registry.connect(f.rest[i]).registerNode(1, 0, "http://n", 1n, KEY, { value: i < 4 ? ONE : 10n * ONE });
      }
      const small = f.rest.slice(0, 4).map((s) => s.address);
      let smallSeats = 0;
      let seats = 0;
      for (let seed = 0; seed < 60; seed++) {
        const got = await f.registry.samplePool(1, 0, ethers.ZeroAddress, 3, seed);
        expect(got).to.deep.equal(await expectedSample(f.registry, 0, ethers.ZeroAddress, 3, seed));
        expect(new Set(got).size).to.equal(3);
        seats += got.length;
        smallSeats += got.filter((a) => small.includes(a)).length;
      }
      // Uniform would seat the small nodes 4/7 of the time; by stake far less.
      expect(smallSeats * 4).to.be.lessThan(seats);
    });

    it("counts only pooled nodes: deactivated or under-staked ones are never drawn", async function () {
      const { registry, rest, members } = await poolOf(6);
      await registry.connect(rest[0]).deactivate();
      await registry.connect(rest[1]).unbond(1n);
      for (let seed = 0; seed < 10; seed++) {
        const got = await registry.samplePool(1, 0, ethers.ZeroAddress, 3, seed);
        expect(got).to.not.include(members[0]);
        expect(got).to.not.include(members[1]);
        expect(got).to.have.length(3); // 4 pooled <= 3 + 1: taken whole
      }
    });
  });

  describe("views", function () {
    it("getModel rejects an unknown model", async function () {
      const { registry } = await loadFixture(modelFixture);
      await expect(registry.getModel(0)).to.be.revertedWithCustomError(registry, "UnknownModel").withArgs(0);
      await expect(registry.getModel(2)).to.be.revertedWithCustomError(registry, "UnknownModel").withArgs(2);
    });

    it("getNode of an unknown address is empty", async function () {
      const { registry, other } = await loadFixture(nodesFixture);
      const n = await registry.getNode(other.address);
      expect([n.status, n.modelId, n.stake, n.pooled, n.endpoint]).to.deep.equal([0n, 0n, 0n, false, ""]);
    });

    it("poolSize and poolAt agree; poolAt rejects an index past the end", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      expect(await registry.poolSize(1, 2)).to.equal(1);
      expect(await registry.poolSize(7, 0)).to.equal(0);
      const hop = await registry.poolAt(1, 2, 0);
      expect([hop.node, hop.pricePerToken]).to.deep.equal([nodes[2].address, NODE_PRICES[2]]);
      await expect(registry.poolAt(1, 2, 1))
        .to.be.revertedWithCustomError(registry, "PoolIndexOutOfRange")
        .withArgs(1, 1);
      await expect(registry.poolAt(7, 0, 0))
        .to.be.revertedWithCustomError(registry, "PoolIndexOutOfRange")
        .withArgs(0, 0);
    });

    it("bondOf is stake plus unbonding", async function () {
      const { registry, nodes } = await loadFixture(nodesFixture);
      await registry.connect(nodes[3]).unbond(ONE / 3n);
      expect(await registry.bondOf(nodes[3].address)).to.equal(2n * ONE);
      const n = await registry.getNode(nodes[3].address);
      expect(n.stake + n.unbonding).to.equal(2n * ONE);
    });
  });
});
