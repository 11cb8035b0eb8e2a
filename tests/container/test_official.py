"""The official-images test suite's postgres tests, ported from `docker run` to podman.

`postgres-basics` and `postgres-initdb` (docker-library/official-images test/tests/, see
../shared/reference/official-image/tests) start the image with only POSTGRES_USER,
POSTGRES_PASSWORD and POSTGRES_DB set, names with spaces, and talk to it with psql from a second
container of the same image, over TCP with the password. Here each container sits in a network
namespace of the emulator's own network (198.18.0.0/15) instead of docker's --link; the variables
reach podman through 0600 env files, never its argv. The image runs standalone there (no
StatefulSet pod name, no namespace), as a `docker run` of it does.

One check of postgres-basics is about the base, not the entrypoint: `pg_jit_available()`. The
real postgres:14.5 has LLVM JIT; the local stand-in base (PostgreSQL from a wheel, no LLVM) has
not, so that check runs only against a real base (README, "Building without Docker").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

if os.geteuid() != 0:
    pytest.skip("needs root (podman, network namespaces)", allow_module_level=True)
if shutil.which("podman") is None:
    pytest.skip("podman is not installed (make deps)", allow_module_level=True)

from emulator import podman  # noqa: E402
from emulator.network import Host, Network  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402

IMAGE = os.environ.get("PGSFS_IMAGE", "localhost/pg-sfs-agent:14.5-standin")
OFFICIAL = {
    "POSTGRES_USER": "my cool postgres user",
    "POSTGRES_PASSWORD": "my cool postgres password",
    "POSTGRES_DB": "my cool postgres database",
}
# The official test's initdb.sql, as its postgres-initdb test copies it into the image.
INITDB_SQL = """CREATE TABLE test (a INT, b INT, c VARCHAR(255));
INSERT INTO test VALUES (1, 2, 'hello');
INSERT INTO test VALUES (2, 3, 'goodbye!');
DELETE FROM test WHERE a = 1;
"""
READY = 90.0

if not podman.image_exists(IMAGE):
    pytest.fail(f"{IMAGE} is not built: run `make image` first", pytrace=False)


class Official:
    """One server container started as the official tests start it, and psql from a client container."""

    def __init__(
        self, net: Network, workdir: Path, name: str, initdb_dir: Path | None = None, env: dict[str, str] | None = None,
        run_args: tuple[str, ...] = (),
    ) -> None:
        self.net = net
        self.server: Host = net.add_host(f"{name}-server")
        self.client: Host = net.add_host(f"{name}-client")
        self.name = f"{net.prefix}-{name}"
        self.env_file = workdir / f"{name}.env"
        server_env = {**OFFICIAL, **(env or {})}
        podman.write_env_file(self.env_file, {k: v for k, v in server_env.items() if v})
        self.client_env = workdir / f"{name}-client.env"
        password = server_env.get("POSTGRES_PASSWORD", "")
        podman.write_env_file(self.client_env, {"PGPASSWORD": password} if password else {})
        argv = ["podman", "run", "-d", "--name", self.name, "--pull=never",
                f"--network=ns:/run/netns/{self.server.netns}", f"--env-file={self.env_file}"]  # fmt: skip
        if initdb_dir is not None:
            argv += ["--mount", f"type=bind,source={initdb_dir},destination=/docker-entrypoint-initdb.d,ro=true"]
        argv += run_args
        done = subprocess.run([*argv, IMAGE], env=podman.podman_env(), capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr

    def psql(self, sql: str) -> str:
        """`echo SQL | psql` from the client container: --quiet --no-align --tuples-only, as the test's."""
        argv = ["podman", "run", "--rm", "-i", "--pull=never", f"--network=ns:/run/netns/{self.client.netns}",
                f"--env-file={self.client_env}", "--entrypoint", "psql", IMAGE,
                "--host", self.server.ip, "--username", OFFICIAL["POSTGRES_USER"],
                "--dbname", OFFICIAL["POSTGRES_DB"], "--quiet", "--no-align", "--tuples-only"]  # fmt: skip
        done = subprocess.run(argv, input=sql, env=podman.podman_env(), capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def wait_ready(self) -> None:
        """The official tests' retry.sh around `SELECT 1`, as a bounded wait on the condition."""

        def answers() -> bool:
            try:
                return self.psql("SELECT 1") == "1"
            except AssertionError:
                return False

        try:
            wait_until(answers, READY, 0.5, "the server to answer SELECT 1")
        except TimeoutError:
            logs = subprocess.run(["podman", "logs", self.name], env=podman.podman_env(), capture_output=True,
                                  text=True, check=False, timeout=60)  # fmt: skip
            raise AssertionError(f"never ready; its log:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None

    def logs(self) -> str:
        done = subprocess.run(["podman", "logs", self.name], env=podman.podman_env(), capture_output=True,
                              text=True, check=False, timeout=60)  # fmt: skip
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman.remove(self.name)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network() as n:
        try:
            yield n
        finally:
            podman.remove_named_after(n.prefix)


def _jit_checked() -> bool:
    labels = subprocess.run(["podman", "image", "inspect", "--format", "{{index .Labels \"pgsfs.base\"}}", IMAGE],
                            env=podman.podman_env(), capture_output=True, text=True, check=False, timeout=60)
    return labels.stdout.strip() != "standin"


def test_postgres_basics(net: Network, tmp_path: Path) -> None:
    server = Official(net, tmp_path, "basics")
    server.wait_ready()
    server.psql("CREATE TABLE test (a INT, b INT, c VARCHAR(255))")
    assert server.psql("SELECT COUNT(*) FROM test") == "0"
    server.psql("\tINSERT INTO test VALUES (1, 2, 'hello')\n")
    assert server.psql("SELECT COUNT(*) FROM test") == "1"
    server.psql("\tINSERT INTO test VALUES (2, 3, 'goodbye!')\n")
    assert server.psql("SELECT COUNT(*) FROM test") == "2"
    server.psql("DELETE FROM test WHERE a = 1")
    assert server.psql("SELECT COUNT(*) FROM test") == "1"
    assert server.psql("SELECT c FROM test") == "goodbye!"
    server.psql("DROP TABLE test")
    if _jit_checked():
        assert server.psql("SET jit = on; SELECT pg_jit_available();") == "t"
    # It said why it runs on its own, and the password never reached its log.
    logs = server.logs()
    assert '"event": "standalone"' in logs
    assert OFFICIAL["POSTGRES_PASSWORD"] not in logs


def test_postgres_initdb(net: Network, tmp_path: Path) -> None:
    initdb_dir = tmp_path / "initdb.d"
    initdb_dir.mkdir(mode=0o755)
    (initdb_dir / "initdb.sql").write_text(INITDB_SQL)
    (initdb_dir / "initdb.sql").chmod(0o644)
    tmp_path.chmod(0o755)
    server = Official(net, tmp_path, "initdb", initdb_dir=initdb_dir)
    server.wait_ready()
    assert server.psql("SELECT COUNT(*) FROM test") == "1"
    assert server.psql("SELECT c FROM test") == "goodbye!"


def test_a_ci_service_with_trust_and_the_log_lines_tools_wait_for(net: Network, tmp_path: Path) -> None:
    # GitHub Actions services and Testcontainers run the image this way: POSTGRES_HOST_AUTH_METHOD=trust,
    # no password, and a wait for "database system is ready to accept connections" twice (issue 20).
    server = Official(net, tmp_path, "trust", env={"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_PASSWORD": ""})
    server.wait_ready()
    assert server.psql("SELECT current_user") == OFFICIAL["POSTGRES_USER"]
    logs = server.logs()
    assert 'WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust"' in logs
    assert "PostgreSQL init process complete; ready for start up." in logs
    assert logs.count("database system is ready to accept connections") >= 2


def test_a_read_only_container_with_the_default_pgdata_keeps_its_state_on_the_volume(
    net: Network, tmp_path: Path
) -> None:
    # Review F-L11: `docker run --read-only` with the default PGDATA (the image's VOLUME, so PGDATA is
    # the mount point) failed: the agent's state directory went beside PGDATA, on the read-only
    # container filesystem. It now lives inside PGDATA, on the volume; a restart keeps it.
    server = Official(net, tmp_path, "readonly", run_args=("--read-only",))
    server.wait_ready()
    assert server.psql("SELECT setting FROM pg_settings WHERE name = 'data_directory'") == "/var/lib/postgresql/data"
    listed = subprocess.run(["podman", "exec", server.name, "ls", "-A", "/var/lib/postgresql/data"],
                            env=podman.podman_env(), capture_output=True, text=True, check=False,
                            timeout=60)  # fmt: skip
    assert "pgsql_tmp.pg-sfs-agent" in listed.stdout.split(), listed
    restarted = subprocess.run(["podman", "restart", server.name], env=podman.podman_env(), capture_output=True,
                               text=True, check=False, timeout=120)  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    server.wait_ready()
    assert "passwords_adopted" not in server.logs()
