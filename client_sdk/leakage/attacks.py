"""Prompt-inversion attacks by a node that knows the mechanism (clip C, noise std s, split, open weights).

Each attack maps released vectors Z' of the eval rows back to token ids; recovery is the share of
private positions (every position but the public BOS) it gets right. Candidates: at split 0 the whole
vocabulary (a table lookup is free); at split k > 0 the attacker tabulates the client layers' output for
the `frequent` lowest token ids (BPE merge order roughly follows frequency) plus every token of its
training text, each as the token right after BOS. Eval tokens outside that set count as misses.

- nearest: the table row nearest in L2 to Z' after clipping the rows like the mechanism does (the
  maximum-likelihood token under Gaussian noise, ignoring context). At epsilon inf nothing is clipped
  or noised; the attacker then clips Z itself (norms vary with context, directions carry the token).
- learned: a linear softmax classifier fitted on the attacker's public text: per-token means of the
  clipped in-context features (the table row for tokens it never saw), pooled within-token variance plus
  the known noise variance s^2, and the token frequencies as a prior (Gaussian discriminant analysis:
  the Bayes-optimal linear map under the Gaussian noise model, fitted in closed form per epsilon).
- optimization: for a few eval rows, a soft distribution over each position's top `topk` learned
  candidates is optimized so that the client layers' clipped output matches Z' under the Gaussian
  likelihood (context included), starting from the learned posterior; then the argmax is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from client_sdk.leakage.features import SplitFeatures, SplitModel
from client_sdk.leakage.mechanism import Mechanism


@dataclass
class Candidates:
    """What the attacker precomputes once per split (noise-independent)."""

    ids: torch.Tensor  # [C] token ids
    table: torch.Tensor  # [C, hidden] client output of each id right after BOS
    counts: torch.Tensor  # [C] occurrences in the attacker's training text
    train_z: torch.Tensor  # [N_train, hidden] in-context features of the training text
    labels: torch.Tensor  # [N_train] their candidate index


def build_candidates(features: SplitFeatures, frequent: int, bos: int) -> Candidates:
    model = features.model
    vocab = int(model.client.config.vocab_size)
    train_tokens = features.train_ids[:, 1:].reshape(-1)
    if model.split == 0:
        ids = torch.arange(vocab)
    else:
        ids = torch.unique(torch.cat([torch.arange(min(frequent, vocab)), train_tokens]))
    index = torch.full((vocab,), -1, dtype=torch.long)
    index[ids] = torch.arange(len(ids))
    labels = index[train_tokens]  # every training token is a candidate by construction
    counts = torch.bincount(labels, minlength=len(ids)).float()
    return Candidates(ids, _after_bos(model, ids, bos), counts, private_vectors(features.train_z), labels)


def _after_bos(model: SplitModel, ids: torch.Tensor, bos: int) -> torch.Tensor:
    pairs = torch.stack([torch.full_like(ids, bos), ids], dim=1)  # [C, 2]
    return model.head(pairs)[:, 1]  # [C, hidden]


def private_vectors(z: torch.Tensor) -> torch.Tensor:
    """[S, T, hidden] -> [S * (T - 1), hidden]: every position but the public BOS."""
    return z[:, 1:].reshape(-1, z.shape[-1])


def observed(released: torch.Tensor, mech: Mechanism) -> torch.Tensor:
    """What the attacker compares: the released vectors, clipped by the attacker itself at epsilon inf
    (their norms vary with the context, their direction carries the token; all sides get the same clip)."""
    return released if mech.noised else mech.clip_vectors(released)


def nearest(released: torch.Tensor, cand: Candidates, mech: Mechanism) -> torch.Tensor:
    """released [N, hidden] -> token ids [N]."""
    released = observed(released, mech)
    rows = mech.clip_vectors(cand.table)
    scores = 2 * released @ rows.T - (rows * rows).sum(-1)  # -||z - row||^2 up to a per-row constant
    return cand.ids[scores.argmax(-1)]


def learned_scores(released: torch.Tensor, cand: Candidates, mech: Mechanism) -> torch.Tensor:
    """released [N, hidden] -> log-posterior scores [N, C] of the Gaussian linear classifier."""
    released = observed(released, mech)
    clipped = mech.clip_vectors(cand.train_z).double()  # E[Z'] of each training vector
    sums = torch.zeros(len(cand.ids), clipped.shape[1], dtype=torch.float64).index_add_(
        0, cand.labels, clipped
    )
    seen = cand.counts > 0
    means = torch.where(
        seen[:, None],
        sums / cand.counts.double().clamp(min=1)[:, None],
        mech.clip_vectors(cand.table).double(),
    )
    variance = float((clipped - means[cand.labels]).pow(2).mean()) + mech.std**2 + 1e-12
    prior = torch.log(cand.counts + 0.5)  # add-half smoothing keeps unseen tokens possible
    means = means.float()
    return (released @ means.T - 0.5 * (means * means).sum(-1)) / variance + prior


def learned(released: torch.Tensor, cand: Candidates, mech: Mechanism) -> torch.Tensor:
    return cand.ids[learned_scores(released, cand, mech).argmax(-1)]


def optimization(
    model: SplitModel,
    released: torch.Tensor,
    cand: Candidates,
    mech: Mechanism,
    bos: int,
    *,
    steps: int,
    topk: int,
) -> torch.Tensor:
    """released [S, T, hidden] (a few rows) -> token ids [S * (T - 1)]."""
    rows, length, hidden = released.shape
    target = observed(released[:, 1:], mech)  # [S, T - 1, hidden]
    prior = learned_scores(target.reshape(-1, hidden), cand, mech)  # [N, C]
    top_scores, top = prior.topk(min(topk, prior.shape[1]), dim=-1)  # [N, k]
    embed: torch.Tensor = model.client.embeddings[model.client.spec.arch.embed[0]].weight  # type: ignore[assignment]
    options = embed[cand.ids[top]].detach()  # [N, k, hidden]
    logits = torch.log_softmax(top_scores, -1).view(rows, length - 1, -1).clone().requires_grad_(True)
    positions = torch.arange(length).expand(rows, -1)
    bos_vec = model.client.embed(torch.full((rows, 1), bos), positions[:, :1]).detach()
    scale = 2 * max(mech.std, 1e-3 * mech.clip) ** 2
    optimizer = torch.optim.Adam([logits], lr=0.1)
    opts = options.view(rows, length - 1, -1, hidden)
    for _ in range(steps):
        soft = torch.einsum("stk,stkh->sth", torch.softmax(logits, -1), opts)
        hidden_in = torch.cat([bos_vec, soft], dim=1)
        if model.client.spec.arch.family == "gpt2":  # absolute positions are added to the token vectors
            hidden_in = hidden_in + model.client.embeddings["wpe"](positions)
        out = mech.clip_vectors(model.client.stack(hidden_in, positions)[:, 1:])
        loss = (out - target).pow(2).sum(-1).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    choice = logits.detach().argmax(-1).reshape(-1)  # [N]
    return cand.ids[top[torch.arange(len(choice)), choice]]
