// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title RevocableWallet (test only)
/// @notice A smart-wallet client whose session key can be revoked: until `revoke()`, signatures by the key
/// are valid through ERC-1271; after it, none are (an expired session key, an owner change). A client that
/// revokes after being served hopes the nodes can no longer prove what it owes.
contract RevocableWallet is IERC1271 {
    address public immutable owner;
    bool public revoked;

    /// @param owner_ Key that signs and operates the wallet.
    constructor(address owner_) payable {
        owner = owner_;
    }

    /// @notice Takes refunds.
    receive() external payable {}

    /// @notice Stops validating any signature (owner only).
    function revoke() external {
        require(msg.sender == owner, "not owner");
        revoked = true;
    }

    /// @notice Calls any contract (owner only).
    function execute(address target, bytes calldata data, uint256 value) external returns (bytes memory out) {
        require(msg.sender == owner, "not owner");
        bool ok;
        (ok, out) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(out, 0x20), mload(out))
            }
        }
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (revoked) return bytes4(0);
        (address signer, ECDSA.RecoverError err, ) = ECDSA.tryRecover(hash, signature);
        return err == ECDSA.RecoverError.NoError && signer == owner ? this.isValidSignature.selector : bytes4(0);
    }
}
