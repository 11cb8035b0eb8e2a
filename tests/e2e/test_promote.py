"""The primary's volume is lost: promote the most advanced replica, move the primary ordinal, carry on.

`pg-sfs-agent promote` is refused while the primary runs. Once its volume is gone (its pod then
refuses to initialise, exit 8), promote succeeds on a replica; the StatefulSet's pod template gets
PGSFS_PRIMARY_ORDINAL=1 and rolls from the highest ordinal down (each pod deleted once the one
before is Ready, as a RollingUpdate does); every member ends up following ordinal 1, with every
row the old primary acknowledged before it was lost.
"""

from __future__ import annotations

import json
import time

from emulator.waiting import wait_until
from tests.e2e.cluster_support import pod, require_pods, wait_visible
from tests.e2e.fault_support import (
    PRIMARY,
    env_for_new_pods,
    exits,
    healthy,
    make_cluster,
    report,
)

require_pods()

ROWS = 200


def _promote(c, name: str, *args: str):  # type: ignore[no-untyped-def]
    res = c.exec_in_pod(name, ["pg-sfs-agent", "promote", *args], timeout=120)
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}), res.stderr


def test_lost_primary_volume_promote_and_move_the_primary_ordinal() -> None:
    c = make_cluster(replicas=3)
    with c:
        healthy(c)
        # Refused while the primary accepts writes: nothing changes.
        code, shown, _ = _promote(c, pod(1))
        assert code == 14, shown
        assert any(o["member"] == PRIMARY and o["in_recovery"] is False for o in shown["others"]), shown
        assert c.psql(pod(1), "select pg_is_in_recovery()") == "t"

        c.psql(PRIMARY, f"create table acked (n int); insert into acked select generate_series(1, {ROWS})")
        wait_visible(c, [pod(1), pod(2)], "select count(*) from acked", str(ROWS), 30)

        vol0 = c.volume_dir(PRIMARY)
        (vol0 / "pgdata").rename(vol0 / "pgdata.lost-by-test")
        since = time.time()
        c.delete_pod(PRIMARY)
        wait_until(lambda: any(e.code == 8 for e in exits(c, PRIMARY, since)), 60, 0.2, "the primary's exit 8")

        # Pod 0 resolves but runs no postgres: promote fails closed until the operator names it down.
        code, shown, err = _promote(c, pod(1), "--dry-run")
        assert code == 14 and "--assume-down" in shown["refused"], (shown, err)
        code, shown, err = _promote(c, pod(1), "--dry-run", "--assume-down", PRIMARY)
        assert code == 0 and shown["refused"] is None and "promoted" not in shown, (shown, err)
        code, shown, err = _promote(c, pod(1), "--assume-down", PRIMARY)
        assert code == 0 and shown["promoted"] is True, (shown, err)
        promoted_at = time.monotonic()
        assert c.psql(pod(1), "select pg_is_in_recovery()") == "f"

        # The pod template changes; the rollout replaces pods from the highest ordinal down.
        with env_for_new_pods(c, {"PGSFS_PRIMARY_ORDINAL": "1"}):
            for name in (pod(2), pod(1), PRIMARY):
                c.delete_pod(name)
                c.wait_ready([name], timeout=120)
        rolled = time.monotonic() - promoted_at

        def both_stream() -> bool:
            out = c.try_psql(pod(1), "select application_name, state from pg_stat_replication order by 1")
            return out.stdout.split() == [f"{PRIMARY}|streaming", f"{pod(2)}|streaming"]

        wait_until(both_stream, 60, 0.2, "pods 0 and 2 streaming from pod 1")
        for name in (PRIMARY, pod(1), pod(2)):
            assert c.psql(name, "select count(*) from acked") == str(ROWS), name
        c.psql(pod(1), "insert into acked values (0)")
        wait_visible(c, [PRIMARY, pod(2)], "select count(*) from acked", str(ROWS + 1), 30)
        timeline = c.psql(pod(1), "select timeline_id from pg_control_checkpoint()")
        report("promote", rollout_s=round(rolled, 1), timeline=timeline)


def test_synchronous_commits_survive_the_primarys_loss_through_promote() -> None:
    # ANY 1: a commit returns only once a replica has it. Right after a burst of acknowledged commits
    # the primary's volume is lost and its pod killed (SIGKILL): the promoted replica has them all.
    c = make_cluster(replicas=2, env={"PGSFS_SYNCHRONOUS_STANDBYS": "ANY 1"})
    with c:
        healthy(c)
        c.psql(PRIMARY, "create table acked (n int)")
        for n in range(1, 51):  # bounded: 50 separate acknowledged commits
            c.psql(PRIMARY, f"insert into acked values ({n})")
        # The volume loses PGDATA (postgres keeps its open directory), then the pod dies at once.
        vol0 = c.volume_dir(PRIMARY)
        (vol0 / "pgdata").rename(vol0 / "pgdata.lost-by-test")
        since = time.time()
        c.delete_pod(PRIMARY, grace=0)
        wait_until(lambda: any(e.code == 8 for e in exits(c, PRIMARY, since)), 60, 0.2, "the primary's exit 8")
        code, shown, err = _promote(c, pod(1), "--assume-down", PRIMARY)
        assert code == 0 and shown["promoted"] is True, (shown, err)
        assert c.psql(pod(1), "select count(*), max(n) from acked") == "50|50"
