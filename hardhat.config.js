// Hardhat 2 config. Compilers cannot be downloaded on these machines, so the solc-js build
// pinned in package.json (solc 0.8.28) is handed to Hardhat instead of a native download.
const path = require("path");
const { subtask } = require("hardhat/config");
const { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } = require("hardhat/builtin-tasks/task-names");
require("@nomicfoundation/hardhat-chai-matchers");
require("@nomicfoundation/hardhat-ethers");

const SOLC_VERSION = "0.8.28";

subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async (args, hre, runSuper) => {
  if (args.solcVersion !== SOLC_VERSION) return runSuper();
  const solcPkg = require("solc/package.json");
  if (solcPkg.version !== SOLC_VERSION) {
    throw new Error(`npm solc is ${solcPkg.version}, expected ${SOLC_VERSION}; run npm ci`);
  }
  return {
    compilerPath: path.join(path.dirname(require.resolve("solc/package.json")), "soljson.js"),
    isSolcJs: true,
    version: SOLC_VERSION,
    longVersion: solcPkg.version,
  };
});

module.exports = {
  solidity: {
    version: SOLC_VERSION,
    settings: {
      optimizer: { enabled: true, runs: 10000 },
      evmVersion: "cancun", // transient storage for the reentrancy guard
      viaIR: true,
    },
  },
  paths: {
    sources: "./contracts",
    tests: "./tests/contracts",
    cache: "./cache",
    artifacts: "./artifacts",
  },
  networks: {
    hardhat: {
      hardfork: "cancun",
      chainId: 31337,
    },
  },
  mocha: { timeout: 120000 },
};
