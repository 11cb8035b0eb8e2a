"""Kubernetes quantities of bytes as the emulator reads a volumeClaimTemplate's storage request."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.manifests import (
    DEFAULT_STOP_SIGNAL,
    ImageConfig,
    ManifestError,
    QuantityError,
    parse_quantity,
    spec_from_documents,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("10Gi", 10 * 2**30),
    ("600Mi", 600 * 2**20),
    ("64Ki", 64 * 2**10),
    ("2Ti", 2 * 2**40),
    ("1G", 10**9),
    ("500M", 500 * 10**6),
    ("64k", 64_000),
    ("1T", 10**12),
    ("1024", 1024),
    (" 10Gi ", 10 * 2**30),
    ("1.5Gi", 3 * 2**29),
    ("0.5Ki", 512),
    ("1.0001k", 1001),  # 1000.1 bytes: rounded up to a whole byte
    (4096, 4096),
])
def test_quantities(text: str | int, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("bad", ["10GB", "10gi", "10 Gi", "Gi", "", "-1Gi", "1e3", "1m", "ten", "0", "0Mi", 0, -5])
def test_bad_quantities_are_clear_errors(bad: str | int) -> None:
    with pytest.raises(QuantityError, match=r"invalid quantity .*(suffix|more than 0)"):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", [True, 1.5, None])
def test_non_quantity_types(bad: Any) -> None:
    with pytest.raises(QuantityError, match="string like 10Gi"):
        parse_quantity(bad)


@given(st.integers(min_value=1, max_value=2**20), st.sampled_from(["Ki", "Mi", "Gi", "k", "M", "G", ""]))
def test_integers_with_suffixes_multiply(n: int, suffix: str) -> None:
    factor = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}[suffix]
    assert parse_quantity(f"{n}{suffix}") == n * factor


def _documents(storage: object) -> list[dict[str, Any]]:
    claim: dict[str, Any] = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    if storage is not None:
        claim["spec"]["resources"] = {"requests": {"storage": storage}}
    container = {"name": "postgresql", "image": "x",
                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}
    sts = {"kind": "StatefulSet", "metadata": {"name": "db"},
           "spec": {"serviceName": "db-svc", "template": {"spec": {"containers": [container]}},
                    "volumeClaimTemplates": [claim]}}
    svc = {"kind": "Service", "metadata": {"name": "db-svc"}, "spec": {"ports": [{"port": 5432}]}}
    return [sts, svc]


IMAGE = ImageConfig(("pg-sfs-agent",), ("postgres",), DEFAULT_STOP_SIGNAL)


def test_the_claim_templates_storage_request_in_bytes() -> None:
    assert spec_from_documents(_documents("600Mi"), IMAGE).statefulset.volume_size_bytes == 600 * 2**20
    assert spec_from_documents(_documents(None), IMAGE).statefulset.volume_size_bytes is None


def test_a_bad_storage_request_names_the_field() -> None:
    with pytest.raises(ManifestError, match=r"volumeClaimTemplate data: spec\.resources\.requests\.storage: "
                                            r"invalid quantity '10GB'"):
        spec_from_documents(_documents("10GB"), IMAGE)
