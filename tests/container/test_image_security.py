"""tests/e2e/test_security.py's scenarios on the built image: the shipped manifest and both
overlays (uid 999; an arbitrary uid with group 0 and no passwd entry), each pod a podman container
of pg-sfs-agent:14.5-standin under the variant's securityContext."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.container

if os.geteuid() != 0 or shutil.which("podman") is None:
    pytest.skip("needs root and podman", allow_module_level=True)

from emulator.controller import Cluster  # noqa: E402
from tests.container.test_image import IMAGE  # noqa: E402
from tests.e2e.test_security import (  # noqa: E402
    VARIANTS,
    check_failure_during_init,
    secured_cluster,
    test_each_member_runs_postgres_unprivileged_as_the_manifest_says,
    test_probes_and_plan_work_under_the_security_context,
    test_restart_reuses_the_data,
    test_the_root_filesystem_is_read_only_where_the_manifest_says,
)

__all__ = [
    "test_each_member_runs_postgres_unprivileged_as_the_manifest_says",
    "test_probes_and_plan_work_under_the_security_context",
    "test_restart_reuses_the_data",
    "test_the_root_filesystem_is_read_only_where_the_manifest_says",
]


@pytest.fixture(scope="module", **VARIANTS)  # type: ignore[call-overload]
def secured(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, Cluster]]:
    """The image under each variant."""
    yield from secured_cluster(request.param, IMAGE)


def test_a_failure_during_init_is_one_json_error_in_the_image() -> None:
    check_failure_during_init(IMAGE)
