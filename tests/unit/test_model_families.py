"""Every family splitmesh splits, against its own unsplit Hugging Face model.

For each family in splitmesh.model.families a tiny random-weight model is built from its transformers
config (tests/family_configs.py) and split as client head [0, 1), nodes [1, 3) and [3, 4): the shards start
on both kinds of layer where a family alternates them. Checked per family: greedy tokens and fp32 logits
equal `model.generate`'s with a prompt longer than every sliding window, in one prefill and in chunks;
the gradient reaching the client's Z equals the unsplit model's; an honest node's transcript is judged
honest by a verifier and a node that skips its layers is fraud; the weights hash covers every tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, OlmoConfig, PreTrainedModel

from client_sdk.adapters import SOFT_PROMPT_KEY, AdapterConfig, ClientTrainer
from client_sdk.dataset import IGNORE_INDEX
from splitmesh.audit import audit_transcript
from splitmesh.model.arch import layer_types
from splitmesh.model.client import ClientModel
from splitmesh.model.errors import UnsupportedArchitecture
from splitmesh.model.families import FAMILIES
from splitmesh.model.identity import compute_identity
from splitmesh.model.local_pipeline import greedy_generate_split
from splitmesh.model.runner import ShardRunner
from splitmesh.model.source import ModelSource
from splitmesh.model.training import ShardTrainer
from tests.family_configs import FAMILY_CONFIGS, WINDOW
from tests.model_fixtures import save_random_model

LOGIT_TOLERANCE = 1e-4  # fp32, absolute
PLAN = [0, 1, 3, 4]  # client head [0, 1), nodes [1, 3) and [3, 4)
PROMPT = torch.tensor([[1, 17, 99, 3, 45, 200, 7, 8, 150, 33, 12]])  # 11 tokens > WINDOW
NEW_TOKENS = 6


@dataclass
class Split:
    name: str
    path: Path
    hf: PreTrainedModel  # the unsplit model: the yardstick
    client: ClientModel
    runners: list[ShardRunner]


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def split(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Split:
    name: str = request.param
    path = save_random_model(FAMILY_CONFIGS[name](), tmp_path_factory.mktemp(name))
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    client = ClientModel.load(str(path), PLAN[1])
    runners = [ShardRunner.load(str(path), a, b) for a, b in pairwise(PLAN[1:])]
    return Split(name, path, hf, client, runners)


def test_every_supported_family_has_a_case() -> None:
    tested = {FAMILY_CONFIGS[name]().model_type for name in FAMILY_CONFIGS}
    assert tested == set(FAMILIES)


def test_split_generation_equals_generate(split: Split) -> None:
    config = split.hf.config
    assert PROMPT.shape[1] > (getattr(config, "sliding_window", None) or 0)
    out = split.hf.generate(
        PROMPT,
        attention_mask=torch.ones_like(PROMPT),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,  # random models may hit EOS early: keep lengths comparable
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    ref_tokens = out.sequences[0, PROMPT.shape[1] :].tolist()
    for chunk in (None, 3, 5):  # one prefill; chunks shorter and longer than the window (as a node serves)
        got = greedy_generate_split(split.client, split.runners, PROMPT, NEW_TOKENS, prefill_chunk=chunk)
        assert got.tokens == ref_tokens, (split.name, chunk)
        worst = max(float((a - b[0]).abs().max()) for a, b in zip(got.logits, out.logits, strict=True))
        assert worst < LOGIT_TOLERANCE, (split.name, chunk, worst)


def _unsplit_gradient(split: Split, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Loss and d(loss)/d(output of layer PLAN[1] - 1) of the unsplit model, by a hook on that layer."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["z"] = output

    base = getattr(split.hf, split.client.spec.arch.base)
    layers = getattr(base, split.client.spec.arch.layers)
    handle = layers[PLAN[1] - 1].register_forward_hook(keep)
    try:
        logits = split.hf(PROMPT, position_ids=torch.arange(PROMPT.shape[1]).unsqueeze(0)).logits
    finally:
        handle.remove()
    loss = torch.nn.functional.cross_entropy(logits[0], targets[0])
    loss.backward()
    grad = captured["z"].grad
    assert grad is not None
    return float(loss.detach()), grad


def test_split_gradient_equals_unsplit_gradient(split: Split) -> None:
    targets = torch.roll(PROMPT, -1, dims=1)
    ref_loss, ref_grad = _unsplit_gradient(split, targets)
    positions = torch.arange(PROMPT.shape[1])
    with torch.no_grad():
        h = split.client.head(PROMPT, positions.unsqueeze(0))
        inputs = []
        for runner in split.runners:
            inputs.append(h)
            h = runner.stack(h, positions.unsqueeze(0), None)
    last = h.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(split.client.tail(last)[0], targets[0])
    (grad,) = torch.autograd.grad(loss, last)
    for runner, x in zip(reversed(split.runners), reversed(inputs), strict=True):
        grad = runner.backward(x, positions, grad)  # what each node returns upstream
    assert abs(float(loss.detach()) - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    scale = float(ref_grad.abs().max())
    assert scale > 0
    assert float((grad - ref_grad).abs().max()) < 1e-4 * scale, split.name


def _peft_reference(
    split: Split, trainer: ClientTrainer, ids: torch.Tensor, labels: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and adapter gradients of plain autograd through the unsplit model with the same adapter."""
    model = AutoModelForCausalLM.from_pretrained(str(split.path), dtype=torch.float32).eval()
    model.requires_grad_(False)
    lora = LoraConfig(
        r=trainer.config.lora_rank,
        lora_alpha=trainer.config.lora_alpha,
        target_modules=list(split.client.spec.arch.traits.lora_targets),
        fan_in_fan_out=split.client.spec.arch.family == "gpt2",
        layers_to_transform=list(range(PLAN[1])),
    )
    model = get_peft_model(model, lora)
    state = {k: v for k, v in trainer.adapter_state_dict().items() if k != SOFT_PROMPT_KEY}
    assert not set_peft_model_state_dict(model, state).unexpected_keys  # type: ignore[attr-defined]
    assert trainer.soft_prompt is not None
    soft = trainer.soft_prompt.detach().clone().requires_grad_(True)
    embeds = model.get_base_model().get_input_embeddings()(ids)  # the model applies its own multipliers
    embeds = torch.cat([soft.expand(ids.shape[0], -1, -1), embeds], dim=1)
    positions = torch.arange(embeds.shape[1]).expand(ids.shape[0], -1)
    logits = model(inputs_embeds=embeds, position_ids=positions).logits
    targets = trainer.full_labels(labels)[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    loss.backward()
    trained = {n.replace(".default.", "."): p for n, p in model.named_parameters() if p.requires_grad}
    grads = {name: p.grad for name, p in trained.items() if p.grad is not None}
    assert soft.grad is not None and len(grads) == len(trained) > 0
    return float(loss.detach()), {**grads, SOFT_PROMPT_KEY: soft.grad}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT calling transformers
def test_split_lora_training_equals_unsplit_autograd(split: Split) -> None:
    """The client trains LoRA on its layer (the family's default targets) and a soft prompt; the nodes
    answer backward requests (ShardTrainer): the adapter gradients equal PEFT's on the unsplit model."""
    trainer = ClientTrainer(
        ClientModel.load(str(split.path), PLAN[1]), AdapterConfig(4, 8, soft_prompt_tokens=2), seed=0
    )
    with torch.no_grad():  # LoRA B starts at zero, which would hide every gradient of A
        for name, param in trainer.trainable_parameters().items():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    ids = torch.cat([PROMPT, torch.roll(PROMPT, 3, dims=1)])  # [2, 11]
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    shards = [ShardTrainer.from_runner(runner) for runner in split.runners]
    head = trainer.head_forward(ids)
    hidden = head.z.detach()
    for shard in shards:
        hidden = shard.forward("job", 0, hidden, head.position_ids)
    loss, grad = trainer.loss_from_hidden(hidden, labels)
    for shard in reversed(shards):
        grad = shard.backward("job", 0, grad)
    trainer.backward_head(head, grad)
    grads = {trainer.adapter_key(n): p.grad for n, p in trainer.trainable_parameters().items()}
    ref_loss, ref_grads = _peft_reference(split, trainer, ids, labels)
    assert abs(float(loss) - ref_loss) < 1e-5 * max(1.0, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for key, ref in ref_grads.items():
        got = grads[key]
        assert got is not None and float(ref.abs().max()) > 0, key
        assert float((got - ref).abs().max()) < 1e-4 * float(ref.abs().max()), (split.name, key)


def test_honest_audit_passes_and_skipped_layers_are_fraud(split: Split) -> None:
    positions = torch.arange(PROMPT.shape[1])
    with torch.inference_mode():
        z = split.client.head(PROMPT, positions.unsqueeze(0))
    # Prefill in two chunks, then single-token steps: the sliding caches are past their window.
    cuts = [0, 4, 7, *range(8, PROMPT.shape[1] + 1)]
    steps = [(a, z[:, a:b]) for a, b in pairwise(cuts)]
    node = split.runners[0]
    with torch.inference_mode():
        recorded = [node.forward("job", x, torch.arange(a, a + x.shape[1])) for a, x in steps]
    node.close("job")
    verifier = ShardRunner.load(str(split.path), node.start, node.end)
    honest = audit_transcript(verifier, steps, recorded, "float32")
    assert not honest.is_fraud, (split.name, honest.reason)
    skipped = audit_transcript(verifier, steps, [x for _, x in steps], "float32")
    assert skipped.is_fraud, split.name


def test_weights_hash_covers_every_tensor(split: Split) -> None:
    identity = compute_identity(ModelSource.resolve(str(split.path)))
    layers = {f"layer.{i}" for i in range(split.client.spec.num_layers)}
    assert set(identity.components) - {"lm_head"} == layers | {"embed", "norm"}
    assert identity.layer_hashes(1, 3).keys() == {"layer.1", "layer.2"}


def test_a_family_without_a_test_is_refused(tmp_path: Path) -> None:
    config = OlmoConfig(  # OLMo 1: the Llama layout, but nothing checks its split
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    save_random_model(config, tmp_path)
    with pytest.raises(UnsupportedArchitecture, match="'olmo' is not supported: no test"):
        ShardRunner.load(str(tmp_path), 0, 1)


def test_masks_that_disagree_with_the_kv_cache_are_refused() -> None:
    # Mistral masks every layer by its sliding window, but a cache built from these layer types would
    # keep full caches on half the layers. (transformers itself loads such a checkpoint as "ministral",
    # refused as untested; this checks the guard directly.)
    config = FAMILY_CONFIGS["mistral-sliding"]()
    assert layer_types(config, FAMILIES["mistral"]) == ("sliding_attention",) * 4
    config.layer_types = ["sliding_attention", "full_attention"] * 2
    with pytest.raises(UnsupportedArchitecture, match="KV cache's sliding layers differ"):
        layer_types(config, FAMILIES["mistral"])


def test_an_untested_variant_of_a_family_is_refused(tmp_path: Path) -> None:
    config = FAMILY_CONFIGS["gemma3_text"]()
    config.use_bidirectional_attention = True
    save_random_model(config, tmp_path)
    with pytest.raises(UnsupportedArchitecture, match="use_bidirectional_attention"):
        ClientModel.load(str(tmp_path), 1)


def test_sliding_window_is_shorter_than_the_prompt() -> None:
    windows = {name: getattr(make(), "sliding_window", None) for name, make in FAMILY_CONFIGS.items()}
    assert {name for name, w in windows.items() if w} >= {"mistral-sliding", "gemma2", "gemma3_text", "phi3"}
    assert all(w is None or w == WINDOW < PROMPT.shape[1] for w in windows.values())


def test_scaled_embeddings_match_the_unsplit_model_in_bfloat16(tmp_path: Path) -> None:
    # sqrt(96) rounds differently in bfloat16 and float32: the scale must be in the dtype HF gives it.
    config = FAMILY_CONFIGS["gemma"]()
    config.hidden_size, config.num_hidden_layers = 96, 2
    save_random_model(config, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16).eval()
    client = ClientModel.load(str(tmp_path), 1, dtype="bfloat16")
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        expected = hf.get_input_embeddings()(ids)
    assert torch.equal(client.token_embeddings(ids), expected)
    assert not torch.equal(expected.float(), hf.get_input_embeddings().weight[ids].float() * 96**0.5)
