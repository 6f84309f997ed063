"""splitmesh client SDK: private generation over the marketplace (see client_sdk.client)."""

from client_sdk.client import Client, GenerateOptions, Generation, TokenEvent
from client_sdk.errors import (
    ChallengeRefused,
    ClientError,
    CommitmentMismatch,
    EscrowTooSmall,
    MalformedReply,
    NodeUnavailable,
    NoRoute,
    NotSettled,
    StepFailed,
)
from client_sdk.receipts import GenerationReceipt, HopInfo, Settlement

__all__ = [
    "ChallengeRefused",
    "Client",
    "ClientError",
    "CommitmentMismatch",
    "EscrowTooSmall",
    "GenerateOptions",
    "Generation",
    "GenerationReceipt",
    "HopInfo",
    "MalformedReply",
    "NoRoute",
    "NodeUnavailable",
    "NotSettled",
    "Settlement",
    "StepFailed",
    "TokenEvent",
]
