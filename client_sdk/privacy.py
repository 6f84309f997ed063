"""The privacy knob: clip every released token vector, add Gaussian noise, and account for the budget.

The client releases Z' = M(Z) where Z holds the hidden states after its first layers. M clips each token
vector to L2 norm C and adds N(0, s^2 I) with s = 2C * sqrt(2 ln(1.25/delta)) / epsilon (replace-one
adjacency, so the sensitivity is 2C). Over a job the per-token guarantees compose; `compose` asks the
`dp-accounting` package for the job's budget instead of summing epsilons by hand.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dp_accounting
import torch
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from splitmesh.errors import SplitmeshError
from splitmesh.jobmeta import epsilon_to_json

if TYPE_CHECKING:
    from splitmesh.model.client import ClientModel

logger = logging.getLogger(__name__)

# Above this epsilon a job has no meaningful protection left; the RDP bound (within ~10% of PLD) is
# reported as is, because PLD's memory grows with the privacy-loss range and overflows for huge values.
_PLD_MAX_EPSILON = 1e5
# PLD's discretization step relative to the epsilon it computes: a 1e-4 relative error at ~20 ms.
_PLD_RELATIVE_STEP = 1e-4
_PLD_MIN_STEP = 1e-4  # the library's default, used for small epsilons


# The default per-token epsilon, chosen from the shipped leakage table (splitmesh/data/leakage_table.json,
# `LeakageTable.recommended`): among measured settings that keep the answer usable (>= 70% next-token
# agreement), none leaks measurably less of the prompt than no noise at all (best attack ~76% of tokens at
# epsilon inf and 1000 alike), and no noise keeps the answer exact. So the default is no noise, and the
# docs say what that leaves visible. tests/unit/test_privacy_default.py re-checks it against the table.
DEFAULT_EPSILON = math.inf


class PrivacyError(SplitmeshError, ValueError):
    """A privacy parameter (epsilon, delta, clip, token count) is out of range."""


def _check_epsilon_delta(epsilon: float, delta: float) -> None:
    if not epsilon > 0:  # also rejects NaN
        raise PrivacyError(f"epsilon must be > 0 (math.inf disables noise), got {epsilon}")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), typically 1e-5 or below, got {delta}")


def _check_clip(clip: float) -> None:
    if not (math.isfinite(clip) and clip > 0):
        raise PrivacyError(
            f"clip must be a finite L2 norm > 0, got {clip}; leave it None to calibrate with calibrate_clip()"
        )


def noise_multiplier(epsilon: float, delta: float) -> float:
    """Noise std in units of the sensitivity 2C: sqrt(2 ln(1.25/delta)) / epsilon (0.0 for epsilon inf)."""
    _check_epsilon_delta(epsilon, delta)
    if math.isinf(epsilon):
        return 0.0
    return math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def noise_std(epsilon: float, delta: float, clip: float) -> float:
    """Std s of the Gaussian noise per coordinate for vectors clipped to norm `clip` (0.0 for epsilon inf).

    Classical Gaussian mechanism calibration (Dwork & Roth, Thm A.1) with sensitivity 2*clip, because
    replacing one token changes its vector by at most 2*clip. That theorem is proven for epsilon < 1; for
    larger epsilon the real guarantee of this noise is whatever `compose` reports (see Budget).
    """
    _check_clip(clip)
    return 2.0 * clip * noise_multiplier(epsilon, delta)


@dataclass
class PrivacySettings:
    """What a user chooses for a job's noise (GenerateOptions and TrainOptions carry it); validated before
    any noise is drawn."""

    epsilon: float = DEFAULT_EPSILON  # per released token vector; inf = no noise (chosen from measurements)
    delta: float = 1e-5  # per released token vector; failure probability of the epsilon guarantee
    clip: float | None = None  # L2 bound per token vector; None = median norm on public text

    def validate(self) -> PrivacySettings:
        _check_epsilon_delta(self.epsilon, self.delta)
        if self.clip is not None:
            _check_clip(self.clip)
        return self


NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]  # shape -> float64 N(0, 1) samples


def csprng_normal(shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal float64 samples from the OS CSPRNG (`os.urandom`), by the Box-Muller transform.

    torch's CPU generator is a Mersenne Twister: a party that sees enough outputs (the noise on a public
    prefix is exactly known) could recover its state and subtract the rest of the noise. os.urandom is
    the kernel's ChaCha20 CSPRNG, re-seeded from hardware entropy; nothing a node sees predicts it.
    """
    count = math.prod(shape)
    pairs = (count + 1) // 2
    words = torch.frombuffer(bytearray(os.urandom(16 * pairs)), dtype=torch.int64).view(2, pairs)
    # 53 random bits per uniform: u1 in (0, 1] keeps log(u1) finite, u2 in [0, 1).
    u = ((words >> 11) & (2**53 - 1)).to(torch.float64) * 2.0**-53  # the mask undoes the sign extension
    u1, u2 = 1.0 - u[0], u[1]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2.0 * math.pi * u2
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])
    return normal[:count].view(shape)


