"""TLS on every link, with the chain as the only trust root.

A node holds one long-lived TLS key and a self-signed certificate (made on first start, kept in its
data directory, the key file mode 0600) and announces the SHA-256 of the certificate's DER bytes in the
registry's `encryptionKey` field. Whoever connects to a node (the client's first hop, a node's relay to
the next hop, a verifier's transcript fetch) reads that fingerprint from the chain and pins it: no CA is
consulted, and a peer presenting any other certificate is refused with `PeerKeyMismatch` before a byte
of the request is sent. Proxy variables are never honoured (every session here has trust_env=False).

A node whose on-chain key is zero serves plaintext. Links to it are refused (`NoRegisteredKey`) unless
the process opted in with SPLITMESH_ALLOW_PLAINTEXT=1 (development only: anyone on the path reads and
can rewrite every frame).
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from splitmesh.errors import SplitmeshError

ZERO_KEY = b"\0" * 32
PLAINTEXT_ENV = "SPLITMESH_ALLOW_PLAINTEXT"  # "1": links to nodes without a registered key (dev only)
KEY_FILE = "tls-key.pem"
CERT_FILE = "tls-cert.pem"


class LinkSecurityError(SplitmeshError, ConnectionError):
    """A link to a node was refused because it could not be authenticated to the node's on-chain key."""


class PeerKeyMismatch(LinkSecurityError):
    """The peer presented a TLS certificate other than the one its node registered on-chain."""

    def __init__(self, url: str, expected: bytes, got: bytes):
        super().__init__(
            f"{url} presented a certificate with SHA-256 0x{got.hex()}, but the chain registers "
            f"0x{expected.hex()} for this node: someone else answers at its endpoint (or the node changed "
            "its key without announcing it); refusing the link"
        )
        self.url = url
        self.expected = expected
        self.got = got


class NoRegisteredKey(LinkSecurityError):
    """The node registered no TLS key (or a key with a plaintext endpoint): its link cannot be trusted."""


@dataclass(frozen=True)
class TlsIdentity:
    """A node's TLS key and certificate files and the certificate's SHA-256 (the on-chain key)."""

    key_path: Path
    cert_path: Path
    fingerprint: bytes  # 32 bytes: SHA-256 of the certificate's DER encoding

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def load_or_create_identity(directory: Path) -> TlsIdentity:
    """The TLS identity kept in `directory`, made there (key file mode 0600) if it has none yet."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        _create(key_path, cert_path)
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise LinkSecurityError(
            f"TLS key {key_path} is readable by others (mode {mode:o}); run `chmod 600 {key_path}`"
        )
    return TlsIdentity(key_path, cert_path, cert_fingerprint(cert_path.read_bytes()))


def _create(key_path: Path, cert_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "splitmesh node")])
    now = datetime.datetime.now(datetime.UTC)
    # Validity is not checked by peers (they pin the fingerprint); a long one avoids surprising expiry.
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cert_fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 of a PEM certificate's DER bytes: what aiohttp.Fingerprint and peers compare."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).digest()


def plaintext_allowed() -> bool:
    return os.environ.get(PLAINTEXT_ENV, "") == "1"


def link_ssl(url: str, key: bytes) -> aiohttp.Fingerprint | bool:
    """The `ssl=` argument for an aiohttp connection to `url`, a node whose on-chain key is `key`.

    Raises NoRegisteredKey for a node without a key (unless plaintext is allowed) and for a key with a
    plaintext URL: aiohttp skips the fingerprint check on a connection that is not TLS.
    """
    scheme = urlsplit(url).scheme
    if key == ZERO_KEY or not key:
        if plaintext_allowed() and scheme in ("http", "ws"):
            return False
        raise NoRegisteredKey(
            f"the node at {url} registered no TLS key on-chain, so its link would be plaintext; it must "
            f"upgrade (a current `splitmesh node run` registers one), or set {PLAINTEXT_ENV}=1 for a "
            "development network"
        )
    if scheme not in ("https", "wss"):
        raise NoRegisteredKey(
            f"the node at {url} registered a TLS key but announces a plaintext endpoint; refusing to send "
            "frames in the clear"
        )
    return aiohttp.Fingerprint(key)


def ws_url(endpoint: str, path: str) -> str:
    """The WebSocket URL of `path` at a node's http(s) endpoint."""
    base = endpoint.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    return base + path


def mismatch_from(url: str, exc: aiohttp.ServerFingerprintMismatch) -> PeerKeyMismatch:
    return PeerKeyMismatch(url, exc.expected, exc.got)


def pinned_request(
    method: str,
    url: str,
    key: bytes,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One blocking HTTP request to a node whose on-chain key is `key`, without proxies:
    (status, response headers, body). The certificate is checked against `key` after the handshake and
    before the request is sent."""
    pin = link_ssl(url, key)
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if isinstance(pin, aiohttp.Fingerprint):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin below is the check: the chain is the trust root
        connection = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    try:
        connection.connect()
        if isinstance(pin, aiohttp.Fingerprint):
            sock = connection.sock
            assert isinstance(sock, ssl.SSLSocket)
            got = hashlib.sha256(sock.getpeercert(binary_form=True) or b"").digest()
            if got != key:
                raise PeerKeyMismatch(url, key, got)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def pinned_get(url: str, key: bytes, headers: dict[str, str], *, timeout: float) -> tuple[int, bytes]:
    """GET `url` from a node whose on-chain key is `key` (see pinned_request): (status, body)."""
    status, _, body = pinned_request("GET", url, key, headers=headers, timeout=timeout)
    return status, body
