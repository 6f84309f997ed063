"""The second half of `splitmesh demo`: after the generation, the job's commitments, its settlement (or
its audit), the payments the nodes withdrew, the unsplit model's reference run, the job as the
coordinator indexed it, and the one JSON result."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from splitmesh.chain import JobState, JobStatus, Marketplace
from splitmesh.chain.launcher import advance_time, free_port, port_is_free
from splitmesh.errors import SplitmeshError
from splitmesh.paths import state_dir
from splitmesh_cli.demo_audit import await_sampling, follow_audit
from splitmesh_cli.demo_explorer import CoordinatorProcess
from splitmesh_cli.demo_run import GWEI, DemoRun, gas_of
from splitmesh_cli.localnet import RunningMarket
from splitmesh_cli.output import eth, short
from splitmesh_cli.query_cmd import print_job
from splitmesh_cli.wait import WaitTimedOut, wait_until

if TYPE_CHECKING:
    from client_sdk import Client, Generation, Settlement
    from client_sdk.receipts import GenerationReceipt


def await_commitments(demo: DemoRun, market: Marketplace, receipt: GenerationReceipt) -> JobState:
    """Wait for every route node's commit (and the audit draw); show the hash chains they committed."""
    demo.out.step("nodes commit their hash chains on-chain")
    wanted, timeout = {JobStatus.COMMITTED, JobStatus.DISPUTED}, 90.0
    job_id = receipt.job_id

    def committed() -> JobState | None:
        state = market.get_job(job_id)
        return state if state.status in wanted else None

    def still() -> str:
        state = market.get_job(job_id)
        return (
            f"job {job_id} is still {state.status.name.lower()} after {timeout:g} s "
            f"(committed mask {state.committed_mask:#x}); see the node logs in {state_dir() / 'logs'}"
        )

    state = wait_until(committed, timeout=timeout, message=still, error=SplitmeshError)
    state = await_sampling(market, job_id, demo.out) if state.status == JobStatus.COMMITTED else state
    commits = sorted(market.events("JobCommitted", jobId=job_id), key=lambda e: e["args"]["position"])
    for ev in commits:
        demo.gas[f"commit position {ev['args']['position']}"] = gas_of(market, ev)
    demo.out.info(f"    job {job_id}: {state.status.name.lower()}, billed {state.billed_tokens} tokens")
    demo.out.table(
        ["pos", "node", "input chain", "output chain", "gas"],
        [
            [
                ev["args"]["position"],
                short(receipt.route[ev["args"]["position"]].node),
                "0x" + bytes(ev["args"]["inputCommitment"]).hex()[:12] + "..",
                "0x" + bytes(ev["args"]["outputCommitment"]).hex()[:12] + "..",
                gas_of(market, ev),
            ]
            for ev in commits
        ],
    )
    return state


def settle(
    demo: DemoRun, market: Marketplace, client: Client, receipt: GenerationReceipt, state: JobState
) -> tuple[Settlement, dict[str, Any]]:
    """Follow the audit of a disputed job, or let the challenge window pass and finalize."""
    session, out = demo.session, demo.out
    audit: dict[str, Any] = {"verdict": None, "slashed_wei": 0}
    if state.status == JobStatus.DISPUTED:
        out.step("audit: verifiers drawn on-chain re-execute the shards and vote (commit, then reveal)")
        route_nodes = [h.node for h in receipt.route]
        audit = follow_audit(market, receipt.job_id, route_nodes, out, session.is_dev_chain)
        demo.gas["resolve audit"] = audit["resolve_gas"]
        settlement = client.settlement(receipt.job_id)
    else:
        window = market.parameters()["challenge_window"]
        if session.is_dev_chain:
            out.step(f"advancing the local chain's clock past the {window} s challenge window")
            advance_time(session.w3, window + 1)
        else:
            out.step(f"waiting {window} s for the challenge window to pass")
            time.sleep(window + 2)
        settlement = client.finalize(receipt.job_id)
    receipt.settlement = settlement
    if settlement.gas_used:
        demo.gas["finalize"] = settlement.gas_used
    return settlement, audit


