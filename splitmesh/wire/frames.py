"""Tensor frames: how nodes send hidden states to each other without pickle.

One frame is ``b"SMF1" | uint32 LE header length | compact JSON header | raw little-endian payload``.
The header is ``{"dtype": str, "shape": [int, ...], "meta": {...}}`` ("meta" optional) and the payload
holds the tensor's elements in C order. Peers are untrusted, so `decode_frame` checks every field,
bounds sizes before touching the payload and rejects NaN/Inf; each failure has its own exception class.

Payloads go through numpy with explicit little-endian dtypes, which keeps the wire format the same on
big-endian hosts and makes the finiteness check several times cheaper than torch's for small tensors.
bfloat16 travels as its raw 16-bit patterns (numpy has no bfloat16), so it round-trips bit-exactly.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import torch
from eth_utils import keccak

from splitmesh.errors import SplitmeshError

MAGIC = b"SMF1"
PREFIX = struct.Struct("<4sI")  # magic, header length in bytes
# Bytes of one whole frame (prefix + header + payload): what a node accepts by default, and the largest
# reply the relay and the client read from a route.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # bytes of the JSON header
MIN_RANK, MAX_RANK = 1, 4


@dataclass(frozen=True, slots=True)
class _WireDType:
    torch_dtype: torch.dtype
    wire: np.dtype[Any]  # little-endian numpy carrier of the same width
    native: np.dtype[Any]  # the same carrier in host byte order

    @property
    def itemsize(self) -> int:
        return self.wire.itemsize


def _wire(torch_dtype: torch.dtype, carrier: str) -> _WireDType:
    return _WireDType(torch_dtype, np.dtype("<" + carrier), np.dtype("=" + carrier))


# bfloat16 is carried as int16 bit patterns; the others map to the numpy type of the same name.
_DTYPES: dict[str, _WireDType] = {
    "float32": _wire(torch.float32, "f4"),
    "bfloat16": _wire(torch.bfloat16, "i2"),
    "float16": _wire(torch.float16, "f2"),
    "int64": _wire(torch.int64, "i8"),
}
_NAME_OF = {spec.torch_dtype: name for name, spec in _DTYPES.items()}
SUPPORTED_DTYPES = frozenset(_DTYPES)
FLOAT_DTYPES = frozenset({"float32", "bfloat16", "float16"})  # the default for hidden states
_REQUIRED_FIELDS = frozenset({"dtype", "shape"})
_ALLOWED_FIELDS = frozenset({"dtype", "shape", "meta"})
_BF16_EXPONENT = 0x7F80  # all exponent bits set means Inf or NaN


class FrameError(SplitmeshError, ValueError):
    """A tensor frame could not be encoded or was rejected while decoding."""


class TruncatedFrame(FrameError):
    """The frame ends before its fixed prefix or its declared header is complete."""


class BadMagic(FrameError):
    """The frame does not start with the SMF1 magic bytes."""


class MalformedHeader(FrameError):
    """The header is too long, not a JSON object, or has missing, mistyped or unknown fields."""


class UnsupportedDType(FrameError):
    """The declared dtype is unknown or not allowed here."""


class BadShape(FrameError):
    """The shape has the wrong rank, a bad dimension, or differs from the expected shape."""


class SizeMismatch(FrameError):
    """The payload length differs from prod(shape) * itemsize."""


class FrameTooLarge(FrameError):
    """The frame, or the tensor its header declares, exceeds the size limit."""


class NonFiniteValues(FrameError):
    """The tensor holds NaN or Inf."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame. `tensor` owns its memory; `nbytes` is the length of the whole frame."""

    tensor: torch.Tensor
    meta: dict[str, Any]  # the header's "meta" object, {} when absent
    nbytes: int  # length of the whole frame in bytes


