"""The fault matrix: the real agent (k8s/ manifests, real PostgreSQL, BIND, signals) on the emulated
StatefulSet, one fault per test, each outcome asserted within a stated deadline.

Non-destructive rows share one cluster (TestShared); the others run their own small cluster
(2 pods) for one scenario whose facts several tests may assert.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

from tests.e2e.cluster_support import require_pods  # noqa: E402

require_pods()
if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
    pytest.skip("postgresql-15 is not installed", allow_module_level=True)

from emulator.controller import Cluster  # noqa: E402
from emulator.pod import postgres_ids  # noqa: E402
from emulator.waiting import wait_until  # noqa: E402
from tests.e2e.fault_support import (  # noqa: E402
    PGDATA,
    PRIMARY,
    REPL_PW,
    SECRETS,
    SU_PW,
    VOL,
    Exit,
    agent_lines,
    alive,
    create_with_env,
    current,
    dir_size,
    environ_of,
    event_names,
    exits,
    files_holding,
    healthy,
    host_pids,
    make_cluster,
    named,
    pod,
    proc_files,
    report,
    run_count,
    run_lines,
    scale_down_to,
    set_env,
    starts,
    tree,
    wait_exit,
    wait_line,
)

REPLICA = pod(1)
EXTRA = pod(2)  # the shared cluster's spare ordinal, scaled up for one fault at a time
# Signal to agent exit: the agent must stop its children and say so within this.
SIGNAL_DEADLINE = 2.0
OUTAGE = 5.0  # row 1: seconds DNS stays down after the replica's first unanswered query
# Row 7 and 14: what hits the replica's successive clones (the seventh run may finish).
FAULTS = (signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
WINDOW = 30.0  # row 9: seconds of crash loop observed
MAX_RESTARTS = 3  # row 9: container starts allowed in WINDOW with the kubelet's 10 s back-off
# Row 10: the replica files a refused start must leave as they were.
MANAGED = ("pg-sfs-agent.conf", "postgresql.conf", "pg_hba.conf", "standby.signal")


def the(lines: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The one line called `event` (assertion error with the story otherwise)."""
    found = named(lines, event)
    assert len(found) == 1, f"expected one {event}, got {len(found)}: {event_names(lines)}"
    return found[0]


def finished_at(c: Cluster, name: str, exit_: Exit) -> float:
    """When the container's PID 1 exited (the shim's clock), else when the controller saw it."""
    for container in c.pod(name).containers:
        if container.status.restart == exit_.restart and container.status.finished_at:
            return float(container.status.finished_at)
    return exit_.at


def secret_hits(c: Cluster, needles: tuple[str, ...], allowed: set[Path]) -> list[str]:
    """Files on any volume, and pod logs, holding a secret (beside the allowed 0600 files)."""
    hits = [str(p) for p in files_holding(c.run_dir / "volumes", needles) if p not in allowed]
    hits += [str(p) for p in files_holding(c.run_dir / "logs", needles)]
    return hits


def passfile(c: Cluster, name: str) -> Path:
    """Host path of the pod's replication passfile."""
    return c.volume_dir(name) / ".pg-sfs-agent" / "replication.pgpass"


# ============================================================================ shared cluster


REPL_FILE = f"{VOL}/secrets/replication-password"


@pytest.fixture(scope="class")
def shared() -> Iterator[Cluster]:
    """postgresql-sfs-0 (passwords from env) and -1 (replication password from a _FILE with a
    trailing newline), OrderedReady; ordinal 2 is created for single faults and removed again."""
    c = make_cluster(start=False)
    with c:
        c.scale(1)
        wait_until(lambda: PRIMARY in c.pod_names(), 30, 0.05, "primary created")
        secret = c.volume_dir(REPLICA) / "secrets" / "replication-password"
        secret.parent.mkdir(parents=True)
        secret.write_text(REPL_PW + "\n")
        secret.chmod(0o600)
        create_with_env(c, 1, {"PGSFS_REPLICATION_PASSWORD": None,
                               "PGSFS_REPLICATION_PASSWORD_FILE": REPL_FILE})
        healthy(c, timeout=60)
        yield c


