"""Major versions: which major a member runs, whether the primary upgrades its data in place, and how
an interrupted upgrade goes on. Pure decisions over plain data; agent/upgrader.py carries them out.

The upgrade is pg_upgrade --link into a build directory beside PGDATA (inside it, under PostgreSQL's
temporary-file prefix, when PGDATA is its volume's mount point), recorded in a file there:
- phase "building": the old cluster in PGDATA is the truth. pg_upgrade may have renamed its
  global/pg_control to pg_control.old (its link step); putting it back makes the old cluster
  startable again (pg_upgrade's documented way back: the new cluster never served anything).
- phase "upgraded" (written only after pg_upgrade exited 0): the new cluster is the truth. PGDATA is
  renamed aside, then the new cluster renamed to PGDATA; a restart in between finishes the swap.
  Inside a mount point, the old cluster's entries (listed in the record) move into a directory
  aside, PG_VERSION first; then phase "moving_in", and the new cluster's entries move up, PG_VERSION
  last: a restart goes on from the phase, moving only what is still where it was.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.files import read_limited
from agent.pgdata import UPGRADE_INSIDE_PREFIX, read_system_identifier

BUILD_SUFFIX = ".pgsfs-upgrade"
RECORD = "pg-sfs-upgrade.json"
BUILDING = "building"
UPGRADED = "upgraded"
MOVING_IN = "moving_in"
INSIDE_BUILD = f"{UPGRADE_INSIDE_PREFIX}upgrade"
# What pg_upgrade --link needs beside the catalogs it rebuilds: initdb's new cluster and a margin.
FIXED_ROOM = 128 * 1024 * 1024


class MajorChoice(enum.Enum):
    """How a member meets the major its data holds."""

    IMAGE = "image"  # the data's major is the image's
    OLDER = "run_older"  # run the data's older major, which the image carries, as it is
    UPGRADE = "upgrade"  # the writable primary upgrades its data to the image's major
    REFUSE = "refuse"


@dataclass(frozen=True)
class MajorDecision:
    """The choice, the binaries to run (OLDER) or upgrade from (UPGRADE), and a refusal's words."""

    choice: MajorChoice
    bindir: str | None = None
    message: str = ""
    hint: str = ""


def decide_major(
    pgdata: str,
    data_major: int,
    image_major: int,
    carried: Mapping[int, str],
    *,
    writable_primary: bool,
    external_wal: bool,
) -> MajorDecision:
    """Same major: start. Newer data: refuse (no downgrade). Older data: the writable primary upgrades,
    any other member runs the old major the image carries until its primary has upgraded."""
    if data_major == image_major:
        return MajorDecision(MajorChoice.IMAGE)
    if data_major > image_major:
        return MajorDecision(
            MajorChoice.REFUSE,
            message=f"PGDATA {pgdata} holds PostgreSQL {data_major} data but this image runs PostgreSQL "
            f"{image_major}: a major version cannot go back in place",
            hint=f"run an image of PostgreSQL {data_major} again; to return to {image_major} after an upgrade, "
            "restore a backup taken before it (README: Upgrading)",
        )
    bindir = carried.get(data_major)
    if bindir is None:
        others = [str(m) for m in carried if m != image_major]
        carries = f"the programs of PostgreSQL {', '.join(others)} only" if others else "no other major's programs"
        return MajorDecision(
            MajorChoice.REFUSE,
            message=f"PGDATA {pgdata} holds PostgreSQL {data_major} data; this image runs PostgreSQL {image_major} "
            f"and carries {carries}, so it can neither run nor upgrade it",
            hint=f"run an image of PostgreSQL {data_major}, or one that carries its programs (README: Upgrading), "
            "or set PGSFS_MAJORS_DIR to where they are",
        )
    if not writable_primary:
        return MajorDecision(MajorChoice.OLDER, bindir=bindir)
    blockers = [
        (external_wal, f"{pgdata}/pg_wal is a link to another directory (POSTGRES_INITDB_WALDIR): not handled by "
         "the upgrade yet", "run an image of the data's major and upgrade by hand (pg_upgrade)"),
    ]  # fmt: skip
    for blocked, reason, hint in blockers:
        if blocked:
            return MajorDecision(
                MajorChoice.REFUSE,
                message=f"PostgreSQL {data_major} data on the primary ordinal, image of PostgreSQL {image_major}: "
                f"not upgrading, because {reason}",
                hint=hint,
            )
    return MajorDecision(MajorChoice.UPGRADE, bindir=bindir)


