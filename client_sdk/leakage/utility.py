"""What noise costs the client, and what the last node reads of its output.

Teacher-forced on the eval rows: next-token agreement and the perplexity ratio against the noiseless
model, and the sampled-output leakage (a client sampling at temperature 1, top-p 0.9 vs the last node's
argmax of the public LM head on the same hidden state). Incremental generation on a few fixed prompts:
how much of the noiseless greedy continuation survives, and how many of the client's greedy tokens the
last node reads by applying the public final norm + LM head itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from client_sdk.leakage.features import SplitFeatures, Tokenizer, encode
from client_sdk.leakage.mechanism import Mechanism

PROMPTS: tuple[str, ...] = (
    "What is the capital of Greece?",
    "Write one sentence about the sea.",
    "List three colors of the rainbow:",
    "The best way to learn a new language is",
)
SAMPLE_TEMPERATURE = 1.0
SAMPLE_TOP_P = 0.9


@dataclass(frozen=True)
class Reference:
    """The noiseless model on the eval rows."""

    argmax: torch.Tensor  # [S, T - 1] next-token choice at positions 0..T-2
    nll: float  # mean negative log-likelihood of the true next tokens

    @classmethod
    def from_logits(cls, logits: torch.Tensor, ids: torch.Tensor) -> Reference:
        return cls(logits[:, :-1].argmax(-1), _nll(logits, ids))


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """logits [S, T, vocab], ids [S, T] -> mean NLL of ids[:, 1:] given the prefix."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return float(-logp.gather(-1, ids[:, 1:, None]).mean())


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """client_sdk.sampling.sample_token's rule on a batch: logits [N, vocab] -> token ids [N]."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # the top token is always kept
    kept = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    choice = torch.multinomial(kept / kept.sum(-1, keepdim=True), 1, generator=gen)  # [N, 1]
    return order.gather(-1, choice)[:, 0]


@dataclass(frozen=True)
class TeacherForced:
    next_token_agreement: float
    perplexity_ratio: float
    output_recovery_sampled: float


def teacher_forced(
    features: SplitFeatures, mech: Mechanism, ref: Reference, noise: torch.Generator, sampler: torch.Generator
) -> TeacherForced:
    logits = features.model.finish(mech.release(features.eval_z, noise))  # [S, T, vocab]
    guess = logits[:, :-1].argmax(-1)  # what the last node reads with the public head
    sampled = sample(logits[:, :-1].reshape(-1, logits.shape[-1]), SAMPLE_TEMPERATURE, SAMPLE_TOP_P, sampler)
    return TeacherForced(
        next_token_agreement=float((guess == ref.argmax).double().mean()),
        perplexity_ratio=math.exp(_nll(logits, features.eval_ids) - ref.nll),
        output_recovery_sampled=float((sampled.view_as(guess) == guess).double().mean()),
    )


def prompt_ids(tokenizer: Tokenizer, bos: int, prompts: tuple[str, ...] = PROMPTS) -> torch.Tensor:
    """The fixed prompts as one batch [P, L]: each cut to the shortest one's length, so that generation
    runs batched without padding (the cut prompts are the same for the noised and noiseless runs)."""
    encoded = [[bos, *encode(tokenizer, p)] for p in prompts]
    length = min(map(len, encoded))
    return torch.tensor([e[:length] for e in encoded])


@dataclass(frozen=True)
class Generated:
    client_tokens: torch.Tensor  # [P, new_tokens] the client's greedy choices
    node_guesses: torch.Tensor  # [P, new_tokens] the last node's argmax of the public head on its output


def generate(
    features: SplitFeatures, mech: Mechanism, ids: torch.Tensor, new_tokens: int, noise: torch.Generator
) -> Generated:
    """Greedy split generation, the mechanism on every released vector (KV caches on both sides).

    ids [P, L] -> the client's tokens and the last node's guesses. The last node holds the same final
    hidden state as the client and the tail is public, so the guess is the client's greedy token whatever
    the noise: output_recovery_greedy shows it rather than assuming it.
    """
    model = features.model
    caches = (model.client.new_cache(), DynamicCache(config=model.client.config))
    tokens: list[torch.Tensor] = []
    guesses: list[torch.Tensor] = []
    pending, start = ids, 0
    with torch.inference_mode():
        while len(tokens) < new_tokens:
            z, nodes = model.step(pending, start, caches)
            last_hidden = nodes(mech.release(z, noise, public_prefix=1 if start == 0 else 0))[:, -1:]
            tokens.append(model.client.tail(last_hidden)[:, -1].argmax(-1))  # [P]
            guesses.append(node_guess(features, last_hidden))
            start += pending.shape[1]
            pending = tokens[-1][:, None]
    return Generated(torch.stack(tokens, dim=1), torch.stack(guesses, dim=1))


def node_guess(features: SplitFeatures, last_hidden: torch.Tensor) -> torch.Tensor:
    """The last node's reading of the client's next token: the public final norm + LM head, argmax."""
    return features.model.client.tail(last_hidden)[:, -1].argmax(-1)


def prefix_kept(reference: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean over prompts of the share of the reference continuation reproduced before the first
    difference; reference and tokens [P, N]."""
    same = torch.cumprod((reference == tokens).long(), dim=1)  # 1 until the first difference
    return float(same.double().mean())
