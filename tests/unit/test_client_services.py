"""The emulator's client Services (postgresql-rw, postgresql-ro) as it reads them from the manifests."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.manifests import DEFAULT_STOP_SIGNAL, ImageConfig, ManifestError, load_spec, spec_from_documents

IMAGE = ImageConfig(("pg-sfs-agent",), ("postgres",), DEFAULT_STOP_SIGNAL)
LABELS = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": "postgresql"}


def _documents(rw_pod: str, ordinal: str) -> list[dict[str, Any]]:
    container = {"name": "postgresql", "image": "x", "env": [{"name": "PGSFS_PRIMARY_ORDINAL", "value": ordinal}],
                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}  # fmt: skip
    sts = {"kind": "StatefulSet", "metadata": {"name": "db"},
           "spec": {"serviceName": "db-svc",
                    "template": {"metadata": {"labels": LABELS}, "spec": {"containers": [container]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}  # fmt: skip
    port = {"ports": [{"name": "pg", "port": 5432}]}
    return [
        sts,
        {"kind": "Service", "metadata": {"name": "db-svc"}, "spec": {"clusterIP": "None", "selector": LABELS, **port}},
        {"kind": "Service", "metadata": {"name": "db-rw"},
         "spec": {"selector": {**LABELS, "statefulset.kubernetes.io/pod-name": rw_pod}, **port}},
        {"kind": "Service", "metadata": {"name": "db-ro"}, "spec": {"selector": LABELS, **port}},
        {"kind": "Service", "metadata": {"name": "other"}, "spec": {"selector": {"app": "x"}, **port}},
    ]  # fmt: skip


def test_the_rw_service_follows_the_primary_ordinal_and_ro_takes_every_pod() -> None:
    clients = {c.name: c for c in spec_from_documents(_documents("db-1", "1"), IMAGE).clients}
    # A Service whose selector matches none of the pods' labels is not one of the StatefulSet's.
    assert set(clients) == {"db-rw", "db-ro"}
    assert clients["db-rw"].primary_only and not clients["db-ro"].primary_only
    assert clients["db-ro"].port == 5432 and clients["db-ro"].port_name == "pg"


def test_an_rw_selector_that_names_another_pod_than_the_ordinal_is_refused() -> None:
    # kustomize copies the ordinal into both; a manifest where they differ would send clients to a replica.
    with pytest.raises(ManifestError, match="selects pod db-0, but the pods' PGSFS_PRIMARY_ORDINAL names db-1"):
        spec_from_documents(_documents("db-0", "1"), IMAGE)


def test_the_shipped_manifests_have_both_client_services() -> None:
    clients = {c.name: c.primary_only for c in load_spec().clients}
    assert clients == {"postgresql-rw": True, "postgresql-ro": False}
