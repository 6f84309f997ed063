"""Deploying the contracts (NodeRegistry, JobMarket, AuditCourt), and remembering where they are."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import rlp
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from splitmesh.chain.artifacts import load_artifact
from splitmesh.chain.tx import Sender, TxResult
from splitmesh.errors import ConfigError
from splitmesh.paths import state_dir

logger = logging.getLogger(__name__)

ETHER = 10**18
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_VERIFIERS = 16  # AuditCourt.MAX_VERIFIERS
MAX_WINDOW = 30 * 24 * 3600  # longest AuditCourt commit or reveal window, seconds
UINT64_MAX = 2**64 - 1  # JobMarket: largest hop fee
UINT96_MAX = 2**96 - 1  # JobMarket: largest challenge bond


@dataclass(frozen=True)
class DeployParams:
    """Protocol parameters fixed at deployment."""

    min_stake: int = ETHER  # wei a node must stake to be matched
    unbonding_delay: int = 7 * 24 * 3600  # seconds unbonded stake stays locked and slashable
    commit_timeout: int = 3600  # seconds after submission during which route nodes may commit
    challenge_window: int = 600  # seconds after the last commit before anyone may finalize
    dispute_timeout: int = 3600  # seconds a job held for audit waits for the auditor
    miss_slash_bps: int = 1000  # share of bond slashed from a node that never commits (1/10000)
    fraud_slash_bps: int = 5000  # share of bond slashed on a fraud verdict (1/10000)
    # Account allowed to hold and resolve disputed jobs. Zero: deploy an AuditCourt and make it the
    # auditor (the normal case); any other address (tests: an EOA) is used as is, and no court is deployed.
    auditor: str = ZERO_ADDRESS
    audit_rate_bps: int = 0  # share of completed jobs drawn for a sampled audit (1/10000)
    # Wei each committed hop earns per job on top of price x tokens, so a job whose client never shows up
    # still pays the commits it forces. A first commit costs ~65k gas (the README's gas table): 10**14 wei
    # covers 100k gas at 1 gwei (hardhat's starting base fee, and a quiet L1 or any L2). Raise it with gas.
    hop_fee: int = 10**14
    # Wei a challenger posts to dispute a committed job; lost on an honest verdict (half to the honest
    # verifiers, half to the route), returned with the slash on fraud. 0.05 ETH: five verifier bonds, so a
    # frivolous challenge pays a whole panel's work. Needs an auditor (always one: zero deploys a court).
    challenge_bond: int = ETHER // 20
    verifiers_per_position: int = 3  # AuditCourt: verifiers drawn per route position, 1..16
    verifier_bond: int = ETHER // 100  # AuditCourt: wei each verifier posts with its vote commitment
    audit_commit_window: int = 300  # AuditCourt: seconds from opening during which votes are committed
    audit_reveal_window: int = 300  # AuditCourt: seconds after the commit phase to reveal votes
    audit_reward_bps: int = 5000  # AuditCourt: share of a fraud slash paid to the winning verifiers

    @property
    def deploys_court(self) -> bool:
        return int(self.auditor, 16) == 0

    def validate(self) -> None:
        if self.unbonding_delay < self.commit_timeout + self.challenge_window + self.dispute_timeout:
            raise ConfigError(
                "unbonding_delay must be at least commit_timeout + challenge_window + dispute_timeout, "
                "or a node could withdraw stake before its jobs settle"
            )
        for name in ("miss_slash_bps", "fraud_slash_bps", "audit_rate_bps", "audit_reward_bps"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise ConfigError(f"{name} must be within 0..10000 basis points")
        if not 0 <= self.hop_fee <= UINT64_MAX:
            raise ConfigError(f"hop_fee must be within 0..{UINT64_MAX} wei")
        if not 0 <= self.challenge_bond <= UINT96_MAX:
            raise ConfigError(f"challenge_bond must be within 0..{UINT96_MAX} wei (0 disables challenges)")
        if not self.deploys_court:
            return
        if not 1 <= self.verifiers_per_position <= MAX_VERIFIERS:
            raise ConfigError(f"verifiers_per_position must be within 1..{MAX_VERIFIERS}")
        if self.verifier_bond <= 0:
            raise ConfigError(
                "verifier_bond must be positive, or a verifier could commit and never reveal for free"
            )
        for name in ("audit_commit_window", "audit_reveal_window"):
            if not 0 < getattr(self, name) <= MAX_WINDOW:
                raise ConfigError(f"{name} must be within 1..{MAX_WINDOW} seconds")
        if self.dispute_timeout < self.audit_commit_window + self.audit_reveal_window + 2:
            raise ConfigError(
                "dispute_timeout must exceed audit_commit_window + audit_reveal_window + 1 s, or the court "
                "could not resolve an audit before anyone may finalize the disputed job unaudited"
            )


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    registry: str
    market: str
    deployer: str
    block: int  # block of the registry deployment: event scans start here
    params: DeployParams = field(default_factory=DeployParams)
    gas_used: dict[str, int] = field(default_factory=dict)
    court: str = ZERO_ADDRESS  # the AuditCourt; zero when the auditor is another account (or none)

    @property
    def has_court(self) -> bool:
        return int(self.court, 16) != 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Deployment:
        """Also reads files written by older versions (no `court`, fewer params: defaults fill them in;
        Marketplace reads the fee and bond from the chain, never from here)."""
        raw_params: Any = data.get("params", {})
        known = DeployParams.__dataclass_fields__
        raw_params = {k: v for k, v in raw_params.items() if k in known}
        gas_used: Any = data.get("gas_used", {})
        return cls(
            chain_id=int(str(data["chain_id"])),
            registry=to_checksum_address(str(data["registry"])),
            market=to_checksum_address(str(data["market"])),
            deployer=to_checksum_address(str(data["deployer"])),
            block=int(str(data["block"])),
            params=DeployParams(**raw_params),
            gas_used={str(k): int(v) for k, v in gas_used.items()},
            court=to_checksum_address(str(data.get("court", ZERO_ADDRESS))),
        )


def create_address(sender: str, nonce: int) -> str:
    """Address of the contract `sender` creates with `nonce` (CREATE)."""
    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


def _deploy_at(
    w3: Web3, sender: Sender, name: str, expected: str, gas_used: dict[str, int], *args: object
) -> tuple[str, int]:
    """Deploy one contract; it must land at the predicted address the others were bound to. Returns the
    address and the block it was deployed in."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx: TxResult = sender.transact(factory.constructor(*args), label=f"deploy {name}")
    address = to_checksum_address(tx.receipt["contractAddress"])
    if address != expected:
        raise ConfigError(f"{name} deployed at {address}, expected {expected}: nonce raced")
    gas_used[name] = tx.gas_used
    return address, tx.block_number


