"""How much WAL may pile up in pg_wal: defaults that follow the volume, and a check of what is set.

pg_wal's peak, as PostgreSQL's checkpointer behaves: the WAL kept for retention (the larger of
`wal_keep_size` and a lagging slot, the slot capped by `max_slot_wal_keep_size`), plus up to
`max_wal_size` written before the next checkpoint ends, plus about as much again recycled ahead.
The defaults keep that peak under half the volume, so the data has the other half.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent import serverargs
from agent.files import read_limited, tree_size
from agent.pgdata import builds_inside, volume_dir

MB = 1024 * 1024
AUTO = "auto"
SETTINGS = ("max_wal_size", "wal_keep_size", "max_slot_wal_keep_size")

# Fractions of the volume that holds pg_wal (documented in README, "WAL and the volume").
MAX_WAL_FRACTION = 0.10
WAL_KEEP_FRACTION = 0.05
SLOT_KEEP_FRACTION = 0.25
# PostgreSQL's own defaults cap the first two: larger volumes gain nothing from more.
MAX_WAL_CAP_MB = 1024
WAL_KEEP_CAP_MB = 1024
# Above this share of the volume the peak of pg_wal leaves too little room for the data.
FIT_FRACTION = 0.90

_UNITS_MB = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
_SIZE = re.compile(r"^\s*(-?[0-9]+)\s*(kB|MB|GB|TB)?\s*$")
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
_CONF_LINE = re.compile(r"^\s*([A-Za-z_.]+)\s*=?\s*'?([^'#]*?)'?\s*(?:#.*)?$")


def size_mb(text: str) -> int | None:
    """A WAL size setting in MB (PostgreSQL's unit for all three); -1 stays -1; None if unreadable."""
    match = _SIZE.match(text)
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2) or "MB"
    if number < 0:
        return -1 if number == -1 else None
    return int(number * _UNITS_MB[unit])


@dataclass(frozen=True)
class WalSettings:
    """The three settings the agent writes, in MB, and the peak of pg_wal they allow."""

    volume_mb: int | None
    max_wal_size_mb: int
    wal_keep_size_mb: int
    max_slot_wal_keep_size_mb: int

    @property
    def peak_mb(self) -> int | None:
        """The most pg_wal can hold under these settings; None when a slot may keep WAL without limit."""
        if self.max_slot_wal_keep_size_mb < 0:
            return None
        return max(self.wal_keep_size_mb, self.max_slot_wal_keep_size_mb) + 2 * self.max_wal_size_mb

    def conf_values(self) -> dict[str, str]:
        """The values for the settings file."""
        return {
            "max_wal_size": f"{self.max_wal_size_mb}MB",
            "wal_keep_size": f"{self.wal_keep_size_mb}MB",
            "max_slot_wal_keep_size": (
                "-1" if self.max_slot_wal_keep_size_mb < 0 else f"{self.max_slot_wal_keep_size_mb}MB"
            ),
        }


def defaults(volume_bytes: int | None, segment_mb: int = 16) -> WalSettings:
    """Settings from the size of the volume holding pg_wal; PostgreSQL's own when it is unknown."""
    if volume_bytes is None or volume_bytes <= 0:
        return WalSettings(None, MAX_WAL_CAP_MB, WAL_KEEP_CAP_MB, 10 * 1024)
    volume_mb = volume_bytes // MB
    # PostgreSQL refuses max_wal_size below two segments.
    max_wal = max(2 * segment_mb, min(MAX_WAL_CAP_MB, int(volume_mb * MAX_WAL_FRACTION)))
    wal_keep = min(WAL_KEEP_CAP_MB, int(volume_mb * WAL_KEEP_FRACTION))
    # An active replica lags by a few segments: never bound the slot below what one checkpoint cycle writes.
    slot_keep = max(2 * max_wal, int(volume_mb * SLOT_KEEP_FRACTION))
    return WalSettings(volume_mb, max_wal, wal_keep, slot_keep)


