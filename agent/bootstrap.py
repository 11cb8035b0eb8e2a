"""Carrying out the plan: the effects at the edge (DNS, the primary, initdb, clone, files, exec)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from agent import announce, builddir, discovery, history, replication, survey, walbudget
from agent.config import Config
from agent.errors import (
    AgentError,
    CommandFailed,
    NoRoomToMoveAside,
    PeerCheckIncomplete,
    PrimaryVolumeLost,
    ReplicaDiverged,
    SystemIdentifierMismatch,
)
from agent.files import fix_tree_ownership, fsync_dir, tree_size, write_atomic
from agent.heartbeat import Heartbeat
from agent.pgdata import DataDirState, inspect, work_dir_for
from agent.plan import (
    CLONE,
    INIT,
    PASSFILE_NAME,
    REFUSE,
    SECRETS_STATE_NAME,
    START,
    Plan,
    make_plan,
)
from agent.postgres import (
    TempServer,
    basebackup,
    child_env,
    controldata,
    initdb,
    initdb_scripts,
    run_initdb_script,
    server_major,
)
from agent.privileges import NSS_VARIABLES, account_groups, drop_to, postgres_account
from agent.render import (
    CONF_NAME,
    passfile_line,
    primary_conninfo,
    scram_verifier,
    settings_file,
    verifier_matches,
    with_hba_block,
    with_include,
)
from agent.runner import RunAs, Runner
from agent.waits import Clock, Sleep

# A long initdb.d script (a restore) says it still runs this often.
SCRIPT_PROGRESS_INTERVAL = 60.0

__all__ = ["Bootstrap", "World", "exec_postgres", "observe_and_plan", "postgres_account"]


@dataclass
class World:
    """The effects bootstrap needs, injectable for tests: programs, DNS, the primary, time."""

    runner: Runner
    lookup: discovery.Lookup
    identify: Callable[[replication.Endpoint, float], replication.Attempt] = replication.try_identify
    ensure_slot: Callable[[replication.Endpoint, str], bool] = replication.ensure_slot
    slot_status: Callable[[replication.Endpoint, str], str | None] = replication.slot_status
    timeline_history: Callable[[replication.Endpoint, int], str] = replication.timeline_history
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep
    heartbeat: Heartbeat | None = None
    announcer: Callable[[int, str], announce.Announcer] = announce.Announcer

    def beat(self, phase: str | None = None) -> None:
        """Tell the startup probe we are alive."""
        if self.heartbeat is not None:
            self.heartbeat.beat(phase)


def secrets_applied(config: Config) -> bool | None:
    """Whether the primary already holds the current passwords (per the agent's own record)."""
    try:
        record = json.loads((config.state_dir / SECRETS_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    return verifier_matches(str(record.get("superuser", "")), config.superuser_password.reveal()) and (
        verifier_matches(str(record.get("replication", "")), config.replication_password.reveal())
    )


def observe_and_plan(
    config: Config, runner: Runner, major: int | None = None, args: tuple[str, ...] = ()
) -> tuple[Plan, DataDirState]:
    """Read the local world (PGDATA, the server version, applied secrets, pg_wal's volume) and decide.

    `major`: the server's major version when already known (it is asked of `postgres -V` otherwise);
    `args`: postgres' own arguments, whose settings win over the agent's.
    """
    state = inspect(config.pgdata)
    applied = secrets_applied(config) if state.initialised and config.identity.role == "primary" else None
    major = major if major is not None else server_major(runner)
    wal = walbudget.observe(config.pgdata, config.initdb_args, args)
    plan = make_plan(
        config, state, server_major=major, secrets_applied=applied, euid=os.geteuid(), wal_observed=wal
    )
    return plan, state


class Bootstrap:
    """Carries out one plan, logging one line per phase with its duration."""

    def __init__(self, config: Config, plan: Plan, world: World, log: Any) -> None:
        self.config = config
        self.plan = plan
        self.world = world
        self.log = log
        self.account = world.runner.run_as
        self.owner = (self.account.uid, self.account.gid) if self.account else None
        self.pgdata = config.pgdata
        self.work = work_dir_for(config.pgdata)
        self.announcer: announce.Announcer | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _phase(self, name: str, started: float, **fields: Any) -> None:
        self.log.info(name, duration_s=round(self.world.clock() - started, 3), **fields)

    def _endpoint(self, host: str, hostaddr: str | None) -> replication.Endpoint:
        return replication.Endpoint(
            host=host.rstrip("."),
            hostaddr=hostaddr,
            port=self.config.port,
            user=self.config.replication_user,
            password=self.config.replication_password.reveal(),
            application_name=f"{self.config.identity.pod_name}-agent",
        )

    def _mkdir_owned(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)
        if self.owner is not None:
            os.chown(path, *self.owner)

    # -- the steps ---------------------------------------------------------------------------
    def run(self) -> None:
        """Everything up to (not including) exec of postgres."""
        if self.plan.action == REFUSE:
            assert self.plan.refusal is not None
            raise self.plan.refusal.to_error()
        self._mkdir_owned(self.config.state_dir)
        self.world.beat(self.plan.action)
        with self._announcing():
            if self.plan.remove_leftover:
                self.remove_leftover(Path(self.plan.remove_leftover))
            if self.plan.action == INIT:
                self.init_primary()
            elif self.plan.action == CLONE:
                self.clone_replica()
            elif self.plan.action == START:
                self.restart()
            self.fix_ownership()

    @contextlib.contextmanager
    def _announcing(self) -> Iterator[None]:
        """A replica says on postgres' port what it holds until postgres starts (see agent/announce.py)."""
        if self.config.identity.role == "primary":
            yield
            return
        local = inspect(self.pgdata).system_identifier
        message = (
            announce.holds_message(local, "checking the primary before starting")
            if local is not None
            else announce.empty_message("waiting to clone the primary")
        )
        self.announcer = self.world.announcer(self.config.port, message)
        problem = self.announcer.start()
        if problem is not None:
            self.log.warning("announce_failed", port=self.config.port, detail=problem,
                             note="a primary initialising now cannot see what this member holds")  # fmt: skip
        try:
            yield
        finally:
            self.announcer.close()

    def remove_leftover(self, path: Path) -> None:
        """Remove an unfinished init or clone that is provably ours (never used, never started)."""
        started = self.world.clock()
        size = builddir.discard(path)
        self._phase("leftover_removed", started, path=str(path), size_mb=round(size / 1048576, 1))

    def _start_work(self, kind: str) -> Path:
        marker = {
            "kind": kind,
            "pgdata": str(self.pgdata),
            "pod": self.config.identity.pod_name,
            "pid": os.getpid(),
            "started": time.time(),
        }
        return builddir.create(self.pgdata, marker, self.owner) / "data"

    def _move_into_place(self, built: Path) -> None:
        started = self.world.clock()
        # rename(2) atomically replaces a missing or empty PGDATA; then make the rename durable.
        os.rename(built, self.pgdata)
        fsync_dir(self.pgdata.parent)
        builddir.discard(self.work)
        self._phase("moved_into_place", started, pgdata=str(self.pgdata))

    # -- primary ----------------------------------------------------------------------------
    def check_peers_for_data(self) -> None:
        """Refuse to initialise while another member may still hold the cluster: our volume was lost.

        Fails closed: a survey that could not see every member refuses too (retryable).
        """
        started = self.world.clock()
        cfg = self.config
        srv, _, outcome = discovery.service_srv(self.world.lookup, cfg.srv_fqdn, cfg.service_fqdn)
        peers = survey.Survey(
            lookup=self.world.lookup,
            identify=lambda name, address, budget: self.world.identify(self._endpoint(name, address), budget),
            clock=self.world.clock,
            sleep=self.world.sleep,
            own_name=cfg.pod_fqdn(cfg.identity.pod_name).lower(),
            pod_fqdn=lambda n: cfg.pod_fqdn(cfg.identity.peer_pod(n)),
        )
        if outcome == discovery.DNS_UNREACHABLE:
            peers.dns_problem = "no nameserver answered the Service's SRV query"
            unchecked: list[str] = []
        else:
            targets = [r.target if r.target.endswith(".") else r.target + "." for r in srv]
            unchecked = peers.run(
                targets, cfg.peer_check_timeout, stop_early=cfg.allow_reinit is None, on_poll=self.world.beat
            )
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
                hint="recover by restoring the primary's volume, or promote the replica that replayed the most "
                "(SELECT pg_promote()) and pg_basebackup it into this pod's PGDATA (see README, Limitations); "
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

    def init_primary(self) -> None:
        """initdb, configure, role, database and initdb.d scripts, all beside PGDATA."""
        cfg = self.config
        self.check_peers_for_data()
        self.world.beat("initdb")
        datadir = self._start_work("init")
        started = self.world.clock()
        pwfile = self.work / "superuser.pw"
        write_atomic(pwfile, cfg.superuser_password.reveal(), mode=0o600, owner=self.owner)
        try:
            initdb(self.world.runner, datadir, superuser=cfg.superuser, pwfile=pwfile, args=cfg.initdb_args)
        finally:
            pwfile.unlink(missing_ok=True)
        self._phase("initdb", started, checksums=True)
        self.write_config(datadir, standby=False)
        started = self.world.clock()
        with self._temporary_server(datadir, datadir.parent / "temporary-server.log") as server:
            self.world.beat("initdb_setup")
            self._setup_roles(server, create=True)
            self._run_initdb_scripts(server)
        self._record_applied_secrets()
        self._phase("initdb_setup", started, database=cfg.database, replication_user=cfg.replication_user)
        self._move_into_place(datadir)

    @contextlib.contextmanager
    def _temporary_server(self, datadir: Path, logfile: Path) -> Iterator[TempServer]:
        """A postgres reachable only through a private socket; stopped cleanly, or killed on error."""
        # Private (0700) and on the volume: /tmp may be read-only (readOnlyRootFilesystem) or shared.
        sockdir = Path(tempfile.mkdtemp(prefix="sock-", dir=self.config.state_dir))
        if self.owner is not None:
            os.chown(sockdir, *self.owner)
        server = TempServer(self.world.runner, datadir, sockdir, self.config.port, self.config.superuser)
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

    def _setup_roles(self, server: TempServer, *, create: bool) -> None:
        """Replication role and passwords as SCRAM verifiers, so no plain password is ever sent."""
        import psycopg
        from psycopg import sql

        cfg = self.config
        with psycopg.connect(**server.conninfo("postgres", cfg.superuser), autocommit=True) as conn:
            repl = sql.Identifier(cfg.replication_user)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (cfg.replication_user,)).fetchone()
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} WITH REPLICATION LOGIN PASSWORD {}").format(
                    verb, repl, sql.Literal(scram_verifier(cfg.replication_password.reveal()))
                )
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(cfg.superuser),
                    sql.Literal(scram_verifier(cfg.superuser_password.reveal())),
                )
            )
            if create and cfg.database != "postgres":
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cfg.database)))

    def _run_initdb_scripts(self, server: TempServer) -> None:
        cfg = self.config
        scripts = initdb_scripts(cfg.initdb_dir)
        env = child_env(
            {
                "PGHOST": str(server.sockdir),
                "PGPORT": str(cfg.port),
                "PGUSER": cfg.superuser,
                "PGDATABASE": cfg.database,
                "PGDATA": str(server.datadir),
            },
            keep_secrets=True,
        )
        env.pop("PGSFS_REPLICATION_PASSWORD", None)
        for script in scripts:
            started = self.world.clock()
            self.world.beat("initdb_scripts")
            run_initdb_script(self.world.runner, script, env, on_tick=self._script_ticker(script.name))
            self._phase("initdb_script", started, script=script.name)

    def _script_ticker(self, name: str) -> Callable[[float], None]:
        """Beats while a script runs (a restore may take hours), and a progress line every minute."""
        reported = [0.0]

        def tick(elapsed: float) -> None:
            self.world.beat("initdb_scripts")
            if elapsed - reported[0] >= SCRIPT_PROGRESS_INTERVAL:
                reported[0] = elapsed
                self.log.info("initdb_script_running", script=name, elapsed_s=round(elapsed))

        return tick

    def _record_applied_secrets(self) -> None:
        record = {
            "superuser": scram_verifier(self.config.superuser_password.reveal()),
            "replication": scram_verifier(self.config.replication_password.reveal()),
        }
        write_atomic(self.config.state_dir / SECRETS_STATE_NAME, json.dumps(record), mode=0o600, owner=self.owner)

    def apply_passwords(self) -> None:
        """The Secret changed since the last start: set the new passwords before serving."""
        started = self.world.clock()
        if self.owner is not None:
            fix_tree_ownership(self.pgdata, *self.owner)
        with self._temporary_server(self.pgdata, self.config.state_dir / "temporary-server.log") as server:
            self._setup_roles(server, create=False)
        self._record_applied_secrets()
        self._phase("passwords_applied", started, users=[self.config.superuser, self.config.replication_user])

    # -- replica ----------------------------------------------------------------------------
    def _resolve_primary(self, timeout: float) -> str:
        """The primary's address from its per-pod A record, waiting up to `timeout`."""
        waited = discovery.wait_for_record(
            self.world.lookup,
            self.config.primary_fqdn,
            timeout=timeout,
            log=self.log,
            clock=self.world.clock,
            sleep=self.world.sleep,
            on_poll=self.world.beat,
        )
        assert waited.answer is not None
        return waited.answer.records[0]

    def wait_for_primary_record(self) -> str:
        """Wait for the primary's per-pod A record, then cross-check the Service's SRV records."""
        cfg = self.config
        self.world.beat("dns_wait")
        address = self._resolve_primary(cfg.wait_timeout)
        srv, srv_name, _ = discovery.service_srv(self.world.lookup, cfg.srv_fqdn, cfg.service_fqdn)
        primary_target = cfg.primary_fqdn.lower()
        listed = [r for r in srv if (r.target if r.target.endswith(".") else r.target + ".") == primary_target]
        self.log.info(
            "srv_check",
            srv_name=srv_name.rstrip(".") or None,
            members=len(srv),
            primary_listed=bool(listed),
            srv_port=listed[0].port if listed else None,
        )
        if listed and listed[0].port != cfg.port:
            self.log.warning(
                "srv_port_mismatch",
                srv_port=listed[0].port,
                pgport=cfg.port,
                hint="PGPORT differs from the Service's named port; using PGPORT",
            )
        return address

    def wait_for_primary(self, address: str, timeout: float | None = None) -> replication.SystemInfo:
        """Wait until the primary answers IDENTIFY_SYSTEM as a primary (not in recovery)."""
        cfg = self.config
        self.world.beat("primary_wait")
        endpoint = self._endpoint(cfg.primary_fqdn, address)
        info = replication.wait_for_primary(
            lambda: self.world.identify(endpoint, 3.0),
            timeout=timeout if timeout is not None else cfg.wait_timeout,
            auth_attempts=cfg.auth_attempts,
            user=cfg.replication_user,
            target=cfg.primary_fqdn.rstrip("."),
            log=self.log,
            clock=self.world.clock,
            sleep=self.world.sleep,
            on_poll=self.world.beat,
        )
        return info

    def ensure_slot(self, address: str) -> None:
        """The replica's own physical slot on the primary, so the primary keeps its WAL."""
        import psycopg

        started = self.world.clock()
        slot = self.config.identity.slot_name
        try:
            created = self.world.ensure_slot(self._endpoint(self.config.primary_fqdn, address), slot)
        except psycopg.Error as exc:
            raise CommandFailed(
                f"could not prepare replication slot {slot} on the primary: {' '.join(str(exc).split())}",
                hint="the slot is still held by another connection or the primary refused; the next start "
                "tries again; see the primary's log",
                slot=slot,
            ) from exc
        self._phase("slot_ready", started, slot=slot, created=created)

    def write_passfile(self) -> Path:
        """The 0600 passfile primary_conninfo and pg_basebackup read: never the password inline."""
        path = self.config.state_dir / PASSFILE_NAME
        write_atomic(
            path,
            passfile_line(self.config.replication_user, self.config.replication_password.reveal()),
            mode=0o600,
            owner=self.owner,
        )
        return path

    def clone_replica(self) -> None:
        """Wait for the primary, make sure our slot exists, clone beside PGDATA, configure, move."""
        cfg = self.config
        # psycopg takes ~80 ms to import: pay it before the wait, not after the record appears.
        import psycopg  # noqa: F401

        address = self.wait_for_primary_record()
        self.wait_for_primary(address)
        self.ensure_slot(address)
        passfile = self.write_passfile()
        datadir = self._start_work("clone")
        self.world.beat("clone")
        started = self.world.clock()
        self.log.info(
            "clone_started",
            primary=cfg.primary_fqdn.rstrip("."),
            slot=cfg.identity.slot_name,
            max_rate=cfg.clone_max_rate,
        )
        try:
            result = basebackup(
                self.world.runner,
                target=datadir,
                host=cfg.primary_fqdn.rstrip("."),
                hostaddr=address,
                port=cfg.port,
                user=cfg.replication_user,
                passfile=passfile,
                slot=cfg.identity.slot_name,
                application_name=f"{cfg.identity.pod_name}-clone",
                max_rate=cfg.clone_max_rate,
                on_progress=lambda fields: self.log.info("clone_progress", **fields),
                on_tick=self.world.beat,
                clock=self.world.clock,
                stall_timeout=cfg.clone_stall_timeout,
            )
        except CommandFailed as exc:
            raise self._clone_failed(exc) from exc
        self._phase("clone", started, **{k: v for k, v in result.items() if k != "elapsed_s"})
        self.write_config(datadir, standby=True)
        self._move_into_place(datadir)
        cloned = inspect(self.pgdata).system_identifier
        if self.announcer is not None and cloned is not None:
            self.announcer.say(announce.holds_message(cloned, "clone done, starting"))

    def _clone_failed(self, exc: CommandFailed) -> CommandFailed:
        """Discard the partial clone now (it is ours and never usable) and explain a full volume."""
        free_mb = None
        try:
            st = os.statvfs(self.work.parent)
            free_mb = round(st.f_bavail * st.f_frsize / 1048576, 1)
        except OSError:
            pass
        if self.work.exists():
            self.remove_leftover(self.work)
        if "no space left" in exc.message.lower():
            return CommandFailed(
                f"the volume holding PGDATA is full: {exc.message}",
                hint="the clone needs at least the primary's size plus the WAL written meanwhile; grow the "
                "PersistentVolumeClaim (or free space on it), then restart the pod; PGDATA was not touched",
                free_mb_after_cleanup=free_mb,
                **exc.fields,
            )
        exc.fields["free_mb_after_cleanup"] = free_mb
        return exc

    def restart(self) -> None:
        """Existing PGDATA: refresh managed files; a replica checks the primary briefly."""
        if self.config.identity.role == "primary":
            self.write_config(self.pgdata, standby=False)
            if "apply_passwords" in self.plan.steps:
                self.apply_passwords()
            return
        # Check first: data of another cluster must be left exactly as it was.
        if self.check_primary():
            return
        self.write_config(self.pgdata, standby=True)

    def check_primary(self) -> bool:
        """A bounded look at the primary: refuse on a different cluster, go on when it is away.

        Returns True when the replica had to clone again (its slot was invalidated).
        """
        cfg = self.config
        started = self.world.clock()
        budget = cfg.restart_check_timeout
        local = inspect(self.pgdata).system_identifier
        try:
            address = self._resolve_primary(budget / 2)
            remaining = max(1.0, budget - (self.world.clock() - started))
            info = self.wait_for_primary(address, timeout=remaining)
        except AgentError as exc:
            self._phase(
                "primary_check_skipped",
                started,
                reason=exc.event,
                detail=exc.message,
                note="starting as a standby anyway: postgres reconnects by itself",
            )
            return False
        if local is not None and info.system_identifier != local:
            raise SystemIdentifierMismatch(
                f"this replica's data belongs to cluster {local} but the primary "
                f"{cfg.primary_fqdn.rstrip('.')} runs cluster {info.system_identifier}: the primary was "
                "re-initialised; the data here was left untouched",
                hint="if the primary's new cluster is the right one, move this pod's PGDATA aside (or delete "
                "its PersistentVolumeClaim) so it clones again; otherwise restore the primary",
                local_system_identifier=str(local),
                primary_system_identifier=str(info.system_identifier),
            )
        endpoint = self._endpoint(cfg.primary_fqdn, address)
        verdict = self.compare_histories(endpoint, info)
        if not verdict.may_follow:
            self._phase("primary_check", started, system_identifier=str(info.system_identifier),
                        history=verdict.outcome)  # fmt: skip
            self.diverged(verdict)
            return True
        try:
            status = self.world.slot_status(endpoint, cfg.identity.slot_name)
        except Exception as exc:  # a slot problem must not block a restart
            self.log.warning("slot_check_failed", detail=str(exc))
            status = "unknown"
        self._phase("primary_check", started, system_identifier=str(info.system_identifier),
                    history=verdict.outcome, timeline=verdict.local_timeline, slot_status=status)  # fmt: skip
        if status == "lost":
            self.reclone_after_lost_slot()
            return True
        if status is None:
            self.ensure_slot(address)
        return False

    def compare_histories(self, endpoint: replication.Endpoint, info: replication.SystemInfo) -> history.Verdict:
        """Where this replica's data ends (pg_control) against the primary's timeline history."""
        local = history.parse_controldata(controldata(self.world.runner, self.pgdata))
        text = ""
        if local.timeline < info.timeline:
            import psycopg

            try:
                text = self.world.timeline_history(endpoint, info.timeline)
            except psycopg.Error as exc:
                raise CommandFailed(
                    f"could not read the primary's timeline history {info.timeline}: {' '.join(str(exc).split())}",
                    hint="the next start tries again; the data here was left untouched",
                ) from exc
        return history.compare(local, info.timeline, history.parse_lsn(info.xlogpos), history.parse_history(text))

    def diverged(self, verdict: history.Verdict) -> None:
        """Not on the primary's history: refuse with the data untouched, or clone again if allowed."""
        where = {
            history.AHEAD_OF_PRIMARY: "it has replayed WAL the primary has not written: the primary's data is "
            "older than this replica's (a restored or copied volume started without promotion)",
            history.FORKED: "it went on past the point where the primary's history left its timeline",
            history.NEWER_TIMELINE: "it is on a newer timeline than the primary",
            history.NOT_IN_HISTORY: "its timeline is not in the primary's history",
        }[verdict.outcome]
        fields = asdict(verdict)
        if self.config.on_divergence != "reclone":
            raise ReplicaDiverged(
                f"this replica's data is not on the primary's history: {where} (replica timeline "
                f"{verdict.local_timeline} at {verdict.local_lsn}, primary timeline {verdict.primary_timeline} "
                f"at {verdict.primary_lsn}); streaming would silently mix the two. The data here was left untouched",
                hint="find out which copy holds the writes you need. If it is the primary's, set "
                "PGSFS_ON_DIVERGENCE=reclone on this pod (its data is moved aside, never deleted, and it clones "
                "again) or delete its PVC; if it is this replica's, make it the primary instead",
                **fields,
            )
        self.move_aside_and_clone(
            "diverged",
            "replica_diverged_recloning",
            f"this replica's data is not on the primary's history ({where})",
            outcome=verdict.outcome,
        )

    def reclone_after_lost_slot(self) -> None:
        """The primary removed WAL this replica needs: move its data aside and clone again."""
        self.move_aside_and_clone(
            "slot-invalidated",
            "slot_invalidated",
            f"slot {self.config.identity.slot_name} was invalidated (the primary removed WAL this replica still "
            "needed, max_slot_wal_keep_size)",
            slot=self.config.identity.slot_name,
        )

    def move_aside_and_clone(self, suffix: str, event: str, why: str, **fields: Any) -> None:
        """Rename PGDATA to `$PGDATA.<suffix>-<time>` and clone again, only if a new copy fits beside it.

        The data is never deleted; a crash at any point leaves either the old data in place (this
        runs again) or an empty PGDATA (a clone); the clone drops and recreates an invalidated slot.
        """
        needed, free = reclone_room(self.pgdata)
        if needed > free:
            raise NoRoomToMoveAside(
                f"{why}, so it must clone again; its data stays and a new copy needs about {needed // 1048576} MB, "
                f"but the volume has {free // 1048576} MB free. PGDATA was not touched",
                hint="grow the PersistentVolumeClaim, or, if this replica's data is not needed (the primary "
                "has everything it had), delete the PVC (or move PGDATA away) so the pod clones afresh",
                needed_mb=needed // 1048576,
                free_mb=free // 1048576,
                **fields,
            )
        aside = self.pgdata.with_name(f"{self.pgdata.name}.{suffix}-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(self.pgdata, aside)
        fsync_dir(self.pgdata.parent)
        self.log.warning(
            event,
            moved_aside=str(aside),
            note=f"{why}; cloning again. Delete the moved-aside copy once you no longer need it",
            **fields,
        )
        self.clone_replica()

    # -- configuration and exec -------------------------------------------------------------
    def write_config(self, datadir: Path, *, standby: bool) -> None:
        """The managed files: settings file and its include, pg_hba block, standby settings."""
        cfg = self.config
        started = self.world.clock()
        standby_settings: dict[str, str] | None = None
        written = [CONF_NAME, "postgresql.conf", "pg_hba.conf"]
        if standby:
            passfile = self.write_passfile()
            standby_settings = {
                "primary_conninfo": primary_conninfo(
                    host=cfg.primary_fqdn.rstrip("."),
                    port=cfg.port,
                    user=cfg.replication_user,
                    passfile=str(passfile),
                    application_name=cfg.identity.pod_name,
                ),
                "primary_slot_name": cfg.identity.slot_name,
            }
        wal = self.plan.wal or walbudget.decide(cfg.wal_configured(), walbudget.observe(datadir, (), ()))
        settings = settings_file(
            port=cfg.port,
            max_wal_senders=cfg.max_wal_senders,
            max_replication_slots=cfg.max_replication_slots,
            wal=wal.written.conf_values(),
            standby=standby_settings,
        )
        write_atomic(datadir / CONF_NAME, settings, mode=0o600, owner=self.owner)
        conf = datadir / "postgresql.conf"
        write_atomic(conf, with_include(conf.read_text() if conf.exists() else ""), mode=0o600, owner=self.owner)
        hba = datadir / "pg_hba.conf"
        write_atomic(
            hba,
            with_hba_block(hba.read_text() if hba.exists() else "", cfg.replication_user),
            mode=0o600,
            owner=self.owner,
        )
        if standby:
            write_atomic(datadir / "standby.signal", "", mode=0o600, owner=self.owner)
            written.append("standby.signal")
        # postgresql.auto.conf from a clone may carry the primary's ALTER SYSTEM settings; that is
        # wanted, but a primary_conninfo there (someone ran pg_basebackup -R) would win over ours.
        self._phase(
            "config_written", started, datadir=str(datadir), files=written, standby=standby,
            wal_volume_mb=wal.written.volume_mb, **wal.written.conf_values(),
        )  # fmt: skip
        if wal.problem is not None:
            self.log.warning(
                "wal_budget_exceeded",
                problem=wal.problem,
                effective=wal.effective.conf_values(),
                hint="WAL could fill the volume and stop the primary: lower the setting (PGSFS_* variables, "
                "ALTER SYSTEM or postgres -c), leave them at auto, or grow the PersistentVolumeClaim",
            )

    def fix_ownership(self) -> None:
        """PGDATA owned by postgres with mode 0700, as postgres insists (a foreign owner was refused in the plan)."""
        st = os.stat(self.pgdata)
        if self.owner is not None:
            changed = fix_tree_ownership(self.pgdata, *self.owner)
            fix_tree_ownership(self.config.state_dir, *self.owner)
            if changed:
                self.log.info("ownership_fixed", pgdata=str(self.pgdata), entries=changed)
        if st.st_mode & 0o077:
            os.chmod(self.pgdata, 0o700)
            self.log.info("mode_fixed", pgdata=str(self.pgdata), was=oct(st.st_mode & 0o777))


def exec_postgres(args: list[str], account: RunAs | None) -> None:
    """Replace this process with postgres, secrets stripped from its environment.

    `account` is given only when still root (the info arguments path): drop to it first.
    """
    if account is not None:
        drop_to(account, account_groups(account))
    env = child_env()
    # nss_wrapper served initdb and psql; postgres itself needs no passwd entry (as in the official image).
    if env.get("LD_PRELOAD", "").endswith("/libnss_wrapper.so"):
        for name in NSS_VARIABLES:
            env.pop(name, None)
    os.execvpe("postgres", ["postgres", *args], env)


def reclone_room(pgdata: Path, margin: int = 64 * 1048576) -> tuple[int, int]:
    """Bytes a new clone beside the moved-aside data needs (about the old data's size, plus a
    margin for WAL written meanwhile), and bytes free on PGDATA's volume."""
    st = os.statvfs(pgdata.parent)
    return tree_size(pgdata) + margin, st.f_bavail * st.f_frsize