class TestShared:
    """Rows that leave the cluster as they found it, in file order on one cluster."""

    # ------------------------------------------------------------------ row 5
    def test_hostile_passwords_and_password_file_work(self, shared: Cluster) -> None:
        """Row 5: ' \\ space & = @ : in both passwords; the replica's from a _FILE ending in a newline."""
        c = shared
        healthy(c)
        env1 = environ_of(c.exec_in_pod(REPLICA, ["cat", "/proc/1/environ"]).stdout)
        assert "PGSFS_REPLICATION_PASSWORD" not in env1  # postgres' env: nothing secret
        # The file's trailing newline was dropped: the replica streams with the exact password.
        assert any(r["application_name"] == REPLICA and r["state"] == "streaming"
                   for r in c.replication())
        pf = passfile(c, REPLICA)
        assert pf.stat().st_mode & 0o777 == 0o600
        assert pf.read_text() == "*:*:*:replicator:re' \\\\ &=@\\:pass-2\n"
        conf = (c.volume_dir(REPLICA) / "pgdata" / "pg-sfs-agent.conf").read_text()
        assert "passfile=" in conf and "pass-2" not in conf
        # Both passwords work over TCP from the replica's pod (password in the environment only).
        ip = c.pod_ip(PRIMARY)
        for user, pw in (("postgres", SU_PW), ("replicator", REPL_PW)):
            res = c.exec_in_pod(REPLICA, ["psql", "-XAtq", "-h", ip, "-U", user, "-d", "postgres",
                                          "-c", "select current_user"],
                                env={"PGPASSWORD": pw, "PGCONNECT_TIMEOUT": "3"}, user="postgres")
            assert (res.returncode, res.stdout.strip()) == (0, user), res.stderr

    # ------------------------------------------------------------------ row 15
    def test_bad_configuration_lists_every_problem_and_touches_nothing(self, shared: Cluster) -> None:
        """Row 15: no ordinal, non-numeric and negative numbers, X and X_FILE, unreadable X_FILE."""
        c = shared
        healthy(c)
        vol = c.volume_dir(PRIMARY)
        watched = [vol / ".pg-sfs-agent", vol / "pgdata" / "pg-sfs-agent.conf",
                   vol / "pgdata" / "pg_hba.conf", vol / "pgdata" / "postgresql.conf"]
        before = {str(p): tree(p) for p in watched}
        bad = {
            "POD_NAME": "postgresql-sfs",
            "PGPORT": "54x2",
            "PGSFS_PRIMARY_ORDINAL": "-1",
            "PGSFS_WAIT_TIMEOUT": "-5",
            "PGSFS_AUTH_ATTEMPTS": "many",
            "POSTGRES_PASSWORD_FILE": f"{VOL}/secrets/su-password",  # beside POSTGRES_PASSWORD
            "PGSFS_REPLICATION_PASSWORD_FILE": f"{VOL}/no-such-file",
        }
        started = time.monotonic()
        res = c.exec_in_pod(PRIMARY, ["env", "-u", "PGSFS_REPLICATION_PASSWORD", "pg-sfs-agent",
                                      "postgres"], env=bad, timeout=30)
        took = time.monotonic() - started
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        events = agent_lines(res.stderr)
        assert res.returncode == 2, res.stderr
        assert event_names(events) == ["config_invalid"], lines
        problems = events[0]["problems"]
        for name in ("POD_NAME=", "PGPORT=", "PGSFS_PRIMARY_ORDINAL=", "PGSFS_WAIT_TIMEOUT=",
                     "PGSFS_AUTH_ATTEMPTS=", "POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE",
                     "PGSFS_REPLICATION_PASSWORD_FILE="):
            assert sum(p.startswith(name) for p in problems) == 1, (name, problems)
        assert len(problems) == 7, problems
        assert not any(s in res.stderr + res.stdout for s in SECRETS)
        assert took < 5, took
        assert {str(p): tree(p) for p in watched} == before
        report("15", exit=res.returncode, problems=len(problems), took_s=round(took, 2))

    # ------------------------------------------------------------------ row 2
    def test_primary_record_never_appears(self, shared: Cluster) -> None:
        """Row 2: a replica looking for a Service nobody publishes exits 3 after
        PGSFS_WAIT_TIMEOUT=5 s with a summary, and waits again after its restart."""
        c = shared
        healthy(c)
        base = run_count(c, EXTRA)
        t0 = time.time()
        try:
            create_with_env(c, 2, {"PGSFS_SERVICE_NAME": "ghost-svc", "PGSFS_WAIT_TIMEOUT": "5"})
            first = wait_exit(c, EXTRA, t0, timeout=20)[0]
            # The restart (immediate: the kubelet's first) waits again.
            wait_line(c, EXTRA, "dns_wait_state", 10, run_index=base + 1)
            restarts = c.restarts(EXTRA)
        finally:
            scale_down_to(c, 2)
            c.wipe_volume(EXTRA)
        lines = run_lines(c, EXTRA)[base]
        assert first.code == 3, event_names(lines)
        state = named(lines, "dns_wait_state")[0]
        assert state["outcome"] == "no_record" and state["name"].startswith("postgresql-sfs-0.ghost-svc.")
        timeout = the(lines, "dns_wait_timeout")
        assert timeout["exit_code"] == 3
        assert 5.0 <= timeout["elapsed_s"] < 7.0, timeout
        assert timeout["attempts"] >= 3 and timeout["seen"] == {"no_record": timeout["attempts"]}
        assert "last answer: no_record" in timeout["error"]
        assert "PGSFS_SERVICE_NAME" in timeout["hint"]
        assert restarts >= 1
        assert named(run_lines(c, EXTRA)[base + 1], "dns_wait_state")
        report("2", exit=first.code, elapsed_s=timeout["elapsed_s"], attempts=timeout["attempts"],
               restarts=restarts)

    # ------------------------------------------------------------------ row 14 (DNS wait)
    def test_signals_during_the_dns_wait(self, shared: Cluster) -> None:
        """Row 14, first half: SIGTERM then SIGINT while waiting for DNS: 143 / 130 within 2 s."""
        c = shared
        healthy(c)
        base = run_count(c, EXTRA)
        t0 = time.time()
        results = []
        try:
            create_with_env(c, 2, {"PGSFS_SERVICE_NAME": "ghost-svc", "PGSFS_WAIT_TIMEOUT": "60"})
            for i, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
                wait_line(c, EXTRA, "dns_wait_state", 15, run_index=base + i)
                sent = time.time()
                assert c.kill_pod(EXTRA, sig)
                ex = wait_exit(c, EXTRA, t0, timeout=10, count=i + 1)[i]
                results.append((sig, ex, finished_at(c, EXTRA, ex) - sent))
        finally:
            scale_down_to(c, 2)
            c.wipe_volume(EXTRA)
        all_runs = run_lines(c, EXTRA)
        for i, (sig, ex, took) in enumerate(results):
            assert ex.code == 128 + sig, (sig, ex)
            assert took < SIGNAL_DEADLINE, (sig, took)
            line = all_runs[base + i][-1]
            assert line["event"] == "interrupted", event_names(all_runs[base + i])
            assert line["signal"] == sig.name and line["exit_code"] == 128 + sig
            assert line["phase"] == "clone"
        report("14-dns", results=[(s.name, e.code, round(t, 2)) for s, e, t in results])

    # ------------------------------------------------------------------ row 4
    def test_wrong_replication_password(self, shared: Cluster) -> None:
        """Row 4: PGSFS_AUTH_ATTEMPTS=3 bad_password answers, then exit 5 naming the user and
        PGSFS_REPLICATION_PASSWORD; the password nowhere (logs, argv, volumes)."""
        c = shared
        healthy(c)
        wrong = "wrong 'pass' \\ word"
        base = run_count(c, EXTRA)
        t0 = time.time()
        cmdlines: list[str] = []
        try:
            create_with_env(c, 2, {"PGSFS_REPLICATION_PASSWORD": wrong, "PGSFS_AUTH_ATTEMPTS": "3"})

            def sample() -> bool:
                for name in c.pod_names():
                    cmdlines.extend(proc_files(c, name).values())
                return bool(exits(c, EXTRA, t0))

            wait_until(sample, 30, 0.2, f"{EXTRA} to give up")
            first = exits(c, EXTRA, t0)[0]
        finally:
            scale_down_to(c, 2)
        lines = run_lines(c, EXTRA)[base]
        try:
            assert first.code == 5, event_names(lines)
            failed = the(lines, "primary_auth_failed")
            assert failed["reason"] == "bad_password"
            assert failed["seen"] == {"bad_password": 3} and failed["attempts"] == 3, failed
            assert "replicator" in failed["error"]
            assert "PGSFS_REPLICATION_PASSWORD" in failed["hint"]
            assert named(lines, "primary_wait_state")[0]["outcome"] == "bad_password"
            assert len(cmdlines) > 10 and any("pg-sfs-agent" in line for line in cmdlines)
            assert not [line for line in cmdlines if any(s in line for s in (wrong, *SECRETS))]
            allowed = {passfile(c, REPLICA), c.volume_dir(REPLICA) / "secrets" / "replication-password"}
            assert secret_hits(c, (wrong, *SECRETS), allowed) == []
            report("4", exit=first.code, seen=failed["seen"], elapsed_s=failed["elapsed_s"],
                   argv_samples=len(cmdlines))
        finally:
            c.wipe_volume(EXTRA)

    # ------------------------------------------------------------------ row 6
    def test_pg_hba_rejects_the_replica(self, shared: Cluster) -> None:
        """Row 6: the primary's pg_hba without the agent's block: exit 5, reason hba_rejected."""
        c = shared
        healthy(c)
        hba = c.volume_dir(PRIMARY) / "pgdata" / "pg_hba.conf"
        original = hba.read_text()
        begin = original.index("# BEGIN pg-sfs-agent")
        end = original.index("# END pg-sfs-agent")
        end = original.index("\n", end) + 1
        base = run_count(c, EXTRA)
        t0 = time.time()
        try:
            hba.write_text(original[:begin] + original[end:])
            assert c.psql(PRIMARY, "select pg_reload_conf()") == "t"
            create_with_env(c, 2, {"PGSFS_AUTH_ATTEMPTS": "2"})
            first = wait_exit(c, EXTRA, t0, timeout=30)[0]
        finally:
            hba.write_text(original)
            c.psql(PRIMARY, "select pg_reload_conf()")
            scale_down_to(c, 2)
            c.wipe_volume(EXTRA)
        lines = run_lines(c, EXTRA)[base]
        assert first.code == 5, event_names(lines)
        failed = the(lines, "primary_auth_failed")
        assert failed["reason"] == "hba_rejected"
        assert "pg_hba.conf" in failed["error"] and "pg_hba.conf" in failed["hint"]
        assert failed["seen"] == {"hba_rejected": 2}
        report("6", exit=first.code, reason=failed["reason"], elapsed_s=failed["elapsed_s"])
        healthy(c)

    # ------------------------------------------------------------------ row 11
    def test_replica_ordinal_without_standby_signal_rejoins(self, shared: Cluster) -> None:
        """Row 11: a replica ordinal whose PGDATA is not a standby (a former primary, here a standby
        that lost its standby.signal) is checked against the primary and, being on its history and
        cleanly shut down, rejoins as a standby without copying anything."""
        c = shared
        healthy(c)
        scale_down_to(c, 1)
        pgdata = c.volume_dir(REPLICA) / "pgdata"
        (pgdata / "standby.signal").unlink()
        (pgdata / "rejoin-marker").write_text("kept")
        base = run_count(c, REPLICA)
        c.scale(2)
        healthy(c)
        lines = run_lines(c, REPLICA)[base]
        check = the(lines, "primary_check")
        assert check["decision"] == "rejoin" and check["former_primary"] is True, check
        assert "clone" not in event_names(lines) and "rewound" not in event_names(lines)
        assert (pgdata / "standby.signal").exists() and (pgdata / "rejoin-marker").read_text() == "kept"
        report("11", decision=check["decision"], restarts=c.restarts(REPLICA))

    # ------------------------------------------------------------------ row 12
    def test_primary_ordinal_holding_standby_signal_never_promotes_itself(self, shared: Cluster) -> None:
        """Row 12: the primary ordinal with standby.signal (and no writable member to follow) starts as
        a standby connected to nobody and says so; `pg-sfs-agent promote` makes it the primary again."""
        c = shared
        healthy(c)
        signal_file = c.volume_dir(PRIMARY) / "pgdata" / "standby.signal"
        base = run_count(c, PRIMARY)
        t0 = time.time()
        signal_file.touch(mode=0o600)
        assert c.kill_pod(PRIMARY, signal.SIGINT)  # fast shutdown; the container restarts
        (shutdown,) = wait_exit(c, PRIMARY, t0, timeout=30, count=1)[:1]
        wait_until(lambda: run_count(c, PRIMARY) > base and "exec_postgres" in event_names(run_lines(c, PRIMARY)[base]),
                   30, 0.1, "the primary ordinal's next start")  # fmt: skip
        lines = run_lines(c, PRIMARY)[base]
        assert shutdown.code == 0
        assert the(lines, "designated_standby")["decision"] == "await_promotion"
        assert "awaiting_promotion" in event_names(lines)
        wait_until(lambda: c.try_psql(PRIMARY, "select pg_is_in_recovery()").stdout.strip() == "t", 30, 0.2,
                   "the primary ordinal running as a standby")  # fmt: skip
        res = c.exec_in_pod(PRIMARY, ["pg-sfs-agent", "promote"], timeout=120)
        assert res.returncode == 0, res.stderr
        healthy(c)
        assert c.psql(PRIMARY, "select pg_is_in_recovery()") == "f"
        report("12", exits=[shutdown.code], decision="await_promotion", restarts_until_ready=c.restarts(PRIMARY))

    # ------------------------------------------------------------------ row 16
    def test_pgdata_owner_and_mode_fixed_as_root(self, shared: Cluster) -> None:
        """Row 16, root: PGDATA owned by root with mode 0755 is given back to postgres, 0700."""
        c = shared
        healthy(c)
        scale_down_to(c, 1)
        pgdata = c.volume_dir(REPLICA) / "pgdata"
        for dirpath, dirnames, filenames in os.walk(pgdata):
            for name in [".", *dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), 0, 0)
        pgdata.chmod(0o755)
        base = run_count(c, REPLICA)
        c.scale(2)
        healthy(c)
        lines = run_lines(c, REPLICA)[base]
        uid, _ = postgres_ids()
        # The owner is fixed, the group kept (as the official entrypoint's chown does).
        owners = {st.st_uid for st in
                  (Path(d, f).lstat() for d, dirs, files in os.walk(pgdata) for f in [".", *dirs, *files])}
        assert owners == {uid}
        assert pgdata.stat().st_mode & 0o777 == 0o700
        assert the(lines, "ownership_fixed")["entries"] > 100
        assert the(lines, "mode_fixed")["was"] == "0o755"
        assert c.restarts(REPLICA) == 0
        report("16-root", entries=the(lines, "ownership_fixed")["entries"], mode_was="0755")

    @pytest.mark.parametrize("mode", [0o700, 0o755], ids=["mode0700", "mode0755"])
    def test_pgdata_owned_by_another_user_when_not_root(self, shared: Cluster, mode: int) -> None:
        """Row 16, not root: a clear error naming the owner (exit 6), PGDATA untouched."""
        c = shared
        healthy(c)
        # A standby-looking PGDATA owned by root, in a directory the postgres user may write.
        setup = ("set -e; rm -rf /tmp/nr; mkdir -p /tmp/nr/pgdata; echo 15 > /tmp/nr/pgdata/PG_VERSION;"
                 f" touch /tmp/nr/pgdata/standby.signal; chmod {mode:o} /tmp/nr/pgdata;"
                 " chown postgres:postgres /tmp/nr")
        # Run in the primary's pod (its environment has the plain password, never a root-only
        # _FILE), as the replica ordinal; setpriv execs the agent directly as the postgres user.
        assert c.exec_in_pod(PRIMARY, ["sh", "-c", setup]).returncode == 0
        try:
            res = c.exec_in_pod(PRIMARY, ["pg-sfs-agent", "postgres"], user="postgres", timeout=30,
                                env={"POD_NAME": REPLICA, "PGDATA": "/tmp/nr/pgdata",
                                     "PGSFS_STATE_DIR": "/tmp/nr/state"})
            listing = c.exec_in_pod(PRIMARY, ["find", "/tmp/nr", "-mindepth", "1"]).stdout.split()
        finally:
            c.exec_in_pod(PRIMARY, ["rm", "-rf", "/tmp/nr"])
        events = agent_lines(res.stderr)
        assert res.returncode == 6, event_names(events)
        refused = the(events, "pgdata_conflict")
        assert "owned by uid 0" in refused["error"], refused["error"]
        # PGDATA as it was; nothing but the startup probe's heartbeat beside it (no passfile).
        assert sorted(set(listing) - {"/tmp/nr/state", "/tmp/nr/state/heartbeat.json"}) == [
            "/tmp/nr/pgdata", "/tmp/nr/pgdata/PG_VERSION", "/tmp/nr/pgdata/standby.signal"]

    # ------------------------------------------------------------------ row 17
    def test_secrets_stay_out_of_environ_argv_logs_and_volumes(self, shared: Cluster) -> None:
        """Row 17 (static part): postgres' environment, every argv, logs, volume files."""
        c = shared
        healthy(c)
        for name in c.pod_names():
            environs = proc_files(c, name, "environ")
            cmdlines = proc_files(c, name)
            postgres = [pid for pid, cmd in cmdlines.items() if cmd.startswith("postgres")]
            assert 1 in postgres, cmdlines  # postgres is PID 1: the agent exec'd it
            for pid in postgres:
                env = environ_of(environs[pid])
                assert not {k for k in env if "PASSWORD" in k}, (name, pid, sorted(env))
                assert not any(s in environs[pid] for s in SECRETS)
            assert not any(s in cmd for cmd in cmdlines.values() for s in SECRETS)
        allowed = {passfile(c, REPLICA), c.volume_dir(REPLICA) / "secrets" / "replication-password"}
        assert secret_hits(c, SECRETS, allowed) == []
        assert not (c.volume_dir(PRIMARY) / ".pg-sfs-agent" / "replication.pgpass").exists() or \
            passfile(c, PRIMARY).stat().st_mode & 0o777 == 0o600

    # ------------------------------------------------------------------ rows 13 and 17
    def test_password_rotation_replicas_then_primary(self, shared: Cluster) -> None:
        """Row 13 (replica restarted first, the primary next, as the README describes) with row
        17's log_statement=all check: every member streams with the new passwords, the old ones
        fail over TCP, and no password shows in any log or volume file."""
        c = shared
        healthy(c)
        new_su, new_repl = "rot' \\ &=@:su-2", "rot' \\ &=@:repl-2"
        c.psql(PRIMARY, "alter system set log_statement = 'all'")
        assert c.psql(PRIMARY, "select pg_reload_conf()") == "t"
        started = time.monotonic()
        lines = rotate(c, new_su, new_repl, (REPLICA, PRIMARY), gated=False)
        took = time.monotonic() - started
        # The replica met the old password on the primary, started anyway and caught up later.
        skipped = the(lines[REPLICA][0], "primary_check_skipped")
        assert skipped["reason"] == "primary_auth_failed", skipped
        assert the(lines[PRIMARY][0], "passwords_applied")["users"] == ["postgres", "replicator"]
        check_logins(c, (SU_PW, REPL_PW), (new_su, new_repl))
        # The agent set the passwords through the temporary server, which logged every statement.
        server_log = (c.volume_dir(PRIMARY) / ".pg-sfs-agent" / "temporary-server.log").read_text()
        assert "statement: ALTER ROLE" in server_log and "SCRAM-SHA-256$4096:" in server_log
        allowed = {passfile(c, REPLICA), c.volume_dir(REPLICA) / "secrets" / "replication-password"}
        hits = secret_hits(c, (SU_PW, REPL_PW, new_su, new_repl), allowed)
        assert hits == [], hits
        assert passfile(c, REPLICA).read_text().endswith(":rot' \\\\ &=@\\:repl-2\n")
        assert took < 60, took
        report("13", order="replica,primary", rollout_s=round(took, 1))

    def test_password_rotation_deleting_the_primary_then_the_replicas(self, shared: Cluster) -> None:
        """Row 13, by pod deletion, primary first, each pod Ready (30 s) before the next: what an
        operator can do today (`kubectl delete pod`; the controller recreates it)."""
        c = shared
        healthy(c)
        env = c.sts.env_for("", "")
        old = (env["POSTGRES_PASSWORD"], env["PGSFS_REPLICATION_PASSWORD"])
        new_su, new_repl = "del' \\ &=@:su-3", "del' \\ &=@:repl-3"
        started = time.monotonic()
        lines = rotate(c, new_su, new_repl, (PRIMARY, REPLICA), gated=True)
        check_logins(c, old, (new_su, new_repl))
        assert the(lines[PRIMARY][0], "passwords_applied")
        assert not named(lines[REPLICA][0], "primary_check_skipped")
        report("13", order="delete primary, then replica", rollout_s=round(time.monotonic() - started, 1))


