"""--device and --dtype (splitmesh.model.device), on a machine without a GPU: resolution, the error for an
absent device, and the crossings: what goes on the wire is a CPU tensor in the wire dtype, what comes from
it is moved to the device the layers run on. Nothing here ran on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import splitmesh.model.stack as stack_module
from client_sdk import Client
from splitmesh.model.client import ClientModel
from splitmesh.model.device import natural_dtype, resolve_device, resolve_dtype, to_device, to_wire
from splitmesh.model.errors import DeviceUnavailable
from splitmesh.model.runner import ShardRunner
from splitmesh_cli.main import main
from tests.model_fixtures import save_random_model, tiny_llama_config

KEY = "0x" + "11" * 32


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("llama"))


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two cuda devices as torch would report them (nothing is allocated on them in these tests)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_is_the_default_and_runs_float32() -> None:
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert natural_dtype(torch.device("cpu")) == "float32"
    assert resolve_dtype("auto", torch.device("cpu")) == resolve_dtype(None, torch.device("cpu")) == "float32"
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"  # asked for: kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_an_absent_cuda_is_a_clear_error_not_a_cpu_fallback() -> None:
    with pytest.raises(DeviceUnavailable) as error:
        resolve_device("cuda")
    assert str(error.value) == "cuda requested but torch.cuda.is_available() is False; use --device cpu"
    assert isinstance(error.value, ValueError)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_an_absent_mps_is_a_clear_error() -> None:
    with pytest.raises(DeviceUnavailable, match=r"mps requested but torch.backends.mps.is_available\(\)"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["tpu", "cpu:1", "cuda:x", "", "mps:0"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        resolve_device(name)


def test_a_present_gpu_resolves_and_bf16_is_its_natural_dtype(fake_gpus: None) -> None:
    cuda = resolve_device("cuda")
    assert cuda == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_dtype("auto", cuda) == "bfloat16"
    assert resolve_dtype("float32", cuda) == "float32"
    with pytest.raises(DeviceUnavailable, match="cuda:2 requested but this machine has 2 cuda devices"):
        resolve_device("cuda:2")


def test_an_unsupported_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", torch.device("cpu"))


def test_to_wire_gives_a_detached_cpu_tensor_in_the_wire_dtype() -> None:
    compute = torch.randn(1, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    wire = to_wire(compute * 2, torch.float32)
    assert wire.device.type == "cpu" and wire.dtype == torch.float32 and not wire.requires_grad
    assert torch.equal(wire, (compute * 2).detach().float())  # bf16 -> fp32 is exact
    assert to_wire(compute).dtype == torch.bfloat16  # no wire dtype: its own


def test_to_device_moves_a_frame_to_the_layers_device() -> None:
    frame = torch.randn(1, 2, 8)
    moved = to_device(frame, torch.device("meta"), torch.bfloat16)  # a device other than the CPU here
    assert moved.device.type == "meta" and moved.dtype == torch.bfloat16


def test_the_stack_moves_its_inputs_to_its_device_and_the_runner_answers_on_the_cpu(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = ShardRunner.load(str(llama_dir), 1, 3, device="cpu")
    assert runner.device == runner.stack.device == torch.device("cpu")
    moved: list[tuple[torch.device, torch.dtype | None]] = []

    def spy(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        moved.append((device, dtype))
        return to_device(tensor, device, dtype)

    monkeypatch.setattr(stack_module, "to_device", spy)
    hidden = torch.randn(1, 4, 64)
    out = runner.forward("job-1", hidden, torch.arange(4))
    assert moved == [(runner.device, None), (runner.device, None)]  # the hidden states and the positions
    assert out.device.type == "cpu" and out.dtype == runner.dtype and not out.requires_grad
    grad = runner.backward(hidden, torch.arange(4), torch.ones_like(out))
    assert grad.device.type == "cpu" and grad.shape == hidden.shape


def test_the_client_tail_reads_a_wire_reply_in_its_own_dtype(llama_dir: Path) -> None:
    model = ClientModel.load(str(llama_dir), 2, "bfloat16", "cpu")
    assert model.device == torch.device("cpu")
    reply = torch.randn(1, 1, 64)  # a float32 frame from float32 nodes
    logits = model.tail(reply)
    assert logits.dtype == torch.bfloat16
    assert torch.equal(logits, model.tail(reply.to(torch.bfloat16)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_client_on_an_absent_gpu_fails_before_any_network_call(capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = "http://127.0.0.1:9"  # nothing listens: a network call would fail differently
    with pytest.raises(DeviceUnavailable, match="use --device cpu"):
        Client(unreachable, KEY, device="cuda")
    code = main(["generate", "hi", "--rpc-url", unreachable, "--key", KEY, "--device", "cuda"])
    assert code == 2
    assert "error: cuda requested but torch.cuda.is_available() is False; use --device cpu" in (
        capsys.readouterr().err
    )
