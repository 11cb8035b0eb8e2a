"""The primary's part of a start: the re-init guard, initdb and its setup, rotated passwords."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from agent import archive, builddir, initdbd, officiallog, repository, survey
from agent.buildarea import BuildArea
from agent.context import Part
from agent.designated import DesignatedFollow
from agent.errors import (
    PeerCheckIncomplete,
    PrimaryVolumeLost,
)
from agent.files import fix_tree_ownership, write_atomic
from agent.managed import ManagedFiles
from agent.postgres import (
    TempServer,
    child_env,
    initdb,
    single_user,
)
from agent.render import (
    scram_verifier,
    setup_sql,
)
from agent.secretsrecord import RECORD_NAME, REPLICATION, SUPERUSER, pending
from agent.switchover import PrimaryGuard, give_back
from agent.upgrader import Upgrader

# A long initdb.d script (a restore) says it still runs this often.
SCRIPT_PROGRESS_INTERVAL = 60.0


class Primary(Part):
    """Initialises a new cluster (after the guard's survey) or restarts the existing one."""

    def __init__(self, ctx: Any, files: ManagedFiles, build: BuildArea) -> None:
        super().__init__(ctx)
        self.files = files
        self.build = build

    def check_peers_for_data(self) -> None:
        """Refuse to initialise while another member may still hold the cluster: our volume was lost.

        Fails closed: a survey that could not see every member refuses too (retryable).
        """
        started = self.world.clock()
        cfg = self.config
        peers, unchecked = self._survey_members(cfg.peer_check_timeout, stop_early=cfg.allow_reinit is None)
        verdict = survey.judge(list(peers.members.values()), unchecked, peers.dns_problem, cfg.allow_reinit)
        members = [
            {"member": m.name, "state": m.state,
             "system_identifier": str(m.system_identifier) if m.system_identifier else None}
            for m in verdict.members if m.state != survey.ABSENT
        ]  # fmt: skip
        self._phase(
            "peer_check", started, decision=verdict.decision, complete=verdict.decision != survey.INCOMPLETE,
            members=members, unchecked=[n.rstrip(".") for n in verdict.unchecked] or None,
            dns_problem=verdict.dns_problem,
            overridden=str(verdict.overridden) if verdict.overridden else None,
        )  # fmt: skip
        if verdict.decision == survey.REFUSE_HOLDERS:
            holders = [h for h in members if h["state"] == survey.HOLDS_DATA]
            who = ", ".join(f"{h['member']} (cluster {h['system_identifier'] or 'unknown'})" for h in holders)
            raise PrimaryVolumeLost(
                f"PGDATA is empty on the primary ordinal, but {who} still hold(s) a cluster: this pod's "
                "volume was probably lost or replaced; initialising would start a new cluster that the "
                "replicas cannot follow",
                hint="restore the primary's volume, or carry on from a replica: `kubectl exec "
                "postgresql-sfs-N -- pg-sfs-agent promote --dry-run` shows which is the most advanced, `promote` "
                "makes it the primary, then set the primary ordinal to N (README, 'Lost primary volume'); "
                "to give that cluster up and start a new, empty one, set PGSFS_ALLOW_REINIT to its system "
                "identifier (the replicas will then refuse to follow and must be cloned again)",
                holders=holders,
            )
        if verdict.decision == survey.INCOMPLETE:
            silent = [m.name for m in verdict.silent]
            why = verdict.dns_problem or (
                f"{', '.join(silent)} exist(s) but did not say what they hold" if silent
                else f"{len(verdict.unchecked)} member name(s) were not checked in time"
            )
            raise PeerCheckIncomplete(
                f"PGDATA is empty on the primary ordinal and the survey of the other members was incomplete "
                f"({why}): initialising now could start a new cluster beside one a member still holds",
                hint="the next start surveys again (the pod restarts); if it persists, check cluster DNS and the "
                "other pods (kubectl get pods; their logs); raise PGSFS_PEER_CHECK_TIMEOUT for slow starts",
                silent=silent or None,
                unchecked=[n.rstrip(".") for n in verdict.unchecked] or None,
                dns_problem=verdict.dns_problem,
            )
        if verdict.overridden:
            self.log.warning(
                "reinit_allowed",
                system_identifier=str(verdict.overridden),
                note="PGSFS_ALLOW_REINIT named this cluster: it is given up and a new one is initialised; "
                "remove the variable (it matches no other cluster)",
            )

    def init(self) -> None:
        """initdb, configure, role, database and initdb.d scripts, all beside PGDATA.

        initdb runs while the members are surveyed: it builds only in the work directory, which is
        discarded if the survey refuses, so PGDATA is untouched either way and the start is shorter.
        """
        cfg = self.config
        if "restore_backup" in self.plan.steps:
            self.restore()
            return
        if cfg.archive is not None:
            self.files.write_archive_config()
            repository.check_before_init(cfg, self.world.runner, self.log, self.world.clock)
        self.world.beat("initdb")
        datadir = self.build.start("init")
        started = self.world.clock()
        with ThreadPoolExecutor(max_workers=1) as pool:
            building = pool.submit(self._initdb, datadir)
            try:
                if not cfg.standalone:  # on its own there are no members to ask
                    self.check_peers_for_data()
            except BaseException:
                self.world.runner.stop_all(grace=1.0)  # only initdb runs now
                pool.shutdown(wait=True)
                builddir.discard(self.work)
                raise
            building.result()
        self._phase("initdb", started, checksums=True)
        self.files.write_config(datadir, standby=False)
        started = self.world.clock()
        if "run_initdb_scripts" in self.plan.steps:
            server_log = datadir.parent / "temporary-server.log"
            try:
                with self._temporary_server(datadir, server_log) as server:
                    self.world.beat("initdb_setup")
                    self._setup_roles(server, create=True)
                    self._run_initdb_scripts(server)
            finally:
                officiallog.echo_server_log(server_log)
            how = "temporary_server"
        else:
            # Nothing needs a server: roles and database in single-user mode, never reachable.
            self.world.beat("initdb_setup")
            single_user(self.world.runner, datadir, self._setup_statements(), server_args=self.config.server_args)
            officiallog.say(officiallog.SINGLE_USER_READY)
            how = "single_user"
        # initdb and single-user mode wrote without fsync: make the whole build durable before it
        # becomes PGDATA (one syncfs of the volume, and of the WAL directory's if it is elsewhere).
        synced = self.build.make_durable(datadir)
        self._record_applied_secrets()
        self._phase("initdb_setup", started, database=cfg.database, replication_user=cfg.replication_user, via=how,
                    synced_s=synced)  # fmt: skip
        self.build.move_into_place(datadir)
        repository.ensure_stanza(cfg, self.world.runner, self.log, self.world.clock)
        officiallog.say("", officiallog.INIT_COMPLETE, "")

    def restore(self) -> None:
        """PGSFS_RESTORE_FROM's newest backup instead of initdb, beside PGDATA, recorded, then moved into
        place; postgres replays the archive to the target and promotes (archive.recovery_settings)."""
        cfg = self.config
        settings = cfg.archive
        assert settings is not None and settings.restore_from is not None
        self.files.write_archive_config()
        if not cfg.standalone:
            self.check_peers_for_data()
        runner = self.world.runner
        found = repository.check_restorable(cfg, runner)
        if settings.stanza != settings.restore_from:
            repository.check_archive_destination(cfg, runner, found)
        self.world.beat("restore")
        datadir = self.build.start("restore")
        started = self.world.clock()
        repository.restore(cfg, runner, datadir, on_tick=lambda _elapsed: self.world.beat())
        label = str((found.latest or {}).get("label") or "") or None
        write_atomic(cfg.state_dir / archive.RESTORE_RECORD,
                     archive.restore_record(settings.restore_from, settings.restore_target, label),
                     mode=0o600, owner=self.owner)  # fmt: skip
        synced = self.build.make_durable(datadir)
        self._phase("restore", started, stanza=settings.restore_from, backup=label,
                    target=str(settings.restore_target), synced_s=synced)  # fmt: skip
        self.build.move_into_place(datadir)
        repository.ensure_stanza(cfg, runner, self.log, self.world.clock)
        self.files.write_config(self.pgdata, standby=False)

    def _initdb(self, datadir: Path) -> None:
        pwfile = self.work / "superuser.pw"
        # A throwaway: initdb reads one line, and the real password (which may hold a line break, as
        # the official image allows) is set as a SCRAM verifier right after.
        write_atomic(pwfile, secrets.token_urlsafe(32), mode=0o600, owner=self.owner)
        try:
            initdb(self.world.runner, datadir, superuser=self.config.superuser, pwfile=pwfile,
                   args=self.config.initdb_args, host_auth=self.config.host_auth_method)  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def _setup_statements(self, *, create: bool = True, replication_exists: bool = False,
                          roles: tuple[str, ...] = (SUPERUSER, REPLICATION)) -> list[str]:  # fmt: skip
        cfg = self.config
        repl = cfg.replication_password.reveal() if REPLICATION in roles else ""  # set, except standalone
        su = cfg.superuser_password.reveal() if SUPERUSER in roles else ""  # empty only with trust
        return setup_sql(
            superuser=cfg.superuser,
            superuser_verifier=scram_verifier(su) if su else None,
            replication_user=cfg.replication_user if repl else None,
            replication_verifier=scram_verifier(repl) if repl else None,
            database=cfg.database if create else None,
            replication_exists=replication_exists,
        )

    @contextlib.contextmanager
    def _temporary_server(self, datadir: Path, logfile: Path) -> Iterator[TempServer]:
        """A postgres reachable only through a private socket; stopped cleanly, or killed on error."""
        # Private (0700) and on the volume: /tmp may be read-only (readOnlyRootFilesystem) or shared.
        sockdir = Path(tempfile.mkdtemp(prefix="sock-", dir=self.config.state_dir))
        if self.owner is not None:
            os.chown(sockdir, *self.owner)
        server = TempServer(self.world.runner, datadir, sockdir, self.config.port, self.config.superuser,
                            self.config.server_args)  # fmt: skip
        server.logfile = logfile
        try:
            server.start(
                on_poll=self.world.beat,
                on_progress=lambda elapsed, last: self.log.info(
                    "temporary_server_wait", elapsed_s=elapsed, last_log=last,
                    note="still starting (crash recovery can take long); the startup probe stays green",
                ),
            )
            yield server
            server.stop()
        finally:
            if server.proc is not None:
                self.world.runner.stop(server.proc, grace=1.0)
            shutil.rmtree(sockdir, ignore_errors=True)

    def _setup_roles(
        self, server: TempServer, *, create: bool, roles: tuple[str, ...] = (SUPERUSER, REPLICATION)
    ) -> None:
        """Replication role and passwords as SCRAM verifiers, so no plain password is ever sent; the
        database too when `create` (a new cluster); only the passwords of `roles`. Rotation finds the
        replication role may exist."""
        import psycopg

        with psycopg.connect(**server.conninfo("postgres", self.config.superuser), autocommit=True) as conn:
            exists = not create and conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (self.config.replication_user,)
            ).fetchone() is not None
            statements = self._setup_statements(create=create, replication_exists=exists, roles=roles)
            for statement in statements:
                conn.execute(statement)

    def _run_initdb_scripts(self, server: TempServer) -> None:
        """The initdb.d directory, as the official entrypoint runs it (see agent/initdbd.py)."""
        cfg = self.config
        names = initdbd.scripts(cfg.initdb_dir)
        if not names:
            return
        password = cfg.superuser_password.reveal()
        # What the official entrypoint exports for its scripts: resolved names (defaults and *_FILE
        # applied), the password, and PGDATA (here the cluster being built, moved into place after).
        env = child_env(
            {
                "PGHOST": str(server.sockdir),
                "PGPORT": str(cfg.port),
                "PGUSER": cfg.superuser,
                # The official image leaves PGDATABASE unset: a plain psql goes to the user's database.
                "PGSFS_TEMP_SERVER_OPTIONS": shlex.join(server.options()),
                "PGDATA": str(server.datadir),
                "POSTGRES_USER": cfg.superuser,
                "POSTGRES_DB": cfg.database,
                "POSTGRES_PASSWORD": password,
                "PGPASSWORD": password,
            },
            keep_secrets=True,
        )
        # PGHOSTADDR from the pod would send psql over TCP, past the private socket (the official clears it).
        for name in ("PGSFS_REPLICATION_PASSWORD", "PGSFS_REPLICATION_PASSWORD_FILE", "PGHOSTADDR", "PGDATABASE"):
            env.pop(name, None)
        started = self.world.clock()
        self.world.beat("initdb_scripts")
        progress = server.sockdir / "initdb-progress"
        ran = initdbd.run(self.world.runner, cfg.initdb_dir, env, progress, on_tick=self._script_ticker())
        for name, seconds in ran:
            self.log.info("initdb_script", script=name, duration_s=seconds)
        self._phase("initdb_scripts", started, directory=str(cfg.initdb_dir), files=names)

    def _script_ticker(self) -> Callable[[float, str], None]:
        """Beats while the scripts run (a restore may take hours), and a progress line every minute."""
        reported = [0.0]

        def tick(elapsed: float, current: str) -> None:
            self.world.beat("initdb_scripts")
            if elapsed - reported[0] >= SCRIPT_PROGRESS_INTERVAL:
                reported[0] = elapsed
                self.log.info("initdb_scripts_running", script=current, elapsed_s=round(elapsed))

        return tick

    def _record_applied_secrets(self) -> None:
        record = {
            "superuser": scram_verifier(self.config.superuser_password.reveal()),
            "replication": scram_verifier(self.config.replication_password.reveal()),
        }
        write_atomic(self.config.state_dir / RECORD_NAME, json.dumps(record), mode=0o600, owner=self.owner)

    def apply_passwords(self) -> None:
        """The Secret changed since it was last applied: set what changed before serving. With no
        record (data from another image, a lost state dir): only the replication role's, then record."""
        started = self.world.clock()
        change = pending(self.config)
        if self.owner is not None:
            fix_tree_ownership(self.pgdata, *self.owner)
        with self._temporary_server(self.pgdata, self.config.state_dir / "temporary-server.log") as server:
            self._setup_roles(server, create=False, roles=change.roles)
        self._record_applied_secrets()
        names = {SUPERUSER: self.config.superuser, REPLICATION: self.config.replication_user}
        users = [names[role] for role in change.roles]
        if change.adopt:
            self._phase("passwords_adopted", started, users=users, record=str(self.config.state_dir / RECORD_NAME),
                        note="no record of what was applied (data from another image, or a lost state directory): "
                        "the superuser's password is left as the cluster has it; a change of the Secret from now "
                        "on is applied at the next start")  # fmt: skip
        else:
            self._phase("passwords_applied", started, users=users)

    def restart(self) -> None:
        """Existing PGDATA: refresh the managed files; apply rotated passwords if the plan says so."""
        if "follow_writable" in self.plan.steps:
            self.follow_until_promoted()
            return
        officiallog.say("", officiallog.SKIPPING, "")
        give_back(self.pgdata, self.log)  # a handoff killed half-way, the ordinal moved back since
        if "check_no_other_primary" in self.plan.steps:
            PrimaryGuard(self.ctx).check()
        if "upgrade_major" in self.plan.steps:
            self.files.write_archive_config()  # the old cluster's last WAL is pushed before pg_upgrade
            Upgrader(self.ctx, self._temporary_server).run()
        self.files.write_config(self.pgdata, standby=False)
        repository.ensure_stanza(self.config, self.world.runner, self.log, self.world.clock)
        repository.report_backlog(self.config, self.pgdata, self.log, time.time())
        if "apply_passwords" in self.plan.steps or "adopt_passwords" in self.plan.steps:
            self.apply_passwords()

    def follow_until_promoted(self) -> None:
        """PGDATA is still a standby (a switchover's successor): follow the writable member once its
        history is checked, never promote."""
        DesignatedFollow(self.ctx, self.files).run()
