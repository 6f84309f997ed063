from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import torch
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from splitmesh.errors import SplitmeshError
from splitmesh.wire import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    BadMagic,
    BadShape,
    FrameError,
    FrameTooLarge,
    MalformedHeader,
    NonFiniteValues,
    SizeMismatch,
    TruncatedFrame,
    UnsupportedDType,
    decode_frame,
    encode_frame,
    frame_hash,
)
from splitmesh.wire import frames as frames_module

FLOATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Same-width integer views, to compare floats bit for bit (NaN payloads, -0.0, subnormals).
BITS = {
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.int64: torch.int64,
}


def raw_frame(header: dict[str, Any] | bytes, payload: bytes = b"", magic: bytes = b"SMF1") -> bytes:
    """Build a frame by hand, bypassing encode_frame's checks."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(header)) + header + payload


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))
    )


def finite_from_bits(bits: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret random bit patterns as `dtype`, replacing the Inf/NaN patterns with zero."""
    tensor = torch.from_numpy(bits).view(dtype)
    return torch.where(torch.isfinite(tensor), tensor, torch.zeros((), dtype=dtype))


shapes = st.lists(st.integers(0, 5), min_size=1, max_size=4)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=8)
json_scalars |= st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
metas = st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(FLOATS)),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    meta=metas,
)
def test_round_trip_is_bit_exact(name: str, shape: list[int], seed: int, meta: dict[str, Any] | None) -> None:
    dtype = FLOATS[name]
    bits_dtype = np.int32 if dtype == torch.float32 else np.int16
    info = np.iinfo(bits_dtype)
    rng = np.random.default_rng(seed)
    bits = rng.integers(info.min, info.max, size=shape, dtype=bits_dtype, endpoint=True)
    tensor = finite_from_bits(bits, dtype)

    data = encode_frame(tensor, meta)
    frame = decode_frame(data)

    assert same_bits(frame.tensor, tensor)
    assert frame.meta == (meta or {})
    assert frame.nbytes == len(data)
    assert frame.tensor.is_contiguous()


@pytest.mark.parametrize("name", sorted(FLOATS))
@pytest.mark.parametrize("shape", [(576,), (1, 1, 576), (1, 64, 576), (2, 3, 4, 5), (1, 0, 576)])
def test_round_trip_fixed_shapes(name: str, shape: tuple[int, ...]) -> None:
    tensor = torch.randn(shape).to(FLOATS[name])
    meta = {"job": 3, "step": 7, "positions": [5]}
    frame = decode_frame(encode_frame(tensor, meta), expect_shape=shape)
    assert same_bits(frame.tensor, tensor)
    assert frame.meta == meta


def test_special_finite_values_survive() -> None:
    tensor = torch.tensor([-0.0, 0.0, 1e-45, -3.4028235e38, 3.4028235e38], dtype=torch.float32)
    for dtype in FLOATS.values():
        cast = tensor.to(dtype)
        cast = torch.where(torch.isfinite(cast), cast, torch.zeros((), dtype=dtype))
        assert same_bits(decode_frame(encode_frame(cast)).tensor, cast)


def test_non_contiguous_and_grad_tensors_encode_in_c_order() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    view = base.transpose(0, 2)  # [4, 3, 2], not contiguous
    assert torch.equal(decode_frame(encode_frame(view)).tensor, view.contiguous())
    leaf = torch.ones(2, 2, requires_grad=True)
    assert torch.equal(decode_frame(encode_frame(leaf)).tensor, torch.ones(2, 2))
    bf16_view = base.to(torch.bfloat16)[:, 1:, ::2]
    assert same_bits(decode_frame(encode_frame(bf16_view)).tensor, bf16_view.contiguous())


def test_int64_only_when_allowed() -> None:
    positions = torch.tensor([[5, 6, -(2**63), 2**63 - 1]], dtype=torch.int64)
    data = encode_frame(positions, {"kind": "positions"})
    with pytest.raises(UnsupportedDType):
        decode_frame(data)
    assert same_bits(decode_frame(data, allowed_dtypes={"int64"}).tensor, positions)