def deploy(w3: Web3, sender: Sender, params: DeployParams | None = None) -> Deployment:
    """Deploy NodeRegistry, JobMarket and (unless params.auditor names another account) the AuditCourt,
    from consecutive nonces. Each contract is bound to the next one's predicted address (the registry to
    the JobMarket, the JobMarket's auditor to the court) and each constructor checks its binding, so no
    admin step or owner key exists after deployment."""
    params = params or DeployParams()
    params.validate()
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    sender.resync()
    predicted_registry = create_address(sender.address, nonce)
    predicted_market = create_address(sender.address, nonce + 1)
    predicted_court = create_address(sender.address, nonce + 2)
    auditor = predicted_court if params.deploys_court else to_checksum_address(params.auditor)

    gas_used: dict[str, int] = {}
    registry, block = _deploy_at(
        w3,
        sender,
        "NodeRegistry",
        predicted_registry,
        gas_used,
        predicted_market,
        params.min_stake,
        params.unbonding_delay,
    )
    market, _ = _deploy_at(
        w3,
        sender,
        "JobMarket",
        predicted_market,
        gas_used,
        registry,
        auditor,
        params.commit_timeout,
        params.challenge_window,
        params.dispute_timeout,
        params.miss_slash_bps,
        params.fraud_slash_bps,
        params.audit_rate_bps,
        params.hop_fee,
        params.challenge_bond,
    )
    court = ZERO_ADDRESS
    if params.deploys_court:
        court, _ = _deploy_at(
            w3,
            sender,
            "AuditCourt",
            predicted_court,
            gas_used,
            market,
            params.verifiers_per_position,
            params.verifier_bond,
            params.audit_commit_window,
            params.audit_reveal_window,
            params.audit_reward_bps,
        )
    deployment = Deployment(
        chain_id=sender.chain_id,
        registry=registry,
        market=market,
        deployer=sender.address,
        block=block,
        params=params,
        gas_used=gas_used,
        court=court,
    )
    logger.info("deployed NodeRegistry at %s, JobMarket at %s, AuditCourt at %s", registry, market, court)
    return deployment


