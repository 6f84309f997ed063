// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";
import {RouteHop, NodeStatus} from "./libraries/SplitmeshTypes.sol";
import {JobTermsLib} from "./libraries/JobTermsLib.sol";

/// @title NodeRegistry
/// @notice Models with their shard plans, node stakes, and one matching pool per (model, shard).
/// A node is in its pool exactly when it is active and its stake is at least `minStake`, so matching
/// reads only the pool. Stake stays slashable while unbonding. Only the JobMarket may slash or credit.
/// @dev Balance invariant: address(this).balance >= sum over nodes of stake + unbonding. Earnings are a
/// ledger kept here next to the stake (a slot every node already has) while the JobMarket holds the value.
contract NodeRegistry is INodeRegistry, ReentrancyGuardTransient {
    using SafeCast for uint256;

    /// @notice Longest route a job can have (a job's commit bitmap is 8 bits wide).
    uint8 public constant MAX_SHARDS = 8;
    /// @notice How many pool entries matching inspects per shard before giving up (bounded gas).
    uint256 public constant MAX_PROBES = 8;
    /// @notice Most nodes a client may ask matchRoute to avoid (bounds the matcher's gas).
    uint256 public constant MAX_AVOID = 8;
    /// @notice Most nodes samplePool draws in one call (bounded gas).
    uint256 public constant MAX_SAMPLE = 16;
    /// @notice Random probes samplePool makes per node wanted, for pools larger than the sample.
    uint256 public constant SAMPLE_PROBES_PER_NODE = 4;
    /// @notice Longest model name in bytes.
    uint256 public constant MAX_NAME_LENGTH = 64;
    /// @notice Longest endpoint URL in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;

    struct Model {
        bytes32 weightsHash;
        address registrant;
        uint16 numLayers;
        uint256 packedBoundaries; // boundary i in bits [16 i, 16 i + 16)
        string name;
    }

    struct Node {
        // slot 0: bonded value and lifecycle
        uint96 stake;
        uint96 unbonding;
        uint40 unlockAt;
        NodeStatus status;
        uint8 shard;
        // slot 1: what matching and payment touch
        uint96 earnings;
        uint64 pricePerToken;
        uint32 modelId;
        uint32 poolSlot; // index + 1 in the pool; 0 = not pooled
        // slots 2+
        bytes32 encryptionKey;
        string endpoint;
    }

    address private immutable _jobMarket;
    uint256 private immutable _minStake;
    uint256 private immutable _unbondingDelay;

    uint32 private _modelCount;
    mapping(uint32 modelId => Model) private _models;
    mapping(bytes32 planHash => uint32 modelId) private _modelByPlan;
    mapping(address node => Node) private _nodes;
    // Per model, one slot that matching reads once: bits [0, 8) the number of shards, then the size of
    // each shard's pool as a uint24 at bits [8 + 24 s, 32 + 24 s).
    mapping(uint32 modelId => uint256) private _shardState;
    mapping(uint256 poolKey => mapping(uint256 index => RouteHop)) private _pools;

    modifier onlyJobMarket() {
        if (msg.sender != _jobMarket) revert NotJobMarket(msg.sender);
        _;
    }

    /// @param jobMarket_ Address of the JobMarket (deployed right after this contract).
    /// @param minStake_ Minimum stake in wei to be matched.
    /// @param unbondingDelay_ Seconds unbonding stake stays locked and slashable.
    constructor(address jobMarket_, uint256 minStake_, uint256 unbondingDelay_) {
        if (jobMarket_ == address(0)) revert InvalidParameter("jobMarket");
        if (minStake_ == 0 || minStake_ > type(uint96).max) revert InvalidParameter("minStake");
        if (unbondingDelay_ == 0 || unbondingDelay_ > 365 days) revert InvalidParameter("unbondingDelay");
        _jobMarket = jobMarket_;
        _minStake = minStake_;
        _unbondingDelay = unbondingDelay_;
    }

    // ------------------------------------------------------------------ models

    /// @inheritdoc INodeRegistry
    function registerModel(
        string calldata name,
        bytes32 weightsHash,
        uint16 numLayers,
        uint16[] calldata boundaries
    ) external returns (uint32 modelId) {
        uint256 nameLength = bytes(name).length;
        if (nameLength == 0 || nameLength > MAX_NAME_LENGTH) revert InvalidModelName(nameLength);
        if (weightsHash == bytes32(0)) revert ZeroWeightsHash();
        uint256 count = boundaries.length;
        if (count < 2 || count > uint256(MAX_SHARDS) + 1) revert InvalidShardCount(count == 0 ? 0 : count - 1);
        if (boundaries[0] != 0) revert InvalidBoundaries(0);
        uint256 packed;
        for (uint256 i = 1; i < count; ++i) {
            if (boundaries[i] <= boundaries[i - 1]) revert InvalidBoundaries(i);
            packed |= uint256(boundaries[i]) << (16 * i);
        }
        if (boundaries[count - 1] != numLayers) revert InvalidBoundaries(count - 1);

        bytes32 planHash = keccak256(abi.encode(weightsHash, boundaries));
        uint32 existing = _modelByPlan[planHash];
        if (existing != 0) revert ModelAlreadyRegistered(existing);

        modelId = ++_modelCount;
        _modelByPlan[planHash] = modelId;
        Model storage m = _models[modelId];
        m.weightsHash = weightsHash;
        m.registrant = msg.sender;
        m.numLayers = numLayers;
        _shardState[modelId] = count - 1;
        m.packedBoundaries = packed;
        m.name = name;
        emit ModelRegistered(modelId, weightsHash, name, numLayers, boundaries);
    }

    // ------------------------------------------------------------------ nodes

    /// @inheritdoc INodeRegistry
    function stake() external payable {
        if (msg.value == 0) revert ZeroAmount();
        _addStake(msg.sender, msg.value);
        _syncPool(msg.sender);
    }

    /// @inheritdoc INodeRegistry
    function registerNode(
        uint32 modelId,
        uint8 shard,
        string calldata endpoint,
        uint64 pricePerToken,
        bytes32 encryptionKey
    ) external payable {
        uint256 numShards = uint8(_shardState[modelId]);
        if (numShards == 0) revert UnknownModel(modelId);
        if (shard >= numShards) revert InvalidShard(modelId, shard);
        uint256 endpointLength = bytes(endpoint).length;
        if (endpointLength == 0 || endpointLength > MAX_ENDPOINT_LENGTH) revert InvalidEndpoint(endpointLength);
        Node storage n = _nodes[msg.sender];
        if (n.status == NodeStatus.Active) revert NodeAlreadyActive(msg.sender);

        // Not Active means not pooled, so moving to another (model, shard) needs no pool cleanup.
        n.status = NodeStatus.Active;
        n.modelId = modelId;
        n.shard = shard;
        n.pricePerToken = pricePerToken;
        n.encryptionKey = encryptionKey;
        n.endpoint = endpoint;
        emit NodeRegistered(msg.sender, modelId, shard, endpoint, pricePerToken, encryptionKey);
        if (msg.value > 0) _addStake(msg.sender, msg.value);
        _syncPool(msg.sender);
    }

    /// @inheritdoc INodeRegistry
    function updateNode(string calldata endpoint, uint64 pricePerToken) external {
        Node storage n = _nodes[msg.sender];
        if (n.status == NodeStatus.None) revert NodeNotRegistered(msg.sender);
        uint256 endpointLength = bytes(endpoint).length;
        if (endpointLength == 0 || endpointLength > MAX_ENDPOINT_LENGTH) revert InvalidEndpoint(endpointLength);
        n.endpoint = endpoint;
        n.pricePerToken = pricePerToken;
        uint32 poolSlot = n.poolSlot;
        if (poolSlot != 0) _pools[_poolKey(n.modelId, n.shard)][poolSlot - 1].pricePerToken = pricePerToken;
        emit NodeUpdated(msg.sender, endpoint, pricePerToken);
    }

    /// @inheritdoc INodeRegistry
    function setEncryptionKey(bytes32 encryptionKey) external {
        Node storage n = _nodes[msg.sender];
        if (n.status == NodeStatus.None) revert NodeNotRegistered(msg.sender);
        n.encryptionKey = encryptionKey;
        emit EncryptionKeyChanged(msg.sender, encryptionKey);
    }

    /// @inheritdoc INodeRegistry
    function deactivate() external {
        Node storage n = _nodes[msg.sender];
        if (n.status != NodeStatus.Active) revert NodeNotActive(msg.sender);
        n.status = NodeStatus.Inactive;
        emit NodeDeactivated(msg.sender);
        _syncPool(msg.sender);
    }

    /// @inheritdoc INodeRegistry
    function unbond(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Node storage n = _nodes[msg.sender];
        uint256 staked = n.stake;
        if (amount > staked) revert InsufficientStake(staked, amount);
        uint40 unlockAt = (block.timestamp + _unbondingDelay).toUint40();
        n.stake = uint96(staked - amount);
        n.unbonding = (uint256(n.unbonding) + amount).toUint96();
        n.unlockAt = unlockAt; // a new unbonding restarts the delay for everything unbonding
        emit UnbondingStarted(msg.sender, amount, unlockAt);
        _syncPool(msg.sender);
    }

    /// @inheritdoc INodeRegistry
    function withdrawUnbonded() external nonReentrant {
        Node storage n = _nodes[msg.sender];
        uint256 amount = n.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp <= n.unlockAt) revert UnbondingLocked(n.unlockAt);
        n.unbonding = 0;
        emit UnbondedWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ JobMarket hooks

    /// @inheritdoc INodeRegistry
    function slash(address node, uint256 amount) external onlyJobMarket nonReentrant returns (uint256 slashed) {
        Node storage n = _nodes[node];
        uint256 staked = n.stake;
        uint256 unbonding = n.unbonding;
        uint256 fromStake = amount < staked ? amount : staked;
        uint256 rest = amount - fromStake;
        uint256 fromUnbonding = rest < unbonding ? rest : unbonding;
        slashed = fromStake + fromUnbonding;
        if (slashed == 0) return 0;
        n.stake = uint96(staked - fromStake);
        n.unbonding = uint96(unbonding - fromUnbonding);
        emit Slashed(node, slashed);
        _syncPool(node);
        _send(msg.sender, slashed);
    }

    /// @inheritdoc INodeRegistry
    function creditEarnings(
        bytes calldata packedRoute,
        uint32 billedTokens,
        uint8 paidMask,
        uint256 perHop
    ) external onlyJobMarket {
        uint256 hops = packedRoute.length / JobTermsLib.HOP_LENGTH;
        for (uint256 i; i < hops; ++i) {
            if (paidMask & (1 << i) == 0) continue;
            Node storage n = _nodes[JobTermsLib.hopNode(packedRoute, i)];
            uint256 amount = uint256(JobTermsLib.hopPrice(packedRoute, i)) * billedTokens + perHop;
            n.earnings = (uint256(n.earnings) + amount).toUint96();
        }
    }

    /// @inheritdoc INodeRegistry
    function takeEarnings(address node) external onlyJobMarket returns (uint256 amount) {
        Node storage n = _nodes[node];
        amount = n.earnings;
        if (amount == 0) revert NothingToWithdraw(node);
        n.earnings = 0;
        emit EarningsWithdrawn(node, amount);
    }

    // ------------------------------------------------------------------ matching

    /// @inheritdoc INodeRegistry
    function matchRoute(
        uint32 modelId,
        uint8 firstShard,
        uint64 maxPricePerToken,
        uint256 seed,
        uint32[] calldata hints,
        address[] calldata avoid
    ) external view returns (bytes memory packedRoute, uint256 priceSum) {
        uint256 state = _shardState[modelId];
        uint256 numShards = uint8(state);
        if (numShards == 0) revert UnknownModel(modelId);
        if (firstShard >= numShards) revert InvalidShard(modelId, firstShard);
        if (hints.length > numShards - firstShard) revert TooManyHints(hints.length, numShards - firstShard);
        if (avoid.length > MAX_AVOID) revert TooManyAvoided(avoid.length, MAX_AVOID);
        packedRoute = new bytes((numShards - firstShard) * JobTermsLib.HOP_LENGTH);
        for (uint256 shard = firstShard; shard < numShards; ++shard) {
            uint256 size = uint24(state >> (8 + 24 * shard));
            uint256 hint = shard - firstShard < hints.length ? hints[shard - firstShard] : 0;
            (address node, uint64 price) = _pick(modelId, uint8(shard), size, seed, maxPricePerToken, hint, avoid);
            // One 28-byte hop, big-endian: node (20 bytes) then price (8 bytes). The 32-byte store spills
            // 4 zero bytes into the next hop (written after) or the word-rounded tail of the allocation.
            uint256 word = (uint256(uint160(node)) << 96) | (uint256(price) << 32);
            uint256 at = (shard - firstShard) * JobTermsLib.HOP_LENGTH;
            assembly ("memory-safe") {
                mstore(add(add(packedRoute, 0x20), at), word)
            }
            priceSum += price;
        }
    }

    /// @inheritdoc INodeRegistry
    function samplePool(
        uint32 modelId,
        uint8 shard,
        address exclude,
        uint256 count,
        uint256 seed
    ) external view returns (address[] memory nodes) {
        if (count > MAX_SAMPLE) revert SampleTooLarge(count, MAX_SAMPLE);
        uint256 size = _poolSize(modelId, shard);
        nodes = new address[](count);
        uint256 found;
        if (size != 0 && count != 0) {
            mapping(uint256 => RouteHop) storage pool = _pools[_poolKey(modelId, shard)];
            if (size <= count + 1) {
                // Everyone but `exclude` fits in the sample: walk the whole pool (distinct by construction).
                uint256 start = seed % size;
                for (uint256 i; i < size && found < count; ++i) {
                    address node = pool[(start + i) % size].node;
                    if (node != exclude) nodes[found++] = node;
                }
            } else {
                found = _drawByStake(pool, size, exclude, nodes, seed);
            }
        }
        assembly ("memory-safe") {
            mstore(nodes, found) // shrink to what was found; the tail stays allocated, unused
        }
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc INodeRegistry
    function bondOf(address node) external view returns (uint256) {
        Node storage n = _nodes[node];
        return uint256(n.stake) + n.unbonding;
    }

    /// @inheritdoc INodeRegistry
    function jobMarket() external view returns (address) {
        return _jobMarket;
    }

    /// @inheritdoc INodeRegistry
    function minStake() external view returns (uint256) {
        return _minStake;
    }

    /// @inheritdoc INodeRegistry
    function unbondingDelay() external view returns (uint256) {
        return _unbondingDelay;
    }

    /// @inheritdoc INodeRegistry
    function modelCount() external view returns (uint32) {
        return _modelCount;
    }

    /// @inheritdoc INodeRegistry
    function getModel(uint32 modelId) external view returns (ModelInfo memory info) {
        Model storage m = _models[modelId];
        uint256 numShards = uint8(_shardState[modelId]);
        if (numShards == 0) revert UnknownModel(modelId);
        uint16[] memory boundaries = new uint16[](uint256(numShards) + 1);
        uint256 packed = m.packedBoundaries;
        for (uint256 i = 1; i <= numShards; ++i) {
            boundaries[i] = uint16(packed >> (16 * i));
        }
        info = ModelInfo({
            name: m.name,
            weightsHash: m.weightsHash,
            registrant: m.registrant,
            numLayers: m.numLayers,
            boundaries: boundaries
        });
    }

    /// @inheritdoc INodeRegistry
    function getNode(address node) external view returns (NodeInfo memory info) {
        Node storage n = _nodes[node];
        info = NodeInfo({
            status: n.status,
            modelId: n.modelId,
            shard: n.shard,
            pricePerToken: n.pricePerToken,
            stake: n.stake,
            unbonding: n.unbonding,
            unlockAt: n.unlockAt,
            earnings: n.earnings,
            pooled: n.poolSlot != 0,
            encryptionKey: n.encryptionKey,
            endpoint: n.endpoint
        });
    }

    /// @inheritdoc INodeRegistry
    function poolSize(uint32 modelId, uint8 shard) external view returns (uint256) {
        return _poolSize(modelId, shard);
    }

    /// @inheritdoc INodeRegistry
    function poolAt(uint32 modelId, uint8 shard, uint256 index) external view returns (RouteHop memory hop) {
        uint256 size = _poolSize(modelId, shard);
        if (index >= size) revert PoolIndexOutOfRange(index, size);
        return _pools[_poolKey(modelId, shard)][index];
    }

    // ------------------------------------------------------------------ internals

    function _addStake(address node, uint256 amount) private {
        Node storage n = _nodes[node];
        uint256 newStake = uint256(n.stake) + amount;
        n.stake = newStake.toUint96();
        emit Staked(node, amount, newStake);
    }

    /// @dev Pool membership <=> active and stake >= minStake. O(1): append or swap-and-pop.
    function _syncPool(address node) private {
        Node storage n = _nodes[node];
        bool eligible = n.status == NodeStatus.Active && n.stake >= _minStake;
        bool pooled = n.poolSlot != 0;
        if (eligible && !pooled) {
            uint32 modelId = n.modelId;
            uint8 shard = n.shard;
            uint256 size = _poolSize(modelId, shard);
            _pools[_poolKey(modelId, shard)][size] = RouteHop({node: node, pricePerToken: n.pricePerToken});
            _setPoolSize(modelId, shard, size + 1);
            n.poolSlot = uint32(size + 1);
            emit PoolMembershipChanged(node, true);
        } else if (!eligible && pooled) {
            _leavePool(node, n);
        }
    }

    function _leavePool(address node, Node storage n) private {
        uint256 poolSlot = n.poolSlot;
        if (poolSlot == 0) return;
        uint32 modelId = n.modelId;
        uint8 shard = n.shard;
        mapping(uint256 => RouteHop) storage pool = _pools[_poolKey(modelId, shard)];
        uint256 last = _poolSize(modelId, shard);
        if (poolSlot != last) {
            RouteHop memory moved = pool[last - 1];
            pool[poolSlot - 1] = moved;
            _nodes[moved.node].poolSlot = uint32(poolSlot);
        }
        delete pool[last - 1];
        _setPoolSize(modelId, shard, last - 1);
        n.poolSlot = 0;
        emit PoolMembershipChanged(node, false);
    }

    /// @dev Probes at most MAX_PROBES pool entries from a seeded start for one within the price limit and
    /// not in `avoid`, then the caller's hint (1 + a pool index), so overpriced (or avoided) entries cannot
    /// hide an eligible node.
    function _pick(
        uint32 modelId,
        uint8 shard,
        uint256 size,
        uint256 seed,
        uint64 maxPricePerToken,
        uint256 hint,
        address[] calldata avoid
    ) private view returns (address node, uint64 price) {
        if (size == 0) revert NoEligibleNode(modelId, shard);
        mapping(uint256 => RouteHop) storage pool = _pools[_poolKey(modelId, shard)];
        uint256 start = uint256(keccak256(abi.encode(seed, shard))) % size;
        uint256 probes = size < MAX_PROBES ? size : MAX_PROBES;
        for (uint256 k; k < probes; ++k) {
            RouteHop storage hop = pool[(start + k) % size];
            price = hop.pricePerToken;
            if (price <= maxPricePerToken && !_avoided(avoid, hop.node)) return (hop.node, price);
        }
        if (hint != 0 && hint <= size) {
            RouteHop storage hinted = pool[hint - 1];
            price = hinted.pricePerToken;
            if (price <= maxPricePerToken && !_avoided(avoid, hinted.node)) return (hinted.node, price);
        }
        revert NoEligibleNode(modelId, shard);
    }

    /// @dev Probes up to SAMPLE_PROBES_PER_NODE x count distinct candidates uniformly (independent probes:
    /// a run of colluding neighbours in pool order gains nothing), then fills `nodes` from them without
    /// replacement, each pick proportional to stake. Uniform candidates weighted by stake make an
    /// operator's expected share of seats proportional to its total stake, however it is split.
    function _drawByStake(
        mapping(uint256 => RouteHop) storage pool,
        uint256 size,
        address exclude,
        address[] memory nodes,
        uint256 seed
    ) private view returns (uint256 found) {
        uint256 count = nodes.length;
        uint256 wanted = count * SAMPLE_PROBES_PER_NODE;
        address[] memory candidates = new address[](wanted);
        uint256[] memory weights = new uint256[](wanted);
        uint256 total;
        uint256 have;
        for (uint256 i; i < 2 * wanted && have < wanted; ++i) {
            address node = pool[uint256(keccak256(abi.encode(seed, i))) % size].node;
            if (node == exclude || _contains(candidates, have, node)) continue;
            candidates[have] = node;
            uint256 weight = _nodes[node].stake;
            weights[have++] = weight;
            total += weight;
        }
        for (; found < count && total != 0; ++found) {
            uint256 r = uint256(keccak256(abi.encode(seed, "stake", found))) % total;
            uint256 k;
            while (r >= weights[k]) r -= weights[k++];
            nodes[found] = candidates[k];
            total -= weights[k];
            weights[k] = 0;
        }
    }

    function _avoided(address[] calldata avoid, address node) private pure returns (bool) {
        for (uint256 i; i < avoid.length; ++i) {
            if (avoid[i] == node) return true;
        }
        return false;
    }

    function _contains(address[] memory list, uint256 length, address item) private pure returns (bool) {
        for (uint256 i; i < length; ++i) {
            if (list[i] == item) return true;
        }
        return false;
    }

    function _poolSize(uint32 modelId, uint8 shard) private view returns (uint256) {
        return uint24(_shardState[modelId] >> (8 + 24 * uint256(shard)));
    }

    function _setPoolSize(uint32 modelId, uint8 shard, uint256 size) private {
        if (size > type(uint24).max) revert PoolFull(modelId, shard);
        uint256 offset = 8 + 24 * uint256(shard);
        uint256 state = _shardState[modelId];
        _shardState[modelId] = (state & ~(uint256(type(uint24).max) << offset)) | (size << offset);
    }

    function _poolKey(uint32 modelId, uint8 shard) private pure returns (uint256) {
        return (uint256(modelId) << 8) | shard;
    }

    function _send(address to, uint256 amount) private {
        (bool ok, ) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