def rotate(c: Cluster, new_su: str, new_repl: str, order: tuple[str, ...], gated: bool,
           settle: bool = True) -> dict[str, list[list[dict[str, Any]]]]:
    """Change both Secret values and restart the pods in `order`; `gated` waits for each pod to be
    Ready before the next, else only for its postgres to run; `settle` then waits for every pod
    Ready and streaming. Returns each pod's agent lines, one list per restart."""
    set_env(c, {"POSTGRES_PASSWORD": new_su, "PGSFS_REPLICATION_PASSWORD": new_repl,
                "PGSFS_REPLICATION_PASSWORD_FILE": None})
    restarted: dict[str, list[int]] = {}
    for name in order:
        base = run_count(c, name)
        restarted.setdefault(name, []).append(base)
        c.delete_pod(name)
        try:
            if gated:
                c.wait_ready([name], timeout=30)
            else:
                wait_line(c, name, "exec_postgres", 30, run_index=base)
        except TimeoutError as exc:
            story = [(line["event"], line.get("reason"), str(line.get("detail", ""))[:120])
                     for line in run_lines(c, name)[base]]
            raise AssertionError(f"the rotation stalls at {name}: {story}") from exc
    if settle:
        c.wait_ready(timeout=40)
        c.wait_streaming(timeout=40)
    return {name: [run_lines(c, name)[i] for i in bases] for name, bases in restarted.items()}


