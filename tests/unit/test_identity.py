"""Unit tests of agent.identity: pod name parsing, roles and slot names."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.identity import PRIMARY, REPLICA, Identity, parse_pod_name, slot_name_for

# A DNS label as Kubernetes validates a StatefulSet name (RFC 1123 label, at most 63).
dns_labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z", fullmatch=True)
ordinals = st.integers(min_value=0, max_value=999_999_999)
SLOT = re.compile(r"\A[a-z0-9_]{1,63}\Z")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("postgresql-sfs-0", ("postgresql-sfs", 0)),
        ("postgresql-sfs-2", ("postgresql-sfs", 2)),
        ("db-10", ("db", 10)),
        ("a-0", ("a", 0)),
        ("pg-1-2", ("pg-1", 2)),
        ("x9-123456789", ("x9", 123456789)),
    ],
)
def test_parse_accepts_statefulset_pod_names(name: str, expected: tuple[str, int]) -> None:
    assert parse_pod_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "postgresql-sfs",  # no ordinal
        "postgresql-sfs-",  # dash, no digits
        "postgresql-sfs-01",  # leading zero
        "postgresql-sfs-00",
        "postgresql-sfs--1",  # negative
        "postgresql-sfs-x",  # non-numeric
        "postgresql-sfs-1a",
        "Postgresql-sfs-0",  # upper case
        "POSTGRESQL-SFS-0",
        "-0",  # empty statefulset name
        "pg_sfs-0",  # underscore is not in a DNS label
        "pg.sfs-0",  # a dot is not either
        " pg-sfs-0",
        "pg-sfs-+1",
        "pg-sfs-1234567890",  # more than the 9 digits the pattern allows
        "pg-sfs-\u0661",  # ARABIC-INDIC DIGIT ONE: int() accepts it, the pattern must not
    ],
)
def test_parse_rejects(name: str) -> None:
    assert parse_pod_name(name) is None


def test_parse_rejects_trailing_newline() -> None:
    assert parse_pod_name("pg-sfs-0\n") is None


@given(dns_labels, ordinals)
def test_parse_round_trip(label: str, ordinal: int) -> None:
    assert parse_pod_name(f"{label}-{ordinal}") == (label, ordinal)


@given(st.text(max_size=80))
def test_parse_never_raises_and_results_reassemble(name: str) -> None:
    assume(not name.endswith("\n"))  # see test_parse_rejects_trailing_newline
    parsed = parse_pod_name(name)
    if parsed is not None:
        sts, ordinal = parsed
        assert f"{sts}-{ordinal}" == name
        assert ordinal >= 0


@given(st.text(max_size=200))
def test_slot_name_is_always_valid(pod: str) -> None:
    # PostgreSQL slot names: lower case letters, digits, underscore, 1..63 (NAMEDATALEN - 1).
    slot = slot_name_for(pod or "x")
    assert SLOT.match(slot), slot


def test_slot_name_of_empty_pod_name_is_valid() -> None:
    assert SLOT.match(slot_name_for(""))


@given(dns_labels, ordinals)
def test_slot_name_of_real_pod_names(label: str, ordinal: int) -> None:
    slot = slot_name_for(f"{label}-{ordinal}")
    assert SLOT.match(slot)
    assert slot == f"{label}-{ordinal}".replace("-", "_")[:63]


def test_roles_and_peers() -> None:
    primary = Identity("postgresql-sfs-0", "postgresql-sfs", 0, 0)
    replica = Identity("postgresql-sfs-2", "postgresql-sfs", 2, 0)
    assert primary.role == PRIMARY
    assert replica.role == REPLICA
    assert replica.primary_pod == "postgresql-sfs-0"
    assert replica.peer_pod(1) == "postgresql-sfs-1"
    assert replica.slot_name == "postgresql_sfs_2"
    moved = Identity("postgresql-sfs-0", "postgresql-sfs", 0, 1)
    assert moved.role == REPLICA
    assert moved.primary_pod == "postgresql-sfs-1"
