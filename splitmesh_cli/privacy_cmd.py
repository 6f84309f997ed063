"""`splitmesh privacy`: measure what the DP noise costs and what it hides, for a grid of splits and epsilons.

For each split k (decoder layers the client runs) and per-token epsilon, the client's release mechanism
(clip every token vector to the median norm C, add Gaussian noise s = 2C sqrt(2 ln(1.25/delta)) / epsilon;
a public BOS is sent as is) is replayed on public text with a seeded generator, and it reports:

utility (1.0 = no loss):
  agree    next-token agreement: share of positions where the noised pipeline's argmax equals the
           noiseless model's, teacher-forced on held-out text
  ppl x    perplexity ratio, noised / noiseless, on the same text (1.0 = no loss; larger is worse)
  greedy   share of the noiseless greedy continuation of a few fixed prompts (8 tokens each) the noised
           pipeline reproduces before its first different token

prompt leakage (token recovery on held-out text the attacker never trained on; the attacker knows C,
s, the split and the open weights):
  nearest  nearest row of a table of client-layer outputs, one per candidate token right after BOS
  learned  a linear (Gaussian discriminant) classifier fitted on public text, noise-aware per epsilon
  optim    soft tokens optimized so that the client layers reproduce the observed noised vectors
  best     the best of the three: the headline prompt_recovery
  At split k > 0 the attacker's candidates are the 8192 lowest token ids plus every token of its training
  text; eval tokens outside them count as misses (the JSON `details` give this coverage). optim runs on
  the first 4 eval rows (124 tokens) only: it is the slow one, and the noisiest estimate.

output leakage (the last node applies the public final norm + LM head to its own output):
  out/g    share of the client's greedy tokens the last node reads exactly (always 1.0: the noise on Z
           does not hide the output)
  out/s    share of tokens a client samples (temperature 1, top-p 0.9) equal to the node's argmax guess

The JSON object is the table (format, model, weights_hash, entries, ...) plus `details` per cell (noise
std, candidate count and coverage, tokens the optimization attack saw) and `seconds`.

The noise here is a seeded test-only stream (--seed): the same seed gives the same report. Production
noise comes from the OS CSPRNG and is never seeded. --write-table stores the result where the SDK's
receipts and the coordinator read the measured leakage (splitmesh/data/leakage_table.json).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from splitmesh.errors import ConfigError
from splitmesh_cli.output import Output


def _epsilon(text: str) -> float:
    value = math.inf if text.lower() in ("inf", "infinity") else float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"epsilon must be > 0 or inf, got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "privacy",
        help="measure utility and prompt/output leakage of the DP noise for splits x epsilons",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--split",
        type=int,
        nargs="+",
        default=[2, 4],
        metavar="K",
        help="client layer counts (default 2 4; 0 = the client sends embeddings)",
    )
    p.add_argument(
        "--epsilons",
        type=_epsilon,
        nargs="+",
        default=[math.inf, 1000.0, 300.0, 100.0, 30.0, 10.0],
        metavar="EPS",
        help="per-token epsilons; 'inf' = no noise (default inf 1000 300 100 30 10)",
    )
    p.add_argument("--delta", type=float, default=1e-5, help="per-token delta (default 1e-5)")
    p.add_argument(
        "--text",
        type=Path,
        action="append",
        metavar="FILE",
        help="your own eval text (UTF-8, paragraphs separated by blank lines; repeatable): replaces the "
        "shipped held-out text; the attackers still train on the shipped public text only",
    )
    p.add_argument(
        "--eval-tokens", type=int, default=496, help="held-out tokens measured (default 496; more = slower)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the measurement noise and sampling (default 0)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    p.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write leakage vs utility, one curve per split"
    )
    p.add_argument(
        "--write-table",
        action="store_true",
        help="store the result as the shipped table splitmesh/data/leakage_table.json (shipped text only)",
    )
    p.set_defaults(func=cmd_privacy)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["splitmesh privacy"]
    if args.model:
        parts.append(f"--model {Path(args.model).name}")
    parts.append("--split " + " ".join(map(str, args.split)))
    parts.append("--epsilons " + " ".join("inf" if math.isinf(e) else f"{e:g}" for e in args.epsilons))
    parts.append(f"--delta {args.delta:g} --eval-tokens {args.eval_tokens} --seed {args.seed}")
    return " ".join(parts)


def cmd_privacy(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from client_sdk.leakage.report import ReportConfig, plot, run_report, write_table

    if args.write_table and args.text:
        raise ConfigError("--write-table ships a table measured on the shipped text; drop --text")
    if args.eval_tokens < 1 or any(k < 0 for k in args.split):
        raise ConfigError("--eval-tokens must be >= 1 and every --split >= 0")
    for path in args.text or []:
        if not path.is_file():
            raise ConfigError(f"--text {path}: no such file")
    cfg = ReportConfig(
        model=args.model,
        splits=tuple(args.split),
        epsilons=tuple(args.epsilons),
        delta=args.delta,
        seed=args.seed,
        eval_tokens=args.eval_tokens,
        texts=list(args.text or []),
        command=_command_line(args),
    )
    out = Output(args.json)
    with tqdm(total=len(cfg.splits) * len(cfg.epsilons), desc="cells", file=sys.stderr, unit="cell") as bar:
        report = run_report(
            cfg, progress=lambda line: bar.write(line, file=sys.stderr), cell_done=lambda: bar.update(1)
        )
    _print_table(out, report)
    if args.plot:
        out.info(f"plot: {plot(report, args.plot)}")
    if args.write_table:
        out.info(f"table: {write_table(report)}")
    out.info(f"{report['eval_tokens']} eval tokens, {report['seconds']} s")
    out.result(report)
    return 0


def _print_table(out: Output, report: dict[str, Any]) -> None:
    def pct(value: float) -> str:
        return f"{100 * value:.0f}%"

    rows = []
    for e in report["entries"]:
        rec = e["prompt_recovery"]
        rows.append(
            [e["split"], e["epsilon"], pct(e["next_token_agreement"]), f"{e['perplexity_ratio']:.3g}",
             pct(e["greedy_prefix_kept"]), pct(rec["nearest"]), pct(rec["learned"]), pct(rec["optimization"]),
             f"{pct(rec['best'])} ({rec['best_attack']})", pct(e["output_recovery_greedy"]),
             pct(e["output_recovery_sampled"])]
        )  # fmt: skip
    headers = [
        "split",
        "eps",
        "agree",
        "ppl x",
        "greedy",
        "nearest",
        "learned",
        "optim",
        "best",
        "out/g",
        "out/s",
    ]
    out.table(headers, rows)
