"""splitmesh client SDK: private generation over the marketplace (see client_sdk.client)."""

from client_sdk.client import Client, Generation, TokenEvent
from client_sdk.errors import (
    ChallengeRefused,
    ClientError,
    CommitmentMismatch,
    EscrowTooSmall,
    ForgedReply,
    MalformedReply,
    NodeBusy,
    NodeLostState,
    NodeUnavailable,
    NoRoute,
    NotSettled,
    RouteBusy,
    StepFailed,
    TrainingError,
)
from client_sdk.failover import FailoverPolicy, FailoverReport
from client_sdk.options import GenerateOptions, PrivacySettings, TrainOptions
from client_sdk.receipts import GenerationReceipt, HopInfo, Settlement

__all__ = [
    "ChallengeRefused",
    "Client",
    "ClientError",
    "CommitmentMismatch",
    "EscrowTooSmall",
    "FailoverPolicy",
    "FailoverReport",
    "ForgedReply",
    "GenerateOptions",
    "Generation",
    "GenerationReceipt",
    "HopInfo",
    "MalformedReply",
    "NoRoute",
    "NodeBusy",
    "NodeLostState",
    "NodeUnavailable",
    "NotSettled",
    "PrivacySettings",
    "RouteBusy",
    "Settlement",
    "StepFailed",
    "TokenEvent",
    "TrainOptions",
    "TrainingError",
]
