"""Where the project's files are: the checkout root, compiled artifacts, local state."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout root (holds hardhat.config.js); SPLITMESH_ROOT overrides."""
    env = os.environ.get("SPLITMESH_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def artifacts_dir() -> Path:
    return project_root() / "artifacts"


def state_dir() -> Path:
    """Local state (deployments, caches); SPLITMESH_HOME overrides, default <root>/.splitmesh."""
    env = os.environ.get("SPLITMESH_HOME")
    path = Path(env) if env else project_root() / ".splitmesh"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted model weights (shared by every run, tests included); SPLITMESH_MODELS overrides."""
    env = os.environ.get("SPLITMESH_MODELS")
    path = Path(env) if env else project_root() / ".splitmesh" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
