"""The OpenAI-compatible endpoint end to end: `splitmesh openai serve` as a real process in front of a
real marketplace (a tiny random Llama with SmolLM2's tokenizer, two node processes, a hardhat chain),
driven by the official `openai` package and by plain HTTP. At epsilon inf and greedy decoding the
endpoint's answers equal `Client.generate`'s for the same prompt, and its usage equals the job's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from eth_account import Account

from client_sdk import Client, Generation
from splitmesh.chain import JobStatus, free_port
from splitmesh.paths import models_dir
from splitmesh_cli.localnet import CLIENT_KEY, OTHER_KEY, RunningMarket, start_market, stop_market
from splitmesh_cli.wait import wait_until
from tests.model_fixtures import save_random_model, tiny_llama_config

API_KEY = "sk-test-" + "7" * 24
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colors of the rainbow."},
]
NEW = 8


@dataclass
class Endpoint:
    market: RunningMarket
    url: str  # http://127.0.0.1:PORT/v1
    proc: subprocess.Popen[bytes]
    model: str  # the name the endpoint serves
    sdk: Client  # a second client key, for the reference answers

    def openai(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=120)


def _tiny_model(tmp: Path) -> Path:
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=6), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    return model


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp = tmp_path_factory.mktemp("openai")
    model = _tiny_model(tmp)
    running = start_market(tmp, model=str(model), split=2, nodes=2)
    key_file = tmp / "api-key"
    key_file.write_text(API_KEY + "\n")
    port = free_port()
    args = ["--rpc-url", running.rpc_url, "--market", running.deployment.market, "--key", CLIENT_KEY]
    args += ["--model", str(model), "--port", str(port), "--api-key-file", str(key_file)]
    log = (tmp / "endpoint.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitmesh_cli.main", "openai", "serve", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until(
            lambda: proc.poll() is not None or _status(f"{url}/models", API_KEY) == 200,
            timeout=240,  # torch and the model load in a fresh process; slow on a busy machine
            message=lambda: f"the endpoint did not start; log:\n{(tmp / 'endpoint.log').read_text()}",
        )
        assert proc.poll() is None, (tmp / "endpoint.log").read_text()
        sdk = Client(running.rpc_url, OTHER_KEY, str(model), market=running.deployment.market)
        yield Endpoint(running, url, proc, sdk.plans()[-1].name, sdk)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        stop_market(running)


def _request(url: str, body: bytes | None, api_key: str | None) -> tuple[int, dict[str, Any]]:
    """A plain HTTP request (what curl sends); the status and the JSON body."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        url, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _status(url: str, api_key: str) -> int | None:
    try:
        return _request(url, None, api_key)[0]
    except OSError:
        return None


@pytest.fixture(scope="module")
def reference_chat(endpoint: Endpoint) -> Generation:
    """The SDK's own answer to MESSAGES (greedy, epsilon inf), with another client key."""
    return endpoint.sdk.generate(MESSAGES, NEW, temperature=0, split=2)


def test_models_lists_the_registered_plan(endpoint: Endpoint) -> None:
    models = endpoint.openai().models.list()
    assert [m.id for m in models.data] == [endpoint.model]
    extra = models.data[0].model_extra or {}
    assert extra["splitmesh"]["plans"][0]["boundaries"] == [0, 2, 4, 6]
    assert extra["splitmesh"]["splits"] == [2, 4]


def test_chat_equals_the_sdk_and_usage_equals_the_job(endpoint: Endpoint, reference_chat: Generation) -> None:
    reply = endpoint.openai().chat.completions.create(
        model=endpoint.model,
        messages=MESSAGES,
        max_tokens=NEW,
        temperature=0,  # type: ignore[arg-type]
    )
    reference = reference_chat
    assert reply.choices[0].message.content == reference.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == reference.receipt.prompt_tokens == len(reference.prompt_ids)
    assert reply.usage.completion_tokens == reference.receipt.generated_tokens == len(reference.token_ids)
    assert reply.choices[0].finish_reason == ("length" if len(reference.token_ids) == NEW else "stop")
    extra = (reply.model_extra or {})["splitmesh"]
    assert extra["epsilon"] == "inf" and extra["privacy"] and extra["cost_wei"] > 0
    # The chain billed the endpoint's job for exactly what usage says (prompt + generated - 1 positions).
    market = endpoint.market.market
    job_id = extra["job_id"]
    assert market.job_submitted(job_id).terms.client == Account.from_key(CLIENT_KEY).address
    endpoint.market.wait_status(job_id, JobStatus.COMMITTED)
    billed = market.get_job(job_id).billed_tokens
    assert billed == reply.usage.prompt_tokens + reply.usage.completion_tokens - 1 == extra["billed_tokens"]