def seeded_normal(seed: int) -> NoiseSource:
    """A reproducible noise source FOR TESTS ONLY: anyone who knows the seed can remove the noise."""
    generator = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.float64, generator=generator)

    return draw


class Privatizer:
    """Clips and noises the hidden states the client releases, one token vector at a time.

    Call it on each chunk Z [1, q, hidden] (positions start..start+q-1) in order. Positions below
    `public_prefix` (a public BOS token, whose norm is several times the median) pass unchanged: noising
    them costs quality and protects nothing, as long as the client's layers hold only public weights
    (with a private adapter the BOS vector identifies the client: pass 0). The noise comes from the OS
    CSPRNG and cannot be seeded.
    """

    def __init__(
        self,
        epsilon: float,
        delta: float,
        clip: float | None,
        *,
        public_prefix: int = 0,
        noise_source: NoiseSource = csprng_normal,  # tests only may pass seeded_normal(...)
    ):
        _check_epsilon_delta(epsilon, delta)
        if public_prefix < 0:
            raise PrivacyError(f"public_prefix must be >= 0 (0 = noise every position), got {public_prefix}")
        self.epsilon = epsilon
        self.delta = delta
        self.public_prefix = public_prefix
        self.enabled = not math.isinf(epsilon)
        if self.enabled:
            if clip is None:
                raise PrivacyError("a finite epsilon needs a clip norm; compute one with calibrate_clip()")
            _check_clip(clip)
        self.clip = clip
        self.std = noise_std(epsilon, delta, clip) if self.enabled and clip is not None else 0.0
        self.released = 0  # noised token vectors so far: what the budget composes over
        self._noise_source = noise_source

    def __call__(self, z: torch.Tensor, start: int) -> torch.Tensor:
        """z [batch, q, hidden] at positions start..start+q-1 -> a new tensor, same shape and dtype."""
        if z.dim() != 3 or not z.is_floating_point():
            raise PrivacyError(
                f"expected floating hidden states [batch, q, hidden], got {tuple(z.shape)} {z.dtype}"
            )
        if start < 0:
            raise PrivacyError(f"start must be the position of z's first token (>= 0), got {start}")
        if not self.enabled:
            return z  # epsilon inf must reproduce the unsplit model exactly: no clipping either
        assert self.clip is not None
        skip = min(max(self.public_prefix - start, 0), z.shape[1])
        if skip == z.shape[1]:
            return z
        private = z[:, skip:]  # [batch, q - skip, hidden]
        work = torch.promote_types(z.dtype, torch.float32)  # bf16/fp16 noise would be quantized
        x = private.to(work)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [batch, q - skip, 1]
        scale = self.clip / norm.clamp(min=self.clip)  # <= 1: scale down only; a zero vector stays zero
        noise = self._noise_source(tuple(x.shape)).to(work) * self.std
        # Out of place so the input is untouched and autograd (training through the split) still works.
        out = torch.addcmul(noise.to(z.device), x, scale).to(z.dtype)
        self.released += out.shape[0] * out.shape[1]
        if skip:
            out = torch.cat([z[:, :skip], out], dim=1)
        return out


@dataclass(frozen=True)
class Budget:
    """The privacy spent by a job of `tokens` released vectors, each noised at (epsilon, delta).

    `composed_epsilon` at `composed_delta` is the tightest valid bound found among: the RDP accountant,
    the PLD accountant (both from dp-accounting) and basic composition. `method` names the winner ("pld",
    "rdp", "basic"; "none" when nothing is noised or released). `per_token_epsilon_actual` is the
    accountant's epsilon of one vector at `per_token_delta`: the classical calibration under-noises for
    large epsilon (nominal 30 is really ~45, 100 is ~300), so trust it over `per_token_epsilon`.
    `basic_epsilon` = tokens * per_token_epsilon_actual, valid at delta tokens * per_token_delta.
    """

    per_token_epsilon: float  # nominal epsilon the noise was calibrated with
    per_token_delta: float
    tokens: int  # noised token vectors released
    composed_epsilon: float
    composed_delta: float
    method: str
    basic_epsilon: float
    per_token_epsilon_actual: float

    def to_json(self) -> dict[str, Any]:
        """A fresh JSON-ready dict; infinities become the string "inf"."""
        return {
            "per_token_epsilon": epsilon_to_json(self.per_token_epsilon),
            "per_token_delta": self.per_token_delta,
            "tokens": self.tokens,
            "composed_epsilon": epsilon_to_json(self.composed_epsilon),
            "composed_delta": self.composed_delta,
            "method": self.method,
            "basic_epsilon": epsilon_to_json(self.basic_epsilon),
            "per_token_epsilon_actual": epsilon_to_json(self.per_token_epsilon_actual),
        }


