"""The build directory protocol, interrupted at every step: each leftover is recognised as ours."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent import builddir
from agent.files import write_atomic
from agent.pgdata import WORK_MARKER, inspect, staging_dir_for, tombstone_for, work_dir_for
from emulator.waiting import wait_until


def _pgdata(tmp_path: Path) -> Path:
    (tmp_path / "vol").mkdir()
    return tmp_path / "vol" / "pgdata"


def _marker(pgdata: Path) -> dict[str, str]:
    return {"kind": "clone", "pgdata": str(pgdata)}


def test_create_leaves_only_a_marked_work_directory(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    work = builddir.create(pgdata, _marker(pgdata))
    assert work == work_dir_for(pgdata)
    assert sorted(p.name for p in pgdata.parent.iterdir()) == [work.name]
    assert json.loads((work / WORK_MARKER).read_text())["pgdata"] == str(pgdata)
    leftover = inspect(pgdata).leftover
    assert leftover is not None and leftover.ours and leftover.kind == "clone"


# Every state a crash can leave while creating, then while discarding.
def _staging_empty(pgdata: Path) -> None:
    staging_dir_for(pgdata).mkdir()


def _staging_marker_half_written(pgdata: Path) -> None:
    staging_dir_for(pgdata).mkdir()
    (staging_dir_for(pgdata) / f".{WORK_MARKER}.tmp").write_text('{"kind": "cl')


def _staging_marked(pgdata: Path) -> None:
    staging_dir_for(pgdata).mkdir()
    write_atomic(staging_dir_for(pgdata) / WORK_MARKER, json.dumps(_marker(pgdata)))


def _tombstone_half_deleted(pgdata: Path) -> None:
    # The marker went first (shutil.rmtree's order): the name alone says it is ours.
    (tombstone_for(pgdata) / "data" / "base").mkdir(parents=True)
    (tombstone_for(pgdata) / "data" / "base" / "1").write_bytes(b"x" * 1000)


@pytest.mark.parametrize("leave", [_staging_empty, _staging_marker_half_written, _staging_marked,
                                   _tombstone_half_deleted])
def test_every_interrupted_state_is_ours_and_discarded(tmp_path: Path, leave: object) -> None:
    pgdata = _pgdata(tmp_path)
    leave(pgdata)  # type: ignore[operator]
    leftover = inspect(pgdata).leftover
    assert leftover is not None and leftover.ours, leftover
    builddir.discard(Path(leftover.path))
    assert list(pgdata.parent.iterdir()) == []
    assert inspect(pgdata).leftover is None


def test_a_staging_directory_holding_anything_else_is_not_ours(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    staging_dir_for(pgdata).mkdir()
    (staging_dir_for(pgdata) / "notes.txt").write_text("someone's")
    leftover = inspect(pgdata).leftover
    assert leftover is not None and not leftover.ours


def test_discarding_a_work_directory_renames_it_before_deleting(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed inside the delete: what is left carries the tombstone's name, never an unmarked work dir."""
    pgdata = _pgdata(tmp_path)
    work = builddir.create(pgdata, _marker(pgdata))
    (work / "data" / "base").mkdir(parents=True)
    (work / "data" / "base" / "1").write_bytes(b"x" * 1000)

    def killed(path: object, *args: object, **kwargs: object) -> None:
        os.unlink(Path(str(path)) / WORK_MARKER)  # the delete got as far as the marker
        raise KeyboardInterrupt

    monkeypatch.setattr(builddir.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        builddir.discard(work)
    monkeypatch.undo()
    assert not work.exists()
    leftover = inspect(pgdata).leftover
    assert leftover is not None and leftover.ours and leftover.path == str(tombstone_for(pgdata))
    assert builddir.discard(Path(leftover.path)) == 1000
    assert list(pgdata.parent.iterdir()) == []


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_discarded_build_empties_the_wal_directory_it_wrote_elsewhere(tmp_path: Path, interrupted: bool) -> None:
    # POSTGRES_INITDB_WALDIR: initdb wrote WAL into another directory (often another volume) and
    # linked pg_wal to it. Left full, every later initdb would refuse it as "not empty".
    pgdata = _pgdata(tmp_path)
    waldir = tmp_path / "walvol" / "wal"
    (waldir / "archive_status").mkdir(parents=True)
    (waldir / "000000010000000000000001").write_bytes(b"\0" * 4096)
    work = builddir.create(pgdata, _marker(pgdata))
    (work / "data").mkdir()
    (work / "data" / "pg_wal").symlink_to(waldir)
    if interrupted:  # a crash in the middle of an earlier discard: part moved aside already
        (waldir / builddir.DISCARDED_WAL).mkdir()
        os.rename(waldir / "archive_status", waldir / builddir.DISCARDED_WAL / "archive_status")
    freed = builddir.discard(work)
    assert freed >= 4096
    assert waldir.is_dir() and os.listdir(waldir) == []
    assert not work.exists() and not tombstone_for(pgdata).exists()


def test_a_wal_link_into_the_build_itself_is_left_to_the_build(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    work = builddir.create(pgdata, _marker(pgdata))
    (work / "data" / "wal-inside").mkdir(parents=True)
    (work / "data" / "pg_wal").symlink_to(work / "data" / "wal-inside")
    builddir.discard(work)
    assert not work.exists()


def test_write_behind_flushes_while_the_copy_runs_and_never_after(tmp_path: Path, monkeypatch: Any) -> None:
    # The flusher is a thread calling syncfs on the build's filesystem; replaced here by a counter
    # (syncfs itself has no observable effect short of a power cut).
    from agent import buildarea

    calls: list[Path] = []
    monkeypatch.setattr(buildarea, "sync_filesystem", calls.append)
    built = _pgdata(tmp_path).with_name("work") / "data"
    built.parent.mkdir()
    area = buildarea.BuildArea(None)  # type: ignore[arg-type]  # writing_behind needs no context
    with area.writing_behind(built, interval=0.01):
        wait_until(lambda: len(calls) >= 3, 10, 0.005, "three flushes while the copy runs")
    assert set(calls) == {built.parent}
    # Leaving the block joined the flusher: nothing can flush after the build moved on.
    assert not [t for t in threading.enumerate() if t.name == "write-behind"]


def test_sync_filesystem_flushes_a_real_filesystem_and_names_a_missing_path(tmp_path: Path) -> None:
    from agent.files import sync_filesystem

    sync_filesystem(tmp_path)
    with pytest.raises(FileNotFoundError):
        sync_filesystem(tmp_path / "missing")
