"""A cluster under other names (k8s-overlays/name-prefix: kustomize's namePrefix `a-`): every member
finds its peers through the Service its own pod's FQDN names, as a second cluster in one namespace
would, with nothing in the manifest's environment saying that name."""

from __future__ import annotations

from emulator.manifests import load_spec
from emulator.waiting import wait_until
from tests.e2e.cluster_support import require_pods
from tests.e2e.fault_support import make_cluster, run_lines

require_pods()


def test_a_cluster_under_other_names_finds_its_peers() -> None:
    c = make_cluster(spec=load_spec(overlay="name-prefix"), replicas=2)
    with c:
        primary, replica = c.sts.pod_name(0), c.sts.pod_name(1)
        assert (primary, c.svc.name) == ("a-postgresql-sfs-0", "a-postgresql-svc")
        c.wait_ready(timeout=120)
        c.wait_streaming(timeout=120, replicas=2)
        c.psql(primary, "create table t (n int); insert into t values (1)")
        wait_until(lambda: c.try_psql(replica, "select count(*) from t").stdout.strip() == "1", 30, 0.2,
                   "the row on the replica")  # fmt: skip
        waited = [e for e in run_lines(c, replica)[-1] if e.get("event") == "dns_wait"]
        assert waited and waited[0]["name"] == "a-postgresql-sfs-0.a-postgresql-svc.pg.svc.cluster.local.", waited