def choose(configured: dict[str, str], volume_bytes: int | None, segment_mb: int = 16) -> WalSettings:
    """The agent's settings: each PGSFS_* value as given, or its volume-based default when `auto`."""
    auto = defaults(volume_bytes, segment_mb)

    def pick(name: str, fallback: int) -> int:
        value = configured.get(name, AUTO)
        parsed = None if value == AUTO else size_mb(value)
        return fallback if parsed is None else parsed

    return WalSettings(
        auto.volume_mb,
        pick("max_wal_size", auto.max_wal_size_mb),
        pick("wal_keep_size", auto.wal_keep_size_mb),
        pick("max_slot_wal_keep_size", auto.max_slot_wal_keep_size_mb),
    )


def overrides_from_conf(text: str) -> dict[str, str]:
    """The WAL settings a postgresql.auto.conf (ALTER SYSTEM) sets; they win over the agent's file."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        if match and match.group(1).lower() in SETTINGS:
            found[match.group(1).lower()] = match.group(2).strip()
    return found


def overrides_from_args(args: Iterable[str]) -> dict[str, str]:
    """The WAL settings on postgres' command line (`-c name=value`, `--name=value`); they win over files."""
    return {name: value for name, value in serverargs.settings(args).items() if name in SETTINGS}


def effective(written: WalSettings, *overrides: dict[str, str]) -> WalSettings:
    """What postgres will use: the agent's values, then each override layer in order of precedence."""
    values = {
        "max_wal_size": written.max_wal_size_mb,
        "wal_keep_size": written.wal_keep_size_mb,
        "max_slot_wal_keep_size": written.max_slot_wal_keep_size_mb,
    }
    for layer in overrides:
        for name, text in layer.items():
            parsed = size_mb(text)
            if parsed is not None:
                values[name] = parsed
    return WalSettings(
        written.volume_mb, values["max_wal_size"], values["wal_keep_size"], values["max_slot_wal_keep_size"]
    )


def fit_problem(settings: WalSettings) -> str | None:
    """Why pg_wal could fill its volume under these settings, or None when it fits."""
    if settings.volume_mb is None:
        return None
    if settings.max_slot_wal_keep_size_mb < 0:
        return (
            "max_slot_wal_keep_size is -1: a replica that is down or gone keeps WAL on the primary without "
            f"limit, until the {settings.volume_mb} MB volume is full"
        )
    peak = settings.peak_mb
    assert peak is not None
    limit = int(settings.volume_mb * FIT_FRACTION)
    if peak > limit:
        return (
            f"pg_wal can grow to about {peak} MB (the larger of wal_keep_size {settings.wal_keep_size_mb} MB "
            f"and max_slot_wal_keep_size {settings.max_slot_wal_keep_size_mb} MB, plus twice max_wal_size "
            f"{settings.max_wal_size_mb} MB) on a {settings.volume_mb} MB volume"
        )
    return None


@dataclass(frozen=True)
class WalObservation:
    """What the WAL decision reads from the world: the volume, the segment size, the overrides."""

    volume_bytes: int | None
    segment_mb: int
    auto_conf: dict[str, str]
    args: dict[str, str]
    # Bytes on pg_wal's filesystem held by data moved aside (never deleted by the agent): not WAL's.
    held_bytes: int = 0
    # The volume's declared size (PGSFS_VOLUME_SIZE) when pg_wal is on PGDATA's volume: a hostPath or
    # local-path volume reports its node's whole disk to statvfs (review L3).
    declared_bytes: int | None = None


@dataclass(frozen=True)
class WalDecision:
    """The values the agent writes, what postgres will really use, and why that may not fit."""

    written: WalSettings
    effective: WalSettings
    problem: str | None
    held_mb: int = 0


