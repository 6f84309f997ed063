from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from splitmesh.chain import HARDHAT_DEV_KEYS
from splitmesh.signing import EnvelopeSigner, envelope_digest, recover_envelope_signer

MARKET = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
KEY = HARDHAT_DEV_KEYS[7]


def test_digest_matches_eth_account_typed_data_encoder() -> None:
    payload = bytes(range(32))
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Envelope": [
                {"name": "jobId", "type": "uint256"},
                {"name": "step", "type": "uint32"},
                {"name": "tokens", "type": "uint32"},
                {"name": "payloadHash", "type": "bytes32"},
            ],
        },
        "primaryType": "Envelope",
        "domain": {"name": "splitmesh", "version": "1", "chainId": 31337, "verifyingContract": MARKET},
        "message": {"jobId": 12, "step": 3, "tokens": 40, "payloadHash": payload},
    }
    signed = Account.sign_message(encode_typed_data(full_message=typed), KEY)
    ours = EnvelopeSigner(KEY, 31337, MARKET).sign(12, 3, 40, payload)
    assert ours.signature == bytes(signed.signature)
    assert envelope_digest(31337, MARKET, 12, 3, 40, payload) == bytes(signed.message_hash)


def test_recover_returns_the_signer_only_for_the_signed_fields() -> None:
    signer = EnvelopeSigner(KEY, 31337, MARKET)
    env = signer.sign(1, 2, 3, b"\x05" * 32)
    assert recover_envelope_signer(31337, MARKET, 1, 2, 3, b"\x05" * 32, env.signature) == signer.address
    # Any change of chain, contract or field yields another address: the signature is bound to them.
    assert recover_envelope_signer(1, MARKET, 1, 2, 3, b"\x05" * 32, env.signature) != signer.address
    other_market = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert (
        recover_envelope_signer(31337, other_market, 1, 2, 3, b"\x05" * 32, env.signature) != signer.address
    )
    assert recover_envelope_signer(31337, MARKET, 1, 3, 3, b"\x05" * 32, env.signature) != signer.address
    assert recover_envelope_signer(31337, MARKET, 1, 2, 4, b"\x05" * 32, env.signature) != signer.address


def test_malformed_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="65 bytes"):
        recover_envelope_signer(31337, MARKET, 1, 2, 3, b"\x05" * 32, b"\x00" * 64)
    with pytest.raises(ValueError, match="32 bytes"):
        envelope_digest(31337, MARKET, 1, 2, 3, b"\x05" * 31)


def test_relay_signature_binds_job_step_position_digest_and_domain() -> None:
    from splitmesh.chain import HARDHAT_DEV_KEYS
    from splitmesh.signing import RelaySigner, recover_relay_address

    market = "0x" + "22" * 20
    signer = RelaySigner(HARDHAT_DEV_KEYS[3], 31337, market)
    me = bytes.fromhex(signer.address[2:])
    digest = bytes(range(32))
    sig = signer.sign(9, 4, 1, digest)
    assert recover_relay_address(31337, market, 9, 4, 1, digest, sig) == me
    # Any other job, step, position, digest, chain or contract recovers someone else.
    for args in [
        (31337, market, 10, 4, 1, digest),
        (31337, market, 9, 5, 1, digest),
        (31337, market, 9, 4, 2, digest),
        (31337, market, 9, 4, 1, bytes(32)),
        (1, market, 9, 4, 1, digest),
        (31337, "0x" + "33" * 20, 9, 4, 1, digest),
    ]:
        assert recover_relay_address(*args, sig) != me
