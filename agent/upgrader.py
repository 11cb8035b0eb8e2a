"""Carrying out a major upgrade of the primary's PGDATA (see agent/upgrade.py for the protocol)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from agent import majors, repository, upgrade, walend
from agent.context import Part
from agent.errors import CommandFailed, DataDirConflict, UpgradeRefused
from agent.files import fsync_dir, read_limited, tree_size, write_atomic
from agent.pgdata import builds_inside, data_entries, read_major, read_system_identifier, volume_dir
from agent.postgres import _tail, child_env, config_problem, controldata
from agent.upgrade import BUILDING, MOVING_IN, UPGRADED, OldCluster, Resume, UpgradeOrigin, UpgradeRecord

# The old cluster's configuration travels with it; the agent's own include is rewritten at the start.
CARRIED_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
TRUST_HBA = "local all all trust\n"
OLD_CLUSTER_SQL = {
    "install_user": "SELECT rolname FROM pg_authid WHERE oid = 10",
    "databases": "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
    "catalog_bytes": "SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::bigint FROM pg_class "
    "WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind IN ('r', 'm')",
    "extensions": "SELECT extname FROM pg_extension ORDER BY extname",
}


def _read_record(build: Path) -> upgrade.UpgradeRecord | None:
    try:
        return upgrade.parse_record(read_limited(build / upgrade.RECORD).decode("utf-8", "replace"))
    except OSError:
        return None


def _discard(build: Path) -> int:
    """Delete an upgrade's build directory (a new cluster that never served: table files in it are
    links to the old cluster's, whose own names keep them); renamed first, so a crash leaves a name
    only this step gives."""
    size = tree_size(build)
    doomed = build.with_name(build.name + "-discard")
    if build.exists():
        os.rename(build, doomed)
        fsync_dir(build.parent)
    shutil.rmtree(doomed, ignore_errors=True)
    fsync_dir(build.parent)
    return size


def _build_of(pgdata: Path) -> Path:
    return upgrade.build_dir_for(pgdata, builds_inside(pgdata))


def resume_state(pgdata: Path) -> tuple[upgrade.UpgradeRecord | None, Resume]:
    """What an earlier start left of an upgrade of `pgdata`, and what to do with it."""
    build = _build_of(pgdata)
    record = _read_record(build)
    if record is None:  # the usual case: no upgrade was ever interrupted here; PGDATA is not looked at
        return None, Resume.NOTHING
    aside_exists = record is not None and Path(record.aside).exists()
    decision = upgrade.decide_resume(
        record, pgdata_major=read_major(pgdata), built_major=read_major(build / "data"), aside_exists=aside_exists
    )
    return record, decision


def roll_back(pgdata: Path, build: Path, log: Any, clock: Any = time.monotonic) -> None:
    """An upgrade that stopped before pg_upgrade finished: give the old cluster its pg_control back
    (pg_upgrade's link step renamed it) and discard the new one. Whatever image runs next, the old
    cluster starts: this one upgrades again, the old major's starts it as it was."""
    started = clock()
    control, renamed = pgdata / "global" / "pg_control", pgdata / "global" / "pg_control.old"
    restored = not control.exists() and renamed.exists()
    if restored:
        os.rename(renamed, control)
        fsync_dir(control.parent)
    size = _discard(build)
    log.info("upgrade_rolled_back", duration_s=round(clock() - started, 3), pg_control_restored=restored,
             discarded_mb=size >> 20, note="an upgrade stopped before pg_upgrade finished: the old cluster is "
             "the truth, as it was")  # fmt: skip


def finish_interrupted(pgdata: Path, log: Any) -> None:
    """Before anything looks at PGDATA: roll back an upgrade that pg_upgrade did not finish, finish
    the swap of one it completed, or clean up after one that was swapped."""
    record, decision = resume_state(pgdata)
    if record is None:
        return
    build = _build_of(pgdata)
    if decision is Resume.ROLL_BACK:
        roll_back(pgdata, build, log)
        return
    if decision is Resume.FINISH_SWAP:
        swap(pgdata, build, record)
        log.info("upgrade_swap_finished", pgdata=str(pgdata), old_data=record.aside, to_major=record.to_major)
    if decision in (Resume.FINISH_SWAP, Resume.CLEAN_UP):
        _discard(build)
    elif decision is Resume.UNKNOWN:
        raise DataDirConflict(
            f"{build} holds an upgrade to PostgreSQL {record.to_major} in phase {record.phase}, but PGDATA and the old "
            f"data kept aside ({record.aside}) do not match any state the upgrade passes through",
            hint="inspect both; the agent touches neither. Move the one that is not the cluster you want away",
        )


def swap(pgdata: Path, build: Path, record: UpgradeRecord) -> None:
    """The old cluster aside, the new one into PGDATA, from wherever an earlier start stopped.

    Beside PGDATA: two renames, each made durable; a restart between them finds PGDATA missing and
    the old one aside, and does the second. Inside a mount-point PGDATA: the old entries the record
    lists move aside (PG_VERSION first), the phase becomes moving_in, the new entries move up
    (PG_VERSION last); each step only moves what is still where it was."""
    if not record.inside:
        if pgdata.exists():
            os.rename(pgdata, record.aside)
            fsync_dir(pgdata.parent)
        os.rename(build / "data", pgdata)
        fsync_dir(pgdata.parent)
        return
    aside = Path(record.aside)
    if record.phase == UPGRADED:
        st = os.stat(build)  # the agent may be root here (a finish before the plan): postgres keeps it
        aside.mkdir(mode=0o700, exist_ok=True)
        os.chown(aside, st.st_uid, st.st_gid)
        for name in sorted(record.entries, key=lambda n: (n != "PG_VERSION", n)):
            if os.path.lexists(pgdata / name):
                os.rename(pgdata / name, aside / name)
        fsync_dir(aside)
        fsync_dir(pgdata)
        moving = replace(record, phase=MOVING_IN)
        write_atomic(build / upgrade.RECORD, moving.to_json(), mode=0o600, owner=(st.st_uid, st.st_gid))
        fsync_dir(build)
    new = build / "data"
    for name in sorted(os.listdir(new), key=lambda n: (n == "PG_VERSION", n)):
        os.rename(new / name, pgdata / name)
    fsync_dir(pgdata)


class Upgrader(Part):
    """pg_upgrade --link of PGDATA to the image's major, built beside it, then swapped in."""

    def __init__(self, ctx: Any, temporary_server: Callable[[Path, Path], Any]) -> None:
        super().__init__(ctx)
        self.temporary_server = temporary_server
        self.inside = builds_inside(self.pgdata)
        self.build = upgrade.build_dir_for(self.pgdata, self.inside)

    def run(self) -> None:
        """Check, build, pg_upgrade, swap; the old cluster stays startable until pg_upgrade is done."""
        started = self.world.clock()
        from_major = read_major(self.pgdata)
        to_major = self.plan.server_major
        carried = majors.available(self.config.majors_dir)
        new_bindir = majors.image_bindir()
        assert from_major is not None and to_major is not None and new_bindir is not None
        old_bindir = carried[from_major]
        self._roll_back_unfinished()
        old, origin = self._read_old(old_bindir)
        problems = upgrade.upgrade_problems(old, _extensions_of(new_bindir, self.world.runner), _free(self.pgdata))
        if problems:
            raise UpgradeRefused(
                f"not upgrading PostgreSQL {from_major} to {to_major}: " + "; ".join(problems),
                hint=f"install what is missing in the new image, or grow the volume; the PostgreSQL {from_major} "
                "cluster is as it was: the image of its major runs it",
            )
        self._phase("upgrade_checked", started, from_major=from_major, to_major=to_major,
                    extensions=sorted({e for _db, e in old.extensions}),
                    room_needed_mb=upgrade.room_needed(old) >> 20)  # fmt: skip
        taken = os.listdir(self.pgdata if self.inside else self.pgdata.parent)
        record = UpgradeRecord(
            pgdata=str(self.pgdata), from_major=from_major, to_major=to_major, phase=BUILDING,
            aside=str(upgrade.aside_for(self.pgdata, from_major, taken, self.inside)),
            old_system_identifier=read_system_identifier(self.pgdata), inside=self.inside,
        )  # fmt: skip
        try:
            new = self._build_new(record, old, new_bindir)
            self._pg_upgrade(old_bindir, new_bindir, new, old.install_user, check=True)
        except (UpgradeRefused, CommandFailed):
            _discard(self.build)  # a new cluster that pg_upgrade never touched the old one for
            raise
        step = self.world.clock()
        try:
            self._pg_upgrade(old_bindir, new_bindir, new, old.install_user, check=False)
        except CommandFailed:
            self._roll_back_unfinished()
            raise
        self._phase("pg_upgrade_done", step, mode="link")
        # Before the record says upgraded: whenever the new cluster is the truth, its origin is known, and
        # the members still holding copies of the old cluster may clone it (agent/follow.py).
        write_atomic(self.config.state_dir / upgrade.PROVENANCE,
                     upgrade.provenance_text(origin, read_system_identifier(new)), mode=0o600, owner=self.owner)
        fsync_dir(self.config.state_dir)
        # Inside a mount point, the record lists what is the old cluster's, before anything moves.
        upgraded = replace(record, phase=UPGRADED, entries=tuple(data_entries(self.pgdata)) if self.inside else ())
        self._write_record(upgraded)
        swap(self.pgdata, self.build, upgraded)
        _discard(self.build)
        self._phase(
            "upgraded", started, from_major=from_major, to_major=to_major, old_data=record.aside,
            note="the old cluster is kept aside (its table files are the new cluster's, linked): delete it once the "
            "new major serves well; statistics are not carried: run vacuumdb --all --analyze-in-stages",
        )  # fmt: skip

    def _roll_back_unfinished(self) -> None:
        """An upgrade that stopped before pg_upgrade finished: give the old cluster its pg_control back
        (pg_upgrade's link step renamed it) and discard the new one, then start over."""
        _, decision = resume_state(self.pgdata)
        if decision is Resume.ROLL_BACK:
            roll_back(self.pgdata, self.build, self.log, self.world.clock)

    def _read_old(self, old_bindir: str) -> tuple[OldCluster, UpgradeOrigin]:
        """Run the old cluster on its own major on a private socket (which also finishes a crash
        recovery, so pg_upgrade finds it shut down cleanly), and read what the new one must match."""
        import psycopg

        started = self.world.clock()
        control = controldata(self.world.runner, self.pgdata)
        fields = dict(line.split(":", 1) for line in control.splitlines() if ":" in line)
        checksums = fields.get("Data page checksum version", "0").strip() != "0"
        segment_mb = int(fields.get("Bytes per WAL segment", str(16 << 20)).strip()) >> 20
        logfile = self.config.state_dir / "upgrade-old-server.log"
        path = os.environ.get("PATH", "")
        majors.use(old_bindir)
        try:
            with self.temporary_server(self.pgdata, logfile) as server:
                with psycopg.connect(**server.conninfo("template1"), autocommit=True) as conn:
                    row = conn.execute(OLD_CLUSTER_SQL["install_user"]).fetchone()
                    install_user = str(row[0]) if row else self.config.superuser
                    locale = conn.execute(_locale_sql(int(conn.info.server_version) // 10000)).fetchone()
                    assert locale is not None
                    names = [str(r[0]) for r in conn.execute(OLD_CLUSTER_SQL["databases"]).fetchall()]
                catalog, extensions = 0, []
                for name in names:
                    with psycopg.connect(**server.conninfo(name), autocommit=True) as conn:
                        row = conn.execute(OLD_CLUSTER_SQL["catalog_bytes"]).fetchone()
                        catalog += int(row[0]) if row else 0
                        extensions += [(name, str(r[0])) for r in conn.execute(OLD_CLUSTER_SQL["extensions"])]
                if self.config.archive is not None:
                    # The segment holding the last commits is completed, so it is archived below, before
                    # pg_upgrade: the old major's archive ends where its cluster did.
                    with psycopg.connect(**server.conninfo("template1"), autocommit=True) as conn:
                        conn.execute("SELECT pg_switch_wal()")
            # Shut down cleanly now, with no TCP since its last start: no member holds WAL past this end.
            after = controldata(self.world.runner, self.pgdata)
            end = walend.local_wal_end(self.world.runner, self.pgdata, after)
        finally:
            os.environ["PATH"] = path
        repository.push_ready(self.config, self.world.runner, self.pgdata, self.log, self.world.clock, self.world.beat)
        xact = sum(tree_size(self.pgdata / d) for d in ("pg_xact", "pg_multixact"))
        old = OldCluster(
            install_user=install_user, encoding=str(locale[0]), locale_provider=str(locale[1]), collate=str(locale[2]),
            ctype=str(locale[3]), icu_locale=None if locale[4] is None else str(locale[4]), checksums=checksums,
            wal_segment_mb=segment_mb, extensions=tuple(e for e in extensions if e[1] != "plpgsql"),
            catalog_bytes=catalog, xact_bytes=xact,
        )  # fmt: skip
        origin = UpgradeOrigin(read_system_identifier(self.pgdata) or 0, walend.layout(after).timeline, end)
        self._phase("upgrade_old_cluster_read", started, databases=len(names), catalog_mb=catalog >> 20,
                    origin=origin.setting())  # fmt: skip
        return old, origin

    def _write_record(self, record: UpgradeRecord) -> None:
        write_atomic(self.build / upgrade.RECORD, record.to_json(), mode=0o600, owner=self.owner)
        fsync_dir(self.build)

    def _build_new(self, record: UpgradeRecord, old: OldCluster, new_bindir: str) -> Path:
        """The build directory with its record, a new cluster initialised to match, the old one's
        configuration copied in and checked by the new postgres."""
        started = self.world.clock()
        self._mkdir_owned(self.build)
        self._write_record(record)
        new = self.build / "data"
        runner = self.world.runner
        # --no-sync: pg_upgrade syncs the whole new cluster when it is done.
        initdb = [f"{new_bindir}/initdb", "-D", str(new), "--no-sync", "--auth=trust",
                  *upgrade.initdb_args(old, record.to_major)]  # fmt: skip
        done = runner.run(initdb, env=child_env({"LC_MESSAGES": "C"}))
        if done.returncode != 0:
            raise CommandFailed(f"initdb of the new cluster failed: {_tail(done.stderr)}",
                                hint="read initdb's message; the old cluster is as it was")  # fmt: skip
        for name in CARRIED_FILES:
            source = self.pgdata / name
            if source.is_file():
                shutil.copy2(source, new / name)
                if self.owner is not None:
                    os.chown(new / name, *self.owner)
        # The new postgres reads every carried file: a setting it no longer knows stops here, not at its start.
        problem = config_problem(runner, new, f"{new_bindir}/postgres")
        if problem is not None:
            raise UpgradeRefused(
                f"PostgreSQL {record.to_major} rejects the old cluster's configuration: {problem}",
                hint=f"on the PostgreSQL {record.from_major} image, remove or change that setting (ALTER SYSTEM RESET, "
                "or postgresql.conf), then roll the new image again; the old cluster is as it was",
            )
        self._phase("upgrade_cluster_built", started, build=str(self.build))
        return new

    def _pg_upgrade(self, old_bindir: str, new_bindir: str, new: Path, user: str, *, check: bool) -> None:
        """pg_upgrade from PGDATA to `new`, both servers on a private socket with a trust-only hba file
        of their own (the clusters' pg_hba.conf may demand passwords), archiving and sync waits off."""
        hba = self.build / "pg_hba.trust"
        write_atomic(hba, TRUST_HBA, mode=0o600, owner=self.owner)
        options = f"-c hba_file={hba} -c synchronous_standby_names= -c archive_mode=off -c listen_addresses="
        argv = [
            f"{new_bindir}/pg_upgrade", "--old-bindir", old_bindir, "--new-bindir", new_bindir,
            "--old-datadir", str(self.pgdata), "--new-datadir", str(new), "--username", user,
            "--socketdir", str(self.build), "--old-options", options, "--new-options", options,
            "--link", *(["--check"] if check else []),
        ]  # fmt: skip
        done = self.world.runner.run(argv, env=child_env({"LC_MESSAGES": "C"}), cwd=str(self.build),
                                     on_tick=lambda _elapsed: self.world.beat())  # fmt: skip
        if done.returncode != 0:
            report = _tail(done.stdout + done.stderr, 700)
            if check:
                raise UpgradeRefused(f"pg_upgrade --check refused the upgrade: {report}",
                                     hint="read pg_upgrade's report; the old cluster is as it was")  # fmt: skip
            raise CommandFailed(f"pg_upgrade failed: {report}",
                                hint="the old cluster was put back as it was; the next start tries again. Read "
                                "pg_upgrade's report")  # fmt: skip


# template0's encoding and locales: the new cluster's initdb must match them (columns by major).
_LOCALE_SQL = (
    "SELECT pg_encoding_to_char(encoding), {}, datcollate, datctype, {} FROM pg_database WHERE datname = 'template0'"
)
LOCALE_SQL = {
    14: _LOCALE_SQL.format("'c'", "NULL"),
    15: _LOCALE_SQL.format("datlocprovider", "daticulocale"),
    17: _LOCALE_SQL.format("datlocprovider", "datlocale"),
}


def _locale_sql(major: int) -> str:
    return LOCALE_SQL[max(m for m in LOCALE_SQL if m <= major)] if major >= 14 else LOCALE_SQL[14]


def _extensions_of(bindir: str, runner: Any) -> frozenset[str]:
    """The extensions the new major can create: the control files in its share directory."""
    done = runner.run([f"{bindir}/pg_config", "--sharedir"], env=child_env())
    share = Path(done.stdout.decode().strip()) / "extension"
    try:
        return frozenset(n[: -len(".control")] for n in os.listdir(share) if n.endswith(".control"))
    except OSError:
        return frozenset()


def _free(pgdata: Path) -> int | None:
    try:
        st = os.statvfs(volume_dir(pgdata))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
