// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IJobMarket} from "../interfaces/IJobMarket.sol";
import {INodeRegistry} from "../interfaces/INodeRegistry.sol";
import {RouteHop} from "../libraries/SplitmeshTypes.sol";

/// @title RouteSniper (test only)
/// @notice A client contract that picks its victim: inside the transaction it reads prevrandao and the next
/// job id, replays NodeRegistry._pick for one shard, and submits (from its own balance) only when the victim
/// would be matched there. It never sends the job anything, hoping to profit from the victim's missed commit.
contract RouteSniper {
    uint256 private constant MAX_PROBES = 8; // NodeRegistry.MAX_PROBES

    IJobMarket public immutable market;
    INodeRegistry public immutable registry;

    /// @notice Id of the last job this contract submitted (0: none yet).
    uint256 public lastJobId;
    /// @notice Blocks in which the victim was not on the route, so nothing was submitted.
    uint256 public skipped;

    /// @param market_ The JobMarket.
    constructor(IJobMarket market_) payable {
        market = market_;
        registry = INodeRegistry(market_.registry());
    }

    /// @notice Takes refunds.
    receive() external payable {}

    /// @notice The node NodeRegistry._pick would match for `shard` in this transaction (zero if none).
    /// @param modelId Model.
    /// @param shard Shard.
    /// @param maxPrice Price limit per token.
    /// @return node The predicted node.
    function predict(uint32 modelId, uint8 shard, uint64 maxPrice) public view returns (address node) {
        uint256 seed = uint256(keccak256(abi.encode(block.prevrandao, market.jobCount() + 1)));
        uint256 size = registry.poolSize(modelId, shard);
        if (size == 0) return address(0);
        uint256 start = uint256(keccak256(abi.encode(seed, shard))) % size;
        uint256 probes = size < MAX_PROBES ? size : MAX_PROBES;
        for (uint256 k; k < probes; ++k) {
            RouteHop memory hop = registry.poolAt(modelId, shard, (start + k) % size);
            if (hop.pricePerToken <= maxPrice) return hop.node;
        }
    }

    /// @notice Submits a job paying `escrow` from this contract's balance, but only when `victim` would be
    /// matched for `victimShard`.
    /// @return submitted Whether the job was submitted.
    function snipe(
        uint32 modelId,
        uint8 firstShard,
        uint32 maxTokens,
        uint64 maxPrice,
        uint256 escrow,
        address victim,
        uint8 victimShard
    ) external returns (bool submitted) {
        if (predict(modelId, victimShard, maxPrice) != victim) {
            ++skipped;
            return false;
        }
        lastJobId = market.submitJob{value: escrow}(modelId, firstShard, maxTokens, maxPrice, "");
        return true;
    }

    /// @notice Cancels or finalizes one of its jobs (anyone may; the sniper does it itself to collect).
    /// @param data Calldata for the JobMarket.
    function callMarket(bytes calldata data) external {
        (bool ok, bytes memory ret) = address(market).call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
    }
}
