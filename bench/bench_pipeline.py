"""Private split inference over the marketplace vs local `model.generate`, measured in the same run.

Starts a local chain, deploys, registers SmolLM2-135M-Instruct and starts three real node processes
(one shard each), then generates through the route and with the unsplit Hugging Face model on the same
prompts. Prints one JSON object:

- decode tokens/s of the pipeline and of `model.generate`, and their ratio (target >= 0.95);
- where a pipeline step's time goes: client head, DP noise + signing, route, client tail, node layers;
- per-hop overhead: route time minus the nodes' layer time, per link (target <= 0.3 ms p50), split into
  transport (per link, both ways) and node-side handling outside the layers;
- DP noise + envelope signing as a share of a decode step (target <= 2%);
- gas per job: submit, three commits, finalize, and the nodes' withdrawals.

Run: .venv/bin/python bench/bench_pipeline.py [--tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client_sdk import Client
from splitmesh.chain import JobStatus
from splitmesh.chain.launcher import advance_time
from splitmesh.model.reference import reference_generate
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS, SPLIT, start_market, stop_market

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new language.",
]


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="generations per prompt and mode")
    parser.add_argument("--epsilon", type=float, default=50.0, help="finite epsilon for the DP run")
    args = parser.parse_args()

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="splitmesh-bench-"))
    log("starting chain, deploying, starting 3 node processes ...")
    running = start_market(tmp)
    try:
        client = Client(running.rpc_url, CLIENT_KEY, market=running.deployment.market)
        client.generate(PROMPTS[0], 4, split=SPLIT)  # warm-up: caches, kernels, connections
        pipeline: list[Any] = []
        matches = []
        reference_rates = []
        private: list[Any] = []
        for prompt in PROMPTS:
            ids = client.encode_prompt(prompt)
            # Same statistic on both sides: one timed run per repeat, the median over all of them.
            refs = [reference_generate(None, ids, args.tokens, repeats=1) for _ in range(args.repeats)]
            ref = refs[0]
            reference_rates += [r.tokens_per_s for r in refs]
            for _ in range(args.repeats):
                out = client.generate(prompt, args.tokens, split=SPLIT)
                pipeline.append(out.receipt)
                matches.append(out.token_ids == ref.tokens)
            out = client.generate(prompt, args.tokens, split=SPLIT, epsilon=args.epsilon, seed=1)
            private.append(out.receipt)
            rate_now = pipeline[-1].tokens_per_s
            log(f"  {prompt[:40]!r}: pipeline {rate_now:.1f} tok/s, reference {ref.tokens_per_s:.1f} tok/s")

        def pooled(receipts: list[Any], attr: str) -> list[float]:
            return [v * 1e3 for r in receipts for v in getattr(r.steps, attr)[1:]]

        rate = statistics.median(r.tokens_per_s for r in pipeline)
        reference = statistics.median(r for r in reference_rates if r)
        links = [v for r in pipeline for step in r.steps.link_ms() for v in step]
        per_link = [p50([step[i] for r in pipeline for step in r.steps.link_ms()]) for i in range(3)]
        local = [v for r in pipeline for step in r.steps.node_local_ms() for v in step]
        per_hop = [v for r in pipeline for v in r.steps.hop_overhead_ms()]
        step_ms = [
            h + p + rt + t
            for h, p, rt, t in zip(
                pooled(pipeline, "head"),
                pooled(pipeline, "privacy"),
                pooled(pipeline, "route"),
                pooled(pipeline, "tail"),
                strict=True,
            )
        ]
        privacy_ms = pooled(private, "privacy")
        private_step = [
            h + p + rt + t
            for h, p, rt, t in zip(
                pooled(private, "head"),
                privacy_ms,
                pooled(private, "route"),
                pooled(private, "tail"),
                strict=True,
            )
        ]

        gas = _job_gas(running, client, pipeline[-1].job_id)
        result = {
            "model": "SmolLM2-135M-Instruct (fp32)",
            "machine": {"cpus": __import__("os").cpu_count(), "node_threads": 1},
            "plan": running.plan,
            "new_tokens": args.tokens,
            "generations": len(pipeline),
            "pipeline_tokens_per_s": round(rate, 2),
            "reference_tokens_per_s": round(reference, 2),
            "ratio": round(rate / reference, 3),
            "target_ratio": 0.95,
            "tokens_identical_to_generate": all(matches),
            "decode_step_ms_p50": p50(step_ms),
            "breakdown_ms_p50": {
                "client_head": p50(pooled(pipeline, "head")),
                "privacy_and_signing": p50(pooled(pipeline, "privacy")),
                "route": p50(pooled(pipeline, "route")),
                "client_tail_and_sampling": p50(pooled(pipeline, "tail")),
                "node_layers": [
                    p50([s[i] for r in pipeline for s in r.steps.node_compute_ms[1:]]) for i in range(3)
                ],
            },
            "per_hop_overhead_ms_p50": p50(per_hop),
            "target_per_hop_overhead_ms": 0.3,
            "transport_ms_p50_per_link": {
                "client-node0": per_link[0],
                "node0-node1": per_link[1],
                "node1-node2": per_link[2],
                "all": p50(links),
            },
            "node_handling_outside_layers_ms_p50": p50(local),
            "dp": {
                "epsilon": args.epsilon,
                "privacy_and_signing_ms_p50": p50(privacy_ms),
                "share_of_decode_step": round(
                    statistics.median(privacy_ms) / statistics.median(private_step), 4
                ),
                "target_share": 0.02,
                "composed_epsilon_last_job": private[-1].privacy["composed_epsilon"],
            },
            "gas_per_job": gas,
        }
        print(json.dumps(result, indent=2, default=lambda v: "inf" if v == math.inf else str(v)))
    finally:
        stop_market(running)
    return 0


def _job_gas(running: Any, client: Client, job_id: int) -> dict[str, int]:
    """Gas of every transaction of one job, settled through the same code the product uses."""
    market = running.market
    running.wait_status(job_id, JobStatus.COMMITTED)
    advance_time(running.w3, PARAMS.challenge_window)
    deadline = time.monotonic() + 30
    while market.get_job(job_id).status != JobStatus.FINALIZED and time.monotonic() < deadline:
        time.sleep(0.1)  # the nodes' duty loops finalize once the window has passed

    def gas_of(event: Any) -> int:
        return int(market.w3.eth.get_transaction_receipt(event["transactionHash"])["gasUsed"])

    out = {"submitJob": gas_of(market.events("JobSubmitted", jobId=job_id)[0])}
    for e in market.events("JobCommitted", jobId=job_id):
        out[f"commit position {e['args']['position']}"] = gas_of(e)
    finals = market.events("JobFinalized", jobId=job_id)
    if finals:
        out["finalize"] = gas_of(finals[0])
    out["total"] = sum(out.values())
    return out


if __name__ == "__main__":
    sys.exit(main())
