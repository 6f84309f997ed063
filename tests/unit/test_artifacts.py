from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak

from splitmesh.chain.artifacts import decode_error, error_table, load_artifact
from splitmesh.chain.tx import revert_from_exception
from splitmesh.errors import ContractRevert


def test_every_declared_error_is_in_the_table() -> None:
    names = {spec.name for spec in error_table().values()}
    for contract in ("JobMarket", "NodeRegistry"):
        declared = {i["name"] for i in load_artifact(contract).abi if i["type"] == "error"}
        assert declared <= names
    assert {"EscrowTooSmall", "NoEligibleNode", "UnbondingLocked", "Error", "Panic"} <= names


def test_decode_custom_error_with_arguments() -> None:
    data = keccak(text="EscrowTooSmall(uint256,uint256)")[:4] + encode(["uint256", "uint256"], [10, 3])
    spec, args = decode_error(data)  # type: ignore[misc]
    assert (spec.name, args) == ("EscrowTooSmall", {"required": 10, "provided": 3})
    assert decode_error(b"\xde\xad\xbe\xef") is None
    assert decode_error(b"") is None


def test_revert_exception_becomes_readable_error() -> None:
    class FakeWeb3Error(Exception):
        data = "0x" + (keccak(text="UnknownJob(uint256)")[:4] + encode(["uint256"], [77])).hex()

    err = revert_from_exception(FakeWeb3Error("execution reverted"))
    assert isinstance(err, ContractRevert)
    assert err.name == "UnknownJob"
    assert err.args_by_name == {"jobId": 77}
    assert "UnknownJob(jobId=77)" in str(err)
