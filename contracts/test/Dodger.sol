// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IJobMarket} from "../interfaces/IJobMarket.sol";
import {Receipt} from "../libraries/SplitmeshTypes.sol";

/// @title Dodger (test only)
/// @notice A last route node that dodges sampled audits the way the old rule allowed: it commits only in a
/// block where keccak(abi.encode(prevrandao, jobId, "audit")) % 10000 >= rate, i.e. a block that the old
/// last-commit draw would not have sampled. It records what auditDraw says inside its own commit's block.
contract Dodger {
    IJobMarket public immutable market;

    /// @notice auditDraw(jobId) read right after this contract's last commit, in the same transaction.
    bool public lastAvailable;
    bool public lastSampled;
    /// @notice Commit attempts skipped because the old rule would have sampled the job.
    uint256 public skipped;

    /// @param market_ The JobMarket.
    constructor(IJobMarket market_) payable {
        market = market_;
    }

    /// @notice Takes earnings.
    receive() external payable {}

    /// @notice Calls `to` with `value` wei from this contract's balance (to stake, register, withdraw).
    function execute(address to, uint256 value, bytes calldata data) external returns (bytes memory ret) {
        bool ok;
        (ok, ret) = to.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
    }

    /// @notice Commits `position` of `jobId` unless the old prevrandao rule would sample it in this block.
    /// @return committed Whether it committed.
    function dodgeCommit(
        uint256 jobId,
        bytes calldata terms,
        uint8 position,
        bytes32 inputCommitment,
        bytes32 outputCommitment,
        uint256 rateBps
    ) external returns (bool committed) {
        if (uint256(keccak256(abi.encode(block.prevrandao, jobId, "audit"))) % 10_000 < rateBps) {
            ++skipped;
            return false;
        }
        Receipt memory none;
        market.commit(jobId, terms, position, inputCommitment, outputCommitment, none);
        (lastAvailable, lastSampled) = market.auditDraw(jobId);
        return true;
    }
}
