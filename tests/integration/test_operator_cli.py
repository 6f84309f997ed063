"""The command line of a node operator and of a user, against a real local chain: keystores, model
registration, a node's whole life (run from the systemd unit's own ExecStart line, serve a job, get paid,
unbond, wait, withdraw) with exact balances, the contract's refusals, and `generate` / `chat`."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from splitmesh.chain import HARDHAT_DEV_KEYS, JobStatus, LocalChain, Marketplace, Sender, deploy
from splitmesh.chain.launcher import advance_time
from splitmesh.paths import models_dir
from splitmesh_cli.keys import KeyChoice, warn_if_exposed
from splitmesh_cli.localnet import CLIENT_KEY, PARAMS
from splitmesh_cli.main import main
from splitmesh_cli.procs import NodeProcess, NodeSpec
from splitmesh_cli.wait import wait_until
from tests.model_fixtures import save_random_model, tiny_llama_config

ETHER = 10**18
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "docs" / "splitmesh-node.service"
DEPLOYER_KEY = HARDHAT_DEV_KEYS[0]
OPERATOR_KEY = HARDHAT_DEV_KEYS[3]
STRANGER_KEY = HARDHAT_DEV_KEYS[5]
PASSWORD = "correct horse battery staple"


@dataclass
class Chain:
    local: LocalChain
    w3: Web3
    market: Marketplace
    model: Path
    tmp: Path

    def args(self) -> list[str]:
        return ["--rpc-url", self.local.rpc_url, "--market", self.market.deployment.market]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """A fresh chain and deployment for this module, and a tiny model with SmolLM2's tokenizer."""
    tmp = tmp_path_factory.mktemp("operator")
    model = save_random_model(tiny_llama_config(vocab_size=49152, num_hidden_layers=4), tmp / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(models_dir() / "SmolLM2-135M-Instruct" / name, model / name)
    local = LocalChain(log_path=tmp / "hardhat.log").start()
    try:
        w3 = Web3(Web3.HTTPProvider(local.rpc_url, request_kwargs={"timeout": 60}))
        market = Marketplace(w3, deploy(w3, Sender(w3, DEPLOYER_KEY), PARAMS))
        yield Chain(local, w3, market, model, tmp)
    finally:
        local.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, chain: Chain) -> None:
    for name in list(os.environ):
        if name.startswith("SPLITMESH_") and name != "SPLITMESH_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPLITMESH_HOME", str(chain.tmp / "home"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None, str]:
    """Run `splitmesh ARGV` in-process: exit code, its --json document (if any), stderr."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    document = json.loads(captured.out) if "--json" in argv and code == 0 else None
    return code, document, captured.err


def keystore(chain: Chain, capsys: pytest.CaptureFixture[str], key: str, name: str) -> Path:
    existing = chain.tmp / "keys" / f"{Sender(chain.w3, key).address}.json"
    if existing.exists():  # imported by an earlier test of this module
        return existing
    key_file, password_file = chain.tmp / f"{name}.key", chain.tmp / f"{name}.password"
    key_file.write_text(key + "\n")
    password_file.write_text(PASSWORD + "\n")
    code, doc, err = run(
        capsys, "account", "import", "--key-file", str(key_file), "--password-file", str(password_file),
        "--dir", str(chain.tmp / "keys"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert doc is not None
    path = Path(doc["keystore"])
    shutil.copy(password_file, chain.tmp / f"{path.stem}.password")  # where `signing` looks for it
    return path


def signing(chain: Chain, path: Path) -> list[str]:
    return ["--keystore", str(path), "--password-file", str(chain.tmp / f"{path.stem}.password")]


# ------------------------------------------------------------------ keystores


def test_account_keystores_are_encrypted_and_never_show_the_key(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = chain.tmp / "accounts"
    password_file = chain.tmp / "pw"
    password_file.write_text("hunter2\n")
    code, created, err = run(
        capsys, "account", "new", "--dir", str(folder), "--password-file", str(password_file), "--json"
    )
    assert code == 0, err
    path = Path(created["keystore"])  # type: ignore[index]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert "crypto" in data and Web3.to_checksum_address(data["address"]) == created["address"]  # type: ignore[index]
    key_file = chain.tmp / "imported.key"
    key_file.write_text(STRANGER_KEY + "\n")
    code, imported, err = run(
        capsys, "account", "import", "--key-file", str(key_file), "--dir", str(folder),
        "--password-file", str(password_file), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert imported["address"] == Sender(chain.w3, STRANGER_KEY).address  # type: ignore[index]
    capsys.readouterr()
    assert main(["account", "list", "--dir", str(folder)]) == 0
    listed = capsys.readouterr()
    assert created["address"] in listed.out and imported["address"] in listed.out  # type: ignore[index]
    for text in (listed.out, listed.err, json.dumps(created), json.dumps(imported), path.read_text()):
        assert STRANGER_KEY.removeprefix("0x") not in text
    # The same key twice is refused (nothing overwritten).
    code, _, err = run(
        capsys, "account", "import", "--key-file", str(key_file), "--dir", str(folder),
        "--password-file", str(password_file),
    )  # fmt: skip
    assert code == 2 and "already exists" in err


def test_a_wrong_keystore_password_is_refused(chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    path = keystore(chain, capsys, STRANGER_KEY, "wrongpw")
    bad = chain.tmp / "bad.password"
    bad.write_text("not it\n")
    code, _, err = run(
        capsys, "node", "status", *chain.args(), "--keystore", str(path), "--password-file", str(bad)
    )
    assert code == 2
    assert f"wrong password for the keystore {path}" in err


def test_key_on_the_command_line_warns_off_dev_chains_only(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "node", "status", *chain.args(), "--key", STRANGER_KEY)
    assert code == 0
    assert "visible to every user" not in err  # 31337 is a dev chain
    warn_if_exposed(KeyChoice(STRANGER_KEY, "--key"), 1)  # what a mainnet RPC URL's chain id gives
    warned = capsys.readouterr().err
    assert "--key on chain 1 is visible to every user of this machine" in warned
    assert STRANGER_KEY.removeprefix("0x") not in warned


# ------------------------------------------------------------------ models


def test_model_register_refuses_duplicates_and_bad_plans(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    deployer = keystore(chain, capsys, DEPLOYER_KEY, "deployer")
    base = ["model", "register", "--model", str(chain.model), *chain.args(), *signing(chain, deployer)]
    code, doc, err = run(capsys, *base, "--plan", "0,1,4", "--name", "tiny-a", "--json")
    assert code == 0, err
    assert doc is not None and doc["plan"] == [0, 1, 4] and doc["name"] == "tiny-a"
    assert chain.market.get_model(doc["model_id"]).boundaries == (0, 1, 4)
    code, _, err = run(capsys, *base, "--plan", "0,1,4")
    assert code == 2 and f"already registered for these weights as model {doc['model_id']}" in err
    for plan, words in (("0,3,2,4", "strictly increase"), ("0,2,5", "end at 4 layers"), ("0,x", "integers")):
        code, _, err = run(capsys, *base, "--plan", plan)
        assert code == 2 and words in err, err
    code, listed, err = run(capsys, "model", "list", *chain.args(), "--json")
    assert code == 0, err
    assert [m["model_id"] for m in listed["models"]] == [doc["model_id"]]  # type: ignore[index]


# ------------------------------------------------------------------ a node's life


def unit_command(chain: Chain, keystore_path: Path, home: Path) -> list[str]:
    """The ExecStart line of docs/splitmesh-node.service with the placeholders filled for this chain."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    values = {
        "SPLITMESH": "splitmesh", "RPC_URL": chain.local.rpc_url, "MARKET": chain.market.deployment.market,
        "MODEL": str(chain.model), "SHARD": "1", "PRICE": "1000", "HOST": "127.0.0.1", "PORT": "0",
        "KEYSTORE": str(keystore_path), "PASSWORD_FILE": str(chain.tmp / f"{keystore_path.stem}.password"),
        "HOME": str(home),
    }  # fmt: skip
    for name, value in values.items():
        line = line.replace("{" + name + "}", value)
    assert "{" not in line, line
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "splitmesh"
    return [sys.executable, "-m", "splitmesh_cli.main", *argv[1:]]


