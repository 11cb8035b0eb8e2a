"""Backup and restore on the built image (PostgreSQL 14 with the pgBackRest built into it, the manifest's
securityContext and read-only root): tests/e2e/test_backup.py's scenario, as shipped."""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.container

if os.geteuid() != 0 or shutil.which("podman") is None:
    pytest.skip("needs root and podman", allow_module_level=True)

from emulator.controller import Cluster  # noqa: E402
from tests.container.test_image import IMAGE  # noqa: E402
from tests.e2e.test_backup import backup_spec, lose_every_volume_and_restore  # noqa: E402


def test_a_backup_and_a_restore_to_a_point_in_time_on_the_image() -> None:
    c = Cluster(spec=backup_spec(), replicas=2, image=IMAGE, probe_scale=0.5, backoff_base=2.0, backoff_cap=8.0,
                volume_size="1Gi")  # fmt: skip
    with c:
        lose_every_volume_and_restore(c, replicas=2)
        assert c.psql("postgresql-sfs-0", "show server_version_num")[:2] == "14"
