"""`splitmesh openai serve` (or `splitmesh gateway`): an OpenAI-compatible HTTP endpoint on a
running marketplace.

Any OpenAI client (the `openai` package, curl, LangChain, ...) pointed at http://HOST:PORT/v1 runs each
request as a paid private job through the client SDK: the embeddings and first layers on this machine,
DP noise at the request's epsilon (`extra_body={"splitmesh": {"epsilon": 8}}`, default --epsilon), the
rest on the route of staked nodes. Responses carry usage and a `splitmesh` object (job id, cost, privacy).

Requests run at once: each is its own on-chain job, up to --jobs-per-key per client key (one Client
signs for them; its nonces come from one lock, so concurrent submits never collide). --extra-keystore adds
keys (same password) for more.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitmesh.errors import ConfigError
from splitmesh_cli.common import add_chain_args, add_device_args, device_options
from splitmesh_cli.generate_cmd import EPSILON_HELP, client_from, parse_epsilon

API_KEY_ENV = "SPLITMESH_OPENAI_API_KEY"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("openai", help="an OpenAI-compatible HTTP endpoint", description=__doc__)
    actions = group.add_subparsers(dest="openai_command", required=True, metavar="ACTION")
    _add_serve_args(
        actions.add_parser("serve", help="serve /v1/chat/completions, /v1/completions, /v1/models")
    )
    # The same server under the name app developers look for.
    _add_serve_args(
        sub.add_parser(
            "gateway",
            help="an OpenAI-compatible gateway (the same as `splitmesh openai serve`)",
            description=__doc__,
        )
    )


def _add_serve_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--model", help="local Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--epsilon", type=parse_epsilon, default=math.inf, help=EPSILON_HELP + "; a request may override it"
    )
    serve.add_argument(
        "--api-key-file",
        type=Path,
        help=f"file whose first line is the bearer key every request must send (or env {API_KEY_ENV}); "
        "default: no key (listen on 127.0.0.1 only then)",
    )
    serve.add_argument(
        "--default-max-tokens", type=int, default=256, help="new tokens when a chat request sets no limit"
    )
    serve.add_argument(
        "--jobs-per-key",
        type=int,
        help="requests one client key runs at once (default: EndpointConfig.jobs_per_key, 8)",
    )
    serve.add_argument(
        "--max-waiting", type=int, default=16, help="requests that may wait for a free slot; more get a 503"
    )
    serve.add_argument(
        "--extra-keystore",
        type=Path,
        action="append",
        default=[],
        help="another client keystore (same password): --jobs-per-key more jobs at once (repeatable)",
    )
    add_device_args(serve, client=True)
    add_chain_args(serve, rpc_required=True)
    serve.set_defaults(func=cmd_serve)


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {args.api_key_file}: {exc.strerror}") from exc
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"the API key file {args.api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def _clients(args: argparse.Namespace) -> list[Any]:
    from client_sdk import Client
    from splitmesh_cli.common import settings_from
    from splitmesh_cli.keys import decrypt_keystore, read_password

    first = client_from(args)
    clients = [first]
    if args.extra_keystore:
        settings = settings_from(args)
        password = read_password(args.password_file)
        for path in args.extra_keystore:
            key = decrypt_keystore(path, password)
            clients.append(
                Client(str(settings.rpc_url), key, args.model, market=settings.market, **device_options(args))
            )
    if len({c.address for c in clients}) != len(clients):
        raise ConfigError("each key of the endpoint must be different (one Sender, one nonce lock per key)")
    return clients


def cmd_serve(args: argparse.Namespace) -> int:
    from client_sdk.openai_api import EndpointConfig

    api_key = _api_key(args)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: no API key and listening on {args.host}: anyone who reaches it spends your escrow",
              file=sys.stderr)  # fmt: skip
    config = EndpointConfig(
        default_epsilon=args.epsilon,
        default_max_tokens=args.default_max_tokens,
        max_waiting=args.max_waiting,
        **({} if args.jobs_per_key is None else {"jobs_per_key": args.jobs_per_key}),
        api_key=api_key,
    )
    serve_gateway(_clients(args), config, args.host, args.port, lambda text: print(text, file=sys.stderr))
    return 0


def serve_gateway(clients: list[Any], config: Any, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve the endpoint over `clients` (an EndpointConfig) until Ctrl-C or SIGTERM; `say` gets the
    `openai` snippet that uses it once the socket listens."""
    from aiohttp import web

    from client_sdk.openai_api import MODEL_NAME, create_app

    app = create_app(clients, config)
    base = f"http://{host}:{port}/v1"
    text = (
        f"OpenAI-compatible endpoint on {base} (model {app[MODEL_NAME]!r}, {len(clients)} key(s), "
        f"default epsilon {config.default_epsilon})\n"
        + snippet(base, app[MODEL_NAME], "KEY" if config.api_key else "unused")
    )
    # run_app calls `print` once its sites listen: the snippet is printed when it already works.
    web.run_app(app, host=host, port=port, print=lambda _: say(text), access_log=None)


def snippet(base_url: str, model: str, api_key: str) -> str:
    """The Python lines that call the endpoint with the official `openai` package."""
    return (
        "  from openai import OpenAI\n"
        f"  client = OpenAI(base_url={base_url!r}, api_key={api_key!r})\n"
        f"  reply = client.chat.completions.create(model={model!r}, "
        'messages=[{"role": "user", "content": "Hi"}])\n'
        "  print(reply.choices[0].message.content)"
    )
