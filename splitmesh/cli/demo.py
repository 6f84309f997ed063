"""`splitmesh demo`: the marketplace end to end on a local chain (or --rpc-url).

Starts a hardhat node (unless --rpc-url), deploys, registers the model and its shard plan, starts one
`splitmesh node run` process per shard (each stakes and registers itself), runs a private generation
through the route the contract matched, waits for the nodes' commitments, advances the local chain's
clock past the challenge window, finalizes, and shows what each node was paid. Then it runs the
unsplit model locally with the same settings to check the tokens and compare decode rates.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from splitmesh.chain import JobStatus, Marketplace, Sender
from splitmesh.chain.launcher import HARDHAT_ACCOUNTS, advance_time, dev_key
from splitmesh.cli.common import (
    add_chain_args,
    add_deploy_args,
    attach_deployment,
    deploy_params,
    open_session,
    settings_from,
)
from splitmesh.cli.demo_audit import await_sampling, follow_audit
from splitmesh.cli.demo_explorer import CoordinatorProcess
from splitmesh.cli.output import Output, eth, short
from splitmesh.cli.procs import NodeSpec, start_nodes, stop_nodes
from splitmesh.cli.query_cmd import print_job
from splitmesh.errors import ConfigError, SplitmeshError
from splitmesh.model.identity import describe_model
from splitmesh.paths import state_dir
from splitmesh.plan import client_split_plan

GWEI = 10**9
CHEATS = ("garbage", "skip-layers", "tamper-relay", "overbill", "withhold")  # node.cheats.CHEATS
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the marketplace end to end on a local chain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_chain_args(p)
    add_deploy_args(p)
    p.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    p.add_argument("--nodes", type=int, default=3, help="number of node shards/processes (default 3)")
    p.add_argument("--split", type=int, default=4, help="decoder layers the client runs itself (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction for the model")
    p.add_argument(
        "--epsilon",
        type=float,
        default=math.inf,
        help=(
            "DP epsilon per token vector (default inf = no noise: no setting that keeps the answer usable "
            "hides measurably more of the prompt, see README 'Privacy'; try 1000 or 100 to see the cost)"
        ),
    )
    p.add_argument("--delta", type=float, default=1e-5, help="DP delta per token vector (default 1e-5)")
    p.add_argument(
        "--clip", type=float, help="L2 clip per token vector (default: median norm on public text)"
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of sampling with --temperature (default: fresh); the DP noise is never seeded",
    )
    p.add_argument(
        "--price-gwei",
        type=float,
        default=10_000.0,
        help="each node's price per token in gwei (default 10000)",
    )
    p.add_argument("--stake", type=float, default=2.0, help="ETH each node stakes (default 2)")
    p.add_argument("--no-reference", action="store_true", help="skip the local model.generate comparison")
    p.add_argument(
        "--serve",
        action="store_true",
        help="at the end, keep the chain, the nodes and the coordinator running and print the explorer's "
        "URL; Ctrl-C stops them",
    )
    p.add_argument(
        "--explorer-port", type=int, default=8700, help="coordinator/explorer port (default 8700, else any)"
    )
    a = p.add_argument_group("audits")
    a.add_argument(
        "--cheat",
        choices=list(CHEATS),
        help="make one route node misbehave (demo only) and show the audit catch it; implies --audit-rate 1",
    )
    a.add_argument("--cheat-shard", type=int, default=1, help="shard whose node cheats (default 1)")
    a.add_argument(
        "--audit-rate", type=float, help="share of jobs audited, 0..1, fixed at deployment (default 0)"
    )
    a.add_argument("--verifiers", type=int, default=3, help="verifiers drawn per route position (default 3)")
    p.set_defaults(func=cmd_demo)


def _keys(nodes: int, replicas: int) -> tuple[list[str], str, list[str]]:
    # Dev key 0 deploys, keys 1..n are the route nodes, key n+1 is the client, then the verifier replicas.
    if nodes < 1 or nodes + 2 + nodes * replicas > HARDHAT_ACCOUNTS:
        raise ConfigError(
            f"{nodes} nodes with {replicas} verifier replicas each need more than the "
            f"{HARDHAT_ACCOUNTS} funded dev accounts; lower --nodes or --verifiers"
        )
    keys = [dev_key(i) for i in range(nodes + 2 + nodes * replicas)]
    return keys[1 : nodes + 1], keys[nodes + 1], keys[nodes + 2 :]


def cmd_demo(args: argparse.Namespace) -> int:
    from client_sdk import Client, Generation

    out = Output(args.json)
    settings = settings_from(args)
    started = time.monotonic()
    if args.audit_rate is None:
        args.audit_rate = 1.0 if args.cheat else 0.0
    if not 0 <= args.audit_rate <= 1:
        raise ConfigError("--audit-rate must be within 0..1")
    if args.cheat and not 1 <= args.cheat_shard <= args.nodes:
        raise ConfigError(f"--cheat-shard must be within 1..{args.nodes}")
    if args.cheat == "tamper-relay" and args.cheat_shard == args.nodes:
        raise ConfigError("tamper-relay needs a node that relays: pick a --cheat-shard before the last")
    replicas = args.verifiers if args.audit_rate > 0 else 0
    node_keys, client_key, replica_keys = _keys(args.nodes, replicas)
    gas: dict[str, int] = {}

    out.step("describing the model")
    model = describe_model(args.model)
    model_dir = str(model.source)
    plan = client_split_plan(model.num_layers, args.split, args.nodes)
    out.info(f"    {model.name}: {model.num_layers} layers, weights hash 0x{model.weights_hash.hex()[:16]}..")
    out.info(f"    shard plan {plan}: the client runs layers 0-{args.split - 1}, {args.nodes} node shards")

    out.step(
        "starting a local hardhat node" if settings.rpc_url is None else f"connecting to {settings.rpc_url}"
    )
    with open_session(settings) as session, contextlib.ExitStack() as stack:
        market = attach_deployment(session, settings, deploy_if_missing=True, params=deploy_params(args))
        if not session.deployed_now and args.audit_rate > 0:
            out.info(
                f"    note: the audit rate is fixed at deployment; this deployment audits "
                f"{market.deployment.params.audit_rate_bps / 100:g}% of jobs"
            )
        d = market.deployment
        chain_id = session.chain_id
        out.info(f"    chain {session.rpc_url} (id {chain_id})")
        out.info(
            f"    {'deployed' if session.deployed_now else 'using'} "
            f"NodeRegistry {d.registry}, JobMarket {d.market}"
        )
        if session.deployed_now:
            gas.update({f"deploy {k}": v for k, v in d.gas_used.items()})
        # A coordinator indexes the chain from the start; the demo ends with the job as it shows it.
        coordinator_home = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmesh-demo-index-"))
        )
        coordinator = CoordinatorProcess(
            session.rpc_url,
            d.market,
            coordinator_home / "index.sqlite",
            state_dir() / "logs" / "coordinator.log",
            args.explorer_port,
        )
        stack.callback(coordinator.stop)
        deployer = Sender(session.w3, session.deployer_key)

        out.step("registering the model and its shard plan")
        model_id = market.find_model(model.weights_hash, plan)
        if model_id is None:
            model_id, tx = market.register_model(
                deployer, model.name, model.weights_hash, model.num_layers, plan
            )
            gas["registerModel"] = tx.gas_used
            out.info(f"    model id {model_id} registered (gas {tx.gas_used})")
        else:
            out.info(f"    model id {model_id} already registered")

        price = round(args.price_gwei * GWEI)
        out.step(f"starting {args.nodes} node processes; each stakes {args.stake:g} ETH and registers itself")
        # A fresh local chain reuses contract addresses and job ids: its nodes get a fresh state folder.
        if session.local is not None:
            node_home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmesh-demo-nodes-")))
        else:
            node_home = state_dir() / "nodes"

        def spec(shard: int, key: str, node_price: int, *extra: str) -> NodeSpec:
            return NodeSpec(
                shard=shard,
                key=key,
                rpc_url=session.rpc_url,
                market=d.market,
                model=model_dir,
                model_id=model_id,
                stake_eth=args.stake,
                price_wei=node_price,
                state_dir=node_home,
                extra_args=list(extra),
            )

        specs = [
            spec(
                shard,
                key,
                price,
                *(("--cheat", args.cheat) if args.cheat and shard == args.cheat_shard else ()),
            )
            for shard, key in enumerate(node_keys, start=1)
        ]
        # Verifier replicas ask twice the price, so the client's price cap keeps them off the route: they
        # are in each shard's pool only to be drawn for audits.
        specs += [spec(1 + i % args.nodes, key, 2 * price) for i, key in enumerate(replica_keys)]
        if replicas:
            out.info(
                f"    plus {replicas} verifier replicas per shard (audits drawn at rate {args.audit_rate:g})"
            )
        if args.cheat:
            out.info(f"    the node of shard {args.cheat_shard} will cheat: {args.cheat}")
        all_nodes = start_nodes(specs, state_dir() / "logs")
        stack.callback(stop_nodes, all_nodes)
        nodes = all_nodes[: args.nodes]
        block_before = session.w3.eth.block_number
        _record_registration_gas(market, gas, from_block=max(d.block, block_before - 50))
        out.table(
            ["shard", "layers", "node", "stake", "price/token", "endpoint"],
            [
                [
                    n.info["shard"],
                    f"{n.info['layers'][0]}-{n.info['layers'][1] - 1}",
                    short(n.address),
                    eth(int(n.info["stake_wei"])),
                    f"{int(n.info['price_wei']) / GWEI:g} gwei",
                    n.endpoint,
                ]
                for n in nodes
            ],
        )

        eps_text = "inf (no noise)" if math.isinf(args.epsilon) else f"{args.epsilon:g}"
        out.step(
            f"private generation: epsilon {eps_text}, delta {args.delta:g}, "
            f"split after layer {args.split - 1}"
        )
        out.info(f"    prompt: {args.prompt}")
        client = Client(session.rpc_url, client_key, model_dir, market=d.market)
        generation: Generation | None = None
        progress = _Progress(out, args.max_new_tokens)
        for event in client.stream(
            args.prompt,
            args.max_new_tokens,
            max_price_per_token=price,
            epsilon=args.epsilon,
            delta=args.delta,
            clip=args.clip,
            split=args.split,
            seed=args.seed,
        ):
            if isinstance(event, Generation):
                generation = event
            else:
                progress.token(event.text)
        progress.done()
        assert generation is not None
        receipt = generation.receipt
        gas["submitJob"] = receipt.gas_used["submitJob"]
        out.info(
            f"    job {receipt.job_id}: {receipt.prompt_tokens} prompt + "
            f"{receipt.generated_tokens} generated tokens"
        )
        out.info(f"    route: client (layers 0-{args.split - 1}) -> nodes -> client (norm + LM head)")
        out.table(
            ["pos", "shard", "layers", "node", "price/token", "endpoint"],
            [
                [
                    h.position,
                    h.shard,
                    f"{h.layers[0]}-{h.layers[1] - 1}",
                    short(h.node),
                    f"{h.price_per_token / GWEI:g} gwei",
                    h.endpoint,
                ]
                for h in receipt.route
            ],
        )
        privacy = receipt.privacy
        out.info(
            f"    privacy: per token (epsilon {privacy['per_token_epsilon']}, "
            f"delta {privacy['per_token_delta']}); "
            f"over {privacy['tokens']} released vectors: epsilon {privacy['composed_epsilon']} at delta "
            f"{privacy['composed_delta']} ({privacy['method']})"
        )
        from client_sdk.disclosure import sentence

        out.info(f"    leakage: {sentence(privacy.get('leakage', {}))}")
        out.info(f"    the last node sees: {privacy['exposure']['last_node']}")
        stats = receipt.steps.summary()
        out.info(
            f"    decode {receipt.tokens_per_s or 0:.1f} tokens/s; "
            f"per step p50 {stats['decode_step_ms_p50']} ms "
            f"(route {stats['route_ms_p50']} ms, hop overhead {stats['hop_overhead_ms_p50']} ms)"
        )

        out.step("nodes commit their hash chains on-chain")
        state = _wait_status(market, receipt.job_id, {JobStatus.COMMITTED, JobStatus.DISPUTED}, timeout=90)
        state = await_sampling(market, receipt.job_id, out) if state.status == JobStatus.COMMITTED else state
        commits = sorted(
            market.events("JobCommitted", jobId=receipt.job_id), key=lambda e: e["args"]["position"]
        )
        for ev in commits:
            gas[f"commit position {ev['args']['position']}"] = _gas_of(market, ev)
        out.info(
            f"    job {receipt.job_id}: {state.status.name.lower()}, billed {state.billed_tokens} tokens"
        )
        out.table(
            ["pos", "node", "input chain", "output chain", "gas"],
            [
                [
                    ev["args"]["position"],
                    short(receipt.route[ev["args"]["position"]].node),
                    "0x" + bytes(ev["args"]["inputCommitment"]).hex()[:12] + "..",
                    "0x" + bytes(ev["args"]["outputCommitment"]).hex()[:12] + "..",
                    _gas_of(market, ev),
                ]
                for ev in commits
            ],
        )

        audit: dict[str, Any] = {"verdict": None, "slashed_wei": 0}
        if state.status == JobStatus.DISPUTED:
            out.step("audit: verifiers drawn on-chain re-execute the shards and vote (commit, then reveal)")
            route_nodes = [h.node for h in receipt.route]
            audit = follow_audit(market, receipt.job_id, route_nodes, out, session.is_dev_chain)
            gas["resolve audit"] = audit["resolve_gas"]
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
            gas["finalize"] = settlement.gas_used
        paid_nodes = [h.node for h in receipt.route if settlement.paid_wei[h.node] > 0]
        withdrawals = _wait_withdrawals(market, paid_nodes, timeout=60)
        for node, (_amount, tx_gas) in withdrawals.items():
            gas[f"withdrawEarnings {short(node)}"] = tx_gas
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
        out.table(["transaction", "gas"], [[k, v] for k, v in gas.items()])

        reference: dict[str, Any] = {"reference_match": None, "reference_tokens_per_s": None}
        if not args.no_reference:
            out.step("reference: the unsplit model's generate() locally, same prompt, greedy")
            reference = _reference(model_dir, generation, args)
            verdict = {True: "identical tokens", False: "tokens differ", None: "not comparable"}[
                reference["reference_match"]
            ]
            out.info(
                f"    {verdict}; decode {reference['reference_tokens_per_s'] or 0:.1f} tokens/s locally vs "
                f"{receipt.tokens_per_s or 0:.1f} through {args.nodes} nodes "
                f"({(receipt.tokens_per_s or 0) / (reference['reference_tokens_per_s'] or 1):.2f}x)"
            )
        out.step(f"the job as the coordinator indexed it (`splitmesh jobs show {receipt.job_id}`)")
        coordinator.wait_synced(session.w3.eth.block_number)
        indexed = coordinator.get(f"/api/jobs/{receipt.job_id}")
        if not args.json:
            print_job(indexed)
        explorer_url = f"{coordinator.url}/#/jobs/{receipt.job_id}"
        if args.serve:
            out.step(f"explorer: {explorer_url}")
            out.info("    the chain, the nodes and the coordinator keep running; Ctrl-C stops them")
            _serve_forever()
        else:
            out.info(
                "\n    explorer: `make demo ARGS=--serve` (or `splitmesh demo --serve`) keeps it open at "
                f"{coordinator.url}/; for a running chain: `splitmesh coordinator run --rpc-url URL`"
            )
        if session.local is not None:
            out.step("stopping the nodes and the local chain")
        else:
            out.step("stopping the nodes (the chain keeps running)")

    result: dict[str, Any] = {
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
        "gas_used": gas,
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
            "name": model.name,
            "model_id": model_id,
            "num_layers": model.num_layers,
            "weights_hash": "0x" + model.weights_hash.hex(),
            "plan": plan,
        },
        "chain": {
            "rpc_url": session.rpc_url,
            "chain_id": chain_id,
            "registry": d.registry,
            "market": d.market,
            "local": session.local is not None,
        },
        "client": client.address,
        "indexed_job": indexed,
        "seconds": round(time.monotonic() - started, 2),
    }
    out.result(result)
    return 0


class _Progress:
    """Streams the answer as it is generated (stderr in --json mode)."""

    def __init__(self, out: Output, total: int):
        self.out = out
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.out.info("    answer: ", end="")

    def token(self, text: str) -> None:
        self.count += 1
        self.out.info(text.replace("\n", " "), end="")

    def done(self) -> None:
        self.out.info(f"\n    ({self.count} tokens in {time.monotonic() - self.started:.1f} s)")


def _serve_forever() -> None:
    """Block until Ctrl-C or SIGTERM; the caller's cleanup then stops the nodes, coordinator and chain."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _gas_of(market: Marketplace, event: Any) -> int:
    return int(market.w3.eth.get_transaction_receipt(event["transactionHash"])["gasUsed"])


