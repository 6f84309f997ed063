"""Split fine-tuning over the marketplace vs local training of the same LoRA, measured in the same run.

Starts a local chain, deploys, registers SmolLM2-135M-Instruct and starts three real node processes
(one shard each, one torch thread each). The client trains a rank-8 LoRA on its layers 0-3 through the
route (one sequence per step, AdamW, gradient clipping at 1.0). The baseline trains the same LoRA, from
the same initial weights, on the same examples in the same order, in the unsplit Hugging Face model
with peft, in this process. Prints one JSON object:

- seconds per training step, split vs local, and their ratio (target <= 1.25), first step excluded;
- the loss of every step in both runs (they follow each other: same math, no DP noise);
- where a split step's time goes: client compute vs the route (forward + backward round trips);

and writes both loss curves to a PNG (--plot, default bench/results/training_loss.png).

Run: .venv/bin/python bench/bench_training.py [--examples 32] [--epochs 1] [--lr 2e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from client_sdk import Client
from client_sdk.adapters import DEFAULT_LORA_TARGETS, SOFT_PROMPT_KEY
from client_sdk.dataset import load_examples
from client_sdk.finetune import TrainingSession, batches
from client_sdk.options import TrainOptions
from splitmesh_cli.localnet import CLIENT_KEY, SPLIT, start_market, stop_market

ROOT = Path(__file__).resolve().parent.parent


def local_training(
    model_dir: str, state: dict[str, torch.Tensor], plan: list[list[Any]], opts: TrainOptions
) -> tuple[list[float], list[float]]:
    """The same LoRA in the unsplit model: (losses, seconds per step)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lora = LoraConfig(
        r=opts.lora_rank,
        lora_alpha=opts.lora_alpha,
        target_modules=list(DEFAULT_LORA_TARGETS["llama"]),
        layers_to_transform=list(range(SPLIT)),
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, lora)
    loaded = set_peft_model_state_dict(peft_model, {k: v for k, v in state.items() if k != SOFT_PROMPT_KEY})
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr)
    losses, seconds = [], []
    for epoch in plan:
        for batch in epoch:
            n = int(batch.attention_mask[0].sum())
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            out = peft_model(input_ids=batch.input_ids[:, :n], labels=batch.labels[:, :n])
            out.loss.backward()
            if opts.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
            optimizer.step()
            seconds.append(time.perf_counter() - started)
            losses.append(float(out.loss))
    return losses, seconds


def plot(split: list[float], local: list[float], path: Path, ratio: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(range(1, len(local) + 1), local, label="local (unsplit model + peft LoRA)", color="#9aa5b1", lw=3)
    ax.plot(
        range(1, len(split) + 1),
        split,
        label="split over the marketplace (3 node processes)",
        color="#2563eb",
    )
    ax.set_xlabel("training step (one sequence)")
    ax.set_ylabel("cross-entropy on the completion")
    ax.set_title(f"SmolLM2-135M, LoRA r=8 on layers 0-3: split step = {ratio:.2f}x local step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--examples", type=int, default=32, help="examples of the shipped dataset (default 32)"
    )
    parser.add_argument("--epochs", type=int, default=1, help="passes over them (default 1)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    parser.add_argument(
        "--node-threads", type=int, default=2, help="torch threads per node process (default 2: the cores)"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "bench" / "results" / "training_loss.png")
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    examples = load_examples()[: args.examples]
    opts = TrainOptions(lr=args.lr, split=SPLIT, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-bench-train-"))
    log("starting chain, deploying, starting 3 node processes ...")
    running = start_market(tmp, threads=args.node_threads)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, market=running.deployment.market)
        prepared = client.prepare(opts.split)
        trainer = prepared.adapters_for(opts)
        initial = {k: v.clone() for k, v in trainer.adapter_state_dict().items()}
        plan = batches(examples, client.tokenizer, opts, args.epochs)
        budget = sum(2 * int(b.attention_mask.sum()) for epoch in plan for b in epoch)
        log(f"split training: {sum(len(e) for e in plan)} steps through the route ...")
        with TrainingSession(client, prepared, trainer, opts, budget) as session:
            for epoch in plan:
                for batch in epoch:
                    session.step(batch)
        report = session.report(args.epochs)
        split_s = [s.seconds for s in session.history]
        route_s = [s.route_seconds for s in session.history]
    finally:
        stop_market(running)
    log("local training of the same LoRA in the unsplit model ...")
    local_losses, local_s = local_training(client.model_dir, initial, plan, opts)

    split_step, local_step = statistics.median(split_s[1:]), statistics.median(local_s[1:])
    ratio = split_step / local_step
    plot(report.losses, local_losses, args.plot, ratio)
    tokens = [int(b.attention_mask.sum()) for epoch in plan for b in epoch]
    result = {
        "model": "SmolLM2-135M-Instruct fp32",
        "plan": running.plan,
        "lora": {"rank": opts.lora_rank, "layers": f"0-{SPLIT - 1}", "trainable": trainer.num_trainable()},
        "steps": len(split_s),
        "tokens_per_step_median": statistics.median(tokens),
        "split_seconds_per_step": round(split_step, 4),
        "local_seconds_per_step": round(local_step, 4),
        "split_over_local": round(ratio, 3),
        "target_split_over_local": 1.25,
        "split_route_seconds_per_step": round(statistics.median(route_s[1:]), 4),
        "split_client_seconds_per_step": round(
            statistics.median(a - b for a, b in zip(split_s[1:], route_s[1:], strict=True)), 4
        ),
        "loss_first": {"split": report.losses[0], "local": local_losses[0]},
        "loss_last10_mean": {
            "split": round(statistics.mean(report.losses[-10:]), 4),
            "local": round(statistics.mean(local_losses[-10:]), 4),
        },
        "max_loss_difference": round(
            max(abs(a - b) for a, b in zip(report.losses, local_losses, strict=True)), 6
        ),
        "losses": {
            "split": [round(x, 5) for x in report.losses],
            "local": [round(x, 5) for x in local_losses],
        },
        "job_id": report.job_id,
        "billed_tokens": report.tokens,
        "plot": str(args.plot),
        "machine": {
            "cpus": os.cpu_count(),
            "node_threads": args.node_threads,
            "client_threads": torch.get_num_threads(),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
