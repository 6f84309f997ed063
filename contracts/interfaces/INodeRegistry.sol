// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {RouteHop, NodeStatus} from "../libraries/SplitmeshTypes.sol";

/// @title Errors of the NodeRegistry
interface INodeRegistryErrors {
    /// @notice A constructor parameter is out of range.
    /// @param what Name of the offending parameter.
    error InvalidParameter(string what);
    /// @notice The model name is empty or longer than the limit.
    /// @param length Length in bytes of the given name.
    error InvalidModelName(uint256 length);
    /// @notice The weights hash is zero.
    error ZeroWeightsHash();
    /// @notice The number of shards is zero or above the maximum route length.
    /// @param shards Number of shards implied by the boundaries.
    error InvalidShardCount(uint256 shards);
    /// @notice Boundaries must start at 0, strictly increase and end at the layer count.
    /// @param index Position of the first offending boundary.
    error InvalidBoundaries(uint256 index);
    /// @notice The same weights with the same shard plan are already registered.
    /// @param modelId The existing model id.
    error ModelAlreadyRegistered(uint32 modelId);
    /// @notice No model with this id.
    /// @param modelId The unknown id.
    error UnknownModel(uint32 modelId);
    /// @notice The shard index is not part of the model's plan.
    /// @param modelId The model.
    /// @param shard The out-of-range shard index.
    error InvalidShard(uint32 modelId, uint8 shard);
    /// @notice The endpoint URL is empty or longer than the limit.
    /// @param length Length in bytes of the given endpoint.
    error InvalidEndpoint(uint256 length);
    /// @notice The node is already registered and active; deactivate it before re-registering.
    /// @param node The node address.
    error NodeAlreadyActive(address node);
    /// @notice The address never registered as a node.
    /// @param node The address.
    error NodeNotRegistered(address node);
    /// @notice The node is not active.
    /// @param node The node address.
    error NodeNotActive(address node);
    /// @notice An amount of zero was given where a positive amount is required.
    error ZeroAmount();
    /// @notice Unbonding more than the staked amount.
    /// @param staked The node's current stake.
    /// @param requested The requested amount.
    error InsufficientStake(uint256 staked, uint256 requested);
    /// @notice Nothing to withdraw.
    /// @param account The caller.
    error NothingToWithdraw(address account);
    /// @notice The unbonding delay has not passed yet.
    /// @param unlockAt Withdrawal is possible strictly after this timestamp.
    error UnbondingLocked(uint40 unlockAt);
    /// @notice Only the JobMarket may call this function.
    /// @param caller The caller.
    error NotJobMarket(address caller);
    /// @notice No active, staked node within the price limit was found for a shard.
    /// @param modelId The model.
    /// @param shard The shard without an eligible node.
    error NoEligibleNode(uint32 modelId, uint8 shard);
    /// @notice A pool index past the end of the pool.
    /// @param index The index asked for.
    /// @param size The pool size.
    error PoolIndexOutOfRange(uint256 index, uint256 size);
    /// @notice A shard pool reached its maximum size.
    /// @param modelId The model.
    /// @param shard The shard.
    error PoolFull(uint32 modelId, uint8 shard);
    /// @notice More nodes asked of samplePool than it draws at most.
    /// @param count The number asked for.
    /// @param max The largest sample.
    error SampleTooLarge(uint256 count, uint256 max);
    /// @notice A native-currency transfer failed.
    /// @param to The recipient.
    /// @param amount The amount in wei.
    error TransferFailed(address to, uint256 amount);
    /// @notice The hints passed to matchRoute are more than the route's shards.
    /// @param hints Number of hints.
    /// @param shards Number of shards in the route.
    error TooManyHints(uint256 hints, uint256 shards);
    /// @notice More nodes to avoid were passed to matchRoute than MAX_AVOID.
    /// @param count Number of nodes to avoid.
    /// @param max The most allowed.
    error TooManyAvoided(uint256 count, uint256 max);
}

/// @title NodeRegistry: models, shard plans, node stakes and per-shard pools
interface INodeRegistry is INodeRegistryErrors {
    /// @notice A view of one registered model.
    struct ModelInfo {
        string name;
        bytes32 weightsHash;
        address registrant;
        uint16 numLayers;
        uint16[] boundaries; // b_0 = 0 < b_1 < ... < b_m = numLayers
    }

    /// @notice A view of one node.
    struct NodeInfo {
        NodeStatus status;
        uint32 modelId;
        uint8 shard;
        uint64 pricePerToken;
        uint96 stake;
        uint96 unbonding;
        uint40 unlockAt;
        uint96 earnings;
        bool pooled; // eligible for matching right now
        bytes32 encryptionKey;
        string endpoint;
    }

