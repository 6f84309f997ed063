"""The privacy knob: noise calibration, the Privatizer, budget composition and clip calibration."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from client_sdk.privacy import (
    DEFAULT_CALIBRATION_TEXTS,
    PrivacyError,
    PrivacySettings,
    Privatizer,
    calibrate_clip,
    compose,
    csprng_normal,
    noise_multiplier,
    noise_std,
    seeded_normal,
)
from splitmesh.errors import SplitmeshError
from splitmesh.model.client import ClientModel
from tests.model_fixtures import save_random_model, tiny_llama_config

DELTA = 1e-5


def classical_std(epsilon: float, delta: float, clip: float) -> float:
    """Dwork & Roth's Gaussian mechanism with sensitivity 2 * clip, written out independently."""
    sensitivity = 2.0 * clip
    return sensitivity * (2.0 * math.log(1.25 / delta)) ** 0.5 / epsilon


def gaussian_delta(mu: float, epsilon: float) -> float:
    """Exact delta(epsilon) of a Gaussian mechanism with sensitivity/std ratio mu (Balle & Wang 2018)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return phi(mu / 2 - epsilon / mu) - math.exp(epsilon) * phi(-mu / 2 - epsilon / mu)


# ---- noise_std / noise_multiplier / PrivacySettings ----


@pytest.mark.parametrize(
    ("epsilon", "delta", "clip"),
    [(8.0, 1e-5, 3.0), (0.5, 1e-6, 1.0), (1000.0, 1e-3, 42.5), (30.0, 0.5, 0.01)],
)
def test_noise_std_matches_classical_gaussian_mechanism(epsilon: float, delta: float, clip: float) -> None:
    expected = classical_std(epsilon, delta, clip)
    assert noise_std(epsilon, delta, clip) == pytest.approx(expected, rel=1e-12)
    assert noise_multiplier(epsilon, delta) == pytest.approx(expected / (2 * clip), rel=1e-12)


def test_infinite_epsilon_means_no_noise() -> None:
    assert noise_std(math.inf, DELTA, 5.0) == 0.0
    assert noise_multiplier(math.inf, DELTA) == 0.0


@pytest.mark.parametrize(
    ("epsilon", "delta", "clip"),
    [
        (0.0, DELTA, 1.0),
        (-1.0, DELTA, 1.0),
        (math.nan, DELTA, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, 1.0, 1.0),
        (1.0, -0.1, 1.0),
        (1.0, math.nan, 1.0),
        (1.0, DELTA, 0.0),
        (1.0, DELTA, -2.0),
        (1.0, DELTA, math.inf),
        (1.0, DELTA, math.nan),
    ],
)
def test_invalid_parameters_raise(epsilon: float, delta: float, clip: float) -> None:
    with pytest.raises(PrivacyError):
        noise_std(epsilon, delta, clip)
    with pytest.raises(PrivacyError):
        PrivacySettings(epsilon, delta, clip).validate()
    with pytest.raises(PrivacyError):
        Privatizer(epsilon, delta, clip)


def test_privacy_error_is_a_splitmesh_value_error() -> None:
    with pytest.raises(SplitmeshError):
        noise_multiplier(0.0, DELTA)
    with pytest.raises(ValueError, match="epsilon"):
        noise_multiplier(0.0, DELTA)


def test_params_defaults_are_valid_and_noiseless() -> None:
    params = PrivacySettings().validate()
    assert math.isinf(params.epsilon)
    assert params.clip is None
    assert PrivacySettings(8.0, 1e-6, 2.0).validate().clip == 2.0


# ---- Privatizer ----


def test_noise_has_the_calibrated_std() -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 4096, 64)  # norms ~8, far below the clip: no clipping
    epsilon, clip = 8.0, 1000.0
    out = Privatizer(epsilon, DELTA, clip)(z, 0)
    noise = (out - z).double()
    expected = classical_std(epsilon, DELTA, clip)
    assert noise.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(noise.mean().item()) < 5 * expected / math.sqrt(noise.numel())


def test_vectors_are_clipped_to_the_bound_and_keep_their_direction() -> None:
    clip = 2.0
    torch.manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(1, 200, 32), dim=-1)
    norms = torch.logspace(-1, 1, 200).reshape(1, 200, 1) * clip  # 0.1 C .. 10 C
    z = direction * norms
    out = Privatizer(1e9, DELTA, clip)(z, 0)  # epsilon so large that noise is ~1e-8 C
    out_norms = torch.linalg.vector_norm(out, dim=-1)[0]
    assert (out_norms <= clip * (1 + 1e-5)).all()
    large = norms[0, :, 0] > clip
    assert torch.allclose(out_norms[large], torch.full_like(out_norms[large], clip), rtol=1e-5)
    assert torch.allclose(out[0, ~large], z[0, ~large], atol=1e-5)  # small vectors are not scaled up
    cosine = torch.nn.functional.cosine_similarity(out[0], z[0], dim=-1)
    assert (cosine > 1 - 1e-5).all()


def test_input_is_not_modified() -> None:
    with torch.inference_mode():  # the client noises inference tensors outside inference mode
        z = torch.randn(1, 6, 16) * 10
    before = z.clone()
    out = Privatizer(4.0, DELTA, 1.0, public_prefix=1)(z, 0)
    assert torch.equal(z, before)
    assert not torch.equal(out, z)


def test_noise_cannot_be_seeded_and_the_test_hook_can() -> None:
    z = torch.randn(1, 8, 16)
    d, e = (Privatizer(8.0, DELTA, 1.0)(z, 0) for _ in range(2))
    assert not torch.equal(d, e)  # same parameters, fresh noise
    a = Privatizer(8.0, DELTA, 1.0, noise_source=seeded_normal(7))(z, 0)
    b = Privatizer(8.0, DELTA, 1.0, noise_source=seeded_normal(7))(z, 0)
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        Privatizer(8.0, DELTA, 1.0, seed=0)  # type: ignore[call-arg]


def test_a_node_cannot_regenerate_the_noise_from_any_seed() -> None:
    """The attack that worked before: the noise stream was a Mersenne Twister seeded from the user's seed
    (default 0), so a node regenerated it and subtracted it, recovering clip(Z) to 4e-6. Now the noise
    comes from os.urandom: every seeded torch stream (global, a private generator, the old derivation)
    leaves a residual at the full noise scale."""
    import hashlib

    std = noise_std(1.0, DELTA, 1.0)
    z = torch.zeros(1, 6, 64)  # below the clip: what the node receives is exactly the noise
    observed = Privatizer(1.0, DELTA, 1.0)(z, 0).double()
    guesses = []
    for seed in range(4):
        torch.manual_seed(seed)
        guesses.append(torch.randn(1, 6, 64, dtype=torch.float64) * std)
        guesses.append(
            torch.randn(1, 6, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * std
        )
        old = hashlib.sha256(b"splitmesh.privacy.noise:" + str(seed).encode()).digest()
        old_seed = int.from_bytes(old[:8], "little") >> 1
        old_noise = torch.empty(1, 6, 64).normal_(0.0, std, generator=torch.Generator().manual_seed(old_seed))
        guesses.append(old_noise.double())
    for guess in guesses:
        residual = (observed - guess).std().item()
        assert residual > 0.5 * std  # nothing removed (subtracting the right stream would leave ~0)


def test_csprng_normal_is_standard_normal() -> None:
    samples = csprng_normal((200_001,))  # odd: the Box-Muller pairs are cut to the requested count
    assert samples.shape == (200_001,) and samples.dtype == torch.float64
    assert abs(samples.mean().item()) < 0.02
    assert samples.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.isfinite(samples).all()
    # Tails: about 0.27% beyond 3 sigma, as for a normal.
    assert 0.0015 < (samples.abs() > 3).double().mean().item() < 0.004
    assert not torch.equal(csprng_normal((64,)), csprng_normal((64,)))


def test_noise_stream_does_not_copy_the_global_rng() -> None:
    z = torch.zeros(1, 4, 16)
    out = Privatizer(1.0, DELTA, 1.0)(z, 0)
    std = noise_std(1.0, DELTA, 1.0)
    torch.manual_seed(5)
    assert not torch.allclose(out, torch.randn(1, 4, 16) * std)


def test_public_prefix_passes_unchanged_and_is_not_counted() -> None:
    torch.manual_seed(0)
    privatizer = Privatizer(8.0, DELTA, 1.0, public_prefix=3)
    z = torch.randn(1, 5, 16) * 20  # norms far above the clip
    out = privatizer(z, 1)  # positions 1..5: 1 and 2 are public
    assert torch.equal(out[:, :2], z[:, :2])
    assert not torch.isclose(out[:, 2:], z[:, 2:]).any()
    assert privatizer.released == 3
    assert torch.equal(privatizer(z[:, :1], 0), z[:, :1])  # entirely public chunk
    assert privatizer.released == 3
    privatizer(z[:, :1], 6)
    assert privatizer.released == 4


def test_infinite_epsilon_returns_the_input_values() -> None:
    privatizer = Privatizer(math.inf, DELTA, 1.0)
    z = torch.randn(1, 3, 16) * 50  # would be clipped if clipping ran
    assert torch.equal(privatizer(z, 0), z)
    assert torch.equal(Privatizer(math.inf, DELTA, None)(z, 0), z)
    assert privatizer.released == 0


def test_bfloat16_in_bfloat16_out() -> None:
    z = torch.randn(1, 4, 32, dtype=torch.bfloat16)
    out = Privatizer(8.0, DELTA, 1.0)(z, 0)
    assert out.dtype == torch.bfloat16
    assert out.shape == z.shape


def test_released_counts_noised_vectors_across_calls() -> None:
    privatizer = Privatizer(8.0, DELTA, 1.0)
    privatizer(torch.randn(1, 7, 8), 0)
    for position in range(7, 10):
        privatizer(torch.randn(1, 1, 8), position)
    assert privatizer.released == 10


def test_gradient_flows_through_the_privatizer() -> None:
    z = (torch.randn(1, 4, 8) * 0.01).requires_grad_()  # below the clip: the map is z + noise
    Privatizer(8.0, DELTA, 1.0)(z, 0).sum().backward()
    assert z.grad is not None
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_privatizer_rejects_bad_input() -> None:
    with pytest.raises(PrivacyError, match="calibrate_clip"):
        Privatizer(8.0, DELTA, None)
    with pytest.raises(PrivacyError):
        Privatizer(8.0, DELTA, 1.0, public_prefix=-1)
    privatizer = Privatizer(8.0, DELTA, 1.0)
    with pytest.raises(PrivacyError):
        privatizer(torch.randn(4, 8), 0)
    with pytest.raises(PrivacyError):
        privatizer(torch.ones(1, 2, 8, dtype=torch.long), 0)
    with pytest.raises(PrivacyError):
        privatizer(torch.randn(1, 2, 8), -1)


# ---- compose ----


def test_no_tokens_spend_nothing() -> None:
    assert compose(8.0, DELTA, 0).composed_epsilon == 0.0
    assert compose(math.inf, DELTA, 0).composed_epsilon == 0.0


def test_infinite_epsilon_composes_to_infinity() -> None:
    budget = compose(math.inf, DELTA, 3)
    assert math.isinf(budget.composed_epsilon)
    assert budget.to_json()["composed_epsilon"] == "inf"


@pytest.mark.parametrize("epsilon", [0.5, 8.0, 100.0])
def test_single_token_is_finite_and_positive(epsilon: float) -> None:
    budget = compose(epsilon, DELTA, 1)
    assert 0 < budget.composed_epsilon < math.inf
    assert budget.tokens == 1


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 8.0, 30.0])
def test_composition_is_monotone_in_tokens(epsilon: float) -> None:
    values = [compose(epsilon, DELTA, k).composed_epsilon for k in (0, 1, 2, 3, 5, 10, 50, 200, 1000)]
    assert values == sorted(values)
    assert values[-1] > values[1]


@pytest.mark.parametrize(("epsilon", "tokens"), [(0.2, 1), (0.5, 10), (0.9, 100)])
def test_never_above_basic_composition_at_its_delta(epsilon: float, tokens: int) -> None:
    # For epsilon < 1 each vector is (epsilon, delta)-DP (Dwork & Roth, Thm A.1), so tokens * epsilon at
    # tokens * delta is a valid bound; the reported one must be at least as tight.
    budget = compose(epsilon, DELTA, tokens, target_delta=tokens * DELTA)
    assert budget.composed_epsilon <= tokens * epsilon * (1 + 1e-9)
    assert budget.composed_epsilon <= budget.basic_epsilon * (1 + 1e-9)
    assert budget.composed_delta == pytest.approx(tokens * DELTA)


@pytest.mark.parametrize(
    ("epsilon", "tokens", "target"), [(1.0, 1, DELTA), (8.0, 1, DELTA), (8.0, 50, DELTA), (2.0, 10, 1e-3)]
)
def test_composed_budget_is_a_valid_and_tight_gaussian_bound(
    epsilon: float, tokens: int, target: float
) -> None:
    # k Gaussian releases with sensitivity 2C and std s compose to one with ratio mu = sqrt(k) * 2C / s.
    clip = 1.0
    mu = math.sqrt(tokens) * 2 * clip / classical_std(epsilon, DELTA, clip)
    budget = compose(epsilon, DELTA, tokens, target_delta=target)
    assert budget.composed_delta == target
    assert gaussian_delta(mu, budget.composed_epsilon) <= target * (1 + 1e-6)  # valid
    assert gaussian_delta(mu, 0.99 * budget.composed_epsilon) > target  # not loose


def test_large_epsilon_reports_the_real_per_token_guarantee() -> None:
    # The classical calibration is only proven for epsilon < 1; at 30 its noise gives more than 30.
    budget = compose(30.0, DELTA, 1)
    mu = 2.0 / classical_std(30.0, DELTA, 1.0)
    assert gaussian_delta(mu, 30.0) > DELTA
    assert budget.per_token_epsilon_actual > 30.0
    assert budget.composed_epsilon >= budget.per_token_epsilon_actual * (1 - 1e-6)


def test_budget_json_is_fresh_and_serializable() -> None:
    budget = compose(8.0, DELTA, 50)
    data = budget.to_json()
    data["clip"] = 1.0
    assert "clip" not in budget.to_json()
    decoded = json.loads(json.dumps(data))
    assert decoded["tokens"] == 50
    assert decoded["composed_epsilon"] == budget.composed_epsilon
    assert decoded["method"] == budget.method


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens": -1},
        {"tokens": 1.5},
        {"tokens": 3, "target_delta": 0.0},
        {"tokens": 3, "target_delta": 1.0},
        {"tokens": 3, "epsilon": 0.0},
    ],
)
def test_compose_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"epsilon": 8.0, "delta": DELTA, **kwargs}
    with pytest.raises(PrivacyError):
        compose(**args)  # type: ignore[arg-type]


# ---- calibrate_clip ----


class CharTokenizer:
    """Stands in for a Hugging Face tokenizer: BOS, then one id per character."""

    def __call__(self, text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        assert return_tensors == "pt"
        ids = [1] + [3 + ord(ch) % 250 for ch in text]
        return {"input_ids": torch.tensor([ids])}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> ClientModel:
    path: Path = save_random_model(tiny_llama_config(), tmp_path_factory.mktemp("llama"))
    return ClientModel.load(str(path), split=1)


def independent_norms(client: ClientModel, texts: tuple[str, ...]) -> list[float]:
    norms: list[float] = []
    tokenizer = CharTokenizer()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            hidden = client.head(ids, torch.arange(ids.shape[1])[None])
            norms += [float(v.double().norm()) for v in hidden[0, 1:]]
    return norms


def test_calibrated_clip_is_the_median_token_norm(client: ClientModel) -> None:
    norms = independent_norms(client, DEFAULT_CALIBRATION_TEXTS)
    clip = calibrate_clip(client, CharTokenizer())
    assert clip == pytest.approx(statistics.median(norms), rel=1e-5)


def test_calibrated_clip_honours_texts_and_quantile(client: ClientModel) -> None:
    texts = ("short one", "another public sentence about rain")
    norms = sorted(independent_norms(client, texts))
    rank = 0.9 * (len(norms) - 1)  # linear interpolation between order statistics
    low = math.floor(rank)
    expected = norms[low] + (rank - low) * (norms[low + 1] - norms[low])
    assert calibrate_clip(client, CharTokenizer(), texts, quantile=0.9) == pytest.approx(expected, rel=1e-5)


def test_calibration_rejects_useless_input(client: ClientModel) -> None:
    with pytest.raises(PrivacyError):
        calibrate_clip(client, CharTokenizer(), quantile=1.5)
    with pytest.raises(PrivacyError, match="longer texts"):
        calibrate_clip(client, CharTokenizer(), texts=("",))
