// Shared deployment fixture and helpers for the contract tests.
const { ethers } = require("hardhat");
const { setBalance, setCode, time } = require("@nomicfoundation/hardhat-network-helpers");

const PARAMS = {
  minStake: ethers.parseEther("1"),
  unbondingDelay: 7 * 24 * 3600,
  commitTimeout: 3600,
  challengeWindow: 600,
  disputeTimeout: 3600,
  missSlashBps: 1000,
  fraudSlashBps: 5000,
  auditRateBps: 0,
  hopFee: 1_000_000_000_000n, // wei per committed hop: small, but non-zero so every fee path is exercised
  // challengeBond: 0 without an auditor; deployMarket defaults it to CHALLENGE_BOND when there is one.
};

/// Challenge bond of the fixtures that have an auditor (an EOA or the AuditCourt).
const CHALLENGE_BOND = ethers.parseEther("0.05");

/// AuditCourt parameters of the court fixtures (disputeTimeout 3600 >= 300 + 300 + 2).
const COURT_PARAMS = {
  verifiersPerPosition: 3,
  verifierBond: ethers.parseEther("0.01"),
  commitWindow: 300,
  revealWindow: 300,
  rewardBps: 5000,
};

const ZERO_HASH = ethers.ZeroHash;

/// Deploys NodeRegistry, JobMarket and (with `court`) the AuditCourt from one account, each bound to the
/// next one's predicted CREATE address: the registry to the market, the market's auditor to the court.
/// `params` and `court` (true or an object) override PARAMS and COURT_PARAMS field by field.
async function deployMarket({ auditor = ethers.ZeroAddress, params = {}, court = false } = {}) {
  const audited = court || auditor !== ethers.ZeroAddress;
  params = { ...PARAMS, challengeBond: audited ? CHALLENGE_BOND : 0n, ...params };
  const courtParams = court ? { ...COURT_PARAMS, ...(court === true ? {} : court) } : undefined;
  const [deployer] = await ethers.getSigners();
  const nonce = await ethers.provider.getTransactionCount(deployer.address);
  const predicted = ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 1 });
  const predictedCourt = ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 2 });
  const registry = await ethers.deployContract("NodeRegistry", [predicted, params.minStake, params.unbondingDelay]);
  const market = await ethers.deployContract("JobMarket", [
    await registry.getAddress(),
    court ? predictedCourt : auditor,
    params.commitTimeout,
    params.challengeWindow,
    params.disputeTimeout,
    params.missSlashBps,
    params.fraudSlashBps,
    params.auditRateBps,
    params.hopFee,
    params.challengeBond,
  ]);
  let auditCourt;
  if (court) {
    auditCourt = await ethers.deployContract("AuditCourt", [
      await market.getAddress(),
      courtParams.verifiersPerPosition,
      courtParams.verifierBond,
      courtParams.commitWindow,
      courtParams.revealWindow,
      courtParams.rewardBps,
    ]);
  }
  return { registry, market, court: auditCourt, params, courtParams };
}

const ENVELOPE_TYPES = {
  Envelope: [
    { name: "jobId", type: "uint256" },
    { name: "step", type: "uint32" },
    { name: "tokens", type: "uint32" },
    { name: "payloadHash", type: "bytes32" },
  ],
};

/// The JobMarket's EIP-712 domain; overrides let a test sign for another chain or contract.
async function domainOf(market, overrides = {}) {
  const { chainId } = await ethers.provider.getNetwork();
  return { name: "splitmesh", version: "1", chainId, verifyingContract: await market.getAddress(), ...overrides };
}

async function envelopeSignature(market, signer, jobId, step, tokens, payloadHash) {
  return signer.signTypedData(await domainOf(market), ENVELOPE_TYPES, { jobId, step, tokens, payloadHash });
}

async function receipt(market, signer, jobId, tokens, step = tokens, payloadHash = ethers.id(`frame-${step}`)) {
  const signature = await envelopeSignature(market, signer, jobId, step, tokens, payloadHash);
  return { step, tokens, payloadHash, signature };
}

/// Reads the packed terms of a job from its JobSubmitted event.
async function termsOf(market, jobId) {
  const events = await market.queryFilter(market.filters.JobSubmitted(jobId));
  return events[0].args.terms;
}

