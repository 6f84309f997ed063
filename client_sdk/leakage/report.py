"""The leakage report: utility and leakage for every (split, epsilon) of a grid, and the shipped table."""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import splitmesh
from client_sdk.leakage import attacks, utility
from client_sdk.leakage.corpus import Corpus
from client_sdk.leakage.features import SplitFeatures, chunk_tokens, load_tokenizer, reference_logits
from client_sdk.leakage.mechanism import Mechanism, generator
from splitmesh.leakage_table import TABLE_FORMAT, TABLE_RESOURCE
from splitmesh.model.identity import weights_identity
from splitmesh.model.loader import ModelSpec

# Where splitmesh.leakage_table (the receipts' and the coordinator's reader) looks for the shipped table.
TABLE_FILE = Path(splitmesh.__file__).resolve().parent / TABLE_RESOURCE
ATTACKS = ("nearest", "learned", "optimization")
DEFAULT_SPLITS = (2, 4)
DEFAULT_EPSILONS = (math.inf, 1000.0, 300.0, 100.0, 30.0, 10.0)


@dataclass
class ReportConfig:
    model: str | None = None  # local HF directory; None = the converted SmolLM2-135M-Instruct
    splits: tuple[int, ...] = DEFAULT_SPLITS  # decoder layers on the client
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS  # per token vector; math.inf = no noise
    delta: float = 1e-5  # per token vector
    seed: int = 0  # seeds the measurement noise and sampling (never production noise)
    seq_len: int = 32  # tokens per row, BOS included
    eval_tokens: int = 496  # private eval positions (rounded down to whole rows)
    train_tokens: int = 15500  # the attacker's training positions
    frequent: int = 8192  # lowest token ids in the attacker's candidate table (split > 0)
    opt_rows: int = 4  # eval rows the optimization attack inverts (it is the slow one)
    opt_steps: int = 20  # Adam steps per epsilon
    opt_topk: int = 32  # candidates per position the optimization chooses among
    gen_tokens: int = 8  # greedy tokens per fixed prompt
    texts: list[Path] = field(default_factory=list)  # user eval text files (replace the shipped eval text)
    command: str = "splitmesh privacy"  # recorded as generated_by


Progress = Callable[[str], None]  # one line about the stage starting


def _eval_texts(cfg: ReportConfig, corpus: Corpus) -> list[str]:
    if not cfg.texts:
        return corpus.eval
    return [p for path in cfg.texts for p in path.read_text().split("\n\n") if p.strip()]


def _json_epsilon(epsilon: float) -> float | str:
    return "inf" if math.isinf(epsilon) else float(epsilon)


