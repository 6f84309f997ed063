"""Sending transactions: local nonce tracking, gas estimation, fees, receipts, decoded reverts."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, Web3RPCError
from web3.types import TxParams, Wei

from splitmesh.chain.artifacts import decode_error
from splitmesh.errors import ChainError, ContractRevert, TransactionFailed

logger = logging.getLogger(__name__)

GAS_HEADROOM = 1.25  # estimate x this = gas limit: estimates miss warm/cold slot differences


@dataclass(frozen=True, slots=True)
class TxResult:
    """What a mined transaction cost and produced."""

    tx_hash: str
    gas_used: int
    block_number: int
    receipt: Any  # web3 TxReceipt (logs decoded by the caller)


def revert_from_exception(exc: Exception, contract: str = "contract") -> ChainError:
    """Turn web3's revert exceptions into ContractRevert with the custom error decoded."""
    data: Any = getattr(exc, "data", None)
    if data is None:
        # A JSON-RPC error (for example a send-time revert on hardhat) carries it in error.data.data.
        error = (getattr(exc, "rpc_response", None) or {}).get("error")
        if error is None and exc.args and isinstance(exc.args[0], dict):
            error = exc.args[0]
        data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        decoded = decode_error(bytes.fromhex(data[2:]))
        if decoded is not None:
            spec, args = decoded
            return ContractRevert(spec.contract, spec.name, args)
    if isinstance(exc, ContractPanicError):
        return ContractRevert(contract, "Panic", {"message": str(exc)})
    return TransactionFailed(f"{contract} call failed: {exc}")


class Sender:
    """Signs and sends transactions for one account. Thread-safe; tracks the nonce locally."""

    def __init__(self, w3: Web3, private_key: str, chain_id: int | None = None):
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(private_key)
        self.address = self.account.address
        self.chain_id = chain_id if chain_id is not None else w3.eth.chain_id
        self._lock = threading.Lock()
        self._nonce: int | None = None

    def _next_nonce(self) -> int:
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")
        nonce = self._nonce
        self._nonce += 1
        return nonce

    def resync(self) -> None:
        """Forget the local nonce (after an error the chain's view wins)."""
        with self._lock:
            self._nonce = None

    def _fees(self) -> dict[str, int]:
        block = self.w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        if base == 0:
            return {"gasPrice": int(self.w3.eth.gas_price)}
        tip = int(self.w3.eth.max_priority_fee)
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    def transact(
        self,
        fn: ContractFunction | ContractConstructor,
        *,
        value: int = 0,
        gas: int | None = None,
        label: str | None = None,
        timeout: float = 120.0,
    ) -> TxResult:
        """Estimate, sign, send and wait for a contract call; decoded ContractRevert on failure."""
        name = label or str(getattr(fn, "fn_name", "transaction"))
        contract = getattr(fn, "contract_name", None) or "contract"
        params: dict[str, Any] = {"from": self.address, "value": value, "chainId": self.chain_id}  # TxParams
        try:
            if gas is None:
                # Against "pending", the block the transaction lands in: time-gated calls depend on it.
                estimate = fn.estimate_gas(
                    TxParams({"from": self.address, "value": Wei(value)}), block_identifier="pending"
                )
                gas = int(estimate * GAS_HEADROOM)
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise revert_from_exception(exc, contract) from None
        except Web3RPCError as exc:
            raise TransactionFailed(f"{name}: gas estimation failed: {exc}") from exc
        params["gas"] = gas
        params.update(self._fees())
        result = self._sign_send_wait(params, name, timeout, build=fn.build_transaction)
        receipt = result.receipt
        if receipt["status"] != 1:
            raise self._explain_failure(fn, params, result, name, contract)
        logger.debug("%s mined in block %d, gas %d", name, result.block_number, result.gas_used)
        return result

    def _explain_failure(
        self,
        fn: ContractFunction | ContractConstructor,
        params: dict[str, Any],
        result: TxResult,
        name: str,
        contract: str,
    ) -> ChainError:
        # Replay the call at the block it failed in to recover the revert data.
        if not isinstance(fn, ContractFunction):
            return TransactionFailed(f"{name} reverted in tx {result.tx_hash} (gas used {result.gas_used})")
        try:
            fn.call(TxParams({"from": self.address, "value": Wei(params["value"])}), result.block_number - 1)
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            return revert_from_exception(exc, contract)
        except Exception:
            pass
        return TransactionFailed(f"{name} reverted in tx {result.tx_hash} (gas used {result.gas_used})")

    def send_value(self, to: str, value: int, timeout: float = 120.0) -> TxResult:
        """Plain native-currency transfer."""
        params: dict[str, Any] = {
            "to": Web3.to_checksum_address(to),
            "value": value,
            "gas": 21_000,
            "chainId": self.chain_id,
        }
        params.update(self._fees())
        return self._sign_send_wait(params, f"transfer to {to}", timeout)

    def _sign_send_wait(
        self, params: dict[str, Any], name: str, timeout: float, build: Any = None
    ) -> TxResult:
        """Take the next nonce, sign, send, wait for the receipt (the nonce resyncs if sending fails)."""
        with self._lock:
            for attempt in range(2):
                params["nonce"] = self._next_nonce()
                tx = build(params) if build is not None else params
                signed = self.account.sign_transaction(tx)
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                    break
                except Exception as exc:
                    self._nonce = None
                    # The same key signed elsewhere meanwhile (another process, a CLI command): the
                    # cached nonce is stale. Read it again from the chain and send once more.
                    if attempt == 0 and _NONCE_TOO_LOW in str(exc).lower():
                        logger.info(
                            "%s: nonce %d already used by this key elsewhere; resyncing",
                            name,
                            params["nonce"],
                        )
                        continue
                    # A node that executes on submission (hardhat automine) reports the revert here, with
                    # its data: decode it like any other revert, so callers can match the error by name.
                    decoded = revert_from_exception(exc, name)
                    if isinstance(decoded, ContractRevert):
                        raise decoded from exc
                    raise TransactionFailed(f"{name}: sending failed: {exc}") from exc
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
        return TxResult(
            HexBytes(tx_hash).to_0x_hex(), int(receipt["gasUsed"]), int(receipt["blockNumber"]), receipt
        )


_NONCE_TOO_LOW = "nonce too low"  # hardhat, geth and anvil all say it this way (case aside)


def call_view(fn: ContractFunction, contract: str = "contract", **kwargs: Any) -> Any:
    """eth_call a view function, decoding custom-error reverts."""
    try:
        return fn.call(**kwargs)
    except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
        raise revert_from_exception(exc, contract) from None
