"""`pgkeeper key create|rotate|list|export-blocks`: the keys that encrypt backups and sign manifests.

Nothing here needs Prefect except `export-blocks`, which copies the private key and the
manifest key into Prefect Secret blocks for workers on other machines.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="encryption keys: create, rotate, list, export-blocks")
    p.add_argument("action", choices=["create", "rotate", "list", "export-blocks", "sign-existing"])
    p.add_argument("--copy-to", default=".", metavar="PATH",
                   help="where to write the copy of a new private key that you must keep elsewhere "
                        "(a directory or a file name; default: the current directory)")
    p.add_argument("--s3", action="store_true", help="sign-existing: the bucket's manifests (default: local)")
    p.add_argument("--backup-dir", default=None, help="sign-existing: the local repository (default BACKUP_DIR)")
    p.add_argument("--repository-block", default=None, help="sign-existing: the repository block")
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
    if args.action == "sign-existing":
        return sign_existing(args)
    return export_blocks()


def sign_existing(args: argparse.Namespace) -> int:
    """Sign the manifests written before manifests were signed, each only after every file it
    lists was read back and matched its sha256 (a manifest that does not match stays unsigned)."""
    from pgkeeper.config import load_repository
    from pgkeeper.errors import IntegrityError
    from pgkeeper.manifest import Manifest
    from pgkeeper.sealing import MAC_FIELD

    repo = load_repository(args.repository_block, path=args.backup_dir)
    storage = repo.storage("s3" if args.s3 else "local")
    raw = storage.inner  # type: ignore[attr-defined]
    signed = refused = 0
    for backup_id in raw.list_backup_ids():
        data = raw.read_manifest(backup_id)
        if data is None or f'"{MAC_FIELD}"'.encode() in data:
            continue
        manifest = Manifest.from_bytes(data)
        try:
            for file in manifest.files:
                with raw.open_plain(backup_id, file.model_copy(update={"encryption": None})) as f:
                    while f.read(1 << 20):
                        pass
        except IntegrityError as exc:
            print(f"not signed: {exc}")
            refused += 1
            continue
        storage.write_manifest(backup_id, data)
        signed += 1
    print(f"signed {signed} manifest(s) in {storage.describe()}; {refused} did not match their files")
    return 1 if refused else 0


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
