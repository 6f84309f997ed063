"""Label leakage of split fine-tuning's backward pass: what a route node reads from the gradient it relays.

A training step as client_sdk.adapters.split_train_step runs it: the client releases Z' (the forward
Mechanism), the nodes run layers [split, n), the client takes the mean cross-entropy of the N labelled next
tokens of the row from the last node's output h_last and sends g = d(loss)/d(h_last) back; node k receives
the gradient w.r.t. its own output h_k. The weights are public and each node holds its own output, so it can
recompute everything downstream of it. At a labelled position t with label y:

    g_t = J_t^T (p_t - e_y) / N,   J_t = d logits_t / d h_last_t = W_head · d norm(h) / dh   (public)

- last node (`last_node_attack`): holds h_last, hence p_t and J_t. Scores every vocabulary token y by the
  Gaussian likelihood of g_t given label y, in closed form per position (`HeadJacobian`); it knows N and
  the defence (clip G, sigma) from the job terms. With a noised gradient it adds the public model's prior
  log p_t(y) (the Bayes decision); without noise the likelihood alone is exact.
- upstream node (`UpstreamAttacker`): sees R^T g with R = d h_last / d h_k (its public downstream layers).
  Inverting R^T is ill-conditioned (single layers of SmolLM2 have singular values near 3e-3; Krylov solvers
  stall), but the residual stream carries much of the label direction through: the node decodes its
  gradient as if it were g (free scale per position, noise variance estimated from the best fit, plus the
  prior log p_t from its own forward pass), then refines: it replaces R^T m of its current guess m by m
  (one VJP through the downstream layers per step). A lower bound on what an upstream node can do.

Defence (`GradientDefence`): before sending g the client clips each position's vector to norm G and adds
N(0, (sigma G)^2 I) on every position: the forward Mechanism with the epsilon giving std sigma·G. Its cost
(`utility_cosines`): the cosine between the gradients the client ends up with, with and without it.
Noise comes from generators seeded by `seed` (mechanism.generator): for measurement only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from client_sdk.errors import ClientError
from client_sdk.leakage.features import SplitFeatures, SplitModel, positions_like
from client_sdk.leakage.mechanism import Mechanism, generator
from splitmesh.model.client import ClientModel
from splitmesh.model.stack import LayerStack

_VARIANCE_FLOOR = 1e-12  # relative to ||o||^2 / hidden: keeps an exact fit from dividing by zero


class UnsupportedNorm(ClientError, NotImplementedError):
    """The model's final norm has no closed-form Jacobian here (only RMSNorm: the Llama family)."""


# ---------------------------------------------------------------------------------------- the LM head


