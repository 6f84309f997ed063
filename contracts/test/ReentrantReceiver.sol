// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title ReentrantReceiver (test only)
/// @notice A contract node or client for the security tests. It forwards arbitrary calls (so it can stake,
/// register, commit, submit jobs and withdraw as `msg.sender`), and its receive() can accept, reject, burn
/// all gas, or re-enter a configured call while a payment to it is in flight.
/// @dev No immutables and no constructor state: the tests also copy this runtime code onto an EOA address
/// (hardhat_setCode) to get a contract client whose key can still sign EIP-712 receipts, as an EIP-7702
/// delegated account would. Everything receive() touches sits in slot 0 so it fits the JobMarket's
/// 50k-gas refund push.
contract ReentrantReceiver {
    enum Mode {
        Accept, // take the payment
        Reject, // revert
        BurnGas, // loop until out of gas
        Reenter, // call `target` with `reentryData`, record the outcome, accept the payment
        ReenterAndBubble // call `target` with `reentryData`; if it fails, revert with its revert data
    }

    /// @notice receive() was told to reject the payment.
    error Rejected();

    // slot 0
    Mode public mode;
    bool public reentryAttempted;
    bool public reentryOk;
    bytes4 public reentryError; // selector of the re-entered call's revert data
    address public target;
    // slot 1+
    bytes public reentryData;

    /// @notice Sets what receive() does.
    /// @param mode_ The behaviour.
    /// @param target_ Contract re-entered in the Reenter modes.
    /// @param data_ Calldata of the re-entry.
    function configure(Mode mode_, address target_, bytes calldata data_) external {
        mode = mode_;
        target = target_;
        reentryData = data_;
        reentryAttempted = false;
        reentryOk = false;
        reentryError = bytes4(0);
    }

    /// @notice Calls `to` with `value` wei (sent along or taken from this contract's balance).
    /// @param to Callee.
    /// @param value Wei to send.
    /// @param data Calldata.
    /// @return ret The callee's return data; its revert data is bubbled up unchanged.
    function execute(address to, uint256 value, bytes calldata data) external payable returns (bytes memory ret) {
        bool ok;
        (ok, ret) = to.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
    }

    receive() external payable {
        Mode m = mode;
        if (m == Mode.Accept) return;
        if (m == Mode.Reject) revert Rejected();
        if (m == Mode.BurnGas) {
            uint256 i;
            while (true) {
                unchecked {
                    ++i;
                }
            }
        }
        (bool ok, bytes memory ret) = target.call(reentryData);
        if (!ok && m == Mode.ReenterAndBubble) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        bytes4 selector;
        if (ret.length >= 4) {
            assembly ("memory-safe") {
                selector := and(mload(add(ret, 0x20)), shl(224, 0xffffffff))
            }
        }
        reentryAttempted = true;
        reentryOk = ok;
        reentryError = selector;
    }
}
