"""Label leakage of split fine-tuning's backward pass (client_sdk.leakage.gradient) on a tiny random-weight
Llama (bytes as tokens): the closed-form head Jacobian, the modelled loss, each node's attack, the defence."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from client_sdk.adapters import AdapterConfig, ClientTrainer
from client_sdk.dataset import IGNORE_INDEX
from client_sdk.leakage.corpus import Corpus
from client_sdk.leakage.features import SplitFeatures, chunk_tokens, load_tokenizer
from client_sdk.leakage.gradient import (
    GradientConfig,
    GradientDefence,
    HeadJacobian,
    LabelDecoder,
    StepObservations,
    UnsupportedNorm,
    UpstreamAttacker,
    labelled_positions,
    last_node_attack,
    loss_gradient,
    measure,
    node_stacks,
    observe_step,
)
from splitmesh.model.client import ClientModel
from splitmesh.model.loader import ModelSpec
from tests.model_fixtures import save_random_model, tiny_gpt2_config, tiny_llama_config

SPLIT = 1
ENDS = (3, 5, 6)  # nodes [1, 3), [3, 5), [5, 6) of the 6 layers
SIGMAS = (0.0, 0.3, 3.0)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> SplitFeatures:
    path = save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("tiny-llama"))
    spec = ModelSpec.open(str(path))
    tokenizer = load_tokenizer(spec)
    corpus = Corpus.load()
    train = chunk_tokens(tokenizer, corpus.train, 32, 1240, 1)
    evaluation = chunk_tokens(tokenizer, corpus.eval, 32, 248, 1)  # 8 rows, 248 labels
    return SplitFeatures.compute(spec, SPLIT, tokenizer, train, evaluation)


def config(**overrides: object) -> GradientConfig:
    values: dict[str, object] = dict(node_ends=ENDS, epsilons=(math.inf,), sigmas=SIGMAS, clip_rows=8)
    values.update(overrides)
    return GradientConfig(**values)  # type: ignore[arg-type]


def observe(features: SplitFeatures, cfg: GradientConfig, clip: float = 0.05) -> StepObservations:
    return observe_step(features, node_stacks(features.model, cfg.node_ends), cfg, cfg.epsilons[0], clip)


def labels_of(ids: torch.Tensor, prompt_tokens: int) -> torch.Tensor:
    """The completion tokens of every row, flattened: what the attacks should name, in their order."""
    return ids[:, prompt_tokens:].reshape(-1)


def recovery(guess: torch.Tensor, truth: torch.Tensor) -> float:
    return float((guess == truth).double().mean())


def last_node_rates(
    features: SplitFeatures, step: StepObservations, cfg: GradientConfig, clip: float
) -> list[float]:
    mask = labelled_positions(features.eval_ids.shape[1], cfg.prompt_tokens)
    h_last = step.outputs[-1][:, mask].reshape(-1, step.outputs[-1].shape[-1])
    decoder = LabelDecoder(HeadJacobian.of(features.model.client), h_last)
    truth = labels_of(features.eval_ids, cfg.prompt_tokens)
    rates = []
    for sigma, seen in zip(cfg.sigmas, step.received, strict=True):
        observed = seen[-1][:, mask].reshape(-1, h_last.shape[-1])
        defence = GradientDefence(sigma, clip, cfg.delta)
        rates.append(recovery(last_node_attack(decoder, observed, int(mask.sum()), defence), truth))
    return rates


def upstream_rates(
    features: SplitFeatures, step: StepObservations, cfg: GradientConfig, node: int
) -> list[float]:
    mask = labelled_positions(features.eval_ids.shape[1], cfg.prompt_tokens)
    head = HeadJacobian.of(features.model.client)
    downstream = node_stacks(features.model, cfg.node_ends)[node + 1 :]
    attacker = UpstreamAttacker(downstream, head, step.outputs[node], mask)
    truth = labels_of(features.eval_ids, cfg.prompt_tokens)
    return [recovery(attacker.attack(seen[node], cfg.refine_steps), truth) for seen in step.received]


def test_head_jacobian_matches_autograd(features: SplitFeatures) -> None:
    client = ClientModel(features.model.client.spec, SPLIT)
    with torch.no_grad():  # a non-trivial norm weight (a fresh model's is all ones)
        client.norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))  # type: ignore[operator]
    head = HeadJacobian.of(client)
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(5, 64, generator=gen) * torch.tensor([0.1, 1.0, 10.0, 1.0, 3.0])[:, None]
    o = torch.randn(5, 64, generator=gen)
    # Every token's J^T e_y by autograd: the Jacobian of each position's logits [vocab, hidden].
    rows = torch.stack(
        [torch.autograd.functional.jacobian(lambda x: client.tail(x[None, None])[0, 0], v) for v in h]
    )
    assert torch.allclose(head.dot_all(h, o), torch.einsum("nvd,nd->nv", rows, o), rtol=1e-4, atol=1e-5)
    assert torch.allclose(head.sq_all(h), rows.pow(2).sum(-1), rtol=1e-4, atol=1e-6)
    v = torch.randn(5, 64, generator=gen)
    leaf = h.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(client.norm(leaf), leaf, v)
    assert torch.allclose(head.norm_vjp(h, v), expected, rtol=1e-4, atol=1e-6)


def test_loss_gradient_is_the_trainers(features: SplitFeatures) -> None:
    """The modelled step's g is ClientTrainer.loss_from_hidden's for a one-row batch, prompt excluded."""
    trainer = ClientTrainer(
        ClientModel(features.model.client.spec, SPLIT), AdapterConfig(lora_rank=2), seed=0
    )
    ids = features.eval_ids[:2]
    hidden = torch.randn(2, ids.shape[1], 64, generator=torch.Generator().manual_seed(2))
    prompt = 9
    got = loss_gradient(features.model.client, hidden, ids, prompt)
    for row in range(2):
        labels = ids[row : row + 1].clone()
        labels[:, :prompt] = IGNORE_INDEX
        _, expected = trainer.loss_from_hidden(hidden[row : row + 1], labels)
        assert torch.allclose(got[row : row + 1], expected, rtol=1e-5, atol=1e-9)
    assert torch.equal(got[:, : prompt - 1], torch.zeros_like(got[:, : prompt - 1]))  # the prompt has no loss


@pytest.mark.parametrize("prompt_tokens", [1, 12])
def test_last_node_reads_every_label_of_an_unnoised_gradient(
    features: SplitFeatures, prompt_tokens: int
) -> None:
    cfg = config(sigmas=(0.0,), prompt_tokens=prompt_tokens)
    for epsilon in (math.inf, 10.0):  # forward noise changes what the node holds, not what it can compute
        step = observe(features, replace(cfg, epsilons=(epsilon,)))
        assert last_node_rates(features, step, cfg, clip=0.05) == [pytest.approx(1.0, abs=0.01)]


def test_upstream_nodes_read_most_labels(features: SplitFeatures) -> None:
    cfg = config(sigmas=(0.0,))
    step = observe(features, cfg)
    for node in (1, 0):  # the middle node (one layer downstream), the first (three)
        assert upstream_rates(features, step, cfg, node)[0] >= 0.9


def test_recovery_falls_as_the_gradient_noise_grows(features: SplitFeatures) -> None:
    cfg = config()
    clip = 0.05
    step = observe(features, cfg, clip)
    chance = 0.2  # above the most frequent byte's share of the eval labels
    for rates in (last_node_rates(features, step, cfg, clip), upstream_rates(features, step, cfg, 1)):
        assert rates[0] >= 0.99
        assert rates[0] > rates[1] > rates[2]
        assert rates[2] < chance
    cosines = [cost["client_weight_grad_cosine"] for cost in step.costs]
    assert cosines[0] == pytest.approx(1.0)
    assert cosines[0] > cosines[1] > cosines[2]


def test_the_defence_clips_then_adds_sigma_times_clip_noise() -> None:
    defence = GradientDefence(sigma=0.5, clip=2.0)
    g = torch.zeros(1, 4000, 8)
    g[..., 0] = 10.0  # far above the clip: clipped to (2, 0, ..., 0)
    sent = defence.apply(g, torch.Generator().manual_seed(3))
    noise = sent - torch.nn.functional.pad(torch.full((1, 4000, 1), 2.0), (0, 7))
    assert float(noise.std()) == pytest.approx(1.0, rel=0.03)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.03)
    assert torch.equal(GradientDefence(0.0, 2.0).apply(g, torch.Generator()), g)  # sigma 0: untouched
    assert math.isinf(GradientDefence(0.0, 2.0).epsilon)


def test_measurement_is_deterministic_with_a_seed(features: SplitFeatures) -> None:
    cfg = config(sigmas=(0.0, 0.3), epsilons=(10.0,))  # seeded noise on both directions
    first, again = measure(features, cfg), measure(features, cfg)
    assert first == again
    other = measure(features, replace(cfg, seed=1))
    noised = [c["grad_z_cosine"] for c in first["cells"] if c["sigma"] > 0]
    assert noised != [c["grad_z_cosine"] for c in other["cells"] if c["sigma"] > 0]
    assert first["cells"][0]["recovery"] == {  # sigma 0
        "node0 [1,3)": pytest.approx(1.0, abs=0.1),
        "node1 [3,5)": pytest.approx(1.0, abs=0.1),
        "node2 [5,6)": 1.0,
    }


def test_models_without_an_rmsnorm_are_refused(tmp_path: Path) -> None:
    path = save_random_model(tiny_gpt2_config(), tmp_path / "gpt2")
    with pytest.raises(UnsupportedNorm, match="Llama family"):
        HeadJacobian.of(ClientModel(ModelSpec.open(str(path)), 1))
