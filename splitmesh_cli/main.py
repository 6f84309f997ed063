"""`splitmesh`: one command line for the chain, nodes, jobs and the demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from splitmesh.errors import SplitmeshError

DESCRIPTION = """\
splitmesh: private LLM inference on a marketplace of staked nodes, coordinated by EVM contracts.

The client runs the first layers of a model and noises the activations; staked nodes matched on-chain
run the remaining shards; nodes commit on-chain and are paid after a challenge window.
"""


def build_parser() -> argparse.ArgumentParser:
    from splitmesh_cli import (
        account_cmd,
        chain_cmd,
        coordinator_cmd,
        demo,
        generate_cmd,
        model_cmd,
        node_cmd,
        openai_cmd,
        privacy_cmd,
        query_cmd,
        train_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="splitmesh", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (-vv for debug); env SPLITMESH_LOG",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chain_cmd.register(sub)
    model_cmd.register(sub)
    account_cmd.register(sub)
    generate_cmd.register(sub)
    demo.register(sub)
    node_cmd.register(sub)
    query_cmd.register(sub)
    coordinator_cmd.register(sub)
    train_cmd.register(sub)
    privacy_cmd.register(sub)
    openai_cmd.register(sub)
    return parser


def _setup_logging(verbosity: int) -> None:
    level_name = os.environ.get("SPLITMESH_LOG", "")
    level = getattr(logging, level_name.upper(), None) if level_name else None
    if level is None:
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except SplitmeshError as exc:
        logging.getLogger("splitmesh").debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
