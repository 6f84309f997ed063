// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title AtomicCaller (test only)
/// @notice An attacker that needs two calls in one transaction: registered as a route node, it commits a
/// false link word and, in the same transaction, opens the audit of the job it just disputed (to pick its
/// panel from the dispute block's own randomness), or asks for the sampled-audit draw of the block its last
/// commit is in. Both must fail: the draws come from the hash of that block, unknown inside it.
contract AtomicCaller {
    /// @notice Accepts refunds, earnings and anything else.
    receive() external payable {}

    /// @notice Calls `to` with `value` wei (from this contract's balance or sent along).
    /// @param to Callee.
    /// @param value Wei to send.
    /// @param data Calldata.
    /// @return ret The callee's return data; its revert data is bubbled up unchanged.
    function execute(address to, uint256 value, bytes calldata data) external payable returns (bytes memory ret) {
        ret = _call(to, value, data);
    }

    /// @notice Calls `first` (with the value sent along) then `second` in this transaction; either's revert
    /// reverts both, bubbled up.
    /// @param first Callee of the first call.
    /// @param firstData Calldata of the first call.
    /// @param second Callee of the second call.
    /// @param secondData Calldata of the second call.
    function executeBoth(
        address first,
        bytes calldata firstData,
        address second,
        bytes calldata secondData
    ) external payable {
        _call(first, msg.value, firstData);
        _call(second, 0, secondData);
    }

    function _call(address to, uint256 value, bytes calldata data) private returns (bytes memory ret) {
        bool ok;
        (ok, ret) = to.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
    }
}
