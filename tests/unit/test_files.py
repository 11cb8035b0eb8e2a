"""Unit tests of agent.files' reads and walks that root does where postgres can write."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from agent import probe
from agent.files import fix_tree_ownership, read_limited
from agent.pgdata import inspect, read_pg_version


def test_read_limited_reads_at_most_the_limit(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert read_limited(tmp_path / "f", 10) == b"x" * 10
    assert read_limited(tmp_path / "f") == b"x" * 100


def test_read_limited_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("root only")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        read_limited(tmp_path / "link")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_read_limited_refuses_what_could_block_or_never_end(tmp_path: Path, kind: str) -> None:
    # A FIFO nobody writes would block the read for ever; /dev/zero would never end.
    if kind == "fifo":
        os.mkfifo(tmp_path / "f")
        path = tmp_path / "f"
    else:
        path = Path("/dev/zero")
    with pytest.raises(OSError, match="not a regular file"):
        read_limited(path)


@pytest.mark.parametrize("content", ["TOP-SECRET-ROOT-ONLY\nline2", "14\nextra", "1" * 40, "\xff"])
def test_pg_version_passes_on_only_a_version(tmp_path: Path, content: str) -> None:
    (tmp_path / "PG_VERSION").write_text(content)
    assert read_pg_version(tmp_path) == "(unreadable)"


def test_pg_version_through_a_link_is_unreadable_and_its_target_never_shown(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("TOP-SECRET")
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").symlink_to(tmp_path / "secret")
    state = inspect(pgdata)
    assert state.pg_version == "(unreadable)"
    assert "TOP-SECRET" not in repr(state)


@pytest.mark.parametrize("content", ["14\n", "9.6\n"])
def test_pg_version_of_a_real_cluster(tmp_path: Path, content: str) -> None:
    (tmp_path / "PG_VERSION").write_text(content)
    assert read_pg_version(tmp_path) == content.strip()


def test_the_chown_walk_refuses_a_linked_top_and_changes_links_not_targets(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "dir-link").symlink_to(victim)
    (tree / "file-link").symlink_to(victim / "file")
    (tmp_path / "top-link").symlink_to(tree)
    with pytest.raises(OSError):
        fix_tree_ownership(tmp_path / "top-link", 4242, None)
    assert os.stat(tree).st_uid == os.getuid()
    changed = fix_tree_ownership(tree, 4242, None)
    assert changed == 4  # tree, sub, the two links; nothing of the victim's
    assert os.lstat(tree / "sub" / "dir-link").st_uid == 4242
    assert os.stat(victim).st_uid == os.stat(victim / "file").st_uid == os.getuid()


def test_the_probe_never_connects_to_another_users_socket(tmp_path: Path) -> None:
    # postmaster.pid is postgres' to write: it may name any directory, e.g. one with a root socket.
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    os.chown(pgdata, 4242, 4242)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / ".s.PGSQL.5432"))
        with pytest.raises(probe.ProbeFailed, match="not a socket of PGDATA's owner"):
            probe.own_socket(pgdata, str(tmp_path), 5432)
        os.chown(tmp_path / ".s.PGSQL.5432", 4242, 4242)
        assert probe.own_socket(pgdata, str(tmp_path), 5432) == str(tmp_path / ".s.PGSQL.5432")
