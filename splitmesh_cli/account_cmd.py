"""`splitmesh account new | import | list`: encrypted keystores for every command that signs."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from eth_account import Account

from splitmesh.errors import ConfigError
from splitmesh_cli.keys import keystore_address, keystore_dir, read_password, write_keystore
from splitmesh_cli.output import Output

HELP = """\
Keys live in encrypted JSON keystores (the standard Web3 Secret Storage format, scrypt + AES): pass one
to any signing command with --keystore FILE; the password comes from --password-file, the environment
variable SPLITMESH_KEYSTORE_PASSWORD or a prompt. Keystores are written to $SPLITMESH_HOME/keystore
(mode 0600) unless --dir says otherwise. No command prints a key.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    account = sub.add_parser(
        "account", help="create, import and list encrypted keystores", description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    asub = account.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    new = asub.add_parser("new", help="generate a key and write it to a new keystore")
    imp = asub.add_parser(
        "import", help="encrypt an existing key into a keystore (read from a file or a hidden prompt)"
    )
    imp.add_argument(
        "--key-file", type=Path, help="file whose first line is the 0x-hex key (default: a hidden prompt)"
    )
    ls = asub.add_parser("list", help="list the keystores of a folder and their addresses")
    for p in (new, imp, ls):
        p.add_argument("--dir", type=Path, help="keystore folder (default $SPLITMESH_HOME/keystore)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    for p in (new, imp):
        p.add_argument(
            "--password-file", type=Path, help="file whose first line is the new keystore's password"
        )
    new.set_defaults(func=cmd_new)
    imp.set_defaults(func=cmd_import)
    ls.set_defaults(func=cmd_list)


def _created(args: argparse.Namespace, key: str, verb: str) -> int:
    out = Output(args.json)
    password = read_password(args.password_file, confirm=True, prompt="New keystore password: ")
    if not password:
        raise ConfigError("refusing an empty keystore password")
    path = write_keystore(key, password, args.dir or keystore_dir())
    address = keystore_address(path)
    out.info(f"{verb} {address}\n  keystore: {path}\n  use it with: --keystore {path}")
    out.result({"address": address, "keystore": str(path)})
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    return _created(args, "0x" + bytes(Account.create().key).hex(), "created")


def cmd_import(args: argparse.Namespace) -> int:
    if args.key_file is not None:
        try:
            lines = args.key_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.key_file}: {exc.strerror}") from exc
        key = lines[0].strip() if lines else ""
    elif sys.stdin.isatty():
        key = getpass.getpass("Private key (0x-hex, hidden): ").strip()
    else:
        key = sys.stdin.readline().strip()
    try:
        Account.from_key(key)
    except (ValueError, TypeError):
        raise ConfigError("that is not a private key (expected 32 bytes as 0x-hex)") from None
    return _created(args, key, "imported")


def cmd_list(args: argparse.Namespace) -> int:
    out = Output(args.json)
    folder = args.dir or keystore_dir()
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rows.append({"address": keystore_address(path), "keystore": str(path)})
        except ConfigError:
            continue  # not a keystore: other JSON in the folder
    if not rows:
        out.info(f"no keystores in {folder}; create one with `splitmesh account new`")
    out.table(["address", "keystore"], [[r["address"], r["keystore"]] for r in rows])
    out.result({"dir": str(folder), "accounts": rows})
    return 0
