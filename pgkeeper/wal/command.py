"""The `archive_command` / `restore_command` strings, runnable by the server's OS user.

PostgreSQL runs them as its own user (postgres), through /bin/sh, with a bare environment.
So they name pgkeeper by absolute path and the WAL config file explicitly. When pgkeeper's
interpreter is out of that user's reach (e.g. a venv built on a python under /root, which is
0700), we fall back to a system python of the same version with pgkeeper's site-packages on
PYTHONPATH (compiled modules such as zstandard are ABI-compatible within a minor version).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
import threading
from functools import cache
from pathlib import Path

import pgkeeper
from pgkeeper.errors import PgkeeperError
from pgkeeper.pgtools import SERVER_USER, as_server_user


def _runs_as(user: str, argv: list[str]) -> bool:
    try:
        r = subprocess.run([*as_server_user(user), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


_probing = threading.Lock()


def pgkeeper_command(user: str = SERVER_USER) -> str:
    """A shell prefix that runs the pgkeeper CLI as `user`. Probed once per user (one or two
    Python starts as that user); a caller arriving while another thread probes waits for its
    answer instead of probing again (pitr probes beside its unpack)."""
    with _probing:
        return _probe_command(user)


def probe_in_background(user: str = SERVER_USER) -> None:
    """Start finding how `user` runs pgkeeper on a thread (one or two Python starts as that user,
    about half a second), beside other work; pgkeeper_command then takes its answer or waits."""
    def probe() -> None:
        try:
            pgkeeper_command(user)
        except Exception:  # noqa: BLE001 - the caller that needs the answer asks again and reports it
            pass

    threading.Thread(target=probe, name="pgkeeper-command-probe", daemon=True).start()


def forget_pgkeeper_command() -> None:
    """Probe again next time (after `wal-setup --apply` installed a copy the user can run)."""
    with _probing:
        _probe_command.cache_clear()


@cache
def _probe_command(user: str) -> str:
    script = Path(sys.executable).parent / "pgkeeper"
    probe = ["wal-push", "--help"]
    if script.exists() and (not as_server_user(user) or _runs_as(user, [str(script), *probe])):
        return shlex.quote(str(script))
    package_root = str(Path(pgkeeper.__file__).resolve().parent.parent)
    site = sysconfig.get_paths()["purelib"]
    from pgkeeper.wal.runtime import installed_runtime

    # pgkeeper where it is installed, else the copy `wal-setup --apply` made (pgkeeper.wal.runtime).
    paths = [f"{package_root}:{site}"] + [str(r) for r in [installed_runtime()] if r]
    for python in system_pythons():
        for path in paths:
            # -S: PYTHONPATH already holds everything; the system's .pth files only cost start-up time.
            argv = ["env", f"PYTHONPATH={path}", python, "-S", "-m", "pgkeeper.cli.main"]
            if _runs_as(user, [*argv, *probe]):
                return " ".join(shlex.quote(a) for a in argv)
    raise PgkeeperError(f"the {user} OS user cannot run pgkeeper ({script}): run `pgkeeper wal-setup --apply` "
                        "as root (it installs a copy that user can run)" if system_pythons() else
                        f"the {user} OS user cannot run pgkeeper ({script}) and there is no system "
                        f"python{sys.version_info.major}.{sys.version_info.minor}: install one")


def system_pythons() -> list[str]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return [p for p in (f"/usr/bin/{version}", f"/usr/local/bin/{version}", "/usr/bin/python3") if Path(p).exists()]


# PostgreSQL 15 expands archive_command into a buffer of MAXPGPATH (1024) bytes and silently cuts
# what does not fit (shell_archive.c): a cut command fails every time, or worse, runs half. The
# longest %f the archiver hands over is a backup history file's name (40 characters), and %p is
# "pg_wal/" and that name.
ARCHIVE_COMMAND_MAX = 1023
_LONGEST_F = "0" * 24 + ".00000028.backup"
_LONGEST_P = f"pg_wal/{_LONGEST_F}"


def expanded_length(command: str) -> int:
    """How long `command` is once the archiver has put the longest %p and %f into it."""
    return len(command.replace("%%", "%").replace("%p", _LONGEST_P).replace("%f", _LONGEST_F))


def archive_command(config_path: Path | str, user: str = SERVER_USER, claim_spool: str | None = None) -> str:
    """wal-push for `%p`; with `claim_spool` (the config's spool, when push-ahead is on), preceded by
    a shell claim of a pushed-ahead file's marker (see `shell_claim`). The claim's wait for a file
    in flight, then the claim itself, are left out when the command would not fit what
    PostgreSQL expands (ARCHIVE_COMMAND_MAX): they only save time, wal-push alone is whole."""
    push = f"{pgkeeper_command(user)} wal-push --config {shlex.quote(str(config_path))} %p"
    if expanded_length(push) > ARCHIVE_COMMAND_MAX:
        raise PgkeeperError(f"archive_command would be {expanded_length(push)} bytes, and PostgreSQL cuts it at "
                            f"{ARCHIVE_COMMAND_MAX}: use a shorter path for the WAL config file ({config_path})")
    if claim_spool:
        for wait in (True, False):
            command = f"{{ {shell_claim(claim_spool, config_path, wait=wait)} || {push}; }}"
            if expanded_length(command) <= ARCHIVE_COMMAND_MAX:
                return command
    return push


def shell_claim(spool: str, config_path: Path | str, wait: bool = True) -> str:
    """The claim of wal/ahead.py without starting Python: when `%f` was pushed ahead from exactly
    this file under exactly this config file (the marker's one line holds both identities, as
    `stat -L --printf` prints them: wal/ahead.py), consume the marker and succeed. Anything else
    (no marker, another file or config, a marker of an older version, a stat without that
    format, a failed rm) fails, and the full wal-push runs.

    With a backlog the archiver calls the command once per segment, serially, and once push-ahead
    keeps the spool ahead of it, this claim is what the archiver's rate depends on: ~3 ms of CPU
    where a Python start costs ~30 (and much more on a busy machine). The marker is read by the
    shell's `read` builtin, so a claim starts two programs (`stat`, `rm`) after the shell, not
    three: on VMs where each new process's pages cost a fault on the host, that was a quarter of
    the claim (docs/performance.md, section 5). The marker directory is named once, in a shell
    variable, to keep the command short (ARCHIVE_COMMAND_MAX).

    `wait`: when the push-ahead child is still pushing `%f`, its in-flight file is locked until
    the marker is written (wal/ahead.py), and the claim waits for that lock with util-linux's
    `flock` (one small process) instead of failing over to a Python wal-push that would wait for
    the same marker: in a drain where the child is the pace, that was most calls (38 Python
    starts in 62 calls, 2 after), each ~30 ms of CPU taken from the child's compression. The
    redirection opens the in-flight file without creating it; any failure there (no such file,
    no flock, a timeout) falls through to the checks."""
    import shutil

    from pgkeeper.wal.ahead import IDENTITY_FORMAT, INFLIGHT, MARKER_DIR, SEPARATOR, WAIT_SECONDS

    marker = '"${d}%f"'
    found = f"[ -f {marker} ]"
    flock = shutil.which("flock") if wait else None
    if flock is not None and "%" not in flock:
        # After a wait the marker may still be missing (the push failed): the read's redirection
        # then fails, quietly, as the wait's own does: nothing of it reaches the server's log.
        wait_for = f'{shlex.quote(flock)} -s -w {int(WAIT_SECONDS)} 9 9< "${{d}}.%f{INFLIGHT}"'
        found = f"{{ {{ {found} || {wait_for}; }} && read -r m < {marker}; }} 2>/dev/null"
    else:
        found = f"{found} && read -r m < {marker}"
    printf = IDENTITY_FORMAT + SEPARATOR
    return (f"d={shlex.quote(f'{spool}/{MARKER_DIR}/')}; {found} && "
            f'[ "$m" = "$(stat -L --printf={printf} %p {shlex.quote(str(config_path))})" ] && rm {marker}')


def restore_command(config_path: Path | str, user: str = SERVER_USER, fetch_queue: str | None = None) -> str:
    """wal-fetch for `%f` into `%p`; with `fetch_queue` (the config's prefetch queue), preceded by a
    shell take of the prefetched copy (see `shell_take`)."""
    fetch = f"{pgkeeper_command(user)} wal-fetch --config {shlex.quote(str(config_path))} %f %p"
    take = shell_take(fetch_queue) if fetch_queue else None
    if take is None:
        return fetch
    return f"{{ {take} || {fetch}; }}"


def shell_take(queue: str) -> str | None:
    """The queue hit of wal/prefetch.py without starting Python: when the queue holds exactly one
    complete copy of `%f` (`<walfile>-<sha256>.fetched`: the sha256 is the archive's, from the
    name of the object the prefetcher fetched and checked, never computed from the queued file),
    hard-link it to `%p`, hash what was linked with openssl, fsync it and its directory as the
    Python path does, and leave a `.taken-%f` marker (the prefetcher moves on from it). Anything
    else (no copy, a copy being written, a checksum mismatch, openssl or another tool missing,
    any error) fails, and the full wal-fetch runs: it checks the copy again, refuses a bad one
    and fetches the segment from the archive, so PostgreSQL is never handed an unchecked file.

    PostgreSQL's startup process runs restore_command once per segment and waits for it; this
    path costs a shell, ln, openssl (SHA-NI: ~15 ms of CPU for 16 MB) and sync, where the Python
    call costs a ~30 ms interpreter start before its own hash. coreutils' sha256sum is no
    alternative (~100 ms for 16 MB here): without openssl there is no shell path.

    Only regular builtins and commands may fail in it: a failing redirection on a special builtin
    such as `:` makes dash exit with 2, which PostgreSQL would read as "not found". None of it
    writes to stderr (the server's log), and `%`, which PostgreSQL expands, cannot be in the path."""
    import shutil

    from pgkeeper.wal.prefetch import SUFFIX, TAKEN

    openssl = shutil.which("openssl")
    if openssl is None or "%" in queue or "%" in openssl:
        return None
    q = shlex.quote(queue.rstrip("/") + "/")
    return (f'{{ set -- {q}%f-*{SUFFIX} && [ $# = 1 ] && [ -f "$1" ] && s=${{1##*-}} && p="%p" && '
            f'case $p in */*) d=${{p%/*}};; *) d=.;; esac && ln -f "$1" "$p" && '
            f'[ "$({shlex.quote(openssl)} dgst -sha256 -r < "$p")" = "${{s%{SUFFIX}}} *stdin" ] && '
            f'sync "$p" "$d" && true > {q}{TAKEN}%f; }} 2>/dev/null')


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"