def encode_frame(tensor: torch.Tensor, meta: dict[str, Any] | None = None) -> bytes:
    """Serialize `tensor` (rank 1..4, any supported dtype, any strides or device) and `meta`.

    `meta` must be JSON-native (string keys, lists rather than tuples) to come back unchanged. Keys are
    sorted, so equal inputs give identical bytes and therefore identical `frame_hash` values.
    """
    name = _NAME_OF.get(tensor.dtype)
    if name is None:
        raise UnsupportedDType(
            f"cannot encode a {tensor.dtype} tensor; expected one of {sorted(SUPPORTED_DTYPES)}"
        )
    spec = _DTYPES[name]
    shape = list(tensor.shape)
    if not MIN_RANK <= len(shape) <= MAX_RANK:
        raise BadShape(f"cannot encode a rank-{len(shape)} tensor; expected rank {MIN_RANK}..{MAX_RANK}")
    header_obj: dict[str, Any] = {"dtype": name, "shape": shape}
    if meta is not None:
        if not isinstance(meta, dict):
            raise MalformedHeader(f"meta is a {type(meta).__name__}; expected a dict or None")
        header_obj["meta"] = meta
    try:
        header = json.dumps(header_obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MalformedHeader(
            f"meta is not JSON-serializable ({exc}); pass only str keys and JSON values"
        ) from exc
    if len(header) > MAX_HEADER_BYTES:
        raise MalformedHeader(
            f"header is {len(header)} bytes; expected at most {MAX_HEADER_BYTES}, shrink meta"
        )
    carrier = tensor.detach().cpu()
    if name == "bfloat16":
        carrier = carrier.view(torch.int16)
    # tobytes() writes C order whatever the strides; astype is a no-op on little-endian hosts.
    payload = carrier.numpy().astype(spec.wire, copy=False).tobytes()
    return b"".join((PREFIX.pack(MAGIC, len(header)), header, payload))


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    allowed_dtypes: Collection[str] = FLOAT_DTYPES,
    expect_shape: tuple[int | None, ...] | None = None,
    check_finite: bool = True,
) -> Frame:
    """Validate and decode one frame received from a peer.

    The returned tensor is a private copy: the caller may reuse or overwrite `data` afterwards.
    `expect_shape` entries of None match any size. Raises a `FrameError` subclass naming the problem.
    """
    total = len(data)
    if total < PREFIX.size:
        raise TruncatedFrame(f"frame is {total} bytes; expected at least the {PREFIX.size}-byte prefix")
    magic, header_len = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise BadMagic(f"frame starts with {bytes(magic)!r}; expected {MAGIC!r}")
    if total > max_bytes:
        raise FrameTooLarge(f"frame is {total} bytes; expected at most {max_bytes}")
    if header_len > MAX_HEADER_BYTES:
        raise MalformedHeader(f"header declares {header_len} bytes; expected at most {MAX_HEADER_BYTES}")
    payload_start = PREFIX.size + header_len
    if total < payload_start:
        raise TruncatedFrame(
            f"frame is {total} bytes but its header declares {header_len} bytes after the "
            f"{PREFIX.size}-byte prefix; expected at least {payload_start}"
        )
    name, shape, meta = _parse_header(bytes(data[PREFIX.size : payload_start]))

    spec = _DTYPES.get(name)
    if spec is None or name not in allowed_dtypes:
        raise UnsupportedDType(f"dtype {name!r} is not accepted; expected one of {sorted(allowed_dtypes)}")
    if expect_shape is not None and (
        len(shape) != len(expect_shape)
        or any(want is not None and got != want for got, want in zip(shape, expect_shape, strict=True))
    ):
        raise BadShape(f"shape {shape} does not match the expected {list(expect_shape)} (None = any size)")
    count = prod(shape)
    payload_len = total - payload_start
    if payload_start + count * spec.itemsize > max_bytes:
        raise FrameTooLarge(
            f"header declares a {name} tensor of shape {shape} ({count * spec.itemsize} payload bytes); "
            f"expected the whole frame to fit in {max_bytes} bytes"
        )
    if payload_len != count * spec.itemsize:
        raise SizeMismatch(
            f"payload is {payload_len} bytes; expected {count * spec.itemsize} for {name} {shape} "
            "(frame truncated or padded)"
        )

    # astype copies, so the tensor owns its memory and is native-endian on any host.
    array = np.frombuffer(data, dtype=spec.wire, count=count, offset=payload_start).astype(spec.native)
    if check_finite and name in FLOAT_DTYPES:
        if name == "bfloat16":
            bad = bool(((array & _BF16_EXPONENT) == _BF16_EXPONENT).any())
        else:
            bad = not bool(np.isfinite(array).all())
        if bad:
            raise NonFiniteValues(
                f"{name} tensor of shape {shape} contains NaN or Inf; expected finite values"
            )
    tensor = torch.from_numpy(array)
    if name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return Frame(tensor=tensor.view(shape), meta=meta, nbytes=total)


def frame_hash(data: bytes | bytearray | memoryview) -> bytes:
    """keccak256 of the whole frame, the value nodes commit to on chain."""
    return keccak(bytes(data))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two parsers read different values from the same committed bytes.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


_HEADER_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def _parse_header(raw: bytes) -> tuple[str, list[int], dict[str, Any]]:
    try:
        header = _HEADER_DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedHeader(
            f"header is not valid UTF-8 JSON ({exc}); expected a compact JSON object"
        ) from exc
    if not isinstance(header, dict):
        raise MalformedHeader(f"header is a JSON {type(header).__name__}; expected a JSON object")
    missing = _REQUIRED_FIELDS - header.keys()
    if missing:
        raise MalformedHeader(f"header lacks {sorted(missing)}; expected fields {sorted(_ALLOWED_FIELDS)}")
    unknown = header.keys() - _ALLOWED_FIELDS
    if unknown:
        raise MalformedHeader(
            f"header has unknown fields {sorted(unknown)}; expected only {sorted(_ALLOWED_FIELDS)}"
        )
    name, shape, meta = header["dtype"], header["shape"], header.get("meta", {})
    if not isinstance(name, str):
        raise MalformedHeader(f"dtype is a JSON {type(name).__name__}; expected a string")
    if not isinstance(meta, dict):
        raise MalformedHeader(f"meta is a JSON {type(meta).__name__}; expected an object")
    if not isinstance(shape, list):
        raise MalformedHeader(f"shape is a JSON {type(shape).__name__}; expected a list of ints")
    if not MIN_RANK <= len(shape) <= MAX_RANK:
        raise BadShape(f"shape {shape} has rank {len(shape)}; expected rank {MIN_RANK}..{MAX_RANK}")
    # bool is an int subclass in Python; `type(...) is int` keeps JSON true/false out.
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise BadShape(f"shape {shape} has a negative or non-integer dimension; expected non-negative ints")
    return name, shape, meta