@dataclass(frozen=True)
class HeadJacobian:
    """The client's tail, logits = W rmsnorm(h), and its Jacobian J in closed form.

    rmsnorm(h) = w ⊙ h / r with r = sqrt(mean(h^2) + eps), so its VJP is v -> S (w ⊙ v) / r with
    S = I - kappa u u^T, u = h / ||h||, kappa = ||h||^2 / (||h||^2 + hidden·eps), and J^T e_y is that of the
    head row W_y. For every token y at once: <o, J^T e_y> = (W_w S o)_y / r and
    ||J^T e_y||^2 = (||W_w,y||^2 - (2 kappa - kappa^2) (W_w u)_y^2) / r^2 with W_w = W ⊙ w, i.e. a few
    LM-head-sized matmuls per position instead of a vocabulary of VJPs.
    """

    norm: nn.Module  # the final norm itself: logits come from the real module
    norm_weight: torch.Tensor  # [hidden] w
    eps: float
    weight: torch.Tensor  # [vocab, hidden] W
    scaled: torch.Tensor  # [vocab, hidden] W ⊙ w
    scaled_sq: torch.Tensor  # [vocab] ||W_y ⊙ w||^2

    @classmethod
    def of(cls, client: ClientModel) -> HeadJacobian:
        norm = client.norm
        norm_weight = getattr(norm, "weight", None)
        eps = getattr(norm, "variance_epsilon", None)
        if (
            not isinstance(norm_weight, torch.Tensor)
            or eps is None
            or getattr(norm, "bias", None) is not None
        ):
            raise UnsupportedNorm(
                f"the final norm {type(norm).__name__} is not an RMSNorm; the gradient attacks cover the "
                "Llama family only"
            )
        if any(
            x is not None for x in (client.logits_divisor, client.logits_multiplier, client.logits_softcap)
        ):
            raise UnsupportedNorm(
                f"{client.spec.arch.traits.model_type} scales or soft-caps its logits; the closed-form "
                "Jacobian covers logits = W rmsnorm(h) only"
            )
        w = norm_weight.detach()
        weight = client.lm_head_weight.detach()
        scaled = weight * w
        return cls(norm, w, float(eps), weight, scaled, scaled.pow(2).sum(-1))

    def _parts(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [..., hidden] -> (r, u, kappa), r and kappa [..., 1]."""
        sq = h.pow(2).sum(-1, keepdim=True)
        return (sq / h.shape[-1] + self.eps).sqrt(), h / sq.sqrt(), sq / (sq + h.shape[-1] * self.eps)

    @staticmethod
    def _project(v: torch.Tensor, u: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        return v - kappa * (v * u).sum(-1, keepdim=True) * u

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.norm(h), self.weight)  # [n, vocab]

    def norm_vjp(self, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(d rmsnorm / dh)^T v: h [n, hidden], v [n, hidden] or [n, k, hidden] -> the shape of v."""
        if v.dim() == 3:
            h = h[:, None]
        r, u, kappa = self._parts(h)
        return self._project(v * self.norm_weight, u, kappa) / r

    def dot_all(self, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """<o_t, J_t^T e_y> for every token: h, o [n, hidden] -> [n, vocab]."""
        r, u, kappa = self._parts(h)
        return self._project(o, u, kappa) @ self.scaled.T / r

    def sq_all(self, h: torch.Tensor) -> torch.Tensor:
        """||J_t^T e_y||^2 for every token: h [n, hidden] -> [n, vocab]."""
        r, u, kappa = self._parts(h)
        return (self.scaled_sq - (2 * kappa - kappa**2) * (u @ self.scaled.T).pow(2)) / r.pow(2)


class LabelDecoder:
    """Everything about the labels that h_last fixes: the prior log p_t, and d_y = J^T (p_t - e_y) (the
    gradient direction of label y) through <o, d_y> and ||d_y||^2 for every token y."""

    def __init__(self, head: HeadJacobian, h_last: torch.Tensor):
        self.head = head
        self.h = h_last  # [n, hidden]
        with torch.no_grad():
            self.log_prior = torch.log_softmax(head.logits(h_last).float(), -1)  # [n, vocab]
            self.b = head.norm_vjp(h_last, self.log_prior.exp() @ head.weight)  # J^T p [n, hidden]
            b_dot = head.dot_all(h_last, self.b)
            d_sq = (self.b * self.b).sum(-1, keepdim=True) - 2 * b_dot + head.sq_all(h_last)
            self.d_sq = d_sq.clamp(min=1e-30)  # [n, vocab]; a rounding below 0 for a token with p near 1

    def dot(self, o: torch.Tensor) -> torch.Tensor:
        """<o_t, d_y> for every token: o [n, hidden] -> [n, vocab]."""
        return (o * self.b).sum(-1, keepdim=True) - self.head.dot_all(self.h, o)

    def direction(self, ids: torch.Tensor) -> torch.Tensor:
        """d_y for one token per position: ids [n] -> [n, hidden]."""
        return self.b - self.head.norm_vjp(self.h, self.head.weight[ids])

    def forward_only(self) -> torch.Tensor:
        """What a node guesses without any gradient: the public model's argmax [n]."""
        return self.log_prior.argmax(-1)


# ---------------------------------------------------------------------------------------- the training step


@dataclass(frozen=True)
class GradientDefence:
    """Per-position clip of g to norm G, then N(0, (sigma G)^2 I) on every position before sending it."""

    sigma: float  # noise std per coordinate in units of G; 0 = no defence (no clip, no noise)
    clip: float  # L2 bound G per position vector
    delta: float = 1e-5  # for the equivalent per-vector epsilon (replace-one sensitivity 2G)

    @property
    def epsilon(self) -> float:
        """The forward Mechanism's epsilon whose noise std is sigma·G (math.inf for sigma 0)."""
        if self.sigma == 0:
            return math.inf
        return 2.0 * math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.sigma

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism(self.epsilon, self.delta, self.clip)

    def apply(self, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """g [S, T, hidden] -> what the client sends back (every position noised: none is public)."""
        return self.mechanism.release(g, gen, public_prefix=0)


def labelled_positions(length: int, prompt_tokens: int) -> torch.Tensor:
    """Positions whose next token carries the loss: [prompt_tokens - 1, length - 2] (BOS counts as prompt)."""
    if not 1 <= prompt_tokens < length:
        raise ValueError(f"prompt_tokens must be in [1, {length - 1}], got {prompt_tokens}")
    mask = torch.zeros(length, dtype=torch.bool)
    mask[prompt_tokens - 1 : length - 1] = True
    return mask


def loss_gradient(
    client: ClientModel, h_last: torch.Tensor, ids: torch.Tensor, prompt_tokens: int
) -> torch.Tensor:
    """d(loss)/d(h_last) [S, T, hidden] with one training step per row: the mean cross-entropy of its
    completion tokens (ClientTrainer.loss_from_hidden's loss for a one-row batch)."""
    mask = labelled_positions(ids.shape[1], prompt_tokens)
    leaf = h_last.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = client.tail(leaf[:, mask])  # [S, N, vocab]
        targets = ids[:, 1:][:, mask[:-1]]  # [S, N]
        per_row = nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
        (grad,) = torch.autograd.grad(per_row.mean(1).sum(), leaf)
    return grad


def node_stacks(model: SplitModel, ends: Sequence[int]) -> list[LayerStack]:
    """The route's nodes: node k runs layers [ends[k-1], ends[k]) (node 0 from the split), sliced out of
    the model's node layers without loading them again."""
    rest = model.rest
    if not ends or list(ends) != sorted(set(ends)) or ends[0] <= rest.start or ends[-1] != rest.end:
        raise ValueError(f"node ends {list(ends)} must increase from above {rest.start} to {rest.end}")
    starts = [rest.start, *ends[:-1]]
    return [
        LayerStack(rest.config, rest.arch, a, list(rest.layers[a - rest.start : b - rest.start]), rest.rotary)
        for a, b in zip(starts, ends, strict=True)
    ]


class LayerGraph:
    """Layers run on a leaf with the graph kept: one forward, then any number of VJPs."""

    def __init__(self, stacks: Sequence[LayerStack], hidden: torch.Tensor):
        self.input = hidden.detach().requires_grad_(True)
        positions = positions_like(hidden[..., 0])
        outputs = []
        with torch.enable_grad():
            out = self.input
            for stack in stacks:
                out = stack(out, positions)
                outputs.append(out)
        self._outputs = outputs

    @property
    def outputs(self) -> list[torch.Tensor]:
        """Each stack's output [S, T, hidden]."""
        return [o.detach() for o in self._outputs]

    def backward(self, grad_last: torch.Tensor) -> list[torch.Tensor]:
        """d(loss)/d(output of the last stack) -> d(loss)/d(input), then d(loss)/d(each stack's output)."""
        wanted = [self.input, *self._outputs[:-1]]
        grads = torch.autograd.grad(self._outputs[-1], wanted, grad_last, retain_graph=True)
        return [*grads, grad_last]


@contextmanager
def _trainable(module: nn.Module) -> Iterator[list[nn.Parameter]]:
    """The module's parameters with requires_grad on, restored afterwards (measurement only)."""
    params = list(module.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


@dataclass(frozen=True)
class ClientGradients:
    """What the client ends up with after a backward pass through the route."""

    released: torch.Tensor  # dL/dZ' [S, T, hidden], what the first node returns
    weights: list[torch.Tensor]  # dL/d(weights of the client's decoder layers), summed over the rows


def utility_cosines(clean: ClientGradients, defended: ClientGradients) -> dict[str, float]:
    """Cosines between the client's gradients without and with the defence: per row of dL/dZ' (a
    one-sequence step; mean over rows) and of the layer weight gradient summed over the rows (a batch)."""
    rows = nn.functional.cosine_similarity(
        clean.released.flatten(1).double(), defended.released.flatten(1).double(), dim=1
    )
    weights = _cosine(
        torch.cat([g.flatten() for g in clean.weights]), torch.cat([g.flatten() for g in defended.weights])
    )
    return {"grad_z_cosine": float(rows.mean()), "client_weight_grad_cosine": weights}


# ---------------------------------------------------------------------------------------- attacks


def last_node_attack(
    decoder: LabelDecoder, observed: torch.Tensor, label_count: int, defence: GradientDefence
) -> torch.Tensor:
    """The last node's labels: observed [n, hidden] (its received gradient at the labelled positions) ->
    token ids [n]. Gaussian ML with the known scale min(1/N, G/||d_y||), plus the prior when noised."""
    dot = decoder.dot(observed)  # [n, vocab]
    scale = torch.full_like(decoder.d_sq, 1.0 / label_count)
    if defence.sigma > 0:
        scale = torch.minimum(scale, defence.clip / decoder.d_sq.sqrt())
    fit = 2 * scale * dot - scale.pow(2) * decoder.d_sq  # ||o||^2 - ||o - c d_y||^2
    if defence.sigma == 0:
        return fit.argmax(-1)
    return (decoder.log_prior + fit / (2 * (defence.sigma * defence.clip) ** 2)).argmax(-1)


def _profile_decode(decoder: LabelDecoder, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels under o ≈ c d_y + noise with a free scale c >= 0 per position and the noise variance estimated
    from the best fit, plus the prior: o [n, hidden] -> (token ids [n], fitted scale [n])."""
    dot = decoder.dot(o)  # [n, vocab]
    explained = dot.clamp(min=0).pow(2) / decoder.d_sq  # ||o||^2 - min_c ||o - c d_y||^2
    total = o.pow(2).sum(-1)
    variance = (total - explained.max(-1).values).clamp(min=_VARIANCE_FLOOR * total) / o.shape[-1]
    ids = (decoder.log_prior + explained / (2 * variance[:, None])).argmax(-1)
    scale = (dot.gather(1, ids[:, None]) / decoder.d_sq.gather(1, ids[:, None]))[:, 0].clamp(min=0)
    return ids, scale


class UpstreamAttacker:
    """A node before the last, set up once per forward pass: it runs its public downstream layers on its
    own output h_k [S, T, hidden] (graph kept for the refinement VJPs) and reads h_last's label decoder."""

    def __init__(
        self,
        downstream: Sequence[LayerStack],
        head: HeadJacobian,
        own_output: torch.Tensor,
        labelled: torch.Tensor,
    ):
        self.graph = LayerGraph(downstream, own_output)
        self.labelled = labelled  # [T]
        h_last = self.graph.outputs[-1][:, labelled]
        self.decoder = LabelDecoder(head, h_last.reshape(-1, h_last.shape[-1]))

    def attack(self, observed: torch.Tensor, steps: int) -> torch.Tensor:
        """observed d(loss)/d(h_k) [S, T, hidden] -> token ids [S * labelled positions]; `steps` VJPs."""
        target = observed[:, self.labelled].reshape(-1, observed.shape[-1])
        ids, scale = _profile_decode(self.decoder, target)
        for _ in range(steps):
            guess = scale[:, None] * self.decoder.direction(ids)  # [n, hidden]: the current labels' gradient
            placed = torch.zeros_like(observed)
            placed[:, self.labelled] = guess.view(observed.shape[0], -1, observed.shape[-1])
            relayed = self.graph.backward(placed)[0][:, self.labelled].reshape_as(target)  # R^T m
            ids, scale = _profile_decode(self.decoder, guess + target - relayed)
        return ids


# ---------------------------------------------------------------------------------------- the measurement


@dataclass
class GradientConfig:
    node_ends: tuple[int, ...] = (13, 22, 30)  # each node's end layer (exclusive); node 0 starts at the split
    epsilons: tuple[float, ...] = (math.inf, 100.0)  # forward mechanism per token vector
    sigmas: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3)  # gradient noise std in units of the clip G
    delta: float = 1e-5
    prompt_tokens: int = 1  # leading tokens without loss (BOS included): 1 = the whole row is labelled
    clip_rows: int = 8  # attacker-text rows the client calibrates G on (median per-position norm)
    refine_steps: int = 1  # VJPs through the downstream layers per upstream attack
    seed: int = 0  # measurement noise only


def calibrate_gradient_clip(features: SplitFeatures, prompt_tokens: int, rows: int) -> float:
    """G: the median per-position norm of the undefended gradient on public text (noiseless forward)."""
    model = features.model
    ids = features.train_ids[:rows]
    with torch.no_grad():
        h_last = model.rest(model.head(ids), positions_like(ids))
    g = loss_gradient(model.client, h_last, ids, prompt_tokens)
    return float(g[:, labelled_positions(ids.shape[1], prompt_tokens)].norm(dim=-1).median())


@dataclass
class StepObservations:
    """One forward epsilon: every node's output, what each node receives per sigma, the defence's cost."""

    outputs: list[torch.Tensor]  # h_k of node k [S, T, hidden]
    received: list[list[torch.Tensor]]  # [sigma][node] d(loss)/d(h_k) as sent back by the client
    costs: list[dict[str, float]]  # [sigma] utility_cosines


def observe_step(
    features: SplitFeatures, stacks: Sequence[LayerStack], cfg: GradientConfig, epsilon: float, clip: float
) -> StepObservations:
    """The training step on the eval rows (one step per row) at a forward epsilon, once per gradient sigma:
    the forward mechanism and the route run once, the backward once per sigma."""
    model = features.model
    ids = features.eval_ids
    mech = Mechanism(epsilon, cfg.delta, features.clip)
    received: list[list[torch.Tensor]] = []
    costs: list[dict[str, float]] = []
    with _trainable(model.client.stack) as params, torch.enable_grad():
        z = model.client.head(ids, positions_like(ids))
        released = mech.release(z, generator(cfg.seed, "gradient", "forward", model.split, epsilon))
        route = LayerGraph(stacks, released)
        clean_g = loss_gradient(model.client, route.outputs[-1], ids, cfg.prompt_tokens)

        def backward(sent: torch.Tensor) -> tuple[ClientGradients, list[torch.Tensor]]:
            """g sent back -> (the client's gradients, what each node receives)."""
            grads = route.backward(sent)
            weights = torch.autograd.grad(released, params, grads[0], retain_graph=True)
            return ClientGradients(grads[0], list(weights)), grads[1:]

        clean, clean_nodes = backward(clean_g)
        for sigma in cfg.sigmas:
            gen = generator(cfg.seed, "gradient", "defence", model.split, epsilon, sigma)
            # sigma 0 sends g as is: that is the clean backward pass (one pass through the route saved)
            defence = GradientDefence(sigma, clip, cfg.delta)
            grads, nodes = backward(defence.apply(clean_g, gen)) if sigma else (clean, clean_nodes)
            received.append(nodes)
            costs.append(utility_cosines(clean, grads))
    return StepObservations(route.outputs, received, costs)


def measure(features: SplitFeatures, cfg: GradientConfig) -> dict[str, Any]:
    """Label recovery per node and cell (forward epsilon x gradient sigma), the defence's utility cost, and
    two baselines: the most frequent token of the public text, and the public model's argmax on h_last
    (`forward_only`: what any node reads without the gradient). Needs split >= 1 (the client trains its
    layers)."""
    model = features.model
    if model.split == 0:
        raise ValueError("split 0 leaves the client no layer to train; measure at split >= 1")
    ids = features.eval_ids
    labelled = labelled_positions(ids.shape[1], cfg.prompt_tokens)
    truth = ids[:, 1:][:, labelled[:-1]].reshape(-1)
    label_count = int(labelled.sum())
    stacks = node_stacks(model, cfg.node_ends)
    head = HeadJacobian.of(model.client)
    clip = calibrate_gradient_clip(features, cfg.prompt_tokens, cfg.clip_rows)
    defences = [GradientDefence(sigma, clip, cfg.delta) for sigma in cfg.sigmas]
    route = [(a, b) for a, b in zip([model.split, *cfg.node_ends[:-1]], cfg.node_ends, strict=True)]
    names = [f"node{k} [{a},{b})" for k, (a, b) in enumerate(route)]
    cells: list[dict[str, Any]] = []
    for epsilon in cfg.epsilons:
        step = observe_step(features, stacks, cfg, epsilon, clip)
        recovery: list[list[float]] = [[] for _ in defences]
        for k in range(len(stacks) - 1):
            attacker = UpstreamAttacker(stacks[k + 1 :], head, step.outputs[k], labelled)
            for i, seen in enumerate(step.received):
                recovery[i].append(_rate(attacker.attack(seen[k], cfg.refine_steps), truth))
            del attacker
        h_last = step.outputs[-1][:, labelled]
        last = LabelDecoder(head, h_last.reshape(-1, h_last.shape[-1]))
        forward_only = _rate(last.forward_only(), truth)
        for i, (defence, seen) in enumerate(zip(defences, step.received, strict=True)):
            observed = seen[-1][:, labelled].reshape(-1, h_last.shape[-1])
            recovery[i].append(_rate(last_node_attack(last, observed, label_count, defence), truth))
            cells.append(
                {
                    "epsilon": _json_number(epsilon),
                    "sigma": defence.sigma,
                    "gradient_epsilon": _json_number(defence.epsilon),
                    "recovery": dict(zip(names, recovery[i], strict=True)),
                    "forward_only": forward_only,
                    **step.costs[i],
                }
            )
    public = features.train_ids[:, 1:].reshape(-1)
    return {
        "route": [list(pair) for pair in route],
        "rows": int(ids.shape[0]),  # one training step each; the weight-gradient cosine sums them
        "labels": int(truth.numel()),
        "labels_per_step": label_count,
        "gradient_clip": clip,
        "forward_clip": features.clip,
        "delta": cfg.delta,
        "most_frequent_token": _rate(torch.full_like(truth, int(torch.bincount(public).argmax())), truth),
        "cells": cells,
    }


def _rate(guess: torch.Tensor, truth: torch.Tensor) -> float:
    return float((guess == truth).double().mean())


def _json_number(value: float) -> float | str:
    return "inf" if math.isinf(value) else float(value)
