import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def running_market(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Three SmolLM2 node processes on their own local chain, one per test module: no module depends on
    what another did to a shared marketplace (stake, pools, chain time)."""
    from splitmesh_cli.localnet import start_market, stop_market

    running = start_market(tmp_path_factory.mktemp("market"))
    yield running
    stop_market(running)
