"""Chain layer: contract artifacts, deployment, typed calls, local chain launcher."""

from splitmesh.chain.connect import connect
from splitmesh.chain.deploy import Deployment, DeployParams, deploy, find_deployment, save_deployment
from splitmesh.chain.launcher import HARDHAT_DEV_KEYS, LocalChain, free_port, rpc_chain_id
from splitmesh.chain.marketplace import Marketplace, hints_from_pools
from splitmesh.chain.records import (
    AuditInfo,
    AuditStatus,
    ChallengeInfo,
    JobState,
    JobStatus,
    ModelInfo,
    NodeInfo,
    NodeStatus,
    PanelInfo,
    SubmittedJob,
    Verdict,
    VoteStatus,
)
from splitmesh.chain.terms import JobTerms, RouteHop, terms_hash
from splitmesh.chain.tx import Sender, TxResult

__all__ = [
    "HARDHAT_DEV_KEYS",
    "AuditInfo",
    "AuditStatus",
    "ChallengeInfo",
    "DeployParams",
    "Deployment",
    "JobState",
    "JobStatus",
    "JobTerms",
    "LocalChain",
    "Marketplace",
    "ModelInfo",
    "NodeInfo",
    "NodeStatus",
    "PanelInfo",
    "RouteHop",
    "Sender",
    "SubmittedJob",
    "TxResult",
    "Verdict",
    "VoteStatus",
    "connect",
    "deploy",
    "find_deployment",
    "free_port",
    "hints_from_pools",
    "rpc_chain_id",
    "save_deployment",
    "terms_hash",
]
