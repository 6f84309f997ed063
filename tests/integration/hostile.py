"""A hostile client's tools: raw WebSocket handshakes and frames (compressed, oversized, never read),
written by hand over a plain socket (TLS-wrapped, unpinned, for a node that serves https) so that
nothing in a client library softens the attack."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


@dataclass
class RawSocket:
    sock: socket.socket
    status: int  # the handshake's HTTP status
    headers: dict[str, str]  # lower-case names

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def close(self) -> None:
        self.sock.close()


def connect(
    endpoint: str, path: str, *, source: str = "127.0.0.1", deflate: bool = False, rcvbuf: int | None = None
) -> RawSocket:
    """Open a TCP connection from `source` and send a WebSocket upgrade (offering permessage-deflate if
    `deflate`); returns the socket and the handshake's status and headers."""
    url = urlsplit(endpoint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect((url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)))
    if url.scheme == "https":
        # An attacker needs no pinning: it takes whatever certificate the node shows.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=url.hostname)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first, *rest = text.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in rest if ":" in line)}
    return RawSocket(sock, int(first.split()[1]) if first else 0, headers)


def frame(opcode: int, payload: bytes, *, rsv1: bool = False, declared: int | None = None) -> bytes:
    """A masked client frame; `declared` overrides the length in the header (a lie about the size)."""
    length = len(payload) if declared is None else declared
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", length)
    mask = os.urandom(4)
    masked = (
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if len(payload) < 4096 else _mask(payload, mask)
    )
    return head + mask + masked


def _mask(payload: bytes, mask: bytes) -> bytes:
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(len(payload), "little")


def deflated(payload: bytes) -> bytes:
    """permessage-deflate's encoding of one message (raw deflate without the final empty block)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(b"\x00\x00\xff\xff") else data


def closed_by_server(raw: RawSocket, within: float) -> str | None:
    """Read (and drop) what the server sends until it closes: "close <code>" for a close frame, "eof"
    or "reset"; None if the connection is still open after `within` seconds."""
    deadline = time.monotonic() + within
    buffer = b""
    while time.monotonic() < deadline:
        raw.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = raw.sock.recv(1 << 16)
        except TimeoutError:
            return None
        except ConnectionError:
            return "reset"
        if not chunk:
            return "eof"
        buffer += chunk
        code, used = _close_code(buffer)
        if code is not None:
            return f"close {code}"
        buffer = buffer[used:]
    return None


def _close_code(buffer: bytes) -> tuple[int | None, int]:
    """The code of a close frame among the complete unmasked server frames at the start of `buffer`,
    and how many bytes of whole frames before it were read."""
    done = 0
    while done + 2 <= len(buffer):
        opcode, length, i = buffer[done] & 0x0F, buffer[done + 1] & 0x7F, done + 2
        if length == 126:
            if i + 2 > len(buffer):
                break
            length, i = struct.unpack(">H", buffer[i : i + 2])[0], i + 2
        elif length == 127:
            if i + 8 > len(buffer):
                break
            length, i = struct.unpack(">Q", buffer[i : i + 8])[0], i + 8
        if i + length > len(buffer):
            break
        if opcode == OP_CLOSE:
            return (struct.unpack(">H", buffer[i : i + 2])[0] if length >= 2 else 1005), done
        done = i + length
    return None, done
