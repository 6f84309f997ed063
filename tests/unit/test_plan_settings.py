from __future__ import annotations

import pytest

from splitmesh.errors import ConfigError
from splitmesh.plan import client_split_plan, even_plan, validate_plan
from splitmesh.settings import ChainSettings


@pytest.mark.parametrize(
    ("layers", "split", "nodes", "expected"),
    [(30, 4, 3, [0, 4, 13, 22, 30]), (30, 1, 1, [0, 1, 30]), (12, 2, 5, [0, 2, 4, 6, 8, 10, 12])],
)
def test_client_split_plan(layers: int, split: int, nodes: int, expected: list[int]) -> None:
    assert client_split_plan(layers, split, nodes) == expected


@pytest.mark.parametrize(("layers", "split", "nodes"), [(30, 0, 3), (30, 30, 1), (5, 3, 3), (30, 4, 8)])
def test_client_split_plan_rejects(layers: int, split: int, nodes: int) -> None:
    with pytest.raises(ConfigError):
        client_split_plan(layers, split, nodes)


def test_even_plan_and_validation() -> None:
    assert even_plan(30, 4) == [0, 8, 16, 23, 30]
    validate_plan([0, 8, 16, 23, 30], 30)
    for bad in ([1, 30], [0, 29], [0, 5, 5, 30], [0, *range(1, 10), 30]):
        with pytest.raises(ConfigError):
            validate_plan(bad, 30)


def test_settings_env_then_flags() -> None:
    env = {"SPLITMESH_RPC_URL": "http://127.0.0.1:9", "SPLITMESH_TX_TIMEOUT": "5"}
    settings = ChainSettings.from_env(env)
    assert settings.rpc_url == "http://127.0.0.1:9"
    assert settings.tx_timeout == 5.0
    assert settings.override(rpc_url="http://x", market=None).rpc_url == "http://x"
    with pytest.raises(ConfigError, match="not a number"):
        ChainSettings.from_env({"SPLITMESH_TX_TIMEOUT": "soon"})
