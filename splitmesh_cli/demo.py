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
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from splitmesh.chain import Marketplace, Sender
from splitmesh.chain.launcher import HARDHAT_ACCOUNTS, dev_key
from splitmesh.errors import ConfigError
from splitmesh.paths import state_dir
from splitmesh.plan import client_split_plan
from splitmesh_cli.common import (
    add_chain_args,
    add_deploy_args,
    attach_deployment,
    deploy_params,
    open_session,
    settings_from,
)
from splitmesh_cli.demo_explorer import CoordinatorProcess
from splitmesh_cli.demo_run import GWEI, DemoRun, gas_of
from splitmesh_cli.demo_settle import (
    await_commitments,
    compare_with_reference,
    result_of,
    serve,
    settle,
    show_indexed_job,
    show_payments,
)
from splitmesh_cli.localnet import RunningMarket, open_market
from splitmesh_cli.output import Output, eth, short
from splitmesh_cli.procs import NodeSpec, stop_nodes

if TYPE_CHECKING:
    from splitmesh.model.identity import ModelDescription  # loads torch: typing only

if TYPE_CHECKING:
    from client_sdk import Client, Generation

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
        help="at the end, keep the chain, the nodes and the coordinator running, start the OpenAI-compatible "
        "gateway over them, and print the explorer's URL and the `openai` snippet; Ctrl-C stops them all",
    )
    p.add_argument(
        "--gateway-port", type=int, default=8000, help="--serve's gateway port (default 8000, else any)"
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


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    node_keys, client_key, replica_keys = _check_options(args)
    out = Output(args.json)
    model, plan = _describe_model(args, out)
    settings = settings_from(args)
    out.step(
        "starting a local hardhat node" if settings.rpc_url is None else f"connecting to {settings.rpc_url}"
    )
    with open_session(settings) as session, contextlib.ExitStack() as stack:
        demo = DemoRun(args, out, session, model, plan, started=started)
        market = attach_deployment(session, settings, deploy_if_missing=True, params=deploy_params(args))
        _show_deployment(demo, market)
        coordinator = _start_coordinator(demo, market, stack)
        running = _open_market(demo, market, stack)
        _start_nodes(demo, running, node_keys, replica_keys, stack)
        client, generation = _generate(demo, running, client_key)
        state = await_commitments(demo, running.market, generation.receipt)
        settlement, audit = settle(demo, running.market, client, generation.receipt, state)
        final, payments = show_payments(demo, running.market, generation.receipt, settlement)
        reference = compare_with_reference(demo, generation)
        indexed = show_indexed_job(demo, coordinator, generation.receipt.job_id)
        if args.serve:
            serve(demo, client, coordinator, generation.receipt.job_id)
        out.step(
            "stopping the nodes and the local chain"
            if session.local is not None
            else "stopping the nodes (the chain keeps running)"
        )
    out.result(
        result_of(demo, running, client, generation, final, payments, settlement, audit, reference, indexed)
    )
    return 0


def _check_options(args: argparse.Namespace) -> tuple[list[str], str, list[str]]:
    """Check the audit options (defaulting the rate); the route nodes', client's and verifiers' keys."""
    if args.audit_rate is None:
        args.audit_rate = 1.0 if args.cheat else 0.0
    if not 0 <= args.audit_rate <= 1:
        raise ConfigError("--audit-rate must be within 0..1")
    if args.cheat and not 1 <= args.cheat_shard <= args.nodes:
        raise ConfigError(f"--cheat-shard must be within 1..{args.nodes}")
    if args.cheat == "tamper-relay" and args.cheat_shard == args.nodes:
        raise ConfigError("tamper-relay needs a node that relays: pick a --cheat-shard before the last")
    return _keys(args.nodes, _replicas(args))


def _replicas(args: argparse.Namespace) -> int:
    """Verifier replicas per shard: only a deployment that audits needs them."""
    return int(args.verifiers) if args.audit_rate > 0 else 0


def _keys(nodes: int, replicas: int) -> tuple[list[str], str, list[str]]:
    # Dev key 0 deploys, keys 1..n are the route nodes, key n+1 is the client, then the verifier replicas.
    if nodes < 1 or nodes + 2 + nodes * replicas > HARDHAT_ACCOUNTS:
        raise ConfigError(
            f"{nodes} nodes with {replicas} verifier replicas each need more than the "
            f"{HARDHAT_ACCOUNTS} funded dev accounts; lower --nodes or --verifiers"
        )
    keys = [dev_key(i) for i in range(nodes + 2 + nodes * replicas)]
    return keys[1 : nodes + 1], keys[nodes + 1], keys[nodes + 2 :]


def _describe_model(args: argparse.Namespace, out: Output) -> tuple[ModelDescription, list[int]]:
    out.step("describing the model")
    from splitmesh.model.identity import describe_model

    model = describe_model(args.model)
    plan = client_split_plan(model.num_layers, args.split, args.nodes)
    out.info(f"    {model.name}: {model.num_layers} layers, weights hash 0x{model.weights_hash.hex()[:16]}..")
    out.info(f"    shard plan {plan}: the client runs layers 0-{args.split - 1}, {args.nodes} node shards")
    return model, plan


def _show_deployment(demo: DemoRun, market: Marketplace) -> None:
    session, d = demo.session, market.deployment
    if not session.deployed_now and demo.args.audit_rate > 0:
        demo.out.info(
            f"    note: the audit rate is fixed at deployment; this deployment audits "
            f"{d.params.audit_rate_bps / 100:g}% of jobs"
        )
    demo.out.info(f"    chain {session.rpc_url} (id {demo.chain_id})")
    demo.out.info(
        f"    {'deployed' if session.deployed_now else 'using'} "
        f"NodeRegistry {d.registry}, JobMarket {d.market}"
    )
    if session.deployed_now:
        demo.gas.update({f"deploy {k}": v for k, v in d.gas_used.items()})


def _start_coordinator(demo: DemoRun, market: Marketplace, stack: contextlib.ExitStack) -> CoordinatorProcess:
    """A coordinator indexes the chain from the start; the demo ends with the job as it shows it."""
    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmesh-demo-index-")))
    coordinator = CoordinatorProcess(
        demo.session.rpc_url,
        market.deployment.market,
        home / "index.sqlite",
        state_dir() / "logs" / "coordinator.log",
        demo.args.explorer_port,
    )
    stack.callback(coordinator.stop)
    return coordinator


def _open_market(demo: DemoRun, market: Marketplace, stack: contextlib.ExitStack) -> RunningMarket:
    """The harness's marketplace starter on the demo's chain: the model's plan found or registered."""
    demo.out.step("registering the model and its shard plan")
    # A fresh local chain reuses contract addresses and job ids: its nodes get a fresh state folder.
    if demo.session.local is not None:
        node_home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitmesh-demo-nodes-")))
    else:
        node_home = state_dir() / "nodes"
    running = open_market(
        market,
        Sender(demo.session.w3, demo.session.deployer_key),
        demo.model,
        demo.plan,
        rpc_url=demo.session.rpc_url,
        home=node_home,
        log_dir=state_dir() / "logs",
        model=str(demo.model.source),
    )
    running.duty_interval = NodeSpec.duty_interval  # the node's own default: a demo has no hurry
    if running.registration_gas is None:
        demo.out.info(f"    model id {running.model_id} already registered")
    else:
        demo.gas["registerModel"] = running.registration_gas
        demo.out.info(f"    model id {running.model_id} registered (gas {running.registration_gas})")
    return running


def _start_nodes(
    demo: DemoRun,
    running: RunningMarket,
    node_keys: list[str],
    replica_keys: list[str],
    stack: contextlib.ExitStack,
) -> None:
    args, out = demo.args, demo.out
    out.step(f"starting {args.nodes} node processes; each stakes {args.stake:g} ETH and registers itself")
    specs = [
        running.spec(shard, key, demo.price, args.stake, *_cheat_flags(args, shard))
        for shard, key in enumerate(node_keys, start=1)
    ]
    # Verifier replicas ask twice the price, so the client's price cap keeps them off the route: they
    # are in each shard's pool only to be drawn for audits.
    specs += [
        running.spec(1 + i % args.nodes, key, 2 * demo.price, args.stake)
        for i, key in enumerate(replica_keys)
    ]
    if replica_keys:
        out.info(
            f"    plus {_replicas(args)} verifier replicas per shard "
            f"(audits drawn at rate {args.audit_rate:g})"
        )
    if args.cheat:
        out.info(f"    the node of shard {args.cheat_shard} will cheat: {args.cheat}")
    all_nodes = running.start_nodes(specs)
    stack.callback(stop_nodes, all_nodes)
    block_before = demo.session.w3.eth.block_number
    _record_registration_gas(demo, running.market, max(running.deployment.block, block_before - 50))
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
            for n in all_nodes[: args.nodes]
        ],
    )