def run_report(
    cfg: ReportConfig, progress: Progress = lambda _: None, cell_done: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """The report object: the table's fields, plus `details` (per cell extras) and `seconds`."""
    started = time.monotonic()
    torch.manual_seed(cfg.seed)  # nothing should draw from the global generator; pin it anyway
    spec = ModelSpec.open(cfg.model)
    tokenizer = load_tokenizer(spec)
    bos = int(getattr(spec.config, "bos_token_id", None) or 0)
    corpus = Corpus.load()
    train_ids = chunk_tokens(tokenizer, corpus.train, cfg.seq_len, cfg.train_tokens, bos)
    eval_ids = chunk_tokens(tokenizer, _eval_texts(cfg, corpus), cfg.seq_len, cfg.eval_tokens, bos)
    progress(
        f"model {spec.source.name}: {train_ids[:, 1:].numel()} train, {eval_ids[:, 1:].numel()} eval tokens"
    )
    reference = utility.Reference.from_logits(reference_logits(spec, eval_ids), eval_ids)
    prompts = utility.prompt_ids(tokenizer, bos)
    entries: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for split in cfg.splits:
        progress(f"split {split}: client features and the attacker's candidate table")
        features = SplitFeatures.compute(spec, split, tokenizer, train_ids, eval_ids)
        cand = attacks.build_candidates(features, cfg.frequent, bos)
        noiseless = Mechanism(math.inf, cfg.delta, features.clip)
        clean = utility.generate(features, noiseless, prompts, cfg.gen_tokens, generator(cfg.seed, "unused"))
        for epsilon in cfg.epsilons:
            progress(f"split {split} epsilon {epsilon:g}")
            entry, detail = _cell(cfg, features, cand, reference, prompts, clean, epsilon, bos)
            entries.append(entry)
            details.append(detail)
            cell_done()
    return {
        "format": TABLE_FORMAT,
        "generated_by": cfg.command,
        "generated_at": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "model": spec.source.path.name,
        "weights_hash": "0x" + weights_identity(spec.source).model_hash.hex(),
        "delta": cfg.delta,
        "seed": cfg.seed,
        "eval_tokens": int(eval_ids[:, 1:].numel()),
        "entries": entries,
        "details": details,
        "seconds": round(time.monotonic() - started, 1),
    }


def _cell(
    cfg: ReportConfig,
    features: SplitFeatures,
    cand: attacks.Candidates,
    reference: utility.Reference,
    prompts: torch.Tensor,
    clean: utility.Generated,
    epsilon: float,
    bos: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    split = features.model.split
    mech = Mechanism(epsilon, cfg.delta, features.clip)
    tf = utility.teacher_forced(
        features,
        mech,
        reference,
        generator(cfg.seed, "utility", split, epsilon),
        generator(cfg.seed, "sample", split, epsilon),
    )
    run = utility.generate(
        features, mech, prompts, cfg.gen_tokens, generator(cfg.seed, "generate", split, epsilon)
    )

    # The attacker's own noised copy of the eval rows: independent of the utility noise above.
    released = mech.release(features.eval_z, generator(cfg.seed, "attack", split, epsilon))
    truth = attacks.private_vectors(features.eval_ids[..., None]).view(-1)
    flat = attacks.private_vectors(released)
    rows = released[: cfg.opt_rows]
    recovery = {
        "nearest": _rate(attacks.nearest(flat, cand, mech), truth),
        "learned": _rate(attacks.learned(flat, cand, mech), truth),
        "optimization": _rate(
            attacks.optimization(
                features.model, rows, cand, mech, bos, steps=cfg.opt_steps, topk=cfg.opt_topk
            ),
            truth[: rows.shape[0] * (rows.shape[1] - 1)],
        ),
    }
    best_attack = max(ATTACKS, key=lambda name: recovery[name])
    entry = {
        "split": split,
        "mechanism": "plain",
        "epsilon": _json_epsilon(epsilon),
        "clip": features.clip,
        "next_token_agreement": tf.next_token_agreement,
        "perplexity_ratio": tf.perplexity_ratio,
        "greedy_prefix_kept": utility.prefix_kept(clean.client_tokens, run.client_tokens),
        "prompt_recovery": {**recovery, "best": recovery[best_attack], "best_attack": best_attack},
        "output_recovery_greedy": float((run.node_guesses == run.client_tokens).double().mean()),
        "output_recovery_sampled": tf.output_recovery_sampled,
    }
    detail = {
        "split": split,
        "epsilon": _json_epsilon(epsilon),
        "noise_std": mech.std,
        "candidates": len(cand.ids),
        "candidate_coverage": float(torch.isin(truth, cand.ids).double().mean()),
        "optimization_tokens": rows.shape[0] * (rows.shape[1] - 1),
    }
    return entry, detail


def _rate(guess: torch.Tensor, truth: torch.Tensor) -> float:
    return float((guess == truth).double().mean())


TABLE_KEYS = (
    "format",
    "generated_by",
    "generated_at",
    "model",
    "weights_hash",
    "delta",
    "seed",
    "eval_tokens",
    "entries",
)


def table_of(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in TABLE_KEYS}


def write_table(report: dict[str, Any], path: Path = TABLE_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table_of(report), indent=1) + "\n")
    return path


def plot(report: dict[str, Any], path: Path, splits: Iterable[int] | None = None) -> Path:
    """Leakage (best prompt recovery, x) against utility (next-token agreement, y), one curve per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    wanted = sorted({e["split"] for e in report["entries"]} if splits is None else set(splits))
    for row, split in enumerate(wanted):
        cells = [e for e in report["entries"] if e["split"] == split]
        xs = [e["prompt_recovery"]["best"] for e in cells]
        ys = [e["next_token_agreement"] for e in cells]
        ax.plot(xs, ys, marker="o", label=f"split {split}")
        for e, x, y in zip(cells, xs, ys, strict=True):
            label = "ε=inf" if e["epsilon"] == "inf" else f"ε={e['epsilon']:g}"
            offset = (6, 4 - 12 * (row % 2))  # alternate sides so two curves' labels do not overlap
            ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=f"C{row}")
    ax.set_xlabel("prompt leakage: best attack's token recovery")
    ax.set_ylabel("utility: next-token agreement with the noiseless model")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{report['model']}: per-token DP, delta {report['delta']:g}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
