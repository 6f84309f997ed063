"""The OpenAI endpoint's request checks and stop-string holdback, in-process (no chain, no model)."""

from __future__ import annotations

import pytest

from client_sdk.openai_api import StopHoldback
from client_sdk.openai_schema import APIError, ChatRequest, CompletionRequest, parse

MESSAGES = [{"role": "user", "content": "hi"}]


def _error(model: type, body: object) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(model, body)
    return caught.value


def test_a_chat_request_reads_openai_fields_and_the_splitmesh_extras() -> None:
    req = parse(
        ChatRequest,
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "max_completion_tokens": 5,
            "max_tokens": 9,
            "stop": "x",
            "n": 1,
            "user": "u",
            "splitmesh": {"epsilon": "inf", "split": 2},
        },
    )
    assert [m.as_turn() for m in req.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert req.new_tokens() == 5 and req.stops() == ("x",)
    assert req.splitmesh.epsilon == float("inf") and req.splitmesh.split == 2
    assert parse(CompletionRequest, {"model": "m", "prompt": "p"}).new_tokens() == 16


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m", "messages": MESSAGES, "n": 2}, "n", "invalid_value"),
        ({"model": "m", "messages": MESSAGES, "tools": []}, "tools", "unsupported_parameter"),
        ({"model": "m", "messages": MESSAGES, "logprobs": True}, "logprobs", "invalid_value"),
        ({"model": "m", "messages": MESSAGES, "presence_penalty": 1}, "presence_penalty", "invalid_value"),
        ({"model": "m", "messages": MESSAGES, "temperature": 3}, "temperature", "invalid_value"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"model": "m", "messages": MESSAGES, "stop": ["a"] * 5}, "stop", "invalid_value"),
        ({"model": "m", "messages": []}, "messages", "invalid_value"),
        ({"model": "m"}, "messages", "missing_parameter"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "invalid_value"),
        (
            {"model": "m", "messages": MESSAGES, "splitmesh": {"epsilon": 0}},
            "splitmesh.epsilon",
            "invalid_value",
        ),
        (
            {"model": "m", "messages": MESSAGES, "splitmesh": {"noise": 1}},
            "splitmesh.noise",
            "unsupported_parameter",
        ),
    ],
)
def test_bad_requests_name_the_parameter(body: dict, param: str, code: str) -> None:
    err = _error(ChatRequest, body)
    assert (err.status, err.param, err.code) == (400, param, code)
    assert set(err.body()["error"]) == {"message", "type", "code", "param"}


def test_a_body_that_is_not_an_object_is_a_400() -> None:
    assert _error(ChatRequest, [1, 2]).status == 400


def test_holdback_never_streams_a_stop_string_or_its_start() -> None:
    held = StopHoldback(("STOP",))
    assert held.feed("hello S") == "hello "  # "S" may start "STOP"
    assert held.feed("T") == ""
    assert held.feed("x") == "STx"  # it did not
    assert held.feed(" ST") == " "
    # The SDK cut the final text before the stop: only what is left of it goes out.
    assert held.finish("hello STx ") == ""
    held = StopHoldback(())
    assert held.feed("abc") == "abc" and held.finish("abcd") == "d"