def _cheat_flags(args: argparse.Namespace, shard: int) -> tuple[str, ...]:
    return ("--cheat", args.cheat) if args.cheat and shard == args.cheat_shard else ()


def _record_registration_gas(demo: DemoRun, market: Marketplace, from_block: int) -> None:
    for ev in market.events("NodeRegistered", from_block=from_block):
        demo.gas[f"registerNode shard {ev['args']['shard']}"] = gas_of(market, ev)


def _generate(demo: DemoRun, running: RunningMarket, client_key: str) -> tuple[Client, Generation]:
    from client_sdk import Client, Generation

    args, out = demo.args, demo.out
    eps_text = "inf (no noise)" if math.isinf(args.epsilon) else f"{args.epsilon:g}"
    out.step(
        f"private generation: epsilon {eps_text}, delta {args.delta:g}, split after layer {args.split - 1}"
    )
    out.info(f"    prompt: {args.prompt}")
    client = Client(running.rpc_url, client_key, running.model, market=running.deployment.market)
    generation: Generation | None = None
    progress = _Progress(out, args.max_new_tokens)
    for event in client.stream(
        args.prompt,
        args.max_new_tokens,
        max_price_per_token=demo.price,
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
    demo.gas["submitJob"] = generation.receipt.gas_used["submitJob"]
    _show_route_and_privacy(demo, generation)
    return client, generation


def _show_route_and_privacy(demo: DemoRun, generation: Generation) -> None:
    from client_sdk.disclosure import sentence

    out, receipt = demo.out, generation.receipt
    out.info(
        f"    job {receipt.job_id}: {receipt.prompt_tokens} prompt + "
        f"{receipt.generated_tokens} generated tokens"
    )
    out.info(f"    route: client (layers 0-{demo.args.split - 1}) -> nodes -> client (norm + LM head)")
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
    out.info(f"    leakage: {sentence(privacy.get('leakage', {}))}")
    out.info(f"    the last node sees: {privacy['exposure']['last_node']}")
    stats = receipt.steps.summary()
    out.info(
        f"    decode {receipt.tokens_per_s or 0:.1f} tokens/s; "
        f"per step p50 {stats['decode_step_ms_p50']} ms "
        f"(route {stats['route_ms_p50']} ms, hop overhead {stats['hop_overhead_ms_p50']} ms)"
    )


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


__all__ = ["cmd_demo"]
