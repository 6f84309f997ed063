"""One node TLS identity for unit tests' aiohttp servers (made once per process: key generation is the
slow part), so that they serve https/wss and the code under test pins the key, as on a real route."""

from __future__ import annotations

import tempfile
from pathlib import Path

from splitmesh.wire.tls import TlsIdentity, load_or_create_identity

_IDENTITY: list[TlsIdentity] = []


def server_identity() -> TlsIdentity:
    if not _IDENTITY:
        _IDENTITY.append(load_or_create_identity(Path(tempfile.mkdtemp(prefix="splitmesh-tls-"))))
    return _IDENTITY[0]