def deployments_file() -> Path:
    return state_dir() / "deployments.json"


def save_deployment(deployment: Deployment, rpc_url: str, path: Path | None = None) -> Path:
    """Remember a deployment under its RPC URL and chain id."""
    path = path or deployments_file()
    data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    data[f"{deployment.chain_id}@{rpc_url}"] = deployment.to_json()
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def is_live(w3: Web3, deployment: Deployment) -> bool:
    """True if both contracts have code on this chain and are bound to each other."""
    if w3.eth.chain_id != deployment.chain_id:
        return False
    registry_address = to_checksum_address(deployment.registry)
    if not w3.eth.get_code(registry_address) or not w3.eth.get_code(to_checksum_address(deployment.market)):
        return False
    registry = w3.eth.contract(address=registry_address, abi=load_artifact("NodeRegistry").abi)
    try:
        return bool(to_checksum_address(registry.functions.jobMarket().call()) == deployment.market)
    except Exception:
        return False


def find_deployment(w3: Web3, rpc_url: str, path: Path | None = None) -> Deployment | None:
    """A remembered deployment for this RPC URL that is still live on the chain, if any."""
    path = path or deployments_file()
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    entry = data.get(f"{w3.eth.chain_id}@{rpc_url}")
    if entry is None:
        return None
    deployment = Deployment.from_json(entry)
    return deployment if is_live(w3, deployment) else None


def _court_of(w3: Web3, market: str, auditor: str) -> dict[str, int] | None:
    """The AuditCourt parameters if `auditor` is an AuditCourt bound to `market`, else None."""
    address = to_checksum_address(auditor)
    if int(address, 16) == 0 or not w3.eth.get_code(address):
        return None
    court = w3.eth.contract(address=address, abi=load_artifact("AuditCourt").abi)
    try:
        if to_checksum_address(court.functions.market().call()) != market:
            return None
        k, bond, commit_window, reveal_window, reward_bps = court.functions.parameters().call()
    except Exception:  # some other contract is the auditor
        return None
    return {
        "verifiers_per_position": k,
        "verifier_bond": bond,
        "audit_commit_window": commit_window,
        "audit_reveal_window": reveal_window,
        "audit_reward_bps": reward_bps,
    }


def deployment_from_market(w3: Web3, market: str) -> Deployment:
    """Reconstruct a deployment from the JobMarket address alone (it knows its registry and auditor)."""
    market = to_checksum_address(market)
    contract = w3.eth.contract(address=market, abi=load_artifact("JobMarket").abi)
    if not w3.eth.get_code(market):
        raise ConfigError(f"no contract at {market} on chain {w3.eth.chain_id}")
    registry = to_checksum_address(contract.functions.registry().call())
    reg = w3.eth.contract(address=registry, abi=load_artifact("NodeRegistry").abi)
    ct, cw, dt, ms, fs = contract.functions.parameters().call()
    auditor = to_checksum_address(contract.functions.auditor().call())
    court_params = _court_of(w3, market, auditor)
    params = DeployParams(
        min_stake=reg.functions.minStake().call(),
        unbonding_delay=reg.functions.unbondingDelay().call(),
        commit_timeout=ct,
        challenge_window=cw,
        dispute_timeout=dt,
        miss_slash_bps=ms,
        fraud_slash_bps=fs,
        auditor=ZERO_ADDRESS if court_params is not None else auditor,
        audit_rate_bps=contract.functions.auditRateBps().call(),
        hop_fee=contract.functions.hopFee().call(),
        challenge_bond=contract.functions.challengeBond().call(),
        **(court_params or {}),
    )
    return Deployment(
        chain_id=w3.eth.chain_id,
        registry=registry,
        market=market,
        deployer=ZERO_ADDRESS,
        block=0,
        params=params,
        court=auditor if court_params is not None else ZERO_ADDRESS,
    )
