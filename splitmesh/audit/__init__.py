"""Audits: re-execute a node's shard on its recorded inputs and tell honest float noise from wrong work."""

from splitmesh.audit.compare import (
    TOLERANCES,
    AuditError,
    BadTranscript,
    Comparison,
    Tolerance,
    UnsupportedDTypePair,
    Verdict,
    compare_step,
    judge,
)
from splitmesh.audit.replay import Step, audit_transcript, compare_transcript, replay_transcript

__all__ = [
    "TOLERANCES",
    "AuditError",
    "BadTranscript",
    "Comparison",
    "Step",
    "Tolerance",
    "UnsupportedDTypePair",
    "Verdict",
    "audit_transcript",
    "compare_step",
    "compare_transcript",
    "judge",
    "replay_transcript",
]