def check_logins(c: Cluster, old: tuple[str, str], new: tuple[str, str]) -> None:
    """Over TCP from the replica's pod: the new passwords work, the old ones are refused."""
    ip = c.pod_ip(PRIMARY)

    def login(user: str, pw: str) -> subprocess.CompletedProcess[str]:
        return c.exec_in_pod(REPLICA, ["psql", "-XAtq", "-h", ip, "-U", user, "-d", "postgres",
                                       "-c", "select 1"],
                             env={"PGPASSWORD": pw, "PGCONNECT_TIMEOUT": "3"}, user="postgres")

    for user, was, now in zip(("postgres", "replicator"), old, new):
        assert login(user, now).returncode == 0, user
        refused = login(user, was)
        assert refused.returncode != 0 and "password authentication failed" in refused.stderr, user


# ============================================================================ row 1


@pytest.fixture(scope="module")
def dns_down() -> dict[str, Any]:
    c = make_cluster(policy="Parallel", start=False)
    with c:
        c.dns.down()
        c.scale(2)
        wait_line(c, REPLICA, "dns_wait_state", 30)
        down_since = time.monotonic()
        # Hold the outage, watching that the replica does not crash-loop meanwhile (the primary
        # may: it refuses to initialise while it cannot survey the members, and tries again).
        wait_until(lambda: c.restarts(REPLICA) > 0 or time.monotonic() - down_since >= OUTAGE,
                   OUTAGE + 5, 0.1, "outage")
        restarts_during = c.restarts(REPLICA)
        c.dns.up()
        up_at = time.monotonic()
        c.wait_streaming(timeout=30)
        return {
            "streaming_after_up": time.monotonic() - up_at,
            "restarts_during": restarts_during,
            "restarts": c.restarts(REPLICA),
            "replica": run_lines(c, REPLICA),
            "primary": run_lines(c, PRIMARY),
        }