@functools.lru_cache(maxsize=256)  # pure; a UI may show the budget after every token
def _accountant_epsilon(multiplier: float, count: int, target_delta: float) -> tuple[float, str]:
    """Epsilon of `count` Gaussian releases at `target_delta`: the lower of the RDP and PLD bounds.

    The event's unit sensitivity is our replace-one sensitivity 2C, hence the default ADD_OR_REMOVE_ONE
    relation: REPLACE_ONE would make PLD double the sensitivity again (and RDP ignores it for Gaussians).
    """
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier), count)
    rdp = RdpAccountant()
    rdp.compose(event)
    best, method = float(rdp.get_epsilon(target_delta)), "rdp"
    if best <= _PLD_MAX_EPSILON:
        step = max(_PLD_MIN_STEP, _PLD_RELATIVE_STEP * best)
        try:
            pld = PLDAccountant(value_discretization_interval=step)
            pld.compose(event)
            tight = float(pld.get_epsilon(target_delta))
        except (OverflowError, ValueError, FloatingPointError):
            logger.debug("PLD accounting failed; reporting the RDP bound", exc_info=True)
        else:
            if tight < best:
                best, method = tight, "pld"
    return best, method


def compose(epsilon: float, delta: float, tokens: int, target_delta: float | None = None) -> Budget:
    """Budget of a job that released `tokens` vectors noised at per-token (epsilon, delta).

    `target_delta` defaults to the per-token delta: the job's guarantee is stated at a delta that does not
    grow with its length (tokens * delta would reach 1e-2 after 1000 tokens). Basic composition
    (tokens * epsilon_actual at tokens * delta) only competes when target_delta >= tokens * delta.
    """
    _check_epsilon_delta(epsilon, delta)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise PrivacyError(f"tokens must be a count of released vectors (int >= 0), got {tokens!r}")
    target = delta if target_delta is None else target_delta
    if not 0 < target < 1:
        raise PrivacyError(f"target_delta must be in (0, 1) (None = the per-token delta), got {target_delta}")

    def budget(composed: float, method: str, basic: float, actual: float) -> Budget:
        return Budget(epsilon, delta, tokens, composed, target, method, basic, actual)

    if math.isinf(epsilon):
        spent = math.inf if tokens else 0.0
        return budget(spent, "none", spent, math.inf)
    multiplier = noise_multiplier(epsilon, delta)
    actual, _ = _accountant_epsilon(multiplier, 1, delta)
    basic = tokens * actual
    if tokens == 0:
        return budget(0.0, "none", 0.0, actual)
    composed, method = _accountant_epsilon(multiplier, tokens, target)
    if target >= tokens * delta and basic < composed:
        composed, method = basic, "basic"
    return budget(composed, method, basic, actual)


DEFAULT_CALIBRATION_TEXTS: tuple[str, ...] = (
    "The weather today is mild, with light clouds and a gentle breeze from the west.",
    "To make a simple tomato sauce, cook garlic in olive oil and add crushed tomatoes.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The library opens at nine in the morning and closes at six in the evening.",
    "Plants use sunlight, water and carbon dioxide to produce sugar and oxygen.",
    "She walked to the station, bought a ticket and waited for the next train.",
    "The Earth orbits the Sun once every year, and the Moon orbits the Earth about once a month.",
    "A good night's sleep helps the body recover and the mind stay focused.",
    "Bread dough needs time to rise before it goes into a hot oven.",
    "The river flows through the valley and into the sea near a small fishing town.",
    "Light travels faster than sound, which is why we see lightning before we hear thunder.",
    "Please remember to close the windows before you leave the house.",
    "The museum has a new exhibition about ancient maps and early explorers.",
    "Regular exercise, such as walking or cycling, is good for the heart.",
    "Snow covered the mountains, and the roads were closed for two days.",
    "Most metals expand when they are heated and contract when they cool down.",
)


def calibrate_clip(
    client_model: ClientModel,
    tokenizer: Callable[..., Any],
    texts: tuple[str, ...] = DEFAULT_CALIBRATION_TEXTS,
    quantile: float = 0.5,
) -> float:
    """The `quantile` of per-token L2 norms of the client head's output on public texts: a clip C that
    keeps typical vectors intact without letting outliers set the noise scale.

    Position 0 is left out: its norm is several times the others from layer 2 on, and a public BOS there
    is never noised anyway.
    """
    if not 0 <= quantile <= 1:
        raise PrivacyError(f"quantile must be in [0, 1] (0.5 = median), got {quantile}")
    norms: list[torch.Tensor] = []
    with torch.inference_mode():
        for text in texts:
            input_ids = torch.as_tensor(tokenizer(text, return_tensors="pt")["input_ids"]).long()  # [1, q]
            if input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            q = input_ids.shape[1]
            if q < 2:
                continue
            position_ids = torch.arange(q).unsqueeze(0)  # [1, q]
            hidden = client_model.head(input_ids, position_ids)  # [1, q, hidden]
            norms.append(torch.linalg.vector_norm(hidden[0, 1:].float(), dim=-1))  # [q - 1]
        if not norms:
            raise PrivacyError("calibration texts gave no token beyond position 0; pass longer texts")
        clip = float(torch.quantile(torch.cat(norms), quantile))
    _check_clip(clip)
    logger.info(
        "calibrated clip %.4g (quantile %.2f of %d token norms, split %s)",
        clip,
        quantile,
        sum(n.numel() for n in norms),
        getattr(client_model, "split", "?"),
    )
    return clip
