"""Offsite upload: pgkeeper's upload task against a bare boto3 upload_file, same file, same run.

    .venv/bin/python benchmarks/upload.py [--size-mb 1024] [--part-mb 64] [--concurrency 4] [--rounds 2]
                                          [--checksum CRC32|SHA256]

A local moto S3 server (over HTTP, loopback) receives a file of random bytes twice per round:
  1. bare:  boto3 `upload_file` with the same part size and concurrency, nothing else;
  2. task:  pgkeeper's `upload-offsite` task on a backup holding that file: SSE on every object,
            a checksum per part (CRC32, the block's default; --checksum SHA256 to compare), the
            file re-hashed locally (sha256 against the manifest, and S3's composite checksum),
            the object's checksum checked, then the manifest uploaded last.
Rounds alternate bare and task; the best of each is compared. Target: task >= 0.9x bare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for var, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(var, value)

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            # Vary each block cheaply so no two parts are identical.
            piece = (written.to_bytes(8, "little") + block)[: min(len(block), size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--part-mb", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checksum", choices=["CRC32", "SHA256"], default="CRC32")
    args = ap.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from moto.server import ThreadedMotoServer
    from prefect.testing.utilities import prefect_test_harness
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from pgkeeper.blocks.repository import BackupRepository
    from pgkeeper.localcluster import free_port
    from pgkeeper.manifest import Manifest, StoredFile
    from pgkeeper.names import new_backup_id

    work = Path(tempfile.mkdtemp(prefix="pgkeeper-upload-bench-"))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        bucket = "bench-" + uuid.uuid4().hex[:8]
        client.create_bucket(Bucket=bucket)
        size = args.size_mb * MiB
        source = work / "data.bin"
        print(f"writing {args.size_mb} MB of test data ...", flush=True)
        sha = make_file(source, size)

        creds = AwsCredentials(region_name="us-east-1",
                               aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))
        repo = BackupRepository(path=str(work / "repo"), offsite=S3Bucket(bucket_name=bucket, bucket_folder="bench",
                                credentials=creds), s3_part_size_mb=args.part_mb,
                                s3_max_concurrency=args.concurrency, s3_checksum=args.checksum)
        local = repo.local()
        local.ensure_writable()
        backup_id = new_backup_id()
        local.begin_backup(backup_id)
        os.link(source, local.file_path(backup_id, "data.bin"))
        now = datetime.now(UTC)
        manifest = Manifest(backup_id=backup_id, database="bench", server_version="15", tool_version="bench",
                            started_at=now, finished_at=now, compression="none", size=size,
                            files=[StoredFile(name="data.bin", size=size, sha256=sha)])
        local.finish_backup(backup_id, manifest.to_bytes())
        config = TransferConfig(multipart_threshold=args.part_mb * MiB, multipart_chunksize=args.part_mb * MiB,
                                max_concurrency=args.concurrency)

        def clear() -> None:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])

        print("starting a temporary Prefect API ...", flush=True)
        with prefect_test_harness(server_startup_timeout=120):
            from pgkeeper.tasks.offsite import upload_backup

            bare_times, task_times = [], []
            for r in range(args.rounds):
                t = time.perf_counter()
                client.upload_file(str(source), bucket, f"bare/{r}/data.bin", Config=config)
                bare_times.append(time.perf_counter() - t)
                clear()
                t = time.perf_counter()
                result = upload_backup(repo, backup_id)
                task_times.append(time.perf_counter() - t)
                clear()
                print(f"round {r + 1}: bare {bare_times[-1]:.2f} s, task {task_times[-1]:.2f} s "
                      f"({'; '.join(result.checks)})", flush=True)
        bare, task = min(bare_times), min(task_times)
        mb = size / MiB
        print(f"\nfile {mb:.0f} MB, part {args.part_mb} MB, concurrency {args.concurrency}, moto on loopback")
        print(f"bare boto3 upload_file : {bare:6.2f} s  {mb / bare:7.1f} MB/s")
        print(f"pgkeeper upload task   : {task:6.2f} s  {mb / task:7.1f} MB/s "
              f"(SSE, {repo.s3_checksum} parts, local sha256 re-hash, checksum check, manifest)")
        ratio = bare / task
        print(f"throughput ratio task/bare: {ratio:.2f}x (target >= 0.90x): {'PASS' if ratio >= 0.9 else 'FAIL'}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
