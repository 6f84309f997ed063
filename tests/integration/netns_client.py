"""A client process for tests that run it on its own host (a network namespace, see tests.integration.netns).

    ip netns exec NS python -m tests.integration.netns_client '<json config>'

Streams one greedy generation at epsilon inf with failover and prints one JSON line per event on
stdout: {"event": "token", ...} per token; {"event": "paused", "index": i} once token `pause_at` is out,
then it waits for a line on stdin before it asks for the next token (the test breaks the network in
between); {"event": "done", ...} with the tokens and the receipt's failover report, or
{"event": "error", ...}. The private key comes in the environment (SPLITMESH_PRIVATE_KEY).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from client_sdk import Client, FailoverPolicy, Generation, TokenEvent


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run(config: dict[str, Any]) -> int:
    client = Client(
        config["rpc_url"], os.environ["SPLITMESH_PRIVATE_KEY"], config["model"], market=config["market"]
    )
    policy = FailoverPolicy(**config["failover"])
    stream = client.stream(
        config["prompt"], config["new_tokens"], split=config["split"], epsilon=math.inf, failover=policy
    )
    for event in stream:
        if isinstance(event, TokenEvent):
            _emit("token", index=event.index, token_id=event.token_id)
            if event.index + 1 == config["pause_at"]:
                _emit("paused", index=event.index)
                sys.stdin.readline()
        elif isinstance(event, Generation):
            receipt = event.receipt
            _emit(
                "done",
                token_ids=event.token_ids,
                prompt_ids=event.prompt_ids,
                job_id=receipt.job_id,
                prompt_tokens=receipt.prompt_tokens,
                route=[{"node": h.node, "endpoint": h.endpoint} for h in receipt.route],
                failover=receipt.failover.to_json(),
            )
    return 0


def main() -> int:
    try:
        return run(json.loads(sys.argv[1]))
    except Exception as exc:  # reported to the test, which fails with it
        _emit("error", type=type(exc).__name__, message=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
