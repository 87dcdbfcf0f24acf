"""`pgkeeper key create|rotate|list|export-blocks`: the keys that encrypt backups and sign manifests.

Nothing here needs Prefect except `export-blocks`, which copies the private key and the
manifest key into Prefect Secret blocks for workers on other machines.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="encryption keys: create, rotate, list, export-blocks")
    p.add_argument("action", choices=["create", "rotate", "list", "export-blocks"])
    p.add_argument("--copy-to", default=".", metavar="PATH",
                   help="where to write the copy of a new private key that you must keep elsewhere "
                        "(a directory or a file name; default: the current directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgkeeper import keys, sealing

    if args.action in ("create", "rotate"):
        fp, recipient, copy = keys.create_key(Path(args.copy_to), rotate=args.action == "rotate")
        print(f"new encryption key {fp} (public key {recipient})")
        print(f"its private key is in {keys.keys_dir() / keys.IDENTITIES} and, once, in {copy}:")
        print(f"  move {copy} OFF this machine now (a password manager, a safe); without it, backups")
        print("  encrypted to this key cannot be restored if this machine is lost.")
        if args.action == "rotate":
            print("new backups and WAL use the new key; older ones still open with the older keys")
        return 0
    if args.action == "list":
        current = set(keys.recipients())
        for identity in keys.identities():
            recipient = sealing.recipient_of(identity)
            mark = "current (new backups)" if recipient in current else "older (reads older backups)"
            print(f"{sealing.fingerprint(recipient)}  {recipient}  {mark}")
        for recipient in current - {sealing.recipient_of(i) for i in keys.identities()}:
            print(f"{sealing.fingerprint(recipient)}  {recipient}  current, private key not on this machine")
        if not current and not keys.identities():
            print(f"no keys in {keys.keys_dir()}: `pgkeeper key create` makes one")
        return 0
    return export_blocks()


def export_blocks() -> int:
    """Private keys and manifest keys into Secret blocks, for workers that restore or verify."""
    from pgkeeper import keys
    from pgkeeper.blocks.repository import IDENTITIES_BLOCK, MANIFEST_KEY_BLOCK
    from pgkeeper.local_server import ensure_api

    ensure_api()
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    Secret(value=SecretStr("\n".join(keys.identities()))).save(IDENTITIES_BLOCK, overwrite=True)
    Secret(value=SecretStr("\n".join(k.hex() for k in keys.mac_keys(create=True)))).save(
        MANIFEST_KEY_BLOCK, overwrite=True)
    print(f"saved Secret blocks {IDENTITIES_BLOCK} and {MANIFEST_KEY_BLOCK}: workers without a key "
          "directory read and verify backups with them")
    return 0
