"""wal-push / wal-fetch as PostgreSQL calls them: separate processes, exit codes, the spool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgkeeper.wal.config import DEFAULT_PUSH_AHEAD
from tests.helpers import FAKE_SYSID, ROOT, run_cli, wal_page_header

SEG = "000000010000000000000003"


def segment_bytes(seed: int, size: int = 16 << 20, name: str = SEG, sysid: int = FAKE_SYSID) -> bytes:
    """WAL-like content: PostgreSQL's long page header, some varied pages, the rest zeros (as
    after archive_timeout)."""
    head = os.urandom(1 << 20) if seed < 0 else bytes((i * seed) % 251 for i in range(1 << 16)) * 16
    header = wal_page_header(name, size, sysid)
    return header + head[len(header):] + b"\0" * (size - len(head))


def stored(spool: Path) -> dict[str, bytes]:
    """Every file in the spool but the archive's identity record (wal/identity.py)."""
    return {str(p.relative_to(spool)): p.read_bytes() for p in spool.rglob("*")
            if p.is_file() and p.name != "archive.json"}


def test_push_then_fetch_round_trips_segments_history_and_backup_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    files = {SEG: segment_bytes(3), "00000002.history": b"1\t0/3000000\tno recovery target specified\n",
             "000000010000000000000003.00000028.backup": b"START WAL LOCATION: 0/3000028\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        r = run_cli("wal-push", "--spool", str(spool), str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    names = sorted(stored(spool))
    assert len(names) == 3 and all(n.endswith(".zst") for n in names)
    assert any(n.startswith("history/00000002.history-") for n in names)
    for name, data in files.items():
        out = tmp_path / f"restored-{name}"
        r = run_cli("wal-fetch", "--spool", str(spool), name, str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data


def test_fetch_of_a_missing_file_exits_1_quietly(tmp_path: Path) -> None:
    r = run_cli("wal-fetch", "--repo", str(tmp_path), "00000005.history", str(tmp_path / "x"))
    assert (r.returncode, r.stderr) == (1, "")
    assert not (tmp_path / "x").exists()


def test_identical_duplicate_is_accepted_and_a_differing_one_refused(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    seg = tmp_path / SEG
    seg.write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--spool", str(spool), str(seg)).returncode == 0
    before = stored(spool)
    mtimes = {p: p.stat().st_mtime_ns for p in spool.rglob("*.zst")}

    again = run_cli("wal-push", "--spool", str(spool), str(seg))
    assert again.returncode == 0, again.stderr

    seg.write_bytes(segment_bytes(7))
    clash = run_cli("wal-push", "--spool", str(spool), str(seg))
    assert clash.returncode == 1
    assert SEG in clash.stderr and "different content" in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1
    assert stored(spool) == before
    assert {p: p.stat().st_mtime_ns for p in spool.rglob("*.zst")} == mtimes
    out = tmp_path / "out"
    assert run_cli("wal-fetch", "--spool", str(spool), SEG, str(out)).returncode == 0
    assert out.read_bytes() == segment_bytes(3)


def test_a_corrupt_archived_segment_aborts_recovery_instead_of_ending_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (tmp_path / SEG).write_bytes(segment_bytes(3))
    assert run_cli("wal-push", "--spool", str(spool), str(tmp_path / SEG)).returncode == 0
    obj = next(spool.rglob("*.zst"))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    r = run_cli("wal-fetch", "--spool", str(spool), SEG, str(tmp_path / "out"))
    assert r.returncode > 125  # PostgreSQL aborts recovery rather than promoting early
    assert SEG in r.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_spool_and_bad_names_fail_with_one_line(tmp_path: Path) -> None:
    (tmp_path / SEG).write_bytes(segment_bytes(3, size=1 << 20))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run_cli("wal-push", "--spool", str(blocker / "spool"), str(tmp_path / SEG))
    assert r.returncode == 1 and SEG in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("wal-push", "--spool", str(tmp_path / "s"), str(tmp_path / "notwal.txt"))
    assert r.returncode == 1 and "notwal.txt" in r.stderr
    r = run_cli("wal-fetch", "--spool", str(tmp_path / "s"), "../../etc/passwd", str(tmp_path / "o"))
    assert r.returncode != 0 and not (tmp_path / "o").exists()
    r = run_cli("wal-push", str(tmp_path / SEG), env={"PGKEEPER_WAL_CONFIG": str(tmp_path / "none.json")})
    assert r.returncode == 1 and "none.json" in r.stderr


def test_push_path_imports_neither_prefect_nor_boto3(tmp_path: Path) -> None:
    (tmp_path / SEG).write_bytes(segment_bytes(3))
    code = (
        "import sys, json\n"
        "from pgkeeper.cli.main import main\n"
        f"rc1 = main(['wal-push', '--spool', {str(tmp_path / 'spool')!r}, {str(tmp_path / SEG)!r}])\n"
        f"rc2 = main(['wal-fetch', '--spool', {str(tmp_path / 'spool')!r}, {SEG!r}, {str(tmp_path / 'o')!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'boto3', 'botocore', 'pydantic'})\n"
        "print(json.dumps([rc1, rc2, heavy]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [0, 0, []]
    # And as PostgreSQL runs it: the console script, seen through -X importtime.
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgkeeper.cli.main", "wal-push",
                        "--spool", str(tmp_path / "spool"), str(tmp_path / SEG)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "zstandard" in imported
    assert not {m for m in imported if m.split(".")[0] in ("prefect", "boto3", "botocore")}


def test_push_killed_mid_write_leaves_nothing_wal_fetch_would_return(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    big = tmp_path / SEG
    # Incompressible and large, so the write takes long enough to be interrupted.
    with open(big, "wb") as f:
        f.write(wal_page_header(SEG))
        for _ in range(24):
            f.write(os.urandom(8 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "pgkeeper.cli.main", "wal-push", "--spool", str(spool),
                             str(big)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        temp = []
        while time.monotonic() < deadline and proc.poll() is None:
            temp = [p for p in spool.rglob(".*.tmp-*") if p.stat().st_size > 0]
            if temp:
                break
            time.sleep(0.002)
        assert temp, "the push finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert list(spool.rglob("*.zst")) == []
    r = run_cli("wal-fetch", "--spool", str(spool), SEG, str(tmp_path / "out"))
    assert r.returncode == 1 and not (tmp_path / "out").exists()
    # PostgreSQL retries the push: it succeeds despite the leftover temp file.
    assert run_cli("wal-push", "--spool", str(spool), str(big)).returncode == 0
    assert run_cli("wal-fetch", "--spool", str(spool), SEG, str(tmp_path / "out")).returncode == 0
    assert (tmp_path / "out").read_bytes() == big.read_bytes()


def fake_pg_wal(root: Path, count: int) -> tuple[Path, list[str]]:
    """A pg_wal directory with `count` segments queued for archiving, as PostgreSQL leaves it."""
    pg_wal = root / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    names = [f"0000000100000000000000{i:02X}" for i in range(1, count + 1)]
    for i, name in enumerate(names, start=1):
        (pg_wal / name).write_bytes(segment_bytes(i + 2, size=4 << 20, name=name))
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    return pg_wal, names


def archive_like_postgres(spool: Path, pg_wal: Path, name: str) -> subprocess.CompletedProcess:
    """One archiver call: the command, then .ready becomes .done if it succeeded."""
    r = run_cli("wal-push", "--spool", str(spool), str(pg_wal / name))
    if r.returncode == 0:
        (pg_wal / "archive_status" / f"{name}.ready").rename(pg_wal / "archive_status" / f"{name}.done")
    return r


def markers(spool: Path) -> list[str]:
    return sorted(p.name for p in (spool / ".pushed-ahead").glob("0*"))


def test_a_backlog_is_pushed_ahead_and_each_later_call_only_confirms(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pg_wal, names = fake_pg_wal(tmp_path, DEFAULT_PUSH_AHEAD + 3)
    r = archive_like_postgres(spool, pg_wal, names[0])
    assert r.returncode == 0, r.stderr
    # The first call archived its own file and the next DEFAULT_PUSH_AHEAD.
    assert len(list(spool.rglob("*.zst"))) == DEFAULT_PUSH_AHEAD + 1
    assert markers(spool) == names[1:DEFAULT_PUSH_AHEAD + 1]
    # The next call confirms from the marker, before any compression code is imported.
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgkeeper.cli.main", "wal-push",
                        "--spool", str(spool), str(pg_wal / names[1])], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"zstandard", "hashlib"}
    (pg_wal / "archive_status" / f"{names[1]}.ready").rename(pg_wal / "archive_status" / f"{names[1]}.done")
    for name in names[2:]:
        r = archive_like_postgres(spool, pg_wal, name)
        assert r.returncode == 0, r.stderr
    assert markers(spool) == []
    assert len(list(spool.rglob("*.zst"))) == len(names)
    for name in names:
        out = tmp_path / f"out-{name}"
        assert run_cli("wal-fetch", "--spool", str(spool), name, str(out)).returncode == 0
        assert out.read_bytes() == (pg_wal / name).read_bytes()


def test_a_marker_never_confirms_a_file_that_changed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pg_wal, names = fake_pg_wal(tmp_path, 2)
    assert archive_like_postgres(spool, pg_wal, names[0]).returncode == 0
    assert markers(spool) == [names[1]]
    before = stored(spool)
    # The file PostgreSQL hands over is not the one that was read ahead (e.g. another cluster
    # sharing the spool): the full push runs and refuses the differing content.
    replacement = pg_wal / "replacement"
    replacement.write_bytes(segment_bytes(99, size=4 << 20, name=names[1]))
    replacement.rename(pg_wal / names[1])
    r = archive_like_postgres(spool, pg_wal, names[1])
    assert r.returncode == 1
    assert names[1] in r.stderr and "different content" in r.stderr
    assert {k: v for k, v in stored(spool).items() if k.endswith(".zst")} == \
        {k: v for k, v in before.items() if k.endswith(".zst")}


def test_a_queued_file_that_cannot_be_read_does_not_fail_the_call(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pg_wal, names = fake_pg_wal(tmp_path, 3)
    (pg_wal / names[1]).unlink()  # listed as ready, but gone
    (pg_wal / "archive_status" / "not-a-wal-file.ready").touch()
    r = archive_like_postgres(spool, pg_wal, names[0])
    assert r.returncode == 0, r.stderr
    assert markers(spool) == [names[2]]
    # The unreadable file's own call reports it, in one line, naming it.
    r = archive_like_postgres(spool, pg_wal, names[1])
    assert r.returncode == 1 and names[1] in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_child_keeps_pushing_ahead_while_the_archiver_confirms(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pg_wal, names = fake_pg_wal(tmp_path, DEFAULT_PUSH_AHEAD + 4)
    assert archive_like_postgres(spool, pg_wal, names[0]).returncode == 0
    assert markers(spool) == names[1:DEFAULT_PUSH_AHEAD + 1]  # the batch; the child waits for room
    assert archive_like_postgres(spool, pg_wal, names[1]).returncode == 0  # a claim makes room
    deadline = time.monotonic() + 60
    while names[DEFAULT_PUSH_AHEAD + 1] not in markers(spool):  # pushed without a call of its own
        assert time.monotonic() < deadline, "the child did not push ahead"
        time.sleep(0.02)
    for name in names[2:]:
        r = archive_like_postgres(spool, pg_wal, name)
        assert r.returncode == 0, r.stderr
    assert markers(spool) == []
    deadline = time.monotonic() + 60
    while list((spool / ".pushed-ahead").glob(".pusher-*")):  # the child stopped and took its lock along
        assert time.monotonic() < deadline, "the child did not stop"
        time.sleep(0.05)
    for name in names:
        out = tmp_path / f"out-{name}"
        assert run_cli("wal-fetch", "--spool", str(spool), name, str(out)).returncode == 0
        assert out.read_bytes() == (pg_wal / name).read_bytes()


def run_shell(command: str, cwd: Path, name: str) -> int:
    """Run an archive_command the way PostgreSQL does: %p relative to the data directory, %f the name."""
    line = command.replace("%p", f"pg_wal/{name}").replace("%f", name)
    return subprocess.run(["/bin/sh", "-c", line], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode


def test_the_shell_claim_confirms_only_the_file_and_config_that_were_pushed_ahead(tmp_path: Path) -> None:
    from pgkeeper.wal.command import archive_command, shell_claim
    from pgkeeper.wal.config import WalConfig, write

    spool = tmp_path / "spool"
    config = write(tmp_path / "wal.json", WalConfig(spool=str(spool)))
    pg_wal, names = fake_pg_wal(tmp_path, 5)
    assert run_cli("wal-push", "--config", str(config), str(pg_wal / names[0])).returncode == 0
    assert markers(spool) == names[1:]
    claim = shell_claim(str(spool), config)
    # Pushed ahead from this very file under this very config: confirmed without Python, marker consumed.
    assert run_shell(claim, tmp_path, names[1]) == 0
    assert names[1] not in markers(spool)
    # Claimed once only: a second call finds no marker.
    assert run_shell(claim, tmp_path, names[1]) != 0
    # Another file under the same name (as if another cluster's): no confirmation.
    (pg_wal / "other").write_bytes(segment_bytes(77, size=4 << 20, name=names[2]))
    (pg_wal / "other").rename(pg_wal / names[2])
    assert run_shell(claim, tmp_path, names[2]) != 0 and names[2] in markers(spool)
    # The config rewritten (another spool, say): markers made under the old one confirm nothing.
    write(config, WalConfig(spool=str(spool), compression_level=3))
    assert run_shell(claim, tmp_path, names[3]) != 0 and names[3] in markers(spool)
    # Rewriting the same settings keeps the file (and so every marker made under it) as it is.
    stamp = os.stat(config).st_ino
    write(config, WalConfig(spool=str(spool), compression_level=3))
    assert os.stat(config).st_ino == stamp
    # The whole archive_command falls back to wal-push, which compares contents and confirms.
    command = archive_command(config, claim_spool=str(spool))
    assert run_shell(command, tmp_path, names[3]) == 0
    assert run_shell(command, tmp_path, names[4]) == 0
    assert markers(spool) == [names[2]]  # the replaced file's marker is never confirmed


def test_a_marker_left_by_an_older_version_is_confirmed_by_wal_push_not_by_the_shell(tmp_path: Path) -> None:
    """Markers are one line now (the shell claim reads them with `read`); one in the two-line form
    older versions wrote, found after an upgrade, fails the shell claim and is confirmed by the full
    wal-push, which reads either form."""
    from pgkeeper.wal.ahead import file_identity
    from pgkeeper.wal.command import archive_command, shell_claim
    from pgkeeper.wal.config import WalConfig, write

    spool = tmp_path / "spool"
    config = write(tmp_path / "wal.json", WalConfig(spool=str(spool)))
    pg_wal, names = fake_pg_wal(tmp_path, 3)
    assert run_cli("wal-push", "--config", str(config), str(pg_wal / names[0])).returncode == 0
    marker = spool / ".pushed-ahead" / names[1]
    text = marker.read_text()
    assert text.endswith("\n") and text.count("\n") == 1  # one line, as `read` needs it
    marker.write_text(f"{file_identity(str(pg_wal / names[1]))}\n{file_identity(str(config))}")
    assert run_shell(shell_claim(str(spool), config), tmp_path, names[1]) != 0 and names[1] in markers(spool)
    assert run_shell(archive_command(config, claim_spool=str(spool)), tmp_path, names[1]) == 0
    assert names[1] not in markers(spool)


def test_the_shell_claim_waits_for_a_file_in_flight_without_starting_python(tmp_path: Path) -> None:
    """A file the push-ahead child is still pushing has a locked in-flight file: the shell claim
    waits on that lock (flock) and confirms once the marker is there. A push that ends without a
    marker (it failed, or the child died), or an in-flight file nobody holds, fails the claim at
    once, and the full wal-push runs."""
    from pgkeeper.wal import ahead
    from pgkeeper.wal.command import shell_claim
    from pgkeeper.wal.config import WalConfig, write

    spool = tmp_path / "spool"
    config = write(tmp_path / "wal.json", WalConfig(spool=str(spool)))
    pg_wal, names = fake_pg_wal(tmp_path, 4)
    assert run_cli("wal-push", "--config", str(config), str(pg_wal / names[0])).returncode == 0
    for name in names[1:]:
        (spool / ".pushed-ahead" / name).unlink()  # as if the child had not pushed them yet
    claim = shell_claim(str(spool), config).replace("%p", f"pg_wal/{names[1]}").replace("%f", names[1])
    assert "flock" in claim

    held = ahead._mark_in_flight(str(spool), names[1], "a-child.lock")
    waiting = subprocess.Popen(["/bin/sh", "-c", claim], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert waiting.poll() is None  # waiting on the lock, not failed
        ahead.record(str(spool), names[1], ahead.file_identity(str(pg_wal / names[1])),
                     ahead.config_stamp(str(config)))
        (spool / ".pushed-ahead" / f".{names[1]}.inflight").unlink()
        os.close(held)
        out, err = waiting.communicate(timeout=10)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0 and out == err == b""
    assert names[1] not in markers(spool)

    # The push ended without a marker: the claim fails as soon as the lock is dropped.
    held = ahead._mark_in_flight(str(spool), names[2], "a-child.lock")
    os.close(held)
    started = time.monotonic()
    assert run_shell(shell_claim(str(spool), config), tmp_path, names[2]) != 0
    assert time.monotonic() - started < 5
    # Nothing in flight and no marker: fails at once, creating nothing.
    before = sorted(p.name for p in (spool / ".pushed-ahead").iterdir())
    assert run_shell(shell_claim(str(spool), config), tmp_path, names[3]) != 0
    assert sorted(p.name for p in (spool / ".pushed-ahead").iterdir()) == before
    # The whole archive_command then pushes them itself.
    from pgkeeper.wal.command import archive_command

    command = archive_command(config, claim_spool=str(spool))
    for name in names[2:]:
        assert run_shell(command, tmp_path, name) == 0


def test_archive_command_always_fits_what_postgresql_expands(tmp_path: Path) -> None:
    """PostgreSQL 15 cuts an expanded archive_command at 1023 bytes without a word: the claim's wait,
    then the claim, are left out when they would not fit (wal-push alone is whole), and a config
    path too long for even that is refused, naming the problem."""
    import pytest

    from pgkeeper.errors import PgkeeperError
    from pgkeeper.wal.command import ARCHIVE_COMMAND_MAX, archive_command, expanded_length

    config = tmp_path / "wal.json"
    forms = set()
    for n in range(0, 1000, 20):
        command = archive_command(config, claim_spool=f"/srv/{'s' * n}")
        assert expanded_length(command) <= ARCHIVE_COMMAND_MAX
        forms.add(("flock" in command, "read -r" in command))
    assert forms == {(True, True), (False, True), (False, False)}
    with pytest.raises(PgkeeperError, match=r"PostgreSQL cuts it at 1023: use a shorter path"):
        archive_command(tmp_path / ("c" * 1000) / "wal.json", claim_spool=str(tmp_path))


def test_a_shell_claim_waiting_on_a_killed_pusher_falls_back_to_wal_push(tmp_path: Path) -> None:
    """The process holding a file in flight is SIGKILLed while a claim waits on it: the kernel drops
    its lock, the claim fails at once (no marker), the full archive_command pushes the file itself,
    and nothing is left waiting."""
    from pgkeeper.wal.command import archive_command, shell_claim
    from pgkeeper.wal.config import WalConfig, write

    spool = tmp_path / "spool"
    config = write(tmp_path / "wal.json", WalConfig(spool=str(spool), push_ahead=0))
    pg_wal, names = fake_pg_wal(tmp_path, 1)
    (spool / ".pushed-ahead").mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pgkeeper.wal import ahead; "
                               f"ahead._mark_in_flight({str(spool)!r}, {names[0]!r}, 'a-child.lock'); "
                               "print('held', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        line = shell_claim(str(spool), config).replace("%p", f"pg_wal/{names[0]}").replace("%f", names[0])
        waiting = subprocess.Popen(["/bin/sh", "-c", line], cwd=tmp_path, stderr=subprocess.PIPE)
        time.sleep(0.5)
        assert waiting.poll() is None
        holder.send_signal(signal.SIGKILL)
        _, err = waiting.communicate(timeout=10)
        assert waiting.returncode != 0 and err == b""
    finally:
        holder.kill()
        holder.wait()
    assert run_shell(archive_command(config, claim_spool=str(spool)), tmp_path, names[0]) == 0
    assert len(list(spool.rglob("*.zst"))) == 1