def gas_spent(w3: Web3, address: str) -> int:
    """Wei the address paid for gas, over every transaction it sent on this chain."""
    total = 0
    for number in range(w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            if tx["from"] == address:  # type: ignore[index]
                receipt = w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
                total += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return total


class UnitNode(NodeProcess):
    """The node started from the systemd unit's command line instead of NodeSpec's flags."""

    def __init__(self, argv: list[str], log_path: Path):
        super().__init__(NodeSpec(shard=1, key="", rpc_url="", market=""), log_path)
        self.argv = argv

    def command(self) -> list[str]:
        return self.argv


def test_operator_lifecycle_with_exact_balances(
    chain: Chain, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from client_sdk import Client

    w3, market = chain.w3, chain.market
    operator = keystore(chain, capsys, OPERATOR_KEY, "operator")
    address = Sender(w3, OPERATOR_KEY).address
    if not market.models():  # the model test registers it; alone, this test does
        code, _, err = run(
            capsys, "model", "register", "--model", str(chain.model), "--plan", "0,1,4", *chain.args(),
            *signing(chain, keystore(chain, capsys, DEPLOYER_KEY, "deployer2")),
        )  # fmt: skip
        assert code == 0, err
    start_balance = w3.eth.get_balance(address)
    node = UnitNode(unit_command(chain, operator, chain.tmp / "node-home"), chain.tmp / "node.log").start()
    try:
        assert node.address == address
        client = Client(chain.local.rpc_url, CLIENT_KEY, str(chain.model), market=market.deployment.market)
        generation = client.generate("Hello", max_new_tokens=3, split=1)
        # The user's commands on the same node: one answer, then a two-turn conversation.
        user = ["--model", str(chain.model), "--split", "1", "--max-new-tokens", "3", *chain.args()]
        code, answer, err = run(capsys, "generate", "Hello", *user, "--json")
        assert code == 0, err
        assert answer is not None and answer["text"] == generation.text  # greedy, epsilon inf: the same
        assert answer["cost_wei"] == 1000 * answer["billed_tokens"] + market.hop_fee()
        monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nAnd then?\n\n"))
        code, chat, err = run(capsys, "chat", *user, "--json")
        assert code == 0, err
        first, second = chat["turns"]  # type: ignore[index]
        # The second turn's prompt carries the whole conversation (chat template over both turns).
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["generated_tokens"]
        assert [s["status"] for s in chat["settlements"]] == ["pending", "pending"]  # type: ignore[index]
        job_ids = [generation.receipt.job_id, answer["job_id"], first["job_id"], second["job_id"]]
        for job_id in job_ids:
            wait_until(
                lambda job_id=job_id: market.get_job(job_id).status == JobStatus.COMMITTED,  # type: ignore[misc]
                timeout=60,
                message=f"job {job_id} was not committed",
            )
        advance_time(w3, market.parameters()["challenge_window"] + 1)
        earned = 0
        for job_id in job_ids:
            settlement = client.finalize(job_id)
            assert settlement.paid_wei[address] == 1000 * settlement.billed_tokens + market.hop_fee()
            earned += settlement.paid_wei[address]
    finally:
        node.stop()
    code, status, err = run(capsys, "node", "status", *chain.args(), *signing(chain, operator), "--json")
    assert code == 0, err
    assert status is not None and status["pooled"] and status["stake_wei"] == ETHER
    credited = status["earnings_wei"] + status["withdrawn_wei"]  # the daemon may have withdrawn already
    assert credited == earned
    if status["earnings_wei"]:
        code, doc, err = run(
            capsys, "node", "earnings", "--withdraw", *chain.args(), *signing(chain, operator), "--json"
        )
        assert code == 0, err
    # Unbond everything: out of the pool, in words; a second unbond has nothing left to unbond.
    code, doc, err = run(capsys, "node", "unbond", "1", *chain.args(), *signing(chain, operator), "--json")
    assert code == 0, err
    node_row = doc["node"]  # type: ignore[index]
    assert not node_row["pooled"] and node_row["pool_reason"].startswith("below minimum stake")
    code, _, err = run(capsys, "node", "unbond", "1", *chain.args(), *signing(chain, operator))
    assert code == 2 and "InsufficientStake" in err
    code, _, err = run(capsys, "node", "withdraw", *chain.args(), *signing(chain, operator))
    assert code == 2 and "UnbondingLocked" in err
    advance_time(w3, market.unbonding_delay() + 1)
    code, doc, err = run(capsys, "node", "withdraw", *chain.args(), *signing(chain, operator), "--json")
    assert code == 0, err
    assert doc["node"]["unbonding_wei"] == 0 and doc["node"]["stake_wei"] == 0  # type: ignore[index]
    # Exact: everything staked came back, plus what the job paid, minus every transaction's gas.
    # (The operator's key sent nothing before this test, so all its gas was spent since start_balance.)
    assert w3.eth.get_balance(address) == start_balance + earned - gas_spent(w3, address)


def test_refusals_for_a_stranger_and_for_pool_changes(
    chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = keystore(chain, capsys, STRANGER_KEY, "stranger")
    code, _, err = run(capsys, "node", "set-price", "5", *chain.args(), *signing(chain, stranger))
    assert code == 2 and "NodeNotRegistered" in err
    code, _, err = run(capsys, "node", "activate", *chain.args(), *signing(chain, stranger))
    assert code == 2 and "never registered" in err
    code, doc, err = run(capsys, "node", "status", *chain.args(), *signing(chain, stranger), "--json")
    assert code == 0, err
    assert doc is not None and not doc["pooled"] and doc["pool_reason"] == "not registered"