class TestDnsDownAtStart:
    """Row 1: cluster DNS down while both pods start (Parallel), back after OUTAGE s."""

    def test_replica_waits_out_the_outage_then_streams(self, dns_down: dict[str, Any]) -> None:
        assert dns_down["restarts_during"] == 0 and dns_down["restarts"] == 0
        assert len(dns_down["replica"]) == 1
        lines = dns_down["replica"][0]
        states = named(lines, "dns_wait_state")
        assert states[0]["outcome"] == "dns_unreachable", states
        assert "no_record" not in {s["outcome"] for s in states}, states  # DNS down is not "absent"
        waited = the(lines, "dns_wait")
        assert waited["seen"].get("dns_unreachable", 0) >= 2, waited
        assert waited["elapsed_s"] >= OUTAGE - 0.5, waited
        assert len(states) < waited["attempts"], states  # one line per change, not per poll
        assert event_names(lines)[-1] == "exec_postgres"
        # Back within one query lifetime and pause (2 s + 1 s) plus the clone; 30 s deadline.
        assert dns_down["streaming_after_up"] < 30
        report("1", states=[s["outcome"] for s in states], seen=waited["seen"],
               waited_s=waited["elapsed_s"], streaming_after_up_s=round(dns_down["streaming_after_up"], 1))

    def test_primary_refuses_to_initialise_until_it_can_survey(self, dns_down: dict[str, Any]) -> None:
        """Row 1, the primary: during the outage its re-init guard cannot see the members, so it
        refuses (exit 13, retryable) with PGDATA untouched; once DNS answers it initialises."""
        runs = dns_down["primary"]
        assert len(runs) >= 2, [event_names(r) for r in runs]
        for lines in runs[:-1]:
            refused = lines[-1]
            assert refused["event"] == "peer_check_incomplete" and refused["exit_code"] == 13, event_names(lines)
            assert refused["dns_problem"], refused
            assert "initdb" not in event_names(lines)
        last = runs[-1]
        check = the(last, "peer_check")
        assert check["complete"] is True and check["decision"] == "init", check
        # The replica, waiting to clone, announced that it holds nothing.
        assert [m["state"] for m in check["members"]] == ["empty"], check
        assert event_names(last)[-1] == "exec_postgres"
        report("1", primary_refusals=len(runs) - 1)


# ============================================================================ rows 3 and 8


INITDB_SCRIPT = """#!/bin/sh
# The first initialisation blocks here (at most 60 s) until released; later ones run through.
flags=/var/lib/postgresql/data/flags
if [ ! -e "$flags/ran-once" ]; then
    touch "$flags/ran-once"
    i=0
    while [ ! -e "$flags/release" ] && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
fi
psql -v ON_ERROR_STOP=1 -c "create table init_script_ran (at timestamptz default now())"
"""


@pytest.fixture(scope="module")
def slow_primary() -> dict[str, Any]:
    c = make_cluster(policy="Parallel", start=False,
                     env={"PGSFS_INITDB_DIR": f"{VOL}/initdb.d", "PGSFS_WAIT_TIMEOUT": "60"})
    with c:
        vol0 = c.volume_dir(PRIMARY)
        flags = vol0 / "flags"
        flags.mkdir(parents=True)
        os.chown(flags, *postgres_ids())
        (vol0 / "initdb.d").mkdir()
        (vol0 / "initdb.d" / "10-slow.sh").write_text(INITDB_SCRIPT)
        started = time.monotonic()
        c.scale(2)
        wait_until((flags / "ran-once").exists, 30, 0.05, "the initdb.d script running")
        blocked_at = time.monotonic()
        refused = wait_line(c, REPLICA, "primary_wait_state", 20,
                            where=lambda line: line["outcome"] == "connection_refused")
        # Row 8: kill the primary in the middle of its first initialisation.
        at_kill = {"events": event_names(current(c, PRIMARY)),
                   "pgdata": (vol0 / "pgdata").exists(),
                   "work": (vol0 / "pgdata.pgsfs-work" / "data" / "PG_VERSION").exists()}
        t0 = time.time()
        assert c.kill_pod(PRIMARY, signal.SIGKILL)
        killed = wait_exit(c, PRIMARY, t0, 10)[0]
        healthy(c, timeout=60)
        return {
            "blocked_for": time.monotonic() - blocked_at,
            "total": time.monotonic() - started,
            "refused": refused,
            "at_kill": at_kill,
            "killed": killed,
            "primary": run_lines(c, PRIMARY),
            "replica": run_lines(c, REPLICA),
            "replica_restarts": c.restarts(REPLICA),
            "marker": [c.psql(n, "select count(*) from init_script_ran") for n in (PRIMARY, REPLICA)],
            "sysids": {c.psql(n, "select system_identifier from pg_control_system()")
                       for n in (PRIMARY, REPLICA)},
        }


