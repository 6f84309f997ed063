"""Where a signing key comes from: an encrypted keystore, the environment, or `--key` on a dev chain.

Keystores are the standard Web3 Secret Storage JSON that `eth-account` writes (scrypt + AES-128-CTR, the
same format geth and most wallets read). The password comes from `--password-file`, the environment
variable SPLITMESH_KEYSTORE_PASSWORD, or a prompt on the terminal, in that order. A key is never
printed or logged; errors name the file and the address, not the key.

`--key 0x...` on the command line is visible to every user of the machine (`ps`), so it is meant for
the public development keys of a local chain: elsewhere it still works but warns once.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from splitmesh.errors import ConfigError
from splitmesh.paths import state_dir

PASSWORD_ENV = "SPLITMESH_KEYSTORE_PASSWORD"
KEYSTORE_ENV = "SPLITMESH_KEYSTORE"
DEV_CHAIN_IDS = {31337, 1337}  # hardhat, anvil/ganache: where the public dev keys are a sane default


class WrongPassword(ConfigError):
    """The keystore could not be decrypted with the password given."""


def keystore_dir() -> Path:
    """Default folder of `splitmesh account` keystores: $SPLITMESH_HOME/keystore."""
    return state_dir() / "keystore"


def add_key_args(parser: argparse.ArgumentParser, *, key_help: str | None = None) -> None:
    """--keystore / --password-file, and --key (dev chains) as the historical way in."""
    parser.add_argument(
        "--keystore",
        type=Path,
        help=f"encrypted JSON keystore that signs (env {KEYSTORE_ENV}); see `splitmesh account new`",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        help=f"file whose first line is the keystore password (else env {PASSWORD_ENV}, else a prompt)",
    )
    parser.add_argument(
        "--key",
        "--private-key",
        dest="private_key",
        help=key_help
        or "0x-hex key (env SPLITMESH_PRIVATE_KEY); on the command line it is visible in the process list, "
        "so use it for local dev keys only and --keystore elsewhere",
    )


def read_password(path: Path | None, *, confirm: bool = False, prompt: str = "Keystore password: ") -> str:
    """From the file, the environment, or the terminal (twice when creating a keystore)."""
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from exc
        return lines[0] if lines else ""
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise ConfigError(
            f"no keystore password: pass --password-file or set {PASSWORD_ENV} (no terminal to prompt on)"
        )
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat the password: ") != password:
        raise ConfigError("the two passwords differ")
    return password


def keystore_address(path: Path) -> str:
    """The checksummed address a keystore file holds (readable without the password)."""
    try:
        return _checksum(json.loads(path.read_text())["address"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a keystore file: {exc}") from exc


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return str(to_checksum_address("0x" + address.removeprefix("0x")))


def decrypt_keystore(path: Path, password: str) -> str:
    """The 0x-hex key in the keystore, or WrongPassword."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the keystore {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a keystore file (not JSON): {exc}") from exc
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPassword(f"wrong password for the keystore {path}") from None
        raise ConfigError(f"{path} is not a usable keystore: {exc}") from None
    return "0x" + bytes(key).hex()


def write_keystore(key: str, password: str, directory: Path) -> Path:
    """Encrypt `key` into a new file `<address>.json` (mode 0600) in `directory`; refuses to overwrite."""
    account = Account.from_key(key)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{account.address}.json"
    if path.exists():
        raise ConfigError(f"a keystore for {account.address} already exists: {path}")
    encrypted = Account.encrypt(bytes.fromhex(key.removeprefix("0x")), password)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(encrypted, f)
    return path


@dataclass(frozen=True)
class KeyChoice:
    key: str | None  # None: the caller's default (a dev key on a dev chain) applies
    source: str  # "keystore FILE", "--key", "environment" or "default"


def choose_key(args: argparse.Namespace) -> KeyChoice:
    """The key the command signs with, from --keystore (or its env), --key, SPLITMESH_PRIVATE_KEY."""
    keystore = getattr(args, "keystore", None)
    if keystore is None and os.environ.get(KEYSTORE_ENV):
        keystore = Path(os.environ[KEYSTORE_ENV])
    if keystore is not None:
        password = read_password(getattr(args, "password_file", None))
        return KeyChoice(decrypt_keystore(keystore, password), f"keystore {keystore}")
    if getattr(args, "private_key", None):
        return KeyChoice(args.private_key, "--key")
    if os.environ.get("SPLITMESH_PRIVATE_KEY"):
        return KeyChoice(os.environ["SPLITMESH_PRIVATE_KEY"], "environment")
    return KeyChoice(None, "default")


def warn_if_exposed(choice: KeyChoice, chain_id: int) -> None:
    """A key typed on the command line of a non-dev chain is in the process list: say so."""
    if choice.source == "--key" and chain_id not in DEV_CHAIN_IDS:
        print(
            f"warning: --key on chain {chain_id} is visible to every user of this machine (ps); "
            "use --keystore FILE (see `splitmesh account import`)",
            file=sys.stderr,
        )
