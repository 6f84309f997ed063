"""Where a party's layers run (`--device`) and in which dtype, and the crossing to and from the wire.

cpu is the default everywhere. cuda (or cuda:N) and mps are used only when asked for and present: a
request for one that is absent is an error that says what to do, never a silent fall-back to the CPU.
On a GPU bfloat16 is the natural dtype (`auto`); on the CPU float32.

Frames are CPU tensors: what a party sends is moved to the CPU in the wire dtype before it is hashed or
serialized (`to_wire`), and what it receives is moved to its device (`to_device`) before its layers see it.
The wire dtype of a route is its nodes' dtype (frames of another dtype are refused with `bad_dtype`).
"""

from __future__ import annotations

import torch

from splitmesh.model.arch import parse_dtype
from splitmesh.model.errors import DeviceUnavailable

DEVICES = ("cpu", "cuda", "mps")  # device kinds accepted by --device (cuda may carry an index: cuda:1)
AUTO = "auto"  # --dtype auto: the natural dtype of the device


def _available(kind: str) -> bool:
    if kind == "cuda":
        return bool(torch.cuda.is_available())
    if kind == "mps":
        return bool(torch.backends.mps.is_available())
    return kind == "cpu"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device for a --device value; DeviceUnavailable when it is absent on this machine."""
    text = "cpu" if name is None else str(name).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceUnavailable(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    if not _available(kind):
        attribute = "torch.cuda.is_available()" if kind == "cuda" else "torch.backends.mps.is_available()"
        raise DeviceUnavailable(f"{kind} requested but {attribute} is False; use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"{text} requested but this machine has {torch.cuda.device_count()} cuda devices; "
            "use --device cuda:0 or --device cpu"
        )
    return torch.device(text)


def natural_dtype(device: torch.device) -> str:
    """bfloat16 on a GPU (half the memory and bandwidth, native on recent GPUs), float32 on the CPU
    (bf16 matmuls are slow on most CPUs)."""
    return "float32" if device.type == "cpu" else "bfloat16"


def resolve_dtype(dtype: str | None, device: torch.device) -> str:
    """A --dtype value for a device: `auto` (or None) is the device's natural dtype."""
    if dtype is None or dtype == AUTO:
        return natural_dtype(device)
    parse_dtype(dtype)  # raises on an unsupported name
    return dtype


def to_wire(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor about to be hashed or serialized: detached, on the CPU, in the wire dtype (default: its
    own)."""
    return tensor.detach().to(device="cpu", dtype=dtype or tensor.dtype)


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor from the wire, on the device (and in `dtype`) the layers that read it run in."""
    return tensor.to(device=device, dtype=dtype or tensor.dtype)