class TestSlowPrimaryInit:
    """Rows 3 and 8 (Parallel start): the primary's first initialisation blocks in an initdb.d
    script, so its record exists but it does not accept connections; then it is SIGKILLed."""

    def test_replica_waits_for_a_primary_not_yet_accepting(self, slow_primary: dict[str, Any]) -> None:
        """Row 3: connection_refused while the record exists, then the clone, no restart."""
        assert slow_primary["replica_restarts"] == 0
        lines = slow_primary["replica"][0]
        assert the(lines, "dns_wait")["addresses"]  # the record was there while the primary was not
        waited = the(lines, "primary_wait")
        assert waited["seen"].get("connection_refused", 0) >= 2, waited
        assert waited["elapsed_s"] >= 1.0
        assert named(lines, "primary_wait_state")[0]["outcome"] == "connection_refused"
        assert len(named(lines, "primary_wait_state")) < waited["attempts"]  # not one per poll
        assert the(lines, "clone")["percent"] == 100
        assert slow_primary["total"] < 60
        report("3", seen=waited["seen"], waited_s=waited["elapsed_s"], total_s=round(slow_primary["total"], 1))

    def test_primary_killed_during_init_initialises_cleanly(self, slow_primary: dict[str, Any]) -> None:
        """Row 8: SIGKILL between initdb and moved_into_place; the restart starts over."""
        at_kill = slow_primary["at_kill"]
        assert "initdb" in at_kill["events"] and "moved_into_place" not in at_kill["events"], at_kill
        assert not at_kill["pgdata"] and at_kill["work"], at_kill  # half-built only beside PGDATA
        assert slow_primary["killed"].code == 137
        assert len(slow_primary["primary"]) == 2
        lines = slow_primary["primary"][1]
        assert the(lines, "plan")["remove_leftover"] == f"{PGDATA}.pgsfs-work"
        order = event_names(lines)
        for earlier, later in (("leftover_removed", "initdb"), ("initdb", "initdb_scripts"),
                               ("initdb_script", "moved_into_place"), ("moved_into_place", "exec_postgres")):
            assert order.index(earlier) < order.index(later), order
        assert slow_primary["marker"] == ["0", "0"]  # the script's table exists once, replicated
        assert len(slow_primary["sysids"]) == 1
        report("8", at_kill=at_kill, exit=slow_primary["killed"].code, second_run=order)


# ============================================================================ rows 7, 14 and 17


