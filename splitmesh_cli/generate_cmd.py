"""`splitmesh generate "PROMPT"` and `splitmesh chat`: ask a running marketplace, from the command line.

Both run the client SDK: the embeddings and first layers locally, the DP noise (epsilon), a job with
escrow matched on-chain, the answer streamed token by token. Each job's cost and privacy are printed;
`chat` keeps the conversation (the model's chat template over every turn) and, on exit, settles the
jobs whose challenge window has passed and says when the others can be.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from splitmesh.errors import ConfigError, SplitmeshError
from splitmesh_cli.common import add_chain_args, add_device_args, device_options, settings_from
from splitmesh_cli.output import Output, eth

EPSILON_HELP = (
    "DP budget per token for the activations sent to the nodes: 'inf' (default: no noise; the first node "
    "can read the prompt from them), or a number (smaller = more noise); `splitmesh privacy` shows what "
    "each value leaks and costs in answer quality"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = sub.add_parser(
        "generate", help="one private generation on a running marketplace", description=__doc__
    )
    gen.add_argument("prompt", help="the prompt (the chat template is applied when the model has one)")
    chat = sub.add_parser(
        "chat", help="an interactive conversation on a running marketplace", description=__doc__
    )
    for p in (gen, chat):
        p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
        p.add_argument("--epsilon", type=parse_epsilon, default=math.inf, help=EPSILON_HELP)
        p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--split", type=int, help="layers run locally (default: the smallest registered)")
        p.add_argument(
            "--max-price", type=int, help="wei per token per hop (default: the highest in the pools)"
        )
        add_device_args(p, client=True)
        add_chain_args(p, rpc_required=True)
    gen.set_defaults(func=cmd_generate)
    chat.set_defaults(func=cmd_chat)


def parse_epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"epsilon is a positive number or 'inf', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"epsilon must be positive, got {text!r}")
    return value


def client_from(args: argparse.Namespace) -> Any:
    from client_sdk import Client
    from splitmesh.chain import rpc_chain_id
    from splitmesh.model.device import resolve_device
    from splitmesh_cli.keys import DEV_CHAIN_IDS
    from splitmesh_cli.localnet import CLIENT_KEY

    resolve_device(getattr(args, "device", None))  # an absent GPU: refused before any chain call
    settings = settings_from(args)
    key = settings.private_key
    if key is None:
        if rpc_chain_id(str(settings.rpc_url)) not in DEV_CHAIN_IDS:
            raise ConfigError("pass the client's key with --keystore FILE (see `splitmesh account new`)")
        key = CLIENT_KEY  # a dev chain: the harness's client account
    return Client(str(settings.rpc_url), key, args.model, market=settings.market, **device_options(args))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epsilon": args.epsilon,
        "temperature": args.temperature,
        "split": args.split,
        "max_price_per_token": args.max_price,
    }


def cost_of(receipt: Any, hop_fee: int) -> int:
    """Wei the job costs at most once settled: each hop's price x billed tokens + the hop fee."""
    return int(receipt.cost_wei(hop_fee))


def _ask(client: Any, prompt: Any, args: argparse.Namespace, out: Output) -> Any:
    """Stream one answer to the terminal (stdout unless --json); the finished Generation."""
    from client_sdk.client import Generation

    result = None
    for event in client.stream(prompt, args.max_new_tokens, **_options(args)):
        if isinstance(event, Generation):
            result = event
        elif not out.as_json:
            print(event.text, end="", flush=True)
    if not out.as_json:
        print()
    assert result is not None
    return result


def _summary(client: Any, generation: Any) -> dict[str, Any]:
    receipt = generation.receipt
    privacy = receipt.privacy
    return {
        "job_id": receipt.job_id,
        "text": generation.text,
        "prompt_tokens": receipt.prompt_tokens,
        "generated_tokens": receipt.generated_tokens,
        "billed_tokens": receipt.billed_tokens,
        "cost_wei": cost_of(receipt, client.market.hop_fee()),
        "escrow_wei": receipt.escrow_wei,
        "route": [hop.node for hop in receipt.route],
        "epsilon": privacy.get("per_token_epsilon"),
        "leakage": privacy.get("leakage"),
        "exposure": privacy.get("exposure"),
        "commitment_problem": receipt.commitment_problem,
    }


def _print_job(out: Output, row: dict[str, Any]) -> None:
    from client_sdk.disclosure import sentence

    eps = row["epsilon"]
    said = sentence(row["leakage"]) if isinstance(row["leakage"], dict) else None
    out.info(
        f"  [job {row['job_id']}: {row['generated_tokens']} tokens, at most {eth(row['cost_wei'])} "
        f"of {eth(row['escrow_wei'])} escrow; epsilon {eps}]"
    )
    if said:
        out.info(f"  [{said}]")
    if row["commitment_problem"]:
        out.info(f"  [warning: {row['commitment_problem']}]")


def cmd_generate(args: argparse.Namespace) -> int:
    out = Output(args.json)
    client = client_from(args)
    generation = _ask(client, args.prompt, args, out)
    row = _summary(client, generation)
    _print_job(out, row)
    out.info(f"  the nodes commit; the job can be finalized after the challenge window: "
             f"`splitmesh jobs show {row['job_id']} --rpc-url {args.rpc_url}`")  # fmt: skip
    out.result(row)
    return 0


def settle_all(client: Any, job_ids: list[int], out: Output) -> list[dict[str, Any]]:
    """Finalize each job that can be; say why the others can't yet."""
    from client_sdk.errors import NotSettled

    results = []
    for job_id in job_ids:
        try:
            settlement = client.finalize(job_id)
        except NotSettled as exc:
            out.info(
                f"  job {job_id}: not settled yet ({exc}); the nodes or `splitmesh jobs` can finalize it"
            )
            results.append({"job_id": job_id, "status": "pending", "reason": str(exc)})
            continue
        out.info(
            f"  job {job_id}: {settlement.status}, paid {eth(settlement.total_paid_wei)}, "
            f"refunded {eth(settlement.refund_wei)}"
        )
        results.append({"job_id": job_id, **settlement.to_json()})
    return results


def cmd_chat(args: argparse.Namespace) -> int:
    out = Output(args.json)
    client = client_from(args)
    messages: list[dict[str, str]] = []
    jobs: list[dict[str, Any]] = []
    interactive = sys.stdin.isatty()
    out.info("chat on the marketplace; an empty line or Ctrl-D ends it and settles the jobs")
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        if not out.as_json:
            print("model> ", end="", flush=True)
        try:
            generation = _ask(client, list(messages), args, out)
        except SplitmeshError as exc:
            messages.pop()
            out.info(f"  [that turn failed: {exc}]")
            continue
        messages.append({"role": "assistant", "content": generation.text.strip()})
        row = _summary(client, generation)
        jobs.append(row)
        _print_job(out, row)
    out.info(f"settling {len(jobs)} job(s)")
    settled = settle_all(client, [row["job_id"] for row in jobs], out)
    out.result({"turns": jobs, "settlements": settled})
    return 0