    /// @notice A model and its shard plan were registered.
    /// @param modelId New model id.
    /// @param weightsHash Hash of the model's tensors.
    /// @param name Human-readable name.
    /// @param numLayers Number of decoder layers.
    /// @param boundaries Shard boundaries.
    event ModelRegistered(
        uint32 indexed modelId, bytes32 indexed weightsHash, string name, uint16 numLayers, uint16[] boundaries
    );
    /// @notice Stake was added.
    /// @param node The staker.
    /// @param amount Added wei.
    /// @param stake New stake.
    event Staked(address indexed node, uint256 amount, uint256 stake);
    /// @notice A node registered (or re-registered) for a shard.
    /// @param node The node address.
    /// @param modelId The model.
    /// @param shard The shard index.
    /// @param endpoint Where the node serves.
    /// @param pricePerToken Wei per token.
    /// @param encryptionKey The node's public encryption key.
    event NodeRegistered(
        address indexed node,
        uint32 indexed modelId,
        uint8 indexed shard,
        string endpoint,
        uint64 pricePerToken,
        bytes32 encryptionKey
    );
    /// @notice A node changed its endpoint or price.
    /// @param node The node.
    /// @param endpoint New endpoint.
    /// @param pricePerToken New price in wei per token.
    event NodeUpdated(address indexed node, string endpoint, uint64 pricePerToken);
    /// @notice A node announced a new encryption key (the SHA-256 of its new TLS certificate).
    /// @param node The node.
    /// @param encryptionKey The new key; peers refuse links that do not present it.
    event EncryptionKeyChanged(address indexed node, bytes32 encryptionKey);
    /// @notice A node stopped accepting new jobs.
    /// @param node The node.
    event NodeDeactivated(address indexed node);
    /// @notice A node entered or left the matching pool of its shard.
    /// @param node The node.
    /// @param pooled True when it entered.
    event PoolMembershipChanged(address indexed node, bool pooled);
    /// @notice Stake started unbonding.
    /// @param node The node.
    /// @param amount Wei moved from stake to unbonding.
    /// @param unlockAt Withdrawal is possible strictly after this time.
    event UnbondingStarted(address indexed node, uint256 amount, uint40 unlockAt);
    /// @notice Unbonded stake was withdrawn.
    /// @param node The node.
    /// @param amount Wei sent.
    event UnbondedWithdrawn(address indexed node, uint256 amount);
    /// @notice Earnings were paid out by the JobMarket.
    /// @param node The node.
    /// @param amount Wei sent.
    event EarningsWithdrawn(address indexed node, uint256 amount);
    /// @notice A node was slashed by the JobMarket.
    /// @param node The node.
    /// @param amount Wei taken (stake first, then unbonding).
    event Slashed(address indexed node, uint256 amount);

    /// @notice Register a model and its shard plan.
    /// @param name Human-readable name (1..64 bytes).
    /// @param weightsHash Hash of the model's tensors.
    /// @param numLayers Number of decoder layers.
    /// @param boundaries b_0 = 0 < ... < b_m = numLayers, 1 <= m <= MAX_SHARDS.
    /// @return modelId The new model id (ids start at 1).
    function registerModel(
        string calldata name,
        bytes32 weightsHash,
        uint16 numLayers,
        uint16[] calldata boundaries
    ) external returns (uint32 modelId);

    /// @notice Add stake (native currency) to the caller's node.
    function stake() external payable;

    /// @notice Register the caller for a shard of a model; value sent is added to the stake.
    /// @param modelId The model.
    /// @param shard The shard index.
    /// @param endpoint URL where the node serves (1..256 bytes).
    /// @param pricePerToken Wei per token.
    /// @param encryptionKey Public key clients may encrypt to.
    function registerNode(
        uint32 modelId,
        uint8 shard,
        string calldata endpoint,
        uint64 pricePerToken,
        bytes32 encryptionKey
    ) external payable;

    /// @notice Change the caller's endpoint and price; jobs matched before keep their price.
    /// @param endpoint New endpoint URL.
    /// @param pricePerToken New price in wei per token.
    function updateNode(string calldata endpoint, uint64 pricePerToken) external;

    /// @notice Change the caller's encryption key (rotate its TLS key); links opened from then on must
    /// present the new one.
    /// @param encryptionKey New key: the SHA-256 of the node's TLS certificate.
    function setEncryptionKey(bytes32 encryptionKey) external;

    /// @notice Stop being matched to new jobs; stake stays bonded.
    function deactivate() external;

    /// @notice Move stake into unbonding; it stays slashable until withdrawn.
    /// @param amount Wei to unbond.
    function unbond(uint256 amount) external;

    /// @notice Withdraw all unbonding stake, strictly after the unbonding delay.
    function withdrawUnbonded() external;

