// Smart-wallet clients: receipts signed through ERC-1271 bill the job; other signatures do not.
const { expect } = require("chai");
const { ethers } = require("hardhat");
const { loadFixture, time } = require("@nomicfoundation/hardhat-network-helpers");
const { deployMarket, receipt, termsOf, decodeTerms, PARAMS } = require("./fixtures");

const PRICE = 1_000_000_000n;

describe("commit: ERC-1271 contract clients", function () {
  async function walletJob() {
    const [, owner, stranger, n1, n2] = await ethers.getSigners();
    const { registry, market } = await deployMarket();
    await registry.registerModel("m", ethers.id("w"), 4, [0, 2, 4]);
    await registry.connect(n1).registerNode(1, 1, "http://127.0.0.1:1", PRICE, ethers.ZeroHash, { value: ethers.parseEther("1") });
    const wallet = await ethers.deployContract("ERC1271Wallet", [owner.address], { value: ethers.parseEther("1") });
    const escrow = 10n * PRICE + PARAMS.hopFee;
    const data = market.interface.encodeFunctionData("submitJob", [1, 1, 10, PRICE, "0x"]);
    await wallet.connect(owner).execute(await market.getAddress(), data, escrow);
    const jobId = await market.jobCount();
    const terms = await termsOf(market, jobId);
    expect((await decodeTerms(market, terms)).client).to.equal(await wallet.getAddress());
    return { market, registry, wallet, owner, stranger, n1, jobId, terms, escrow };
  }

  it("accepts a receipt the wallet validates and bills it", async function () {
    const { market, registry, wallet, owner, n1, jobId, terms, escrow } = await loadFixture(walletJob);
    await market.connect(n1).commit(jobId, terms, 0, ethers.id("i"), ethers.id("o"), await receipt(market, owner, jobId, 7));
    expect((await market.getJob(jobId)).billedTokens).to.equal(7);
    await time.increase(PARAMS.challengeWindow);
    const before = await ethers.provider.getBalance(await wallet.getAddress());
    await market.finalize(jobId, terms);
    expect((await registry.getNode(n1.address)).earnings).to.equal(7n * PRICE + PARAMS.hopFee);
    expect(await ethers.provider.getBalance(await wallet.getAddress())).to.equal(before + escrow - 7n * PRICE - PARAMS.hopFee);
  });

  it("rejects a receipt the wallet does not validate", async function () {
    const { market, stranger, n1, jobId, terms } = await loadFixture(walletJob);
    await expect(
      market.connect(n1).commit(jobId, terms, 0, ethers.ZeroHash, ethers.ZeroHash, await receipt(market, stranger, jobId, 7))
    )
      .to.be.revertedWithCustomError(market, "InvalidReceiptSignature")
      .withArgs(jobId, stranger.address);
  });
});
