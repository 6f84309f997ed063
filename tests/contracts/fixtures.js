// Shared deployment fixture and helpers for the contract tests.
const { ethers } = require("hardhat");

const PARAMS = {
  minStake: ethers.parseEther("1"),
  unbondingDelay: 7 * 24 * 3600,
  commitTimeout: 3600,
  challengeWindow: 600,
  disputeTimeout: 3600,
  missSlashBps: 1000,
  fraudSlashBps: 5000,
};

const ZERO_HASH = ethers.ZeroHash;

/// Deploys NodeRegistry then JobMarket; the registry is bound to the JobMarket's predicted address.
async function deployMarket({ auditor = ethers.ZeroAddress, params = PARAMS } = {}) {
  const [deployer] = await ethers.getSigners();
  const nonce = await ethers.provider.getTransactionCount(deployer.address);
  const predicted = ethers.getCreateAddress({ from: deployer.address, nonce: nonce + 1 });
  const registry = await ethers.deployContract("NodeRegistry", [predicted, params.minStake, params.unbondingDelay]);
  const market = await ethers.deployContract("JobMarket", [
    await registry.getAddress(),
    auditor,
    params.commitTimeout,
    params.challengeWindow,
    params.disputeTimeout,
    params.missSlashBps,
    params.fraudSlashBps,
  ]);
  return { registry, market, params };
}

async function envelopeSignature(market, signer, jobId, step, tokens, payloadHash) {
  const { chainId } = await ethers.provider.getNetwork();
  const domain = { name: "splitmesh", version: "1", chainId, verifyingContract: await market.getAddress() };
  const types = {
    Envelope: [
      { name: "jobId", type: "uint256" },
      { name: "step", type: "uint32" },
      { name: "tokens", type: "uint32" },
      { name: "payloadHash", type: "bytes32" },
    ],
  };
  return signer.signTypedData(domain, types, { jobId, step, tokens, payloadHash });
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

module.exports = { PARAMS, ZERO_HASH, deployMarket, envelopeSignature, receipt, termsOf, decodeTerms };