def budget_bytes(observed: WalObservation) -> int | None:
    """The bytes the WAL settings are sized from: the smaller of the filesystem and the declared size,
    less what moved-aside data holds there (never under a tenth of the volume); None when unknown."""
    volume = observed.volume_bytes
    if observed.declared_bytes is not None:
        volume = observed.declared_bytes if volume is None else min(volume, observed.declared_bytes)
    if volume is None:
        return None
    return max(volume - observed.held_bytes, volume // 10, 1)


def decide(configured: dict[str, str], observed: WalObservation) -> WalDecision:
    """The WAL settings for this start: pure, so `plan` shows exactly what `postgres` writes."""
    written = choose(configured, budget_bytes(observed), observed.segment_mb)
    used = effective(written, observed.auto_conf, observed.args)
    return WalDecision(written, used, fit_problem(used), observed.held_bytes // MB)


def _segment_mb(pgdata_wal: Path, initdb_args: Iterable[str]) -> int:
    """The WAL segment size: a segment file's size in an existing pg_wal, else initdb's --wal-segsize."""
    try:
        for entry in os.scandir(pgdata_wal):
            if _SEGMENT_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                return max(1, entry.stat().st_size // MB)
    except OSError:
        pass
    args = list(initdb_args)
    for index, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--wal-segsize=") else None
        if arg == "--wal-segsize" and index + 1 < len(args):
            value = args[index + 1]
        if value is not None and value.isdigit():
            return int(value)
    return 16


def waldir_arg(initdb_args: Iterable[str]) -> str | None:
    """The WAL directory initdb's arguments name (--waldir / -X), if any."""
    args = list(initdb_args)
    for index, arg in enumerate(args):
        for flag in ("--waldir", "-X"):
            if arg == flag and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(flag + "=") or (flag == "-X" and arg.startswith("-X") and len(arg) > 2):
                return arg.split("=", 1)[1] if "=" in arg else arg[2:]
    return None


def _volume_bytes(path: Path) -> int | None:
    """Total size of the filesystem holding `path` (or its nearest existing ancestor)."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_blocks * st.f_frsize
    return None


def observe(pgdata: Path, initdb_args: Iterable[str], postgres_args: Iterable[str],
            declared_bytes: int | None = None) -> WalObservation:  # fmt: skip
    """Read the volume pg_wal lives on (or will), its segment size, the overrides of our values, and
    what moved-aside data holds there. `declared_bytes`: PGDATA's volume size as the manifest says."""
    args = tuple(initdb_args)
    wal = pgdata / "pg_wal"
    waldir = waldir_arg(args)
    where = Path(waldir) if waldir else volume_dir(pgdata)
    try:
        # Unreadable PGDATA (another owner) is the plan's to refuse; here it only means "unknown".
        if wal.exists():
            where = wal.resolve()
        auto_conf = read_limited(pgdata / "postgresql.auto.conf").decode("utf-8", "replace")
    except OSError:
        auto_conf = ""
    on_pgdata_volume = _same_filesystem(where, volume_dir(pgdata))
    return WalObservation(
        volume_bytes=_volume_bytes(where),
        segment_mb=_segment_mb(wal, args),
        auto_conf=overrides_from_conf(auto_conf),
        args=overrides_from_args(postgres_args),
        held_bytes=held_aside(pgdata, Path(waldir) if waldir else None, where),
        declared_bytes=declared_bytes if on_pgdata_volume else None,
    )


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:  # not made yet, or not readable: taken as PGDATA's volume, where it will be
        return True


def held_aside(pgdata: Path, waldir: Path | None, where: Path) -> int:
    """Bytes on `where`'s filesystem in copies the agent moved aside and never deletes: PGDATA's
    siblings `<name>.<why>-<time>` (and their WAL copies), a mount-point PGDATA's hidden WAL copies,
    and an external WAL directory's moved-aside siblings. The agent's own build dirs are not counted."""
    candidates: list[Path] = []
    try:
        if builds_inside(pgdata):
            candidates += [p for p in pgdata.glob(".pgsfs-diverged-wal-*")]
        else:
            candidates += [p for p in pgdata.parent.glob(f"{pgdata.name}.*") if ".pgsfs-" not in p.name]
        if waldir is not None:
            candidates += list(waldir.parent.glob(f"{waldir.name}.*"))
        device = os.stat(where).st_dev
    except OSError:
        return 0
    total = 0
    for path in candidates:
        try:
            if not path.is_symlink() and path.is_dir() and os.stat(path).st_dev == device:
                total += tree_size(path)
        except OSError:
            continue
    return total
