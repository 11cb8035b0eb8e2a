"""What a replica does with its slot and with data that must make way: pure decisions and the refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from agent import makeway, replication
from agent.bootstrap import Bootstrap, World
from agent.errors import NoRoomToMoveAside
from agent.pgdata import inspect
from agent.plan import make_plan
from agent.replica import Replica
from agent.runner import Runner


@pytest.mark.parametrize(
    ("status", "step"),
    [
        (None, replication.CREATE),
        ("reserved", replication.KEEP),
        ("extended", replication.KEEP),
        ("unreserved", replication.KEEP),
        ("lost", replication.RECREATE),
        (replication.NOT_RESERVED, replication.RECREATE),
    ],
)
def test_slot_step(status: str | None, step: str) -> None:
    assert replication.slot_step(status) == step


def _replica(tmp_path: Path, make_config: Callable[..., Any], log: Any) -> tuple[Replica, Path]:
    pgdata = tmp_path / "vol" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "standby.signal").write_text("")
    (pgdata / "base").mkdir()
    (pgdata / "base" / "1").write_bytes(b"\0" * 4096)
    config = make_config(POD_NAME="postgresql-sfs-1", PGDATA=str(pgdata))
    plan = make_plan(config, inspect(pgdata), server_major=15, passwords=None, euid=0)
    world = World(runner=Runner(), lookup=lambda *_: pytest.fail("no DNS in this test"))
    return Bootstrap(config, plan, world, log).replica, pgdata


def test_no_room_for_a_new_clone_beside_the_old_data_refuses_untouched(
    tmp_path: Path, make_config: Callable[..., Any], log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, pgdata = _replica(tmp_path, make_config, log)
    before = sorted(p.name for p in pgdata.parent.iterdir())
    monkeypatch.setattr(makeway, "room_for_copy", lambda _source, _volume: (700 * 1048576, 300 * 1048576))
    monkeypatch.setattr(Replica, "clone", lambda _self: pytest.fail("must not clone"))
    with pytest.raises(NoRoomToMoveAside) as info:
        boot.follow.makeway.reclone_after_lost_slot()
    assert info.value.exit_code == 11 and info.value.event == "no_room_to_move_aside"
    assert info.value.fields["needed_mb"] == 700 and info.value.fields["free_mb"] == 300
    assert "PGDATA was not touched" in info.value.message
    assert sorted(p.name for p in pgdata.parent.iterdir()) == before
    assert (pgdata / "standby.signal").exists()


def test_with_room_the_data_is_moved_aside_then_cloned(
    tmp_path: Path, make_config: Callable[..., Any], log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, pgdata = _replica(tmp_path, make_config, log)
    cloned: list[bool] = []
    monkeypatch.setattr(Replica, "clone", lambda _self: cloned.append(not pgdata.exists()))
    boot.follow.makeway.reclone_after_lost_slot()
    assert cloned == [True]  # PGDATA was out of the way when the clone began
    [aside] = [p for p in pgdata.parent.iterdir() if p.name.startswith("pgdata.slot-invalidated-")]
    assert (aside / "PG_VERSION").read_text() == "15\n"
    [moved] = log.events("slot_invalidated", "warning")
    assert moved["moved_aside"] == str(aside)


def test_room_is_the_old_data_plus_a_margin(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    (pgdata / "base").mkdir(parents=True)
    (pgdata / "base" / "f").write_bytes(b"x" * 100_000)
    needed, free = makeway.room_for_copy(pgdata, pgdata.parent, margin=1000)
    assert needed == 101_000 and free > 0