def test_payload_is_little_endian_c_order() -> None:
    data = encode_frame(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    (header_len,) = struct.unpack_from("<I", data, 4)
    assert data[:4] == b"SMF1"
    assert json.loads(data[8 : 8 + header_len]) == {"dtype": "float32", "shape": [1, 2]}
    assert data[8 + header_len :] == struct.pack("<2f", 1.0, 2.0)
    bf16 = encode_frame(torch.tensor([1.0], dtype=torch.bfloat16))
    assert bf16.endswith(b"\x80\x3f")  # 0x3F80 little-endian


def test_encoding_is_deterministic_and_hash_is_keccak() -> None:
    tensor = torch.ones(1, 1, 4)
    first = encode_frame(tensor, {"job": 3, "step": 7})
    second = encode_frame(tensor.clone(), {"step": 7, "job": 3})
    assert first == second
    assert frame_hash(first) == keccak(first)
    assert len(frame_hash(first)) == 32
    assert frame_hash(bytearray(first)) == frame_hash(memoryview(first)) == frame_hash(first)
    assert frame_hash(encode_frame(tensor, {"job": 3, "step": 8})) != frame_hash(first)


def test_decoded_tensor_owns_its_memory() -> None:
    tensor = torch.randn(1, 4, 8)
    buffer = bytearray(encode_frame(tensor, {"step": 1}))
    frame = decode_frame(buffer)
    view_frame = decode_frame(memoryview(buffer))
    buffer[:] = b"\xff" * len(buffer)
    assert torch.equal(frame.tensor, tensor)
    assert torch.equal(view_frame.tensor, tensor)
    frame.tensor.add_(1)  # writable, and independent of the other decode
    assert torch.equal(view_frame.tensor, tensor)


# Encoding refuses what decoding would reject.


def test_encode_rejects_unsupported_inputs() -> None:
    with pytest.raises(UnsupportedDType):
        encode_frame(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(BadShape):
        encode_frame(torch.tensor(1.0))
    with pytest.raises(BadShape):
        encode_frame(torch.zeros(1, 1, 1, 1, 1))
    with pytest.raises(MalformedHeader):
        encode_frame(torch.zeros(2), {"bad": object()})
    with pytest.raises(MalformedHeader):
        encode_frame(torch.zeros(2), {"nan": float("nan")})
    with pytest.raises(MalformedHeader):
        encode_frame(torch.zeros(2), {"big": "x" * MAX_HEADER_BYTES})


# Decoding rejections, one exception class per problem.

GOOD = encode_frame(torch.ones(1, 2, 3), {"job": 1})
GOOD_HEADER_LEN = struct.unpack_from("<I", GOOD, 4)[0]


def test_error_classes_are_distinct_frame_errors() -> None:
    classes = [
        TruncatedFrame,
        BadMagic,
        MalformedHeader,
        UnsupportedDType,
        BadShape,
        SizeMismatch,
        FrameTooLarge,
        NonFiniteValues,
    ]
    assert len(set(classes)) == len(classes)
    for cls in classes:
        assert issubclass(cls, FrameError)
        assert issubclass(cls, SplitmeshError)
        assert issubclass(cls, ValueError)
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()
        assert not any(issubclass(cls, other) for other in classes if other is not cls)


@pytest.mark.parametrize("cut", [0, 1, 4, 7, 8, 9, 8 + GOOD_HEADER_LEN // 2, 8 + GOOD_HEADER_LEN - 1])
def test_truncated_prefix_or_header(cut: int) -> None:
    with pytest.raises(TruncatedFrame):
        decode_frame(GOOD[:cut])


@pytest.mark.parametrize("cut", [8 + GOOD_HEADER_LEN, len(GOOD) - 4, len(GOOD) - 1])
def test_truncated_payload_is_size_mismatch(cut: int) -> None:
    with pytest.raises(SizeMismatch):
        decode_frame(GOOD[:cut])


def test_payload_one_byte_short_or_long() -> None:
    with pytest.raises(SizeMismatch, match="expected 24"):
        decode_frame(GOOD[:-1])
    with pytest.raises(SizeMismatch, match="expected 24"):
        decode_frame(GOOD + b"\x00")


@pytest.mark.parametrize("magic", [b"SMF2", b"smf1", b"\x00\x00\x00\x00", b"PK\x03\x04"])
def test_bad_magic(magic: bytes) -> None:
    with pytest.raises(BadMagic):
        decode_frame(magic + GOOD[4:])


def test_pickle_and_torch_save_bytes_are_rejected() -> None:
    import io
    import pickle

    buffer = io.BytesIO()
    torch.save(torch.ones(2), buffer)
    for blob in (buffer.getvalue(), pickle.dumps(torch.ones(2))):
        with pytest.raises(FrameError):
            decode_frame(blob)


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"",
        b'{"dtype":"float32","shape":[1]',  # unterminated
        b"\xff\xfe{}",  # not UTF-8
        b"[]",
        b'"float32"',
        b"42",
        b"null",
        b'{"shape":[1]}',  # missing dtype
        b'{"dtype":"float32"}',  # missing shape
        b'{"dtype":"float32","shape":[1],"extra":1}',
        b'{"dtype":7,"shape":[1]}',
        b'{"dtype":"float32","shape":"1"}',
        b'{"dtype":"float32","shape":{"0":1}}',
        b'{"dtype":"float32","shape":[1],"meta":[1]}',
        b'{"dtype":"float32","shape":[1],"meta":null}',
        b'{"dtype":"float32","shape":[1],"meta":{"x":NaN}}',
        b'{"dtype":"float32","shape":[1],"meta":{"x":Infinity}}',
        b'{"dtype":"float32","dtype":"float16","shape":[1]}',  # duplicate key
        b"[" * 10_000 + b"]" * 10_000,  # deep nesting
    ],
)
def test_malformed_header(header: bytes) -> None:
    with pytest.raises(MalformedHeader):
        decode_frame(raw_frame(header, b"\x00" * 4))


def test_header_longer_than_limit() -> None:
    too_long = b" " * (MAX_HEADER_BYTES + 1)
    with pytest.raises(MalformedHeader, match="at most"):
        decode_frame(raw_frame(too_long))
    # Declared but absent: the length field alone is enough to refuse.
    with pytest.raises(MalformedHeader):
        decode_frame(b"SMF1" + struct.pack("<I", 2**32 - 1))


@pytest.mark.parametrize(
    "shape",
    [[], [1, 1, 1, 1, 1], [1, -1], [2.0], [1, 1.5], [True], ["3"], [None], [[1]]],
)
def test_bad_shape(shape: list[Any]) -> None:
    with pytest.raises(BadShape):
        decode_frame(raw_frame({"dtype": "float32", "shape": shape}, b"\x00" * 4))


@pytest.mark.parametrize("dtype", ["float64", "int8", "complex64", "FLOAT32", "", "torch.float32"])
def test_unknown_dtype(dtype: str) -> None:
    with pytest.raises(UnsupportedDType):
        decode_frame(raw_frame({"dtype": dtype, "shape": [1]}, b"\x00" * 8))


def test_dtype_outside_allowed_set() -> None:
    with pytest.raises(UnsupportedDType):
        decode_frame(GOOD, allowed_dtypes={"bfloat16"})


def test_too_large_declared_shape_is_refused_before_the_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("payload was read")

    monkeypatch.setattr(frames_module.np, "frombuffer", must_not_run)
    huge = raw_frame({"dtype": "float32", "shape": [2**20, 2**20, 2**20, 2**20]})  # no payload at all
    with pytest.raises(FrameTooLarge):
        decode_frame(huge, max_bytes=1024)
    # Even with the default limit, a declared 4 TiB tensor is refused rather than a size mismatch.
    with pytest.raises(FrameTooLarge):
        decode_frame(raw_frame({"dtype": "float32", "shape": [2**20, 2**20]}))


def test_too_large_actual_frame_and_exact_limit() -> None:
    assert decode_frame(GOOD, max_bytes=len(GOOD)).nbytes == len(GOOD)
    with pytest.raises(FrameTooLarge):
        decode_frame(GOOD, max_bytes=len(GOOD) - 1)
    assert DEFAULT_MAX_FRAME_BYTES == 64 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(FLOATS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 575])
def test_non_finite_values(name: str, bad: float, where: int) -> None:
    tensor = torch.zeros(1, 1, 576, dtype=FLOATS[name])
    tensor[0, 0, where] = bad
    data = encode_frame(tensor)
    with pytest.raises(NonFiniteValues):
        decode_frame(data)
    assert same_bits(decode_frame(data, check_finite=False).tensor, tensor)


def test_float16_overflowing_values_are_caught() -> None:
    # 65504 is float16's max; the bit pattern 0x7C00 is +Inf, 0x7E00 a NaN.
    for bits in (0x7C00, 0xFC00, 0x7E00, 0x7C01):
        payload = struct.pack("<2H", 0x3C00, bits)
        with pytest.raises(NonFiniteValues):
            decode_frame(raw_frame({"dtype": "float16", "shape": [2]}, payload))
    assert (
        decode_frame(raw_frame({"dtype": "float16", "shape": [1]}, struct.pack("<H", 0x7BFF))).tensor.item()
        == 65504
    )


@pytest.mark.parametrize(
    "expect",
    [(1, 2, 4), (2, 2, 3), (1, 2), (1, 2, 3, 1), (None, None, 4), (None,)],
)
def test_expect_shape_mismatch(expect: tuple[int | None, ...]) -> None:
    with pytest.raises(BadShape):
        decode_frame(GOOD, expect_shape=expect)


@pytest.mark.parametrize("expect", [(1, 2, 3), (None, 2, 3), (None, None, None)])
def test_expect_shape_wildcards(expect: tuple[int | None, ...]) -> None:
    assert decode_frame(GOOD, expect_shape=expect).tensor.shape == (1, 2, 3)
