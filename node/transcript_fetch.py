"""How a verifier reads an audited node's transcript: streamed, size-capped, with a total deadline.

A node under audit controls how fast and how much it answers; without these limits it could drip-feed
its transcript (a byte a minute) past the court's commit phase, so its verifiers never vote, or send
gigabytes. The HTTP client is made in one place (`_transcript_session`).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from splitmesh.audit.transcript import TranscriptUnavailable
from splitmesh.wire.tls import link_ssl, mismatch_from


async def read_transcript(
    url: str, key: bytes, headers: dict[str, str], *, max_bytes: int, timeout: float
) -> bytes:
    """GET a transcript over a link pinned to `key`, the node's on-chain TLS key: streamed, refused past
    `max_bytes`, abandoned after `timeout` seconds in total (connect to last byte). Any of those, or a
    refusal, is TranscriptUnavailable: withheld evidence. A link that cannot be authenticated raises
    splitmesh.wire.tls.LinkSecurityError (also withheld, for the verifier)."""
    pin = link_ssl(url, key)
    try:
        async with (
            asyncio.timeout(timeout),
            _transcript_session() as session,
            session.get(url, headers=headers | {"Accept-Encoding": "identity"}, ssl=pin) as response,
        ):
            if response.status != 200:
                reason = await response.content.read(4096)
                raise TranscriptUnavailable(response.status, f"{url} refused: {_error_of(reason)}")
            if (response.content_length or 0) > max_bytes:
                raise TranscriptUnavailable(
                    413, f"{url} announced {response.content_length} bytes; at most {max_bytes} accepted"
                )
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > max_bytes:
                    raise TranscriptUnavailable(413, f"{url} sent over {max_bytes} bytes; refused")
            return bytes(body)
    except TimeoutError:
        raise TranscriptUnavailable(0, f"{url} did not deliver the transcript within {timeout:g} s") from None
    except aiohttp.ServerFingerprintMismatch as exc:
        raise mismatch_from(url, exc) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TranscriptUnavailable(0, f"{url} is unreachable: {exc}") from exc


def _transcript_session() -> aiohttp.ClientSession:
    """The HTTP client of transcript fetches (one per fetch): no proxies from the environment, no
    decompression (the size cap counts the bytes on the wire)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1, force_close=True),
        trust_env=False,
        auto_decompress=False,
    )


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return "no reason given"
