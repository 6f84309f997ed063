"""The per-step cost of authenticated answers (splitmesh.protocol "Answers"), against the signature work
a step already did before them, measured in the same run.

Per step and hop, a node now signs one more EIP-712 statement and the client recovers one more
signature; the baseline is what each step already cost in signatures: the client signing its envelope,
and a hop recovering the envelope and the previous hop's relay signature and signing its own relay.
Also: the bytes answers add to a result frame's meta. Prints JSON; no assertions.
Usage: python bench/bench_answers.py [--hops N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import timeit
from collections.abc import Callable

import torch

from client_sdk.answers import AnswerCheck
from splitmesh.chain import HARDHAT_DEV_KEYS
from splitmesh.protocol import Answer, HopTiming, StepResult, hex32, tensor_digest
from splitmesh.signing import (
    EnvelopeSigner,
    RelaySigner,
    recover_envelope_address,
    recover_relay_address,
)

CHAIN_ID, MARKET, JOB, STEP = 31337, "0x5FbDB2315678afecb367f032d7a0a65A7B5bD8D2", 12, 40


def median_us(fn: Callable[[], object], repeat: int) -> float:
    """Median over `repeat` batches of the per-call time in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return statistics.median(t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hops", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    hops = args.hops
    signers = [RelaySigner(HARDHAT_DEV_KEYS[1 + p], CHAIN_ID, MARKET) for p in range(hops)]
    client = EnvelopeSigner(HARDHAT_DEV_KEYS[9], CHAIN_ID, MARKET)
    # One decode step's tensors: [1, 1, 576] float32, as SmolLM2 sends them.
    digests = [tensor_digest(torch.randn(1, 1, 576)) for _ in range(hops + 1)]
    answers = [
        Answer(
            position=p,
            upstream=hex32(digests[p]),
            downstream=hex32(digests[p + 1]),
            signature=hex32(signers[p].sign_answer(JOB, STEP, p, digests[p], digests[p + 1])),
        )
        for p in range(hops)
    ]
    timings = [
        HopTiming(node=s.address, position=p, compute_ms=3.0, handle_ms=4.0) for p, s in enumerate(signers)
    ]
    result = StepResult(job=JOB, step=STEP, hops=timings, answers=answers)
    check = AnswerCheck(CHAIN_ID, MARKET, JOB, tuple(bytes.fromhex(s.address[2:]) for s in signers))

    envelope = client.sign(JOB, STEP, 41, digests[0])
    relay = signers[0].sign(JOB, STEP, 0, digests[1])
    r = args.repeat
    sign_answer = median_us(lambda: signers[1].sign_answer(JOB, STEP, 1, digests[1], digests[2]), r)
    verify_all = median_us(lambda: check.verify(result, STEP, digests[0], digests[-1]), r)
    parse_all = median_us(lambda: StepResult.model_validate(result.model_dump()), r)
    client_envelope = median_us(lambda: client.sign(JOB, STEP, 41, digests[0]), r)
    hop_checks = median_us(
        lambda: (
            recover_envelope_address(CHAIN_ID, MARKET, JOB, STEP, 41, digests[0], envelope.signature),
            recover_relay_address(CHAIN_ID, MARKET, JOB, STEP, 0, digests[1], relay),
            signers[1].sign(JOB, STEP, 1, digests[2]),
        ),
        r,
    )
    without = StepResult(job=JOB, step=STEP, hops=timings, answers=[])
    added_bytes = len(json.dumps(result.model_dump())) - len(json.dumps(without.model_dump()))
    per_step_new = sign_answer * hops + verify_all  # every hop signs once, the client checks them all
    per_step_old = client_envelope + hop_checks * hops
    print(
        json.dumps(
            {
                "bench": "answers",
                "hops": hops,
                "node_sign_answer_us": round(sign_answer, 1),
                "client_verify_answers_us": round(verify_all, 1),
                "client_verify_per_hop_us": round(verify_all / hops, 1),
                "client_parse_result_meta_us": round(parse_all, 1),
                "result_meta_bytes_added": added_bytes,
                "result_meta_bytes_added_per_hop": added_bytes // hops,
                "baseline": {
                    "client_sign_envelope_us": round(client_envelope, 1),
                    "hop_envelope_and_relay_checks_us": round(hop_checks, 1),
                    "per_step_signature_work_us": round(per_step_old, 1),
                },
                "per_step_answer_work_us": round(per_step_new, 1),
                "ratio_to_baseline": round(per_step_new / per_step_old, 3),
                "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