@pytest.fixture(scope="module")
def slow_clone() -> dict[str, Any]:
    seed = int(os.environ.get("PGSFS_FAULT_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    c = make_cluster(start=False, env={"PGSFS_CLONE_MAX_RATE": "16M"}, backoff_cap=2.0)
    with c:
        c.scale(1)
        c.wait_ready([PRIMARY], timeout=60)
        c.psql(PRIMARY, "create table big as select g as id, repeat(md5(g::text), 30) as pad"
               " from generate_series(1, 60000) g", timeout=60)
        total = int(c.psql(PRIMARY, "select sum(pg_database_size(datname)) from pg_database"))
        cmdlines: list[str] = []
        stop = threading.Event()

        def sample() -> None:
            for _ in range(3000):  # bounded; ~0.2 s apart
                if stop.is_set():
                    return
                for name in (PRIMARY, REPLICA):
                    try:
                        cmdlines.extend(proc_files(c, name).values())
                    except Exception:  # a pod between two containers has nothing to scan
                        continue
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, name="argv-sampler", daemon=True)
        sampler.start()
        work = c.volume_dir(REPLICA) / "pgdata.pgsfs-work"
        faults = []
        t0 = time.time()
        try:
            c.scale(2)
            for i, sig in enumerate(FAULTS):
                wait_line(c, REPLICA, "clone_started", 30, run_index=i)
                threshold = rng.uniform(0.1, 0.8) * total
                wait_until(lambda t=threshold: dir_size(work) >= t, 30, 0.05, f"{threshold:.0f} bytes cloned")
                fault: dict[str, Any] = {"sig": sig, "threshold_mb": round(threshold / 2**20, 1),
                                         "pgdata": (c.volume_dir(REPLICA) / "pgdata").exists(),
                                         "basebackups": host_pids(c, REPLICA, "pg_basebackup")}
                sent = time.time()
                assert c.kill_pod(REPLICA, sig)
                ex = wait_exit(c, REPLICA, t0, 10, count=i + 1)[i]
                fault.update(exit=ex, took=finished_at(c, REPLICA, ex) - sent,
                             left=alive(fault["basebackups"]))
                faults.append(fault)
            healthy(c, timeout=60)
        finally:
            stop.set()
            sampler.join(30)
        return {
            "seed": seed,
            "faults": faults,
            "runs": run_lines(c, REPLICA),
            "cmdlines": cmdlines,
            "slots": c.psql(PRIMARY, "select slot_name from pg_replication_slots").split(),
            "rows": [c.psql(n, "select count(*) from big") for n in (PRIMARY, REPLICA)],
            "leftover": work.exists(),
        }


class TestSlowClone:
    """Rows 7, 14 (clone half) and 17 (argv): the replica's clone (~85 MB at 16 MB/s) is hit by
    SIGKILL three times at random points, then SIGTERM, then SIGINT, then allowed to finish."""

    def test_killed_clones_restart_cleanly(self, slow_clone: dict[str, Any]) -> None:
        """Row 7: every restart removes the partial clone and clones again; PGDATA appears once,
        complete; exactly one slot for the replica."""
        faults, runs = slow_clone["faults"], slow_clone["runs"]
        context = f"seed={slow_clone['seed']} thresholds={[f['threshold_mb'] for f in faults]}"
        assert len(runs) == len(FAULTS) + 1, context
        for fault in faults[:3]:
            assert fault["exit"].code == 137, context
        for fault in faults:
            assert not fault["pgdata"], context  # a partial clone is never in PGDATA's place
        for i, lines in enumerate(runs):
            order = event_names(lines)
            if i > 0:
                assert the(lines, "plan")["remove_leftover"] == f"{PGDATA}.pgsfs-work", context
                assert order.index("leftover_removed") < order.index("clone_started"), (context, order)
            assert the(lines, "slot_ready")["created"] is (i == 0), (context, i)
            done = i == len(runs) - 1
            assert ("moved_into_place" in order) is done and ("exec_postgres" in order) is done
        assert slow_clone["slots"] == ["postgresql_sfs_1"]
        assert slow_clone["rows"] == ["60000", "60000"]
        assert not slow_clone["leftover"]
        report("7", context=context, exits=[f["exit"].code for f in faults],
               clone_s=the(runs[-1], "clone")["duration_s"])

    @pytest.mark.parametrize("index", [3, 4], ids=["SIGTERM", "SIGINT"])
    def test_signal_during_clone(self, slow_clone: dict[str, Any], index: int) -> None:
        """Row 14, clone half: 143 / 130 within 2 s, `interrupted`, no pg_basebackup left, the
        next start removes the partial clone."""
        fault = slow_clone["faults"][index]
        sig = fault["sig"]
        assert fault["exit"].code == 128 + sig
        assert fault["took"] < SIGNAL_DEADLINE, fault
        assert fault["basebackups"] and fault["left"] == [], fault
        lines = slow_clone["runs"][index]
        last = lines[-1]
        assert last["event"] == "interrupted", event_names(lines)
        assert (last["signal"], last["exit_code"], last["phase"]) == (sig.name, 128 + sig, "clone")
        assert named(slow_clone["runs"][index + 1], "leftover_removed")
        report("14-clone", sig=sig.name, exit=fault["exit"].code, took_s=round(fault["took"], 2),
               basebackups=len(fault["basebackups"]))

    def test_no_secret_in_any_argv_during_clones(self, slow_clone: dict[str, Any]) -> None:
        """Row 17, argv: /proc/*/cmdline of both pods sampled through six clones."""
        cmdlines = slow_clone["cmdlines"]
        assert len(cmdlines) > 50
        assert any(line.startswith("pg_basebackup") for line in cmdlines)
        assert any("walsender" in line for line in cmdlines)
        assert [line for line in cmdlines if any(s in line for s in SECRETS)] == []
        report("17-argv", samples=len(cmdlines))


# ============================================================================ row 9


@pytest.fixture(scope="module")
def volume_full() -> dict[str, Any]:
    c = make_cluster(start=False, backoff_base=10.0, backoff_cap=300.0)
    with c:
        # The replica's claim exists before its pod, with its own (too small) size.
        vol = c.create_volume(REPLICA, "16Mi")
        c.scale(1)
        c.wait_ready([PRIMARY], timeout=60)
        c.scale(2)
        first = wait_exit(c, REPLICA, 0, 60)[0]
        # Watch for WINDOW s after the first failure (a bounded observation, not a sleep).
        wait_until(lambda: time.time() - first.at >= WINDOW, WINDOW + 5, 0.2, "window")
        window = [t for t in starts(c, REPLICA, first.at) if t <= first.at + WINDOW]
        return {
            "first": first,
            "exits": exits(c, REPLICA),
            "restarts_in_window": len(window),
            "runs": run_lines(c, REPLICA),
            "listing": sorted(p.name for p in vol.iterdir()),
            "used_mb": dir_size(vol) / 2**20,
        }


class TestVolumeFull:
    """Row 9: the replica's volume is a 16 MiB ext4 filesystem (13 MiB free), too small for a clone
    (a WAL segment alone is 16 MB). The kubelet's real back-off (10 s base) is used to count restarts."""

    def test_full_volume_is_a_clear_error_and_no_tight_loop(self, volume_full: dict[str, Any]) -> None:
        assert volume_full["restarts_in_window"] <= MAX_RESTARTS, volume_full["restarts_in_window"]
        finished = volume_full["exits"]
        assert finished and all(e.code == 9 for e in finished), finished
        for lines in volume_full["runs"]:
            if not named(lines, "command_failed"):
                continue  # the run in progress when the window closed
            failed = the(lines, "command_failed")
            assert "volume holding PGDATA is full" in failed["error"], failed
            assert "No space left on device" in failed["error"]
            assert "grow the PersistentVolumeClaim" in failed["hint"]
            assert failed["free_mb_after_cleanup"] > 10, failed
            assert len(named(lines, "clone_started")) == 1  # one attempt per container run
            assert named(lines, "leftover_removed")  # the partial clone went at once
        assert "pgdata" not in volume_full["listing"] and "pgdata.pgsfs-work" not in volume_full["listing"]
        assert volume_full["used_mb"] < 1, volume_full
        report("9", exits=[e.code for e in finished], restarts_in_window=volume_full["restarts_in_window"],
               free_mb=[the(r, "command_failed")["free_mb_after_cleanup"] for r in volume_full["runs"]
                        if named(r, "command_failed")])


# ============================================================================ row 10


@pytest.fixture(scope="module")
def volume_lost() -> dict[str, Any]:
    from agent.pgdata import read_system_identifier

    c = make_cluster()
    with c:
        healthy(c)
        old = c.psql(PRIMARY, "select system_identifier from pg_control_system()")
        vol0 = c.volume_dir(PRIMARY)
        # The volume loses PGDATA (postgres keeps its open directory and shuts down into it).
        (vol0 / "pgdata").rename(vol0 / "pgdata.lost-by-test")
        c.delete_pod(PRIMARY)
        t0 = time.time()
        base = run_count(c, PRIMARY)
        lost = wait_exit(c, PRIMARY, t0, 30)[0]
        lost_lines = run_lines(c, PRIMARY)[base]
        listing = sorted(p.name for p in vol0.iterdir())
        # The operator decides to start a new cluster anyway.
        set_env(c, {"PGSFS_ALLOW_REINIT": old})  # names the cluster given up
        base = run_count(c, PRIMARY)
        c.delete_pod(PRIMARY)
        c.wait_ready([PRIMARY], timeout=60)
        reinit_lines = run_lines(c, PRIMARY)[base]
        new = c.psql(PRIMARY, "select system_identifier from pg_control_system()")
        # A restarted replica must now refuse, leaving its data as it was.
        pgdata1 = c.volume_dir(REPLICA) / "pgdata"
        before = {f: (pgdata1 / f).stat().st_mtime_ns for f in MANAGED}
        base = run_count(c, REPLICA)
        t1 = time.time()
        assert c.kill_pod(REPLICA, signal.SIGINT)
        shutdown, refusal = wait_exit(c, REPLICA, t1, 30, count=2)[:2]
        return {
            "old": old, "new": new, "lost": lost, "lost_lines": lost_lines, "listing": listing,
            "reinit_lines": reinit_lines, "shutdown": shutdown, "refusal": refusal,
            "replica_lines": run_lines(c, REPLICA)[base],  # the run after the shutdown
            "before": before,
            "after": {f: (pgdata1 / f).stat().st_mtime_ns for f in MANAGED},
            "replica_sysid": str(read_system_identifier(pgdata1)),
            "volume1": sorted(p.name for p in c.volume_dir(REPLICA).iterdir()),
        }


@pytest.fixture(scope="class")
def full_restart_volume_lost() -> dict[str, Any]:
    c = make_cluster()  # Parallel, as shipped
    with c:
        healthy(c)
        old = c.psql(PRIMARY, "select system_identifier from pg_control_system()")
        vol0, base, t0 = _all_pods_gone_and_pod_0s_volume_lost(c)
        c.scale(2)
        lost = wait_exit(c, PRIMARY, t0, 60)[0]
        return {
            "old": old,
            "lost": lost,
            "lines": run_lines(c, PRIMARY)[base],
            "listing": sorted(p.name for p in vol0.iterdir()),
        }


def _all_pods_gone_and_pod_0s_volume_lost(c: Cluster) -> tuple[Path, int, float]:
    """Every pod goes away (a node pool replaced) and pod 0's volume comes back empty; returns that
    volume, pod 0's run count and the time, before anything is scaled up again."""
    healthy(c)
    scale_down_to(c, 0)
    vol0 = c.volume_dir(PRIMARY)
    (vol0 / "pgdata").rename(vol0 / "pgdata.lost-by-test")
    return vol0, run_count(c, PRIMARY), time.time()


def test_a_member_whose_pod_comes_late_is_not_taken_for_absent() -> None:
    """Review H4: after a full restart with pod 0's volume lost, pod 1 exists but gets its address
    2 s later (a volume still attaching). Its "no such name" on the first pass once let pod 0
    initialise a new, empty cluster beside the real one; the manifest says it exists (PGSFS_MEMBERS),
    so pod 0 asks again until a negative cache could have expired, sees it, and refuses (exit 8)."""
    c = make_cluster()  # Parallel, as shipped; PGSFS_MEMBERS follows replicas (2)
    with c:
        _, base, t0 = _all_pods_gone_and_pod_0s_volume_lost(c)
        c.scale(1)
        wait_until(lambda: run_count(c, PRIMARY) > base, 30, 0.05, "pod 0 running")
        wait_until(lambda: time.time() - t0 > 2, 5, 0.1, "2 s without pod 1")
        c.scale(2)
        lost = wait_exit(c, PRIMARY, t0, 60)[0]
        lines = run_lines(c, PRIMARY)[base]
        assert lost.code == 8, event_names(lines)
        assert "initdb" not in event_names(lines)
        report("late_member", exit=lost.code, survey_s=the(lines, "peer_check")["duration_s"])


class TestFullRestartWithTheVolumeLost:
    """Row 10b: all pods restart together (Parallel) and the primary's volume is empty."""

    def test_the_replica_announces_its_data_and_the_primary_refuses(self, full_restart_volume_lost) -> None:
        lines = full_restart_volume_lost["lines"]
        assert full_restart_volume_lost["lost"].code == 8, event_names(lines)
        check = the(lines, "peer_check")
        # The replica's postgres is not running yet (it checks the primary first): its agent said it.
        [member] = check["members"]
        assert member["state"] == "holds_data" and member["system_identifier"] == full_restart_volume_lost["old"]
        assert "initdb" not in event_names(lines)
        assert full_restart_volume_lost["listing"] == [".pg-sfs-agent", "lost+found", "pgdata.lost-by-test"]
        report("10b", exit=full_restart_volume_lost["lost"].code, survey_s=check["duration_s"])


class TestPrimaryVolumeLost:
    """Row 10: the primary's PGDATA vanishes while the replica holds data."""

    def test_primary_refuses_to_initialise(self, volume_lost: dict[str, Any]) -> None:
        lines = volume_lost["lost_lines"]
        assert volume_lost["lost"].code == 8, event_names(lines)
        refused = the(lines, "primary_volume_lost")
        holders = refused["holders"]
        assert [h["member"] for h in holders] == ["postgresql-sfs-1.postgresql-svc.pg.svc.cluster.local"]
        assert holders[0]["system_identifier"] == volume_lost["old"]
        assert "PGSFS_ALLOW_REINIT" in refused["hint"]
        assert "initdb" not in event_names(lines)
        assert volume_lost["listing"] == [".pg-sfs-agent", "lost+found", "pgdata.lost-by-test"]  # nothing created

    def test_allow_reinit_initialises_a_new_cluster(self, volume_lost: dict[str, Any]) -> None:
        lines = volume_lost["reinit_lines"]
        check = the(lines, "peer_check")
        assert check["decision"] == "init" and check["overridden"] == volume_lost["old"], check
        assert [m["state"] for m in check["members"]] == ["holds_data"], check
        assert the(lines, "reinit_allowed")["system_identifier"] == volume_lost["old"]
        assert "moved_into_place" in event_names(lines)
        assert volume_lost["new"] != volume_lost["old"]

    def test_restarted_replica_refuses_the_new_cluster(self, volume_lost: dict[str, Any]) -> None:
        lines = volume_lost["replica_lines"]
        assert volume_lost["shutdown"].code == 0
        assert volume_lost["refusal"].code == 7, event_names(lines)
        refused = the(lines, "system_identifier_mismatch")
        assert refused["local_system_identifier"] == volume_lost["old"]
        assert refused["primary_system_identifier"] == volume_lost["new"]
        assert volume_lost["after"] == volume_lost["before"]  # managed files not rewritten
        assert volume_lost["replica_sysid"] == volume_lost["old"]
        assert volume_lost["volume1"] == [".pg-sfs-agent", "lost+found", "pgdata"]  # nothing moved aside
        report("10", exits=[volume_lost["lost"].code, volume_lost["refusal"].code])