def show_payments(
    demo: DemoRun, market: Marketplace, receipt: GenerationReceipt, settlement: Settlement
) -> tuple[JobState, list[dict[str, Any]]]:
    """What each node was paid and withdrew, the escrow's split and the gas table; (final job, payments)."""
    out = demo.out
    paid_nodes = [h.node for h in receipt.route if settlement.paid_wei[h.node] > 0]
    withdrawals = _wait_withdrawals(market, paid_nodes, timeout=60)
    for node, (_amount, tx_gas) in withdrawals.items():
        demo.gas[f"withdrawEarnings {short(node)}"] = tx_gas
    final = market.get_job(receipt.job_id)
    out.info(f"    job {receipt.job_id}: {final.status.name.lower()}")
    payments: list[dict[str, Any]] = [
        {
            "node": h.node,
            "position": h.position,
            "price_per_token": h.price_per_token,
            "billed_tokens": settlement.billed_tokens,
            "paid_wei": settlement.paid_wei[h.node],
            "withdrawn_wei": withdrawals.get(h.node, (0, 0))[0],
        }
        for h in receipt.route
    ]
    out.table(
        ["node", "tokens", "price", "paid", "withdrawn by node"],
        [
            [
                short(p["node"]),
                p["billed_tokens"],
                f"{p['price_per_token'] / GWEI:g} gwei",
                eth(p["paid_wei"]),
                eth(p["withdrawn_wei"]),
            ]
            for p in payments
        ],
    )
    out.info(
        f"    escrow {eth(settlement.escrow_wei)} = paid {eth(settlement.total_paid_wei)} + refund "
        f"{eth(settlement.refund_wei)} to the client"
    )
    out.table(["transaction", "gas"], [[k, v] for k, v in demo.gas.items()])
    return final, payments


def _wait_withdrawals(market: Marketplace, nodes: list[str], timeout: float) -> dict[str, tuple[int, int]]:
    """Wait until every node's duty loop withdrew its earnings; node -> (amount, gas), those that did."""
    found: dict[str, tuple[int, int]] = {}

    def all_withdrawn() -> bool:
        for node in nodes:
            if node in found:
                continue
            events = market.events("EarningsWithdrawn", node=node)
            if events and market.get_node(node).earnings == 0:
                found[node] = (int(events[-1]["args"]["amount"]), gas_of(market, events[-1]))
        return len(found) == len(nodes)

    with contextlib.suppress(WaitTimedOut):  # the payments table shows what was withdrawn
        wait_until(all_withdrawn, timeout=timeout, message="not every node withdrew its earnings")
    return found


def compare_with_reference(demo: DemoRun, generation: Generation) -> dict[str, Any]:
    """Unless --no-reference: the unsplit model's generate() on the same prompt, greedy."""
    args, receipt = demo.args, generation.receipt
    if args.no_reference:
        return {"reference_match": None, "reference_tokens_per_s": None}
    demo.out.step("reference: the unsplit model's generate() locally, same prompt, greedy")
    reference = _reference(str(demo.model.source), generation, args.max_new_tokens, args.epsilon)
    verdict = {True: "identical tokens", False: "tokens differ", None: "not comparable"}[
        reference["reference_match"]
    ]
    demo.out.info(
        f"    {verdict}; decode {reference['reference_tokens_per_s'] or 0:.1f} tokens/s locally vs "
        f"{receipt.tokens_per_s or 0:.1f} through {args.nodes} nodes "
        f"({(receipt.tokens_per_s or 0) / (reference['reference_tokens_per_s'] or 1):.2f}x)"
    )
    return reference


def _reference(model_dir: str, generation: Generation, max_new_tokens: int, epsilon: float) -> dict[str, Any]:
    from splitmesh.model.reference import reference_generate

    run = reference_generate(model_dir, generation.prompt_ids, max_new_tokens)
    comparable = math.isinf(epsilon)
    match = run.tokens == generation.token_ids
    agree = sum(a == b for a, b in zip(run.tokens, generation.token_ids, strict=False))
    return {
        "reference_match": match if comparable else None,
        "reference_token_agreement": agree / max(len(run.tokens), 1),
        "reference_tokens_per_s": run.tokens_per_s,
        "reference_text": None if match else _decode(model_dir, run.tokens),
    }


def _decode(model_dir: str, tokens: list[int]) -> str | None:
    try:
        from transformers import AutoTokenizer

        return str(AutoTokenizer.from_pretrained(model_dir).decode(tokens, skip_special_tokens=True))
    except (OSError, ValueError):
        return None


