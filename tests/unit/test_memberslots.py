"""A demoted primary's member slots are moved out of PGDATA before its postgres starts, never deleted."""

from __future__ import annotations

from pathlib import Path

from agent import memberslots
from tests.unit.conftest import ListLogger


def test_member_slots_are_moved_to_the_state_directory_and_others_stay(tmp_path: Path) -> None:
    pgdata, state = tmp_path / "pgdata", tmp_path / "state"
    for name in ("postgresql_sfs_1", "postgresql_sfs_2", "someone_elses"):
        (pgdata / "pg_replslot" / name).mkdir(parents=True)
        (pgdata / "pg_replslot" / name / "state").write_bytes(b"slot")
    state.mkdir()
    log = ListLogger()
    moved = memberslots.set_aside(pgdata, state, {"postgresql_sfs_1", "postgresql_sfs_2"}, log)
    assert moved == ["postgresql_sfs_1", "postgresql_sfs_2"]
    assert sorted(p.name for p in (pgdata / "pg_replslot").iterdir()) == ["someone_elses"]
    kept = sorted((state / "set-aside-slots").iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in kept] == moved
    assert all((p / "state").read_bytes() == b"slot" for p in kept)
    assert log.events("member_slots_set_aside")[0]["slots"] == moved


def test_nothing_to_move_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "pgdata" / "pg_replslot").mkdir(parents=True)
    assert memberslots.set_aside(tmp_path / "pgdata", tmp_path, {"postgresql_sfs_1"}, ListLogger()) == []
    assert not (tmp_path / "set-aside-slots").exists()
