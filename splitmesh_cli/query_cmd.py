"""`splitmesh jobs list|show` and `splitmesh nodes list`: what happened on the marketplace.

Answered by a coordinator (--coordinator URL, fast), a local index file (--db), or straight from the chain
(--rpc-url alone: every event of the deployment is read and folded on the spot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from splitmesh.errors import ConfigError
from splitmesh_cli.output import eth, short


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="list and show jobs (route, commitments, audits, payments)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    ls = jsub.add_parser(
        "list",
        help="jobs, newest first",
        description="List jobs, newest first. " + _SOURCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _source_args(ls)
    ls.add_argument("--client", help="only jobs of this client address")
    ls.add_argument("--node", help="only jobs routed through this node address")
    ls.add_argument(
        "--status",
        choices=["open", "committed", "disputed", "finalized", "cancelled"],
        help="only these",
    )
    ls.add_argument("--model", type=int, help="only jobs of this model id")
    _page_args(ls, 50)
    ls.set_defaults(func=cmd_jobs_list)

    show = jsub.add_parser(
        "show",
        help="one job in full",
        description="Show one job: route, commitments, audit verdicts, payments, the privacy parameters "
        "the client declared, and every transaction. " + _SOURCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("job_id", type=int, help="the job id")
    _source_args(show)
    show.set_defaults(func=cmd_jobs_show)

    nodes = sub.add_parser("nodes", help="list nodes (shard, endpoint, stake, price, earnings, slashes)")
    nsub = nodes.add_subparsers(dest="nodes_command", required=True, metavar="COMMAND")
    nls = nsub.add_parser(
        "list",
        help="staked nodes by model and shard",
        description="List nodes: model, shard, endpoint, stake, price, jobs served, earnings, slashes. "
        + _SOURCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _source_args(nls)
    nls.add_argument("--model", type=int, help="only nodes of this model id")
    nls.add_argument("--shard", type=int, help="only nodes of this shard")
    nls.add_argument("--status", choices=["staked", "active", "inactive"], help="only these")
    _page_args(nls, 100)
    nls.set_defaults(func=cmd_nodes_list)


_SOURCES = """
Sources, fastest first:
  --coordinator URL   a running `splitmesh coordinator run` (env SPLITMESH_COORDINATOR)
  --db FILE           a coordinator's index file, read as it is
  --rpc-url URL       the chain itself: reads every event of the deployment (no coordinator needed)"""


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where to read from")
    g.add_argument("--coordinator", help="coordinator API base URL (env SPLITMESH_COORDINATOR)")
    g.add_argument("--db", help="a coordinator's SQLite index file")
    g.add_argument("--rpc-url", help="EVM JSON-RPC endpoint to scan directly (env SPLITMESH_RPC_URL)")
    g.add_argument("--market", help="JobMarket address (env SPLITMESH_MARKET); default: remembered one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _page_args(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--limit", type=int, default=default, help=f"rows per page (default {default}, max 500)")
    p.add_argument("--offset", type=int, default=0, help="rows to skip (pagination)")


def _open_source(args: argparse.Namespace) -> Any:
    from coordinator.sources import ApiSource, IndexSource

    coordinator = args.coordinator or os.environ.get("SPLITMESH_COORDINATOR")
    if coordinator:
        return ApiSource(coordinator)
    if args.db:
        return IndexSource.file(args.db)
    from splitmesh_cli.common import attach_deployment, open_session, settings_from

    settings = settings_from(args)
    if settings.rpc_url is None:
        raise ConfigError(
            "say where to read from: --coordinator URL (a running coordinator), --db FILE, or --rpc-url URL "
            "(scan the chain directly)"
        )
    with open_session(settings) as session:
        market = attach_deployment(session, settings, deploy_if_missing=False)

        def progress(r: Any) -> None:
            if r.head - r.from_block > 5000:  # only worth saying on a long chain
                print(f"scanning block {r.to_block} of {r.head}", file=sys.stderr, flush=True)

        return IndexSource.scan(market, progress)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _when(ts: int | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _footer(page: dict[str, Any], noun: str) -> None:
    shown = len(page["items"])
    first = page["offset"] + 1 if shown else 0
    text = f"{noun} {first}-{page['offset'] + shown} of {page['total']}"
    if page["next_offset"] is not None:
        text += f"; next page: --offset {page['next_offset']}"
    print(text)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from coordinator.queries import JobFilter

    filt = JobFilter(client=args.client, node=args.node, status=args.status, model=args.model)
    page = _open_source(args).list_jobs(filt, args.limit, args.offset)
    if args.json:
        _print_json(page)
        return 0
    rows = [
        [
            str(j["job_id"]),
            j["status"] + (f" ({j['dispute']})" if j["dispute"] and j["status"] == "disputed" else ""),
            short(j["client"]),
            " > ".join(short(n) for n in j["route"]),
            f"{j['billed_tokens']}/{j['max_tokens']}",
            eth(int(j["paid_wei"])),
            eth(int(j["refund_wei"])),
            "-" if j["epsilon"] is None else str(j["epsilon"]),
            str(j["submitted_block"]),
        ]
        for j in page["items"]
    ]
    _table(["JOB", "STATUS", "CLIENT", "ROUTE", "TOKENS", "PAID", "REFUND", "EPSILON", "BLOCK"], rows)
    _footer(page, "jobs")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = _open_source(args).get_job(args.job_id)
    if args.json:
        _print_json(job)
    else:
        print_job(job)
    return 0


def print_job(job: dict[str, Any]) -> None:
    """A job for people: summary, route with commitments and payments, audit, transactions."""
    print(
        f"job {job['job_id']}: {job['status']}" + (f", disputed ({job['dispute']})" if job["dispute"] else "")
    )
    print(f"  client     {job['client']}")
    print(f"  model      {job['model_id']} from shard {job['first_shard']}, {len(job['route'])} hops")
    print(f"  tokens     {job['billed_tokens']} billed of {job['max_tokens']} max")
    print(
        f"  escrow     {eth(int(job['escrow_wei']))}; paid {eth(int(job['paid_wei']))}, "
        f"refund {eth(int(job['refund_wei']))}, slashed {eth(int(job['slashed_wei']))}"
    )
    declared = job.get("declared")
    if declared:
        print("  declared   " + ", ".join(f"{k}={v}" for k, v in declared.items()))
    print("  route      client", end="")
    for hop in job["hops"]:
        print(f" -> {short(hop['node'])}", end="")
    print(" -> client")
    rows = []
    for hop in job["hops"]:
        link = ""
        if hop["position"] < len(job["links"]):
            ok = job["links"][hop["position"]]
            link = "-" if ok is None else ("links" if ok else "MISMATCH")
        verdict = "-" if hop["fraud"] is None else ("FRAUD" if hop["fraud"] else "honest")
        rows.append(
            [
                str(hop["position"]),
                str(hop["shard"]),
                hop["node"],
                eth(int(hop["price_wei"])),
                _hash(hop["input_commitment"]),
                _hash(hop["output_commitment"]),
                link,
                eth(int(hop["paid_wei"])),
                eth(int(hop["slashed_wei"])),
                verdict,
            ]
        )
    print()
    _table(["POS", "SHARD", "NODE", "PRICE/TOKEN", "IN", "OUT", "NEXT", "PAID", "SLASHED", "VERDICT"], rows)
    audit = job.get("audit")
    if audit:
        print()
        print(
            f"audit: {audit['status']}, fraud mask {audit['fraud_mask']:#b}; slashed "
            f"{eth(int(audit['slashed_wei']))}, to verifiers {eth(int(audit['rewarded_wei']))}, "
            "to the client "
            f"{eth(int(audit['to_client_wei']))}"
        )
        for panel in audit["panels"]:
            votes = ", ".join(f"{short(v['verifier'])} {v['vote']}" for v in panel["votes"]) or "no verifier"
            print(
                f"  position {panel['position']} ({short(panel['node'])}): {panel['verdict'] or '-'}; {votes}"
            )
    print()
    _table(
        ["EVENT", "BLOCK", "TIME (UTC)", "TX"],
        [[t["event"], str(t["block"]), _when(t["time"]), t["tx_hash"]] for t in job["transactions"]],
    )


def _hash(value: str | None) -> str:
    return "-" if value is None else f"{value[:10]}.."


def cmd_nodes_list(args: argparse.Namespace) -> int:
    from coordinator.queries import NodeFilter

    filt = NodeFilter(model=args.model, shard=args.shard, status=args.status)
    page = _open_source(args).list_nodes(filt, args.limit, args.offset)
    if args.json:
        _print_json(page)
        return 0
    rows = [
        [
            n["address"],
            "-" if n["model_id"] is None else str(n["model_id"]),
            "-" if n["shard"] is None else str(n["shard"]),
            n["status"] + ("" if n["pooled"] or n["status"] != "active" else " (unpooled)"),
            eth(int(n["stake_wei"])),
            eth(int(n["price_wei"])),
            str(n["jobs_served"]),
            eth(int(n["earned_wei"])),
            f"{eth(int(n['slashed_wei']))} ({n['slashes']}x)" if n["slashes"] else "-",
            n["endpoint"] or "-",
        ]
        for n in page["items"]
    ]
    _table(
        ["NODE", "MODEL", "SHARD", "STATUS", "STAKE", "PRICE/TOKEN", "JOBS", "EARNED", "SLASHED", "ENDPOINT"],
        rows,
    )
    _footer(page, "nodes")
    return 0