/// Decodes packed terms into { client, modelId, firstShard, maxTokens, escrow, route: [{node, pricePerToken}] }.
async function decodeTerms(market, terms) {
  const t = await market.decodeTerms(terms);
  return {
    client: t.client,
    modelId: t.modelId,
    firstShard: t.firstShard,
    maxTokens: t.maxTokens,
    escrow: t.escrow,
    route: t.route.map((h) => ({ node: h.node, pricePerToken: h.pricePerToken })),
  };
}

// ---------------------------------------------------------------- shared setup for the behaviour tests

/// A commit receipt that does not raise the billed count, so it is not checked (no signature needed).
const NO_RECEIPT = { step: 0, tokens: 0, payloadHash: ZERO_HASH, signature: "0x" };

/// JobStatus and NodeStatus enum values.
const JobStatus = { None: 0, Open: 1, Committed: 2, Disputed: 3, Finalized: 4, Cancelled: 5 };
const NodeStatus = { None: 0, Active: 1, Inactive: 2 };

/// The 4-shard model every behaviour fixture registers (id 1).
const MODEL = {
  name: "smollm2-135m",
  weightsHash: ethers.id("smollm2-135m weights"),
  numLayers: 30,
  boundaries: [0, 4, 12, 21, 30],
};

/// One node per shard; prices and stakes differ per shard so a mix-up between nodes shows in the numbers.
const NODE_PRICES = [1_000_000_000n, 2_000_000_000n, 3_000_000_000n, 5_000_000_000n]; // wei per token
const NODE_STAKES = [2n, 3n, 4n, 5n].map((e) => ethers.parseEther(e.toString()));

async function setupMarket(auditorIndex) {
  const signers = await ethers.getSigners();
  const [deployer, client, n0, n1, n2, n3, auditor, other, client2] = signers;
  const { registry, market, params } = await deployMarket({
    auditor: auditorIndex === undefined ? ethers.ZeroAddress : signers[auditorIndex].address,
  });
  await registry.registerModel(MODEL.name, MODEL.weightsHash, MODEL.numLayers, MODEL.boundaries);
  const nodes = [n0, n1, n2, n3];
  for (let s = 0; s < nodes.length; s++) {
    await registry
      .connect(nodes[s])
      .registerNode(1, s, `http://10.0.0.${s}:8000`, NODE_PRICES[s], ethers.id(`enc-key-${s}`), {
        value: NODE_STAKES[s],
      });
  }
  return { registry, market, params, deployer, client, nodes, auditor, other, client2, signers, modelId: 1 };
}

/// Market without an auditor, model 1 with one pooled node per shard (signers 2..5).
async function marketFixture() {
  return setupMarket(undefined);
}

/// Same, with signer 6 (an EOA) as the auditor.
async function auditedMarketFixture() {
  return setupMarket(6);
}

/// Modes of contracts/test/ReentrantReceiver.sol's receive().
const Mode = { Accept: 0, Reject: 1, BurnGas: 2, Reenter: 3, ReenterAndBubble: 4 };

/// A client that is a contract (ReentrantReceiver code) at an address whose private key is known, like an
/// EIP-7702 delegated account: the key signs EIP-712 receipts, the code decides what receive() does.
/// Submit and withdraw through `contract.execute(...)`; value comes from the account's own balance.
async function contractClient(label = "client", funding = ethers.parseEther("1000")) {
  const template = await ethers.deployContract("ReentrantReceiver");
  const code = await ethers.provider.getCode(await template.getAddress());
  const wallet = new ethers.Wallet(ethers.id(`splitmesh contract ${label}`), ethers.provider);
  await setCode(wallet.address, code);
  await setBalance(wallet.address, funding);
  const contract = await ethers.getContractAt("ReentrantReceiver", wallet.address);
  return { wallet, contract, address: wallet.address };
}