def test_streamed_chat_equals_the_sdk(endpoint: Endpoint, reference_chat: Generation) -> None:
    stream = endpoint.openai().chat.completions.create(
        model=endpoint.model,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_completion_tokens=NEW,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    reference = reference_chat
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference.text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and (finals[0].model_extra or {})["splitmesh"]["job_id"] > 0
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == len(reference.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(reference.prompt_ids)


def test_completion_with_a_stop_and_an_epsilon(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    prompt = "The sea is"
    reference = endpoint.sdk.generate(prompt, NEW, temperature=0, split=2, chat=False)
    reply = client.completions.create(model=endpoint.model, prompt=prompt, max_tokens=NEW, temperature=0)
    assert reply.choices[0].text == reference.text
    assert reply.usage is not None and reply.usage.completion_tokens == len(reference.token_ids)
    # A stop string inside the reference answer cuts the answer before it.
    assert len(reference.text) >= 4, reference.text
    stop = reference.text[2:4]
    cut = client.completions.create(
        model=endpoint.model, prompt=prompt, max_tokens=NEW, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == reference.text[: reference.text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # Epsilon per request through the extra body: the job is noised and says so.
    noised = client.completions.create(
        model=endpoint.model, prompt=prompt, max_tokens=2, extra_body={"splitmesh": {"epsilon": 8}}
    )
    extra = (noised.model_extra or {})["splitmesh"]
    assert extra["epsilon"] == 8
    assert "noised at epsilon 8" in extra["exposure"]["every_route_node"]


def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as two:
        client.chat.completions.create(model=endpoint.model, messages=MESSAGES, n=2)  # type: ignore[arg-type]
    assert two.value.param == "n"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=endpoint.model, prompt="hi", max_tokens=10**6)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model=endpoint.model,
            messages=MESSAGES,  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert tools.value.code == "unsupported_parameter"
    with pytest.raises(openai.AuthenticationError):
        endpoint.openai(api_key="sk-wrong").models.list()
    chat_url = f"{endpoint.url}/chat/completions"
    status, body = _request(chat_url, b'{"model": "x", "messages": [', API_KEY)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert set(body["error"]) >= {"message", "type", "code"}
    status, body = _request(chat_url, json.dumps({"model": endpoint.model}).encode(), None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = _request(chat_url, b"[1, 2]", API_KEY)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    # Still serving: a plain-HTTP chat works after all of that.
    request = {"model": endpoint.model, "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    status, body = _request(chat_url, json.dumps(request).encode(), API_KEY)
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1


def _stream_chat(endpoint: Endpoint, question: str, new: int, log: Any) -> tuple[str, dict[str, Any]]:
    """One streamed chat; `log(kind)` is called at its first and last content chunk."""
    stream = endpoint.openai().chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": question}],
        max_tokens=new,
        temperature=0,
        stream=True,
    )
    parts: list[str] = []
    extra: dict[str, Any] = {}
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            if not parts:
                log("first")
            parts.append(c.choices[0].delta.content)
        if c.choices and c.choices[0].finish_reason:
            extra = (c.model_extra or {})["splitmesh"]
    log("last")
    return "".join(parts), extra


def peak_overlap(events: list[tuple[float, int, str]]) -> int:
    """Most streams between their first and last token at one moment (events ordered by time)."""
    active = peak = 0
    for _, _, kind in sorted(events):
        active += 1 if kind == "first" else -1
        peak = max(peak, active)
    return peak


def test_concurrent_streams_on_one_key_run_at_once_and_each_equals_the_sdk(endpoint: Endpoint) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    questions = ["Name a fruit.", "Count to five.", "What is rust?", "Say hello in French."]
    new = 24
    references = [endpoint.sdk.generate(q, new, temperature=0, split=2) for q in questions]  # one at a time
    events: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(questions))

    def run(i: int) -> tuple[str, dict[str, Any]]:
        def log(kind: str) -> None:
            with lock:
                events.append((time.monotonic(), i, kind))

        barrier.wait()  # all requests leave together
        return _stream_chat(endpoint, questions[i], new, log)

    with ThreadPoolExecutor(len(questions)) as pool:
        results = list(pool.map(run, range(len(questions))))
    # Each stream is its own job with its own answer: the same tokens as the SDK alone (greedy, eps inf).
    assert [text for text, _ in results] == [r.text for r in references]
    job_ids = [extra["job_id"] for _, extra in results]
    assert len(set(job_ids)) == len(questions)
    # One key, concurrent submits: every job landed (no nonce collision), paid by that key, and billed
    # for what its stream got.
    market = endpoint.market.market
    client = Account.from_key(CLIENT_KEY).address
    for (_, extra), reference in zip(results, references, strict=True):
        assert market.job_submitted(extra["job_id"]).terms.client == client
        endpoint.market.wait_status(extra["job_id"], JobStatus.COMMITTED)
        assert market.get_job(extra["job_id"]).billed_tokens == extra["billed_tokens"]
        assert extra["billed_tokens"] == len(reference.prompt_ids) + len(reference.token_ids) - 1
    # They ran at once: some stream got its first token while another was still streaming (one key used
    # to serialize them: a stream started only after the previous one had ended).
    assert peak_overlap(events) >= 2, sorted(events)