def show_indexed_job(demo: DemoRun, coordinator: CoordinatorProcess, job_id: int) -> dict[str, Any]:
    """The job as the coordinator indexed it."""
    out = demo.out
    out.step(f"the job as the coordinator indexed it (`splitmesh jobs show {job_id}`)")
    coordinator.wait_synced(demo.session.w3.eth.block_number)
    indexed = coordinator.get(f"/api/jobs/{job_id}")
    if not demo.args.json:
        print_job(indexed)
    if not demo.args.serve:
        out.info(
            "\n    explorer and OpenAI-compatible gateway: `make demo ARGS=--serve` (or `splitmesh demo "
            f"--serve`) keeps them open at {coordinator.url}/; for a running chain: `splitmesh coordinator "
            "run --rpc-url URL` and `splitmesh gateway --rpc-url URL`"
        )
    return indexed


def serve(demo: DemoRun, client: Client, coordinator: CoordinatorProcess, job_id: int) -> None:
    """--serve: the explorer, and the OpenAI-compatible gateway over the demo's client, until Ctrl-C or
    SIGTERM; the caller's cleanup then stops the nodes, the coordinator and the chain."""
    from client_sdk.openai_api import EndpointConfig
    from splitmesh_cli.openai_cmd import serve_gateway

    out, args = demo.out, demo.args
    out.step(f"explorer: {coordinator.url}/#/jobs/{job_id}")
    port = args.gateway_port if port_is_free(args.gateway_port) else free_port()
    config = EndpointConfig(default_epsilon=args.epsilon, default_max_tokens=args.max_new_tokens)

    def say(text: str) -> None:
        out.step("OpenAI-compatible gateway (`splitmesh gateway`) over this marketplace, with the demo's key")
        out.info(text)
        out.info("    the chain, the nodes, the coordinator and the gateway keep running; Ctrl-C stops them")

    serve_gateway([client], config, "127.0.0.1", port, say)  # returns on Ctrl-C / SIGTERM


def result_of(
    demo: DemoRun,
    running: RunningMarket,
    client: Client,
    generation: Generation,
    final: JobState,
    payments: list[dict[str, Any]],
    settlement: Settlement,
    audit: dict[str, Any],
    reference: dict[str, Any],
    indexed: dict[str, Any],
) -> dict[str, Any]:
    """The demo's one JSON result (`--json`)."""
    args, receipt, session, d = demo.args, generation.receipt, demo.session, running.deployment
    return {
        "job_id": receipt.job_id,
        "status": final.status.name.lower(),
        "text": generation.text,
        "tokens": len(generation.token_ids),
        "token_ids": generation.token_ids,
        "prompt": args.prompt,
        "prompt_tokens": receipt.prompt_tokens,
        "billed_tokens": settlement.billed_tokens,
        "epsilon": "inf" if math.isinf(args.epsilon) else args.epsilon,
        "delta": args.delta,
        "privacy": receipt.privacy,
        "split": args.split,
        "route": [
            {
                "position": h.position,
                "shard": h.shard,
                "layers": list(h.layers),
                "node": h.node,
                "endpoint": h.endpoint,
                "price_per_token": h.price_per_token,
            }
            for h in receipt.route
        ],
        "commitments": receipt.commitments,
        "gas_used": demo.gas,
        "payments": payments,
        "escrow_wei": settlement.escrow_wei,
        "paid_wei": settlement.total_paid_wei,
        "refund_wei": settlement.refund_wei + int(audit.get("slash_to_client_wei", 0)),
        "verdict": audit["verdict"],
        "slashed_wei": audit["slashed_wei"],
        "audit": audit if audit["verdict"] is not None else None,
        "cheat": args.cheat,
        "tokens_per_s": receipt.tokens_per_s,
        **reference,
        "steps": receipt.steps.summary(),
        "model": {
            "name": demo.model.name,
            "model_id": running.model_id,
            "num_layers": demo.model.num_layers,
            "weights_hash": "0x" + demo.model.weights_hash.hex(),
            "plan": demo.plan,
        },
        "chain": {
            "rpc_url": session.rpc_url,
            "chain_id": demo.chain_id,
            "registry": d.registry,
            "market": d.market,
            "local": session.local is not None,
        },
        "client": client.address,
        "indexed_job": indexed,
        "seconds": round(time.monotonic() - demo.started, 2),
    }