/// Market fixture whose shard-3 node is a ReentrantReceiver contract (nodes[3] deactivated) that earned
/// NODE_PRICES[3] x 10 in a finalized one-hop job and has its stake bonded.
async function contractNodeFixture() {
  const f = await marketFixture();
  const { registry, market, client, nodes } = f;
  const node = await ethers.deployContract("ReentrantReceiver");
  await registry.connect(nodes[3]).deactivate();
  const register = registry.interface.encodeFunctionData("registerNode", [
    1,
    3,
    "http://contract-node",
    NODE_PRICES[3],
    ethers.id("contract node key"),
  ]);
  await node.execute(registry, NODE_STAKES[3], register, { value: NODE_STAKES[3] });
  const job = await submit(market, client, { firstShard: 3, maxTokens: 10 });
  const rcpt = await receipt(market, client, job.jobId, 10);
  const commit = market.interface.encodeFunctionData("commit", [
    job.jobId,
    job.terms,
    0,
    ethers.id("in"),
    ethers.id("out"),
    rcpt,
  ]);
  await node.execute(market, 0, commit);
  await time.increase(PARAMS.challengeWindow);
  await market.finalize(job.jobId, job.terms);
  return { ...f, node, nodeAddress: await node.getAddress(), earned: NODE_PRICES[3] * 10n + PARAMS.hopFee, job };
}

/// Submits a job (client: a signer or a contractClient()) and returns its id, packed terms and decoded terms.
/// By default the escrow is exactly maxTokens x the sum of the matched prices + hops x hopFee (prices read
/// from the pools; exact when each pool's first entry is the node matched, as the fixtures set up).
/// `hints` submits through submitJobWithHints.
async function submit(market, client, opts = {}) {
  const { modelId = 1, firstShard = 1, maxTokens = 64, maxPrice = 10n ** 18n, metadata = "0x", extra = 0n, hints, avoid } = opts;
  let value = opts.value;
  if (value === undefined) value = (await requiredEscrow(market, { modelId, firstShard, maxTokens })) + extra;
  let call = hints === undefined ? ["submitJob", [modelId, firstShard, maxTokens, maxPrice, metadata]] : [
    "submitJobWithHints",
    [modelId, firstShard, maxTokens, maxPrice, metadata, hints],
  ];
  if (avoid !== undefined) call = ["submitJobAvoiding", [modelId, firstShard, maxTokens, maxPrice, metadata, hints ?? [], avoid]];
  let tx;
  if (client.contract) {
    // A contract client pays from its own balance.
    const data = market.interface.encodeFunctionData(...call);
    tx = await client.contract.execute(market, value, data);
  } else {
    tx = await market.connect(client)[call[0]](...call[1], { value });
  }
  await tx.wait();
  const jobId = await market.jobCount();
  const terms = await termsOf(market, jobId);
  const decoded = await decodeTerms(market, terms);
  return { jobId, terms, decoded, tx, escrow: value };
}

/// maxTokens x the sum of the prices of each pool's first entry from firstShard on + hops x hopFee: the
/// escrow submitJob requires when those entries are the ones matched.
async function requiredEscrow(market, { modelId = 1, firstShard = 1, maxTokens = 64 } = {}) {
  const registry = await ethers.getContractAt("NodeRegistry", await market.registry());
  const model = await registry.getModel(modelId);
  const hops = model.boundaries.length - 1 - firstShard;
  let sum = 0n;
  for (let s = firstShard; s < firstShard + hops; s++) sum += (await registry.poolAt(modelId, s, 0)).pricePerToken;
  return BigInt(maxTokens) * sum + BigInt(hops) * (await market.hopFee());
}

/// The signer among `nodes` with this address.
function signerOf(nodes, address) {
  const s = nodes.find((n) => n.address === address);
  if (!s) throw new Error(`no signer for ${address}`);
  return s;
}

/// Commitment to the frames crossing boundary `b` of a job (b = 0: client -> position 0; b = i: position
/// i - 1 -> position i). An honest position p commits (link(p), link(p + 1)).
function link(jobId, b) {
  return ethers.id(`link-${jobId}-${b}`);
}