@dataclass(frozen=True)
class OldCluster:
    """What the upgrade needs to know of the old cluster, read from it while it ran on its own major."""

    install_user: str
    encoding: str
    locale_provider: str  # "c" libc, "i" ICU, "b" builtin
    collate: str
    ctype: str
    icu_locale: str | None
    checksums: bool
    wal_segment_mb: int
    extensions: tuple[tuple[str, str], ...]  # (database, extension)
    catalog_bytes: int
    xact_bytes: int


def initdb_args(old: OldCluster, new_major: int) -> list[str]:
    """initdb's arguments for a new cluster pg_upgrade accepts: the same install user, encoding,
    locales, checksums and WAL segment size as the old one (PostgreSQL 18 checksums by default)."""
    args = ["-U", old.install_user, "-E", old.encoding, f"--lc-collate={old.collate}", f"--lc-ctype={old.ctype}",
            f"--wal-segsize={old.wal_segment_mb}"]  # fmt: skip
    if old.locale_provider == "i" and old.icu_locale:
        args += ["--locale-provider=icu", f"--icu-locale={old.icu_locale}"]
    elif old.locale_provider == "b" and old.icu_locale:
        args += ["--locale-provider=builtin", f"--builtin-locale={old.icu_locale}"]
    if old.checksums:
        args.append("--data-checksums")
    elif new_major >= 18:
        args.append("--no-data-checksums")
    return args


def upgrade_problems(old: OldCluster, new_extensions: frozenset[str], free_bytes: int | None) -> list[str]:
    """What makes the upgrade impossible before anything is touched: extensions the new major lacks,
    and a volume without room for the new catalogs."""
    problems = [
        f"extension {ext!r} (database {db!r}) is not installed for the new major"
        for db, ext in old.extensions
        if ext not in new_extensions
    ]
    needed = room_needed(old)
    if free_bytes is not None and free_bytes < needed:
        problems.append(
            f"the volume has {free_bytes // 1048576} MiB free; the upgrade needs about {needed // 1048576} MiB "
            "(the new catalogs, pg_xact and pg_multixact, initdb's files; table files are linked, not copied)"
        )
    return problems


def room_needed(old: OldCluster) -> int:
    """Bytes the upgrade writes: the catalogs rebuilt, the transaction status copied, a fixed part."""
    return FIXED_ROOM + 2 * old.catalog_bytes + old.xact_bytes


class Resume(enum.Enum):
    """What to do first with what an earlier start left of an upgrade."""

    NOTHING = "nothing"
    ROLL_BACK = "roll_back"  # pg_upgrade did not finish: the old cluster is the truth
    FINISH_SWAP = "finish_swap"  # it finished: the new cluster becomes PGDATA
    CLEAN_UP = "clean_up"  # PGDATA is the new cluster: only the build directory is left
    UNKNOWN = "unknown"  # nothing the agent wrote explains what is there: touch nothing


@dataclass(frozen=True)
class UpgradeRecord:
    """The upgrade's journal, in its build directory."""

    pgdata: str
    from_major: int
    to_major: int
    phase: str
    aside: str
    old_system_identifier: int | None
    inside: bool = False  # built inside a mount-point PGDATA
    entries: tuple[str, ...] = ()  # inside: the old cluster's entries in PGDATA, to move aside

    def to_json(self) -> str:
        """The record as written."""
        return json.dumps(asdict(self), sort_keys=True)


def parse_record(text: str) -> UpgradeRecord | None:
    """The record, or None when it is not one (a partial write never is: it is written atomically)."""
    try:
        data = json.loads(text)
        record = UpgradeRecord(**{**data, "entries": tuple(str(e) for e in data.get("entries", ()))})
    except (ValueError, TypeError, AttributeError):
        return None
    return record if record.phase in (BUILDING, UPGRADED, MOVING_IN) else None


def decide_resume(
    record: UpgradeRecord | None, *, pgdata_major: int | None, built_major: int | None, aside_exists: bool
) -> Resume:
    """From the record and the majors found in PGDATA and in the build: roll back, finish, clean up."""
    if record is None:
        return Resume.NOTHING
    if record.inside:
        return _resume_inside(record, pgdata_major, built_major)
    if record.phase == BUILDING:
        return Resume.ROLL_BACK if pgdata_major == record.from_major else Resume.UNKNOWN
    if pgdata_major == record.to_major and built_major is None:
        return Resume.CLEAN_UP
    if built_major == record.to_major and (
        pgdata_major == record.from_major or (pgdata_major is None and aside_exists)
    ):
        return Resume.FINISH_SWAP
    return Resume.UNKNOWN


