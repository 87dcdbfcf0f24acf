"""Backup: the backup flow against bare pg_dump, same database, same run, alternating.

    .venv/bin/python benchmarks/backup.py [--scale 50] [--rounds 3] [--reuse DIR] [--also-scale 10]
                                          [--api URL] [--fixed-only [--blocks-saved]]

A throwaway PostgreSQL 15 cluster gets a database of about 1 GB at the default scale (see
bench_db.py). Then, alternating, each round times:
  a. `pg_dump -Fc -Z0 > /dev/null`            the raw floor
  b. `pg_dump -Fc -f file`                    bare pg_dump, its own gzip
  c. the backup flow, in a fresh process against a running Prefect API: its body (dump in a
     snapshot with row counts, compress, sha256, quick verify, manifest) and the whole run.
  d. the whole `pgkeeper backup` command (old scripts' variables, no blocks): wall and peak RSS.
Before round 1, one declared, untimed warm-up of b and d (warm_up: what it takes out of the
first round is paid once per machine or server, not per backup).
Then the fixed costs: a 10-row database (`pgkeeper backup` vs `pg_dump -Fc`), `pgkeeper list`
vs `ls -l`, and `pgkeeper list --s3` against moto vs a bare boto3 listing process.
It prints medians, the ratios c/a and c/b, output sizes, the flow process's peak RSS (and how
much of it the data path adds over the imports), the fixed Prefect overhead of a run, and
target 1's table (medians, min-max, ratios). The Prefect API is a real `prefect server start`
of its own (or --api URL); --fixed-only skips the 1 GB database (--blocks-saved: its fixed-cost
rows after the block saves the full run makes, as after `pgkeeper setup`). Every command is
measured alone (measure.py: its own peak RSS, not this process's) with pgkeeper's bytecode compiled.
Targets: c/a <= 1.35, c/b <= 0.5, size <= 0.9x of b, peak RSS <= 150 MB and flat as the
database grows (--also-scale runs the flow on a smaller database for that comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")

from bench_db import PASSWORD, SOURCE_DB, bench_arguments, bench_cluster, build, machine_phase, use_own_home  # noqa: E402
from measure import compile_package, peak_rss_kb, process  # noqa: E402,F401 (process: early_start.py imports it from here)


def timed(argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> float:
    started = time.monotonic()
    subprocess.run(argv, env={**os.environ, **env}, check=True, stdout=stdout)
    return time.monotonic() - started


def child_run(spec: str) -> None:
    """In a fresh process, as `pgkeeper backup` would be: run the flow, report times and memory."""
    args = json.loads(spec)
    started = time.monotonic()
    from pgkeeper.flows.backup import backup

    rss_after_import = peak_rss_kb()
    import_s = time.monotonic() - started
    t0 = time.monotonic()
    m = backup(connection_block=args["db"], repository_block=args["repo"])
    total = time.monotonic() - t0
    print(json.dumps({"flow_s": total, "body_s": m.duration_seconds, "import_s": import_s, "size": m.size,
                      "raw": m.raw_size, "rss_import_kb": rss_after_import,
                      "rss_peak_kb": peak_rss_kb()}))


def flow_in_child(api_url: str, db_block: str, repo_block: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({"db": db_block, "repo": repo_block})],
                         env={**os.environ, "PREFECT_API_URL": api_url}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> float:
    return statistics.median(xs)


PGKEEPER = [sys.executable, "-m", "pgkeeper.cli.main"]


def spread(xs: list[float]) -> str:
    return f"{med(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"


def row(what: str, ours: list[float], peer_name: str, peer: list[float], goal: str,
        ours_cpu: list[float] | None = None, peer_cpu: list[float] | None = None) -> str:
    line = (f"  {what:<34} {spread(ours):>22} s   {peer_name:<20} {spread(peer):>22} s   "
            f"{med(ours) / med(peer):6.2f}x   {goal}")
    if ours_cpu and peer_cpu:
        line += f"\n  {'  CPU (user+sys)':<34} {spread(ours_cpu):>22} s   {'':<20} {spread(peer_cpu):>22} s"
    return line


@contextmanager
def prefect_api(given: str | None, work: Path) -> Iterator[str]:
    """A running Prefect API: `given`, or a real `prefect server start` of our own (stopped after),
    which is how pgkeeper runs (never the ephemeral mode)."""
    from pgkeeper.server_auth import use_credential

    if given:
        os.environ["PREFECT_API_URL"] = given
        use_credential(given, int(os.environ.get("PGKEEPER_SERVER_PORT", 4200)))  # pgkeeper's own server: locked
        yield given
        return
    from pgkeeper.localcluster import free_port

    use_own_home(work / "home")  # the server's data and credential, the keys
    os.environ["PGKEEPER_SERVER_PORT"] = str(free_port())
    from pgkeeper.local_server import start_local_server, stop_local_server

    url = start_local_server(timeout=600)
    os.environ["PREFECT_API_URL"] = url
    use_credential(url, int(os.environ["PGKEEPER_SERVER_PORT"]))
    try:
        yield url
    finally:
        stop_local_server()


@contextmanager
def moto_bucket() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with one bucket; the old scripts' variables that name it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from pgkeeper.localcluster import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"S3_BUCKET": "bench-list", "S3_PREFIX": "nightly", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bench-list")
    try:
        yield env
    finally:
        server.stop()


def copy_to_bucket(backup_dir: Path, s3_env: dict[str, str]) -> int:
    """Every backup of the local repository, as it is (signed manifest last), into the bucket."""
    from pgkeeper.catalog import list_backups
    from pgkeeper.repository import repository_from_env

    local = repository_from_env({"BACKUP_DIR": str(backup_dir)}).storage().inner
    s3 = repository_from_env({**s3_env, "BACKUP_DIR": str(backup_dir)}).storage("s3").inner
    backups = list_backups(local)
    for m in backups:
        s3.begin_backup(m.backup_id)
        for f in m.files:
            s3.copy_from(local, m.backup_id, f)
        s3.finish_backup(m.backup_id, local.read_manifest(m.backup_id))
    return len(backups)


BOTO3_LS = ("import os, boto3\n"
            "c = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n"
            "for p in c.get_paginator('list_objects_v2').paginate(Bucket=os.environ['S3_BUCKET'], "
            "Prefix=os.environ['S3_PREFIX'] + '/backups/'):\n"
            "    for o in p.get('Contents', []): print(o['Key'], o['Size'])\n")


def fixed_costs(cluster, work: Path, rounds: int, cli_env: dict[str, str], pg_env: dict[str, str]) -> list[str]:
    """Target 1's fixed costs: a 10-row database backed up by `pgkeeper backup` against bare
    `pg_dump -Fc`; `pgkeeper list` against `ls`, and `list --s3` against a bare boto3 listing."""
    import psycopg

    from pgkeeper import pgtools

    tiny = "bench_tiny"
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {tiny}")
        conn.execute(f"CREATE DATABASE {tiny}")
    with psycopg.connect(cluster.conninfo(tiny), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items SELECT i, md5(i::text) FROM generate_series(1, 10) i")
    repo = work / "tiny-repo"
    env = {**cli_env, "POSTGRES_DB": tiny, "BACKUP_DIR": str(repo)}
    tiny_pg = {**pg_env, "PGDATABASE": tiny}
    ours, bare, rss, ours_cpu, bare_cpu = [], [], [], [], []
    process([*PGKEEPER, "backup"], env)  # warm-up: the flow's registration, the first key
    for i in range(rounds):
        bare.append(process([pgtools.tool("pg_dump"), "-Fc", "-w", "-f", str(work / "tiny.dump")], tiny_pg,
                            cpu=bare_cpu)[0])
        wall, peak = process([*PGKEEPER, "backup"], env, cpu=ours_cpu)
        ours.append(wall)
        rss.append(peak)
        print(f"tiny round {i + 1}: pg_dump -Fc {bare[-1]:.2f} s, pgkeeper backup {wall:.2f} s ({peak:.0f} MB)",
              flush=True)
    rows = [row("10-row database, whole process", ours, "pg_dump -Fc", bare, "goal <= 3 s wall", ours_cpu, bare_cpu)]
    print(rows[-1], flush=True)

    list_env = {"BACKUP_DIR": str(repo)}
    lists, lss, lists_cpu, lss_cpu = [], [], [], []
    for _ in range(max(rounds, 3)):
        lss.append(process(["ls", "-l", str(repo / "backups")], {}, cpu=lss_cpu)[0])
        lists.append(process([*PGKEEPER, "list"], list_env, cpu=lists_cpu)[0])
    rows.append(row("pgkeeper list (BACKUP_DIR)", lists, "ls -l", lss, "goal <= 0.5 s", lists_cpu, lss_cpu))
    print(rows[-1], flush=True)
    with moto_bucket() as s3_env:
        copied = copy_to_bucket(repo, s3_env)
        s3_list_env = {**s3_env, "BACKUP_DIR": str(work / "empty")}
        s3s, boto, s3s_cpu, boto_cpu = [], [], [], []
        for _ in range(max(rounds, 3)):
            boto.append(process([sys.executable, "-c", BOTO3_LS], s3_list_env, cpu=boto_cpu)[0])
            s3s.append(process([*PGKEEPER, "list", "--s3"], s3_list_env, cpu=s3s_cpu)[0])
    rows.append(row(f"pgkeeper list --s3 (moto, {copied} backups)", s3s, "boto3 list process", boto,
                    "goal <= 1.5 s", s3s_cpu, boto_cpu))
    rows.append(f"  peak RSS of `pgkeeper backup` (10 rows): {max(rss):.0f} MB")
    return rows


def warm_up(cluster, env: dict[str, str], cli_env: dict[str, str], bare_file: Path) -> None:
    """One untimed run of each tool before the timed rounds, declared, as hyperfine's --warmup.

    What it takes out of round 1 is paid once per machine or server, not per daily backup: the
    first `pgkeeper backup` of a machine makes its manifest key (with none in the key directory
    the run may find one in a Secret block, so the dump cannot start before Prefect is imported),
    registers the backup flow and the database's slot limit on the server and creates the
    repository; both tools' first run also reads their programs and the database from disk into
    the page cache. A database just built is checkpointed and its files synced first, so neither
    tool meets the build's writeback."""
    import psycopg

    from pgkeeper import pgtools

    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()
    started = time.monotonic()
    process([pgtools.tool("pg_dump"), "-Fc", "-w", "-f", str(bare_file)], env)
    bare = time.monotonic() - started
    ours, _ = process([*PGKEEPER, "backup"], cli_env)
    print(f"warm-up, untimed: pg_dump -Fc {bare:.2f} s, pgkeeper backup {ours:.2f} s (first backup of this "
          "machine: manifest key made, flow and slot registered)", flush=True)