/// Commits every route position in order; position 0 carries `rcpt`, the others NO_RECEIPT. Commitments
/// link up (output of p == input of p + 1) unless `breakAt` names a boundary whose input side lies.
async function commitAll(market, nodes, job, rcpt = NO_RECEIPT, { breakAt } = {}) {
  for (let i = 0; i < job.decoded.route.length; i++) {
    const node = signerOf(nodes, job.decoded.route[i].node);
    const input = i === breakAt ? ethers.id(`bad-${job.jobId}-${i}`) : link(job.jobId, i);
    await market.connect(node).commit(job.jobId, job.terms, i, input, link(job.jobId, i + 1), i === 0 ? rcpt : NO_RECEIPT);
  }
}

/// The JobMarket's link term of a commitment on one side of boundary b: keccak(abi.encode(jobId, b, c)).
function linkTerm(jobId, b, commitment) {
  return ethers.keccak256(ethers.AbiCoder.defaultAbiCoder().encode(["uint256", "uint8", "bytes32"], [jobId, b, commitment]));
}

/// Whether sampleAudit may dispute a job whose last commit was in the block with hash `blockHash`:
/// keccak(abi.encode(blockhash(completedBlock), jobId, "audit")) % 10000 < rateBps.
function isSampled(blockHash, jobId, rateBps) {
  const coder = ethers.AbiCoder.defaultAbiCoder();
  const draw = BigInt(ethers.keccak256(coder.encode(["bytes32", "uint256", "string"], [blockHash, jobId, "audit"])));
  return draw % 10_000n < BigInt(rateBps);
}

/// The block number the market keeps in a completed job's word (the completing or dispute block).
async function anchorBlockOf(market, jobId) {
  return Number(BigInt(await market.linksOf(jobId)));
}

/// The hash of that block.
async function anchorHashOf(market, jobId) {
  return (await ethers.provider.getBlock(await anchorBlockOf(market, jobId))).hash;
}

/// The JobMarket's balance invariant, exactly: its balance is the escrow of its unsettled jobs (Open, Committed,
/// Disputed) + its credits + the earnings of every node (the registry's ledger; `accounts` must list every
/// address that ever earned) + the bonds of open challenges. Slashes pass through; burned dust leaves.
async function expectMarketSolvent(market, jobs, accounts) {
  const registry = await ethers.getContractAt("NodeRegistry", await market.registry());
  let escrow = 0n;
  let bonds = 0n;
  for (const j of jobs) {
    const status = Number((await market.getJob(j.jobId)).status);
    if ([JobStatus.Open, JobStatus.Committed, JobStatus.Disputed].includes(status)) escrow += j.decoded.escrow;
    bonds += (await market.challengeOf(j.jobId)).bond;
  }
  let earnings = 0n;
  for (const a of new Set(accounts.map((x) => x.address ?? x))) earnings += (await registry.getNode(a)).earnings;
  const { expect } = require("chai");
  expect(await ethers.provider.getBalance(market)).to.equal(escrow + (await market.totalCredits()) + earnings + bonds);
}

/// Accounts beyond Hardhat's 20 signers: fresh keys, funded.
async function fundedWallets(n, label = "wallet", funding = ethers.parseEther("100")) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const wallet = new ethers.Wallet(ethers.id(`splitmesh ${label} ${i}`), ethers.provider);
    await setBalance(wallet.address, funding);
    out.push(wallet);
  }
  return out;
}

/// Sum of the route prices x tokens for the positions in mask (all positions by default).
function routeCost(route, tokens, mask = 0xff) {
  return route.reduce((acc, h, i) => ((mask >> i) & 1 ? acc + h.pricePerToken * BigInt(tokens) : acc), 0n);
}

module.exports = {
  ENVELOPE_TYPES,
  domainOf,
  PARAMS,
  CHALLENGE_BOND,
  COURT_PARAMS,
  ZERO_HASH,
  deployMarket,
  envelopeSignature,
  receipt,
  termsOf,
  decodeTerms,
  NO_RECEIPT,
  JobStatus,
  NodeStatus,
  MODEL,
  NODE_PRICES,
  NODE_STAKES,
  marketFixture,
  auditedMarketFixture,
  submit,
  signerOf,
  commitAll,
  link,
  linkTerm,
  isSampled,
  anchorBlockOf,
  anchorHashOf,
  requiredEscrow,
  fundedWallets,
  expectMarketSolvent,
  routeCost,
  Mode,
  contractClient,
  contractNodeFixture,
};
