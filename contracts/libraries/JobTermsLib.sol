// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title JobTermsLib: the packed encoding of a job's terms
/// @notice Terms are fixed at submission, emitted once, and passed back as calldata by every later call,
/// so they are packed (no ABI padding) to keep calldata and hashing cheap. Layout, big-endian:
///   client (20) | modelId (4) | firstShard (1) | maxTokens (4) | escrow (12) | hops x [node (20) | price (8)]
/// where hop i serves shard firstShard + i. A route of packed hops (the tail) is the same layout minus
/// the 41-byte header.
library JobTermsLib {
    uint256 internal constant HEADER_LENGTH = 41;
    uint256 internal constant HOP_LENGTH = 28;

    /// @notice The terms bytes do not have the packed layout.
    /// @param length Their length.
    error MalformedTerms(uint256 length);

    /// @dev Number of hops; reverts unless the length is 41 + 28 k with 1 <= k <= 8.
    function hopCount(bytes calldata terms) internal pure returns (uint256 hops) {
        uint256 length = terms.length;
        if (length < HEADER_LENGTH + HOP_LENGTH) revert MalformedTerms(length);
        uint256 tail = length - HEADER_LENGTH;
        hops = tail / HOP_LENGTH;
        if (tail % HOP_LENGTH != 0 || hops > 8) revert MalformedTerms(length);
    }

    function client(bytes calldata terms) internal pure returns (address) {
        return address(bytes20(terms[0:20]));
    }

    function modelId(bytes calldata terms) internal pure returns (uint32) {
        return uint32(bytes4(terms[20:24]));
    }

    function firstShard(bytes calldata terms) internal pure returns (uint8) {
        return uint8(terms[24]);
    }

    function maxTokens(bytes calldata terms) internal pure returns (uint32) {
        return uint32(bytes4(terms[25:29]));
    }

    function escrow(bytes calldata terms) internal pure returns (uint96) {
        return uint96(bytes12(terms[29:41]));
    }

    /// @dev The packed hops (the route) after the header.
    function route(bytes calldata terms) internal pure returns (bytes calldata) {
        return terms[HEADER_LENGTH:];
    }

    /// @dev Node of hop i of a packed route.
    function hopNode(bytes calldata packedRoute, uint256 i) internal pure returns (address) {
        uint256 at = i * HOP_LENGTH;
        return address(bytes20(packedRoute[at:at + 20]));
    }

    /// @dev Price of hop i of a packed route.
    function hopPrice(bytes calldata packedRoute, uint256 i) internal pure returns (uint64) {
        uint256 at = i * HOP_LENGTH + 20;
        return uint64(bytes8(packedRoute[at:at + 8]));
    }

    /// @dev 160-bit commitment to (jobId, terms), hashed straight from calldata.
    function hashOf(uint256 jobId, bytes calldata terms) internal pure returns (bytes20 digest) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, jobId)
            calldatacopy(add(ptr, 0x20), terms.offset, terms.length)
            digest := and(keccak256(ptr, add(0x20, terms.length)), not(0xffffffffffffffffffffffff))
        }
    }

    /// @dev Same hash for terms held in memory (at submission). Hashes in place: the length word is
    /// swapped for jobId for the duration of the keccak and restored, so no copy is made.
    function hashOfMemory(uint256 jobId, bytes memory terms) internal pure returns (bytes20 digest) {
        assembly ("memory-safe") {
            let length := mload(terms)
            mstore(terms, jobId)
            digest := and(keccak256(terms, add(0x20, length)), not(0xffffffffffffffffffffffff))
            mstore(terms, length)
        }
    }
}