def save_blocks(cluster, work: Path) -> None:
    """The blocks the flow rows load: a connection, a repository, an encrypted repository. A user
    after `pgkeeper setup` has blocks of these types saved too (--blocks-saved measures the
    fixed-cost rows in that situation)."""
    from pydantic import SecretStr

    from pgkeeper.blocks import BackupRepository, PostgresConnection

    PostgresConnection(host=cluster.host, port=cluster.port, user="postgres", password=SecretStr(PASSWORD),
                       database=SOURCE_DB).save("bench-db", overwrite=True)
    BackupRepository(path=str(work / "repo")).save("bench-repo", overwrite=True)
    # The same flow with client-side encryption (age to a throwaway public key).
    from pgkeeper.sealing import generate_identity

    BackupRepository(path=str(work / "repo-sealed"), encryption="age",
                     encryption_recipients=[generate_identity()[1]]).save("bench-sealed", overwrite=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_arguments(ap)
    ap.add_argument("--also-scale", type=float, default=0, help="also run the flow on a database this big (RSS)")
    ap.add_argument("--api", metavar="URL", help="a running Prefect API (default: start a server of our own)")
    ap.add_argument("--fixed-only", action="store_true",
                    help="only the fixed costs: a 10-row database and `pgkeeper list` (no 1 GB database)")
    ap.add_argument("--blocks-saved", action="store_true",
                    help="with --fixed-only: save the flow rows' blocks first, as a user after `pgkeeper setup` "
                         "has them (the full run always measures its fixed costs after saving them)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_run(args.child)
        return 0

    from pgkeeper import pgtools

    compile_package(ROOT)  # pgkeeper as installed, not compiled anew by every command
    with bench_cluster(args.reuse, "pgkeeper-bench-backup-") as (cluster, work):
        if not args.fixed_only:
            build(cluster, args.scale)
        env = cluster.libpq_env(SOURCE_DB)
        cli_env = {"POSTGRES_HOST": cluster.host, "POSTGRES_PORT": str(cluster.port), "POSTGRES_USER": "postgres",
                   "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": SOURCE_DB, "BACKUP_DIR": str(work / "cli-repo")}
        with prefect_api(args.api, work) as api:
            if args.fixed_only:
                if args.blocks_saved:
                    save_blocks(cluster, work)
                situation = "blocks saved" if args.blocks_saved else "no blocks saved"
                print("\n".join(["", f"fixed costs ({situation}; medians, min-max):",
                                  *fixed_costs(cluster, work, args.rounds, cli_env, env)]))
                return 0
            save_blocks(cluster, work)
            a_s, b_s, c, e, d_s, d_rss, b_cpu, d_cpu = [], [], [], [], [], [], [], []
            bare_file = work / "bare.dump"
            warm_up(cluster, env, cli_env, bare_file)
            for i in range(args.rounds):
                with open(os.devnull, "wb") as null:
                    a_s.append(timed([pgtools.tool("pg_dump"), "-Fc", "-Z0", "-w"], env, stdout=null))
                b_s.append(process([pgtools.tool("pg_dump"), "-Fc", "-w", "-f", str(bare_file)], env, cpu=b_cpu)[0])
                wall, peak = process([*PGKEEPER, "backup"], cli_env, cpu=d_cpu)  # d: the whole command
                d_s.append(wall)
                d_rss.append(peak)
                c.append(flow_in_child(api, "bench-db", "bench-repo"))
                e.append(flow_in_child(api, "bench-db", "bench-sealed"))
                print(f"round {i + 1}: raw floor {a_s[-1]:.2f} s, pg_dump -Fc {b_s[-1]:.2f} s, "
                      f"pgkeeper backup {d_s[-1]:.2f} s ({d_rss[-1]:.0f} MB), "
                      f"flow body {c[-1]['body_s']:.2f} s (run {c[-1]['flow_s']:.2f} s), "
                      f"encrypted {e[-1]['body_s']:.2f} s; {machine_phase()}", flush=True)
            small = None
            if args.also_scale:
                small_db = SOURCE_DB + "_small"
                import psycopg

                with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {small_db}")
                    conn.execute(f"CREATE DATABASE {small_db}")
                subprocess.run([pgtools.tool("pgbench"), "-i", "-q", "-s", str(int(args.also_scale)), small_db],
                               env={**os.environ, **cluster.libpq_env(small_db)}, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                from pydantic import SecretStr

                from pgkeeper.blocks import PostgresConnection

                PostgresConnection(host=cluster.host, port=cluster.port, user="postgres",
                                   password=SecretStr(PASSWORD), database=small_db).save("bench-small", overwrite=True)
                small = flow_in_child(api, "bench-small", "bench-repo")
            fixed = fixed_costs(cluster, work, args.rounds, cli_env, env)

        a, b = med(a_s), med(b_s)
        body, run = med([x["body_s"] for x in c]), med([x["flow_s"] for x in c])
        size_b, size_c = bare_file.stat().st_size, c[-1]["size"]
        dumps = list((work / "cli-repo" / "backups").glob(f"*/{SOURCE_DB}.dump*"))  # the warm-up's too
        size_d = sum(p.stat().st_size for p in dumps) / max(len(dumps), 1)
        peak = max(x["rss_peak_kb"] for x in c) / 1024
        data_path = max(x["rss_peak_kb"] - x["rss_import_kb"] for x in c) / 1024
        print()
        print(f"database: {SOURCE_DB}, raw dump {c[-1]['raw'] / 2**20:.0f} MB, {args.rounds} rounds (medians)")
        print(f"  a. pg_dump -Fc -Z0 > /dev/null   {a:7.2f} s")
        print(f"  b. pg_dump -Fc -f file           {b:7.2f} s   {size_b / 2**20:7.1f} MB")
        print(f"  c. backup flow body              {body:7.2f} s   {size_c / 2**20:7.1f} MB")
        print(f"     whole flow run                {run:7.2f} s   (+ {med([x['import_s'] for x in c]):.2f} s imports)")
        print(f"  d. whole `pgkeeper backup`       {med(d_s):7.2f} s   {size_d / 2**20:7.1f} MB")
        sealed_body = med([x["body_s"] for x in e])
        print(f"  e. backup flow body, encrypted   {sealed_body:7.2f} s   {e[-1]['size'] / 2**20:7.1f} MB")
        print(f"  e/c = {sealed_body / body:.2f}  (what client-side encryption costs the backup)")
        print(f"  c/a = {body / a:.2f}  (target <= 1.35)")
        print(f"  c/b = {body / b:.2f}  (target <= 0.50)")
        print(f"  size c/b = {size_c / size_b:.2f}  (target <= 0.90)")
        print(f"  peak RSS of the flow process: {peak:.0f} MB ({data_path:.0f} MB above the imports)")
        print(f"  fixed Prefect overhead per run: {run - body:.2f} s")
        if small:
            print(f"  at pgbench scale {args.also_scale:g}: peak RSS {small['rss_peak_kb'] / 1024:.0f} MB "
                  f"({(small['rss_peak_kb'] - small['rss_import_kb']) / 1024:.0f} MB above the imports), "
                  f"raw dump {small['raw'] / 2**20:.0f} MB")
        print()
        print("target 1 (medians, min-max):")
        print(row("1 GB database, whole process", d_s, "pg_dump -Fc", b_s, "goal <= 0.80x", d_cpu, b_cpu))
        print(f"  output size {size_d / 2**20:.1f} MB vs {size_b / 2**20:.1f} MB: {size_d / size_b:.2f}x "
              f"(goal <= 0.90x); peak RSS of `pgkeeper backup` {max(d_rss):.0f} MB (goal <= 120 MB)")
        print("\n".join(fixed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
