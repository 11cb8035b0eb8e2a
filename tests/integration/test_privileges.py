"""What the agent does as root never reaches past the volume through a link postgres planted.

The agent starts as root (the shipped manifest's securityContext) and changes owners and modes
before it becomes postgres. Code running as postgres (`COPY ... TO PROGRAM`, an untrusted PL) can
write in the volume, so it could plant a symbolic link wherever root will look next start. These
tests plant one at every such place, aimed at a root-owned tree outside the volume, run the real
agent as root, and compare that tree's owners and modes before and after (review F-H1, F-L2).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agentctl import agent_postgres, json_lines, pod_env, run_agent
from tests.integration.conftest import free_port, sized_volume

# The host's postgres account, which the agent drops to (999 in the image, Debian's own here).
POSTGRES_UID = pwd.getpwnam("postgres").pw_uid


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned tree outside the volume: a directory, a file, a subdirectory with a file."""
    root = Path(tempfile.mkdtemp(prefix="pgsfs-victim-"))
    try:
        root.chmod(0o755)
        (root / "secret").write_text("root only\n")
        (root / "secret").chmod(0o600)
        (root / "sub").mkdir(mode=0o755)
        (root / "sub" / "file").write_text("x\n")
        yield root
    finally:
        shutil.rmtree(root)


def snapshot(tree: Path) -> dict[str, tuple[int, int, int]]:
    """uid, gid and mode of every entry of `tree`, the top included."""
    seen = {}
    for path in [tree, *sorted(tree.rglob("*"))]:
        st = os.lstat(path)
        seen[str(path.relative_to(tree))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return seen


def plant(link: Path, target: Path) -> None:
    """A symbolic link made as postgres would make it (owned by postgres)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    os.lchown(link, POSTGRES_UID, POSTGRES_UID)


@pytest.mark.parametrize("setting, name", [("PGSFS_STATE_DIR", ".pg-sfs-agent"), ("PGDATA", "pgdata")])
def test_a_linked_pgdata_or_state_dir_is_refused_and_its_target_left_alone(
    setting: str, name: str, victim: Path
) -> None:
    empty_target = victim / "sub"
    (empty_target / "file").unlink()  # a PGDATA link to an empty directory passed the plan's checks
    before = snapshot(victim)
    with sized_volume("pgsfs-links-") as volume:
        os.chown(volume, 0, POSTGRES_UID)
        volume.chmod(0o2775)  # as fsGroup leaves it: postgres may write here
        plant(volume / name, empty_target if setting == "PGDATA" else victim)
        done = run_agent(pod_env(volume, 0, free_port()), "postgres", timeout=60)
    assert done.returncode == 6, done.stdout + done.stderr
    [error] = [line for line in json_lines(done.stderr + done.stdout) if line["level"] == "error"]
    assert f"{setting} {volume / name} is a symbolic link" in error["error"], error
    assert snapshot(victim) == before


def test_links_planted_inside_the_volume_are_never_followed_by_roots_chown(victim: Path) -> None:
    # A cluster as a previous start left it, then links everywhere postgres can write: entries of
    # the state dir and PGDATA, and the build directories beside PGDATA. A root-owned entry in each
    # tree makes the chown walk do work there. The start must succeed and leave the victim as it was.
    before = snapshot(victim)
    with sized_volume("pgsfs-links-") as volume:
        env = pod_env(volume, 0, free_port())
        with agent_postgres(env, volume / "agent.log"):
            pass
        state, pgdata = volume / ".pg-sfs-agent", volume / "pgdata"
        for tree in (state, pgdata):
            plant(tree / "planted-dir", victim)
            plant(tree / "planted-file", victim / "secret")
            (tree / "root-owned").write_text("")  # owned by root, so the walk changes something
        plant(pgdata / "base" / "planted-deep", victim / "sub")
        plant(volume / "pgdata.pgsfs-work", victim)
        plant(volume / "pgdata.pgsfs-new", victim / "sub")
        with agent_postgres(env, volume / "agent2.log") as server:
            lines = server.agent_log()
        for tree in (state, pgdata):
            assert (tree / "planted-dir").is_symlink() and os.lstat(tree / "planted-dir").st_uid == POSTGRES_UID
            assert os.lstat(tree / "root-owned").st_uid == POSTGRES_UID, "the walk ran"
    assert snapshot(victim) == before
    fixed = [line for line in lines if line["event"] == "ownership_fixed"]
    assert fixed and fixed[0]["entries"] >= 2, fixed


def test_a_state_dir_on_a_read_only_filesystem_is_a_clear_refusal(volume_root: Path) -> None:
    # Under a read-only root, a state directory outside the volume cannot be made: that was an
    # `unexpected_error` ("a bug in pg-sfs-agent") with a traceback's last frame; it is a refusal
    # naming the setting, with the way out, and nothing touched.
    with sized_volume("pgsfs-ro-") as read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
        env = pod_env(volume_root, 0, free_port(), PGSFS_STATE_DIR=str(read_only / "state"))
        done = run_agent(env, "postgres", timeout=60)
    lines = json_lines(done.stdout + done.stderr)
    [refused] = [line for line in lines if line.get("level") == "error"]
    assert done.returncode == 6 and refused["event"] == "pgdata_conflict", lines
    assert "PGSFS_STATE_DIR" in refused["error"] and "Read-only file system" in refused["error"], refused
    assert not (volume_root / "pgdata").exists()
