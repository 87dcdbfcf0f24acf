"""The unpacked data directory is synced before PostgreSQL starts on it (pitr, pitr drill)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgkeeper.base_unpack import sync_cluster_dir, writing_back
from pgkeeper.storage.atomic import sync_filesystem
from pgkeeper.tasks.recovery import start_options, syncfs_reports_errors


def test_sync_filesystem_syncs_and_reports_a_bad_path(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 65536)
    sync_filesystem(tmp_path)
    sync_filesystem(f)
    with pytest.raises(OSError):
        sync_filesystem(tmp_path / "missing")


def test_sync_cluster_dir_covers_wal_and_tablespaces(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "pg_tblspc" / "16400").mkdir(parents=True)
    elsewhere = tmp_path / "wal-elsewhere"
    elsewhere.mkdir()
    (data / "pg_wal").symlink_to(elsewhere)
    (data / "pg_tblspc" / "16401").symlink_to(tmp_path / "gone")  # a dangling link is skipped
    (data / "base").mkdir()
    (data / "base" / "1").write_bytes(os.urandom(4096))
    sync_cluster_dir(data)


def test_writing_back_stops_with_its_block(tmp_path: Path) -> None:
    import threading

    with writing_back(tmp_path, every=0.01):
        (tmp_path / "f").write_bytes(b"y" * 65536)
        assert any(t.name == "pgkeeper-writeback" for t in threading.enumerate())
    assert not any(t.name == "pgkeeper-writeback" for t in threading.enumerate())


def test_start_options_use_syncfs_only_where_it_is_safe(tmp_path: Path) -> None:
    assert start_options(tmp_path, 5439) == "-p 5439"  # no PG_VERSION: the default
    (tmp_path / "PG_VERSION").write_text("13\n")
    assert start_options(tmp_path, 5439) == "-p 5439"  # before PostgreSQL 14: no such setting
    (tmp_path / "PG_VERSION").write_text("15\n")
    expected = "-p 5439 -c recovery_init_sync_method=syncfs" if syncfs_reports_errors() else "-p 5439"
    assert start_options(tmp_path, 5439) == expected