def _record_registration_gas(market: Marketplace, gas: dict[str, int], from_block: int) -> None:
    for ev in market.events("NodeRegistered", from_block=from_block):
        gas[f"registerNode shard {ev['args']['shard']}"] = _gas_of(market, ev)


def _wait_status(market: Marketplace, job_id: int, wanted: set[JobStatus], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = market.get_job(job_id)
        if state.status in wanted:
            return state
        if time.monotonic() > deadline:
            raise SplitmeshError(
                f"job {job_id} is still {state.status.name.lower()} after {timeout:g} s "
                f"(committed mask {state.committed_mask:#x}); see the node logs in {state_dir() / 'logs'}"
            )
        time.sleep(0.25)


def _wait_withdrawals(market: Marketplace, nodes: list[str], timeout: float) -> dict[str, tuple[int, int]]:
    """Wait until every node's duty loop withdrew its earnings; node -> (amount, gas)."""
    deadline = time.monotonic() + timeout
    found: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        for node in nodes:
            if node in found:
                continue
            events = market.events("EarningsWithdrawn", node=node)
            if events and market.get_node(node).earnings == 0:
                found[node] = (int(events[-1]["args"]["amount"]), _gas_of(market, events[-1]))
        if len(found) == len(nodes):
            break
        time.sleep(0.25)
    return found


def _reference(model_dir: str, generation: Any, args: argparse.Namespace) -> dict[str, Any]:
    from splitmesh.model.reference import reference_generate

    run = reference_generate(model_dir, generation.prompt_ids, args.max_new_tokens)
    comparable = math.isinf(args.epsilon)
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


__all__ = ["cmd_demo"]
