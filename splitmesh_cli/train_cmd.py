"""`splitmesh train`: fine-tune the client's adapter through the marketplace (split fine-tuning).

Without --rpc-url it starts its own marketplace like `splitmesh demo` (a hardhat node, a deployment, one
`splitmesh node run` process per shard), trains, waits for the nodes' commitments, settles the job and
shows the payments. With --rpc-url it acts as a client of a running marketplace.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitmesh.errors import ConfigError
from splitmesh_cli.keys import add_key_args
from splitmesh_cli.output import Output, eth, short

if TYPE_CHECKING:
    from client_sdk import Client
    from splitmesh_cli.localnet import RunningMarket

HELD_OUT = "instructions_heldout.jsonl"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter on the client through the marketplace's frozen shards",
        description=__doc__
        + '\nData: one JSON object per line with string fields "prompt" and "completion"; the loss is '
        "computed on the completion only, on the client.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help='JSONL file of {"prompt", "completion"} (default: the shipped dataset)')
    p.add_argument("--limit", type=int, help="use only the first N examples")
    p.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on the client's layers (0 = none)")
    p.add_argument("--soft-prompt", type=int, default=0, help="trainable prompt vectors (default 0)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (default 256)")
    p.add_argument(
        "--epsilon", type=float, default=math.inf, help="DP epsilon per released vector (default inf)"
    )
    p.add_argument("--delta", type=float, default=1e-5, help="DP delta per released vector (default 1e-5)")
    p.add_argument("--clip", type=float, help="L2 clip per vector (default: median norm on public text)")
    p.add_argument(
        "--seed",
        type=int,
        help="adapter init and data order (default: fresh); the DP noise is never seeded",
    )
    p.add_argument("--save-adapter", type=Path, help="write the trained adapter to this directory")
    p.add_argument(
        "--eval",
        action="append",
        metavar="PROMPT",
        help="prompt to generate before and after training (repeatable; default: the shipped held-out "
        "prompts when --data is not given)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the before/after generations")
    p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--split", type=int, default=4, help="decoder layers the client runs (default 4)")
    p.add_argument("--nodes", type=int, default=3, help="node shards/processes of a local run (default 3)")
    p.add_argument("--rpc-url", help="a running marketplace's chain (default: start a local one)")
    p.add_argument("--market", help="JobMarket address (env SPLITMESH_MARKET); default: remembered one")
    add_key_args(p, key_help="the client's key (env SPLITMESH_PRIVATE_KEY); dev chains: a dev key")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    out = Output(args.json)
    examples, eval_prompts = _load_data(args, out)
    with contextlib.ExitStack() as stack:
        client, local = _connect(args, out, stack)
        before = _generate(client, eval_prompts, args.split, out, "before")

        eps = "inf (no noise)" if math.isinf(args.epsilon) else f"{args.epsilon:g}"
        out.step(f"training: LoRA rank {args.lora_rank}, lr {args.lr:g}, epsilon {eps}, split {args.split}")
        started = time.monotonic()
        report = client.train(
            examples,
            epochs=args.epochs,
            lr=args.lr,
            progress=True,
            epsilon=args.epsilon,
            delta=args.delta,
            clip=args.clip,
            split=args.split,
            seed=args.seed,
            max_length=args.max_length,
            lora_rank=args.lora_rank,
            soft_prompt_tokens=args.soft_prompt,
        )
        out.info(
            f"    job {report.job_id}: {report.steps} steps, loss {report.loss_first:.3f} -> "
            f"{report.loss_last:.3f} (mean of the last 10: {_mean(report.losses[-10:]):.3f}); "
            f"{report.tokens} tokens billed (forward + backward); {report.seconds_per_step:.2f} s/step"
        )
        if report.commitment_problem:
            out.info(f"    warning: {report.commitment_problem}")
        privacy = report.privacy
        if math.isinf(args.epsilon):
            out.info("    privacy: no noise (epsilon inf); pass --epsilon to noise what the nodes see")
        else:
            out.info(
                f"    privacy over {privacy['tokens']} released vectors: epsilon "
                f"{privacy['composed_epsilon']} at delta {privacy['composed_delta']} ({privacy['method']})"
            )
        after = _generate(client, eval_prompts, args.split, out, "after")
        adapter = None
        if args.save_adapter:
            adapter = str(client.save_adapter(args.save_adapter, args.split))
            out.info(f"    adapter saved to {adapter}")
        settlement = _settle(client, report.job_id, local, out)
    result: dict[str, Any] = {
        "job_id": report.job_id,
        "job_ids": [report.job_id],
        "loss_first": report.loss_first,
        "loss_last": report.loss_last,
        "loss_last10_mean": _mean(report.losses[-10:]),
        "losses": report.losses,
        "steps": report.steps,
        "epochs": report.epochs,
        "examples": len(examples),
        "tokens": report.tokens,
        "epsilon": report.epsilon,
        "privacy": report.privacy,
        "seconds_per_step": report.seconds_per_step,
        "seconds": round(time.monotonic() - started, 2),
        "route": report.route,
        "commitment_problem": report.commitment_problem,
        "eval": [
            {"prompt": p, "before": b, "after": a}
            for p, b, a in zip(eval_prompts or [], before, after, strict=True)
        ],
        "adapter": adapter,
        "settlement": settlement,
    }
    out.result(result)
    return 0


def _load_data(args: argparse.Namespace, out: Output) -> tuple[list[dict[str, str]], list[str] | None]:
    """The training examples and the prompts to generate before and after training."""
    from client_sdk.dataset import load_examples, shipped_dataset

    if args.epochs < 1 or (args.limit is not None and args.limit < 1):
        raise ConfigError("--epochs and --limit must be at least 1")
    examples = load_examples(args.data)[: args.limit]
    eval_prompts = args.eval
    if args.no_eval:
        eval_prompts = []
    elif eval_prompts is None and args.data is None:
        eval_prompts = [e["prompt"] for e in load_examples(shipped_dataset(HELD_OUT))]
    out.step(f"{len(examples)} examples from {args.data or shipped_dataset()}, {args.epochs} epoch(s)")
    return examples, eval_prompts


def _connect(
    args: argparse.Namespace, out: Output, stack: contextlib.ExitStack
) -> tuple[Client, RunningMarket | None]:
    """The client on --rpc-url's marketplace, or on a local one started (and stopped with `stack`);
    (client, the local marketplace or None)."""
    from client_sdk import Client
    from splitmesh_cli.common import settings_from

    settings = settings_from(args)
    local = None
    if settings.rpc_url is None:
        from splitmesh_cli.localnet import CLIENT_KEY, start_market, stop_market

        out.step(f"starting a local marketplace: hardhat node, deployment, {args.nodes} node processes")
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmesh-train-")))
        local = start_market(home, args.model, args.split, args.nodes)
        stack.callback(stop_market, local)
        rpc_url, key = local.rpc_url, CLIENT_KEY
        market: str | None = local.deployment.market
        out.info(f"    chain {rpc_url}; nodes: " + ", ".join(short(n.address) for n in local.nodes))
    else:
        rpc_url, market = str(settings.rpc_url), settings.market
        key = settings.private_key or _dev_client_key(rpc_url)
    return Client(rpc_url, key, args.model, market=market), local


def _dev_client_key(rpc_url: str) -> str:
    from splitmesh.chain import rpc_chain_id
    from splitmesh_cli.common import DEV_CHAIN_IDS
    from splitmesh_cli.localnet import CLIENT_KEY

    if rpc_chain_id(rpc_url) in DEV_CHAIN_IDS:
        return CLIENT_KEY
    raise ConfigError("pass the client's key with --keystore FILE (or SPLITMESH_PRIVATE_KEY)")


def _generate(client: Any, prompts: list[str] | None, split: int, out: Output, when: str) -> list[str]:
    texts = []
    for prompt in prompts or []:
        text = client.generate(prompt, max_new_tokens=24, split=split, seed=0).text
        out.info(f"    {when:6s} | {prompt} -> {text.strip()!r}")
        texts.append(text)
    return texts


def _settle(client: Any, job_id: int, local: Any, out: Output) -> dict[str, Any] | None:
    """Local run: wait for the commits, move the clock past the challenge window, finalize, show pay."""
    if local is None:
        out.info(f"    the nodes commit job {job_id}; `splitmesh jobs show {job_id}` follows it")
        return None
    from splitmesh.chain import JobStatus
    from splitmesh.chain.launcher import advance_time

    out.step("settlement: the nodes commit, the challenge window passes, the job is finalized")
    local.wait_status(job_id, JobStatus.COMMITTED, timeout=90)
    advance_time(local.w3, local.market.parameters()["challenge_window"] + 1)
    s = client.finalize(job_id)
    for node, paid in s.paid_wei.items():
        out.info(f"    {short(node)} paid {eth(paid)} for {s.billed_tokens} tokens")
    out.info(f"    escrow {eth(s.escrow_wei)} = paid {eth(s.total_paid_wei)} + refund {eth(s.refund_wei)}")
    return {
        "status": s.status,
        "billed_tokens": s.billed_tokens,
        "paid_wei": s.paid_wei,
        "total_paid_wei": s.total_paid_wei,
        "refund_wei": s.refund_wei,
        "escrow_wei": s.escrow_wei,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)