    /// @notice Slash a node; only the JobMarket. Proceeds are sent to the JobMarket.
    /// @param node The node.
    /// @param amount Wei to take (capped at stake + unbonding).
    /// @return slashed Wei actually taken.
    function slash(address node, uint256 amount) external returns (uint256 slashed);

    /// @notice Credit job payments (price x billed tokens) to the nodes of a route; only the JobMarket,
    /// which keeps the value.
    /// @param packedRoute The job's route, packed hops of node (20 bytes) and price (8 bytes).
    /// @param billedTokens Tokens billed per node.
    /// @param paidMask Route positions to credit.
    /// @param perHop Flat wei added for every paid hop (the per-hop fee, plus any share of a lost challenge bond).
    function creditEarnings(
        bytes calldata packedRoute,
        uint32 billedTokens,
        uint8 paidMask,
        uint256 perHop
    ) external;

    /// @notice Zero a node's earnings and return them; only the JobMarket, which then pays them out.
    /// @param node The node.
    /// @return amount Wei to pay.
    function takeEarnings(address node) external returns (uint256 amount);

    /// @notice Pick one pooled node per shard from firstShard to the last, price <= maxPrice.
    /// @param modelId The model.
    /// @param firstShard First shard of the route.
    /// @param maxPricePerToken Price limit in wei per token.
    /// @param seed Randomness for the pick.
    /// @param hints Per shard of the route, 1 + the pool index of a node the caller knows to be eligible
    /// (0: none). Used only when the seeded probes find no eligible node, so a pool stuffed with
    /// overpriced entries cannot refuse a client while an eligible node exists.
    /// @param avoid Nodes never to pick (at most MAX_AVOID): a client failing over from a node it saw
    /// fail; a shard whose every probed eligible node is avoided reverts NoEligibleNode.
    /// @return packedRoute One 28-byte hop per shard: node (20 bytes) and price (8 bytes).
    /// @return priceSum Sum of the route's prices in wei per token.
    function matchRoute(
        uint32 modelId,
        uint8 firstShard,
        uint64 maxPricePerToken,
        uint256 seed,
        uint32[] calldata hints,
        address[] calldata avoid
    ) external view returns (bytes memory packedRoute, uint256 priceSum);

    /// @notice Stake plus unbonding of a node: what can be slashed.
    /// @param node The node.
    /// @return Wei at stake.
    function bondOf(address node) external view returns (uint256);

    /// @notice The JobMarket allowed to slash and credit.
    /// @return The JobMarket address.
    function jobMarket() external view returns (address);

    /// @notice Minimum stake to be matched.
    /// @return Wei.
    function minStake() external view returns (uint256);

    /// @notice Seconds between unbonding and withdrawal.
    /// @return Seconds.
    function unbondingDelay() external view returns (uint256);

    /// @notice Number of registered models.
    /// @return Count; ids are 1..count.
    function modelCount() external view returns (uint32);

    /// @notice A model's details.
    /// @param modelId The model.
    /// @return info Name, hash, layers and boundaries.
    function getModel(uint32 modelId) external view returns (ModelInfo memory info);

    /// @notice A node's details.
    /// @param node The node address.
    /// @return info Status, shard, stake, earnings, endpoint.
    function getNode(address node) external view returns (NodeInfo memory info);

    /// @notice Number of nodes eligible for matching on a shard.
    /// @param modelId The model.
    /// @param shard The shard.
    /// @return Pool size.
    function poolSize(uint32 modelId, uint8 shard) external view returns (uint256);

    /// @notice One entry of a shard's pool.
    /// @param modelId The model.
    /// @param shard The shard.
    /// @param index Position in the pool.
    /// @return hop Node and current price.
    function poolAt(uint32 modelId, uint8 shard, uint256 index) external view returns (RouteHop memory hop);

    /// @notice Draw up to `count` distinct pooled nodes of a shard other than `exclude` (the AuditCourt
    /// draws its verifiers with it), by stake. A pool of at most count + 1 entries is taken whole, from a
    /// seeded start. From a larger one, up to 4 x count distinct candidates are probed uniformly, then
    /// `count` of them are drawn without replacement with probability proportional to stake: the expected
    /// weight of an operator's candidates is proportional to its total stake however it is split into
    /// addresses, so Sybils at the minimum stake gain no seats over one node with the same stake.
    /// @param modelId The model.
    /// @param shard The shard.
    /// @param exclude An address never drawn (the audited node).
    /// @param count Nodes wanted, at most MAX_SAMPLE.
    /// @param seed Randomness for the draw.
    /// @return nodes The drawn nodes, distinct, none equal to `exclude`; empty when the pool has no other.
    function samplePool(
        uint32 modelId,
        uint8 shard,
        address exclude,
        uint256 count,
        uint256 seed
    ) external view returns (address[] memory nodes);
}
