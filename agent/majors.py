"""The PostgreSQL majors this image carries, one `<dir>/<major>/bin` each (Debian's and the
official image's layout), and running one of them instead of the image's own."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

DEFAULT_DIR = Path("/usr/lib/postgresql")
# What pg_upgrade needs of an old major's binaries (it runs them) besides postgres itself.
NEEDED = ("postgres", "pg_ctl", "pg_controldata", "initdb", "pg_upgrade", "pg_config", "pg_waldump")


def available(root: Path) -> dict[int, str]:
    """Each major under `root` whose bin/ holds the programs an upgrade or a start needs: major -> bin dir."""
    found: dict[int, str] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return found
    for name in names:
        if not re.fullmatch(r"\d{1,3}", name):
            continue
        bindir = root / name / "bin"
        if all(os.access(bindir / program, os.X_OK) for program in NEEDED):
            found[int(name)] = str(bindir)
    return dict(sorted(found.items()))


def image_bindir() -> str | None:
    """The directory of the `postgres` on PATH: the image's own major."""
    found = shutil.which("postgres")
    return str(Path(os.path.realpath(found)).parent) if found else None


def forget(bindir: str) -> None:
    """Back to the image's own programs: `bindir` off PATH (a member that clones its upgraded primary)."""
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != bindir]
    os.environ["PATH"] = os.pathsep.join(parts)


def use(bindir: str) -> None:
    """Run `bindir`'s programs from now on (this process and the postgres it becomes): first on PATH."""
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir, path]) if path else bindir
