"""Split models must compute what the unsplit Hugging Face model computes."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from splitmesh.model.client import ClientModel
from splitmesh.model.local_pipeline import greedy_generate_split
from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from tests.model_fixtures import save_random_model, tiny_gpt2_config, tiny_llama_config

LOGIT_TOLERANCE = 1e-4  # fp32, absolute


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tiny_gpt2_config(), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return ModelSource.resolve(None).path


def reference_generate(
    model_dir: Path, input_ids: torch.Tensor, max_new_tokens: int
) -> tuple[list[int], list[torch.Tensor]]:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,  # random models may hit EOS early: keep lengths comparable
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    return out.sequences[0, input_ids.shape[1] :].tolist(), [logit[0] for logit in out.logits]


def build_split(model_dir: Path, plan: list[int]) -> tuple[ClientModel, list[ShardRunner]]:
    client = ClientModel.load(str(model_dir), plan[1])
    runners = [ShardRunner.load(str(model_dir), a, b) for a, b in pairwise(plan[1:])]
    return client, runners


def assert_matches(
    model_dir: Path, plan: list[int], input_ids: torch.Tensor, steps: int, **kwargs: object
) -> None:
    ref_tokens, ref_logits = reference_generate(model_dir, input_ids, steps)
    client, runners = build_split(model_dir, plan)
    split = greedy_generate_split(client, runners, input_ids, steps, **kwargs)  # type: ignore[arg-type]
    assert split.tokens == ref_tokens
    worst = max(float((a - b).abs().max()) for a, b in zip(split.logits, ref_logits, strict=True))
    assert worst < LOGIT_TOLERANCE, worst


PROMPT = torch.tensor([[1, 17, 99, 3, 45, 200, 7, 8, 150, 33, 12]])


@pytest.mark.parametrize("plan", [[0, 2, 4, 6], [0, 1, 3, 5, 6]])
def test_random_llama_split_equals_generate(llama_dir: Path, plan: list[int]) -> None:
    assert_matches(llama_dir, plan, PROMPT, 12)


@pytest.mark.parametrize("plan", [[0, 2, 4, 6], [0, 1, 2, 4, 6]])
def test_random_gpt2_split_equals_generate(gpt2_dir: Path, plan: list[int]) -> None:
    assert_matches(gpt2_dir, plan, PROMPT, 12)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_chunked_prefill_equals_generate(llama_dir: Path, gpt2_dir: Path, chunk: int) -> None:
    assert_matches(llama_dir, [0, 2, 4, 6], PROMPT, 6, prefill_chunk=chunk)
    assert_matches(gpt2_dir, [0, 2, 4, 6], PROMPT, 6, prefill_chunk=chunk)


def test_smollm2_split_equals_generate(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow."}],
        add_generation_prompt=True,
        return_tensors="pt",
    )["input_ids"]
    ref_tokens, ref_logits = reference_generate(smollm2_dir, ids, 16)
    client, runners = build_split(smollm2_dir, [0, 4, 13, 22, 30])
    split = greedy_generate_split(client, runners, ids, 16)
    assert split.tokens == ref_tokens
    worst = max(float((a - b).abs().max()) for a, b in zip(split.logits, ref_logits, strict=True))
    assert worst < LOGIT_TOLERANCE, worst
    assert len(tokenizer.decode(split.tokens).strip()) > 0


def test_two_interleaved_sessions_on_one_runner(llama_dir: Path) -> None:
    client, runners = build_split(llama_dir, [0, 2, 4, 6])
    prompts = [PROMPT, torch.tensor([[1, 5, 6, 7]])]
    expected = [reference_generate(llama_dir, p, 6)[0] for p in prompts]
    caches = [client.new_cache(), client.new_cache()]
    pending = [p for p in prompts]
    positions = [0, 0]
    tokens: list[list[int]] = [[], []]
    with torch.inference_mode():
        for _ in range(6):
            for s in (0, 1):  # alternate sessions step by step on the same runners
                q = pending[s].shape[1]
                pos = torch.arange(positions[s], positions[s] + q)
                hidden = client.head(pending[s], pos.unsqueeze(0), caches[s])
                for runner in runners:
                    hidden = runner.forward(f"session-{s}", hidden, pos)
                token = int(client.tail(hidden)[0, -1].argmax())
                tokens[s].append(token)
                positions[s] += q
                pending[s] = torch.tensor([[token]])
    assert tokens == expected
    assert sorted(runners[0].sessions()) == ["session-0", "session-1"]


def test_runner_holds_only_its_shard(llama_dir: Path, smollm2_dir: Path) -> None:
    from safetensors import safe_open

    for model_dir, plan, prefix in (
        (llama_dir, [0, 2, 4, 6], "model.layers."),
        (smollm2_dir, [4, 13, 22, 30], "model.layers."),
    ):
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            sizes = {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118
        total = sum(torch.Size(s).numel() for s in sizes.values())
        for start, end in pairwise(plan):
            runner = ShardRunner.load(str(model_dir), start, end)
            own = sum(
                torch.Size(shape).numel()
                for name, shape in sizes.items()
                if name.startswith(prefix) and start <= int(name.split(".")[2]) < end
            )
            assert runner.num_parameters() == own
            assert runner.num_parameters() < total / 2
            # Nothing else is reachable from the runner: no embeddings, norm or head.
            names = [n for n, _ in runner.stack.named_parameters()]
            assert all(n.startswith("layers.") for n in names)


def test_backward_through_shards_equals_autograd(llama_dir: Path, gpt2_dir: Path) -> None:
    for model_dir, plan in ((llama_dir, [0, 2, 4, 6]), (gpt2_dir, [0, 1, 3, 6])):
        client, runners = build_split(model_dir, plan)
        positions = torch.arange(PROMPT.shape[1])
        targets = torch.roll(PROMPT, -1, dims=1)
        with torch.no_grad():
            z = client.head(PROMPT, positions.unsqueeze(0))
        # Reference: autograd through all node layers + tail in one graph.
        z_ref = z.clone().requires_grad_(True)
        h = z_ref
        for runner in runners:
            h = runner.stack(h, positions.unsqueeze(0), None)
        loss = torch.nn.functional.cross_entropy(client.tail(h)[0], targets[0])
        (grad_ref,) = torch.autograd.grad(loss, z_ref)
        # Split: forward shard by shard, loss on the client, gradients handed back shard by shard.
        inputs = []
        h = z
        with torch.no_grad():
            for runner in runners:
                inputs.append(h)
                h = runner.stack(h, positions.unsqueeze(0), None)
        last = h.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(client.tail(last)[0], targets[0])
        (grad,) = torch.autograd.grad(loss, last)
        for runner, x in zip(reversed(runners), reversed(inputs), strict=True):
            grad = runner.backward(x, positions, grad)
        assert torch.allclose(grad, grad_ref, atol=1e-5, rtol=1e-4), float((grad - grad_ref).abs().max())
        assert float(grad.abs().max()) > 0


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig

    from splitmesh.model.errors import UnsupportedArchitecture

    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        is_decoder=True,
    )
    save_random_model(config, tmp_path)
    with pytest.raises(UnsupportedArchitecture, match="'bert' is not supported"):
        ShardRunner.load(str(tmp_path), 0, 1)


def test_sessions_are_validated_bounded_and_expire(llama_dir: Path) -> None:
    from splitmesh.model.errors import BadHiddenStates, BadPositions, CacheFull, InvalidShard
    from splitmesh.model.runner import RunnerLimits

    runner = ShardRunner.load(str(llama_dir), 2, 4, limits=RunnerLimits(max_sessions=2, session_ttl=10.0))
    hidden = torch.randn(1, 3, 64)
    runner.forward("a", hidden, torch.arange(3))
    assert runner.cache_bytes == 3 * runner.bytes_per_token
    with pytest.raises(BadPositions, match=r"3\.\.3"):
        runner.forward("a", hidden[:, :1], torch.tensor([5]))
    with pytest.raises(BadPositions):
        runner.forward("new", hidden, torch.arange(1, 4))
    with pytest.raises(BadHiddenStates, match=r"\[1, tokens, 64\]"):
        runner.forward("a", torch.randn(1, 1, 32), torch.tensor([3]))
    with pytest.raises(BadHiddenStates, match="bfloat16"):
        runner.forward("a", hidden[:, :1].bfloat16(), torch.tensor([3]))
    runner.forward("b", hidden, torch.arange(3))
    with pytest.raises(CacheFull, match="2 sessions"):
        runner.forward("c", hidden, torch.arange(3))
    assert runner.close("b") and not runner.close("b")
    assert runner.cache_bytes == 3 * runner.bytes_per_token
    import time

    assert runner.expire(time.monotonic() + 11) == ["a"]
    assert runner.sessions() == [] and runner.cache_bytes == 0
    tight = ShardRunner.load(
        str(llama_dir), 2, 4, limits=RunnerLimits(max_cache_bytes=4 * runner.bytes_per_token)
    )
    tight.forward("a", hidden, torch.arange(3))
    with pytest.raises(CacheFull, match="budget"):
        tight.forward("a", torch.randn(1, 2, 64), torch.arange(3, 5))
    tight.forward("a", hidden[:, :1], torch.tensor([3]))  # exactly at the budget still fits
    with pytest.raises(InvalidShard):
        ShardRunner.load(str(llama_dir), 4, 7)


def test_bfloat16_shards_run_close_to_fp32(llama_dir: Path) -> None:
    fp32 = ShardRunner.load(str(llama_dir), 0, 6)
    bf16 = ShardRunner.load(str(llama_dir), 0, 6, dtype="bfloat16")
    hidden = torch.randn(1, 5, 64)
    a = fp32.forward("s", hidden, torch.arange(5))
    b = bf16.forward("s", hidden.bfloat16(), torch.arange(5))
    assert b.dtype == torch.bfloat16
    rel = float((a - b.float()).norm() / a.norm())
    assert 0 < rel < 0.05, rel


def test_weights_hash_identifies_tensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from splitmesh.model.identity import compute_identity, weights_identity

    a = save_random_model(tiny_llama_config(), tmp_path / "a", seed=1)
    b = save_random_model(tiny_llama_config(), tmp_path / "b", seed=1)
    c = save_random_model(tiny_llama_config(), tmp_path / "c", seed=2)
    ia, ib, ic = (weights_identity(ModelSource.resolve(str(p))) for p in (a, b, c))
    assert ia.model_hash == ib.model_hash != ic.model_hash
    assert set(ia.layer_hashes(0, 6)) == {f"layer.{i}" for i in range(6)}
    # Change one weight of layer 3: only that component and the model hash move.
    state = load_file(str(b / "model.safetensors"))
    state["model.layers.3.mlp.up_proj.weight"][0, 0] += 1.0
    save_file(state, str(b / "model.safetensors"), metadata={"format": "pt"})
    changed = weights_identity(ModelSource.resolve(str(b)))  # cached manifest is invalidated
    assert changed == compute_identity(ModelSource.resolve(str(b)))
    assert changed.model_hash != ia.model_hash
    diff = {k for k in ia.components if ia.components[k] != changed.components[k]}
    assert diff == {"layer.3"}