PROVENANCE = "upgraded-from.json"
ORIGIN_SETTING = "pgsfs.upgraded_from"


@dataclass(frozen=True)
class UpgradeOrigin:
    """The cluster an upgraded primary was made from: its identifier, timeline and the end of its
    WAL once it was shut down for the upgrade (no member can hold more of it)."""

    system_identifier: int
    timeline: int
    wal_end: int

    def setting(self) -> str:
        """The value of pgsfs.upgraded_from in the primary's settings file."""
        return f"{self.system_identifier}:{self.timeline}:{self.wal_end:X}"


def parse_origin(text: str | None) -> UpgradeOrigin | None:
    """pgsfs.upgraded_from's value, or None when unset or not one."""
    parts = (text or "").split(":")
    if len(parts) != 3:
        return None
    try:
        return UpgradeOrigin(int(parts[0]), int(parts[1]), int(parts[2], 16))
    except ValueError:
        return None


def provenance_text(origin: UpgradeOrigin, new_system_identifier: int | None) -> str:
    """The state directory's record of the upgrade that made the cluster `new_system_identifier`."""
    return json.dumps({"origin": origin.setting(), "system_identifier": new_system_identifier})


def origin_for(provenance: str, system_identifier: int | None) -> UpgradeOrigin | None:
    """The origin the record names, if it is the record of the cluster in PGDATA (not of an earlier one)."""
    try:
        data = json.loads(provenance)
    except ValueError:
        return None
    if not isinstance(data, dict) or system_identifier is None or data.get("system_identifier") != system_identifier:
        return None
    return parse_origin(str(data.get("origin")))


def upgraded_from_here(local_system_identifier: int | None, local_timeline: int | None, local_wal_end: int | None,
                       origin: UpgradeOrigin | None) -> bool:  # fmt: skip
    """A standby's data is a copy of the cluster its primary was upgraded from, holding nothing more:
    the same cluster, the same timeline, its WAL ending at or before where the old cluster's ended.
    Only then is cloning the upgraded primary over it (moved aside) a loss of nothing."""
    if origin is None or None in (local_system_identifier, local_timeline, local_wal_end):
        return False
    assert local_wal_end is not None
    return (local_system_identifier == origin.system_identifier and local_timeline == origin.timeline
            and local_wal_end <= origin.wal_end)  # fmt: skip


def recorded_origin(state_dir: Path, pgdata: Path) -> UpgradeOrigin | None:
    """The origin the state directory records for the cluster now in `pgdata` (None for any other)."""
    try:
        text = read_limited(state_dir / PROVENANCE).decode("utf-8", "replace")
    except OSError:
        return None
    return origin_for(text, read_system_identifier(pgdata))


def _resume_inside(record: UpgradeRecord, pgdata_major: int | None, built_major: int | None) -> Resume:
    """decide_resume inside a mount-point PGDATA: PG_VERSION leaves first and arrives last, so it tells
    whose PGDATA is there; the phase tells which way the entries were moving."""
    if record.phase == BUILDING:
        return Resume.ROLL_BACK if pgdata_major == record.from_major else Resume.UNKNOWN
    if pgdata_major == record.to_major and built_major is None:
        return Resume.CLEAN_UP if record.phase == MOVING_IN else Resume.UNKNOWN
    if built_major == record.to_major and pgdata_major in (record.from_major, None):
        # UPGRADED: old entries may be half moved aside; MOVING_IN: new ones half moved up.
        return Resume.FINISH_SWAP if record.phase == UPGRADED or pgdata_major is None else Resume.UNKNOWN
    return Resume.UNKNOWN


def build_dir_for(pgdata: Path, inside: bool = False) -> Path:
    """Where the new cluster is built: beside PGDATA on its volume, or inside a mount-point PGDATA."""
    return pgdata / INSIDE_BUILD if inside else pgdata.with_name(pgdata.name + BUILD_SUFFIX)


def aside_for(pgdata: Path, major: int, taken: Sequence[str], inside: bool = False) -> Path:
    """A name, not yet taken, for the old cluster once the new one is in place (beside PGDATA, or
    inside a mount-point PGDATA)."""
    base = f"{UPGRADE_INSIDE_PREFIX}major{major}" if inside else f"{pgdata.name}.pgsfs-major{major}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return pgdata / name if inside else pgdata.with_name(name)
