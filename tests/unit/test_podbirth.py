"""Which pod template is current: pod ages from the volume, and the former primary's decision (review M3)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, cast

from hypothesis import given
from hypothesis import strategies as st

from agent import discovery, podbirth, render
from agent import switchover as sw
from agent.context import Context, World
from agent.managed import ManagedFiles
from agent.runner import Runner
from tests.unit.conftest import FakeClock, ListLogger
from tests.unit.test_render import parse_conf


def test_a_pods_birth_is_kept_across_its_containers_and_renewed_with_a_new_pod(tmp_path: Path) -> None:
    assert podbirth.pod_born(tmp_path, "uid-a", 100.0) == 100.0
    assert podbirth.pod_born(tmp_path, "uid-a", 250.0) == 100.0  # a container restart: the same pod
    assert podbirth.pod_born(tmp_path, "uid-b", 300.0) == 300.0  # the rollout made a new pod
    assert (tmp_path / podbirth.BIRTH_NAME).stat().st_mode & 0o777 == 0o600
    assert podbirth.pod_born(tmp_path, "", 400.0) is None  # no POD_UID: not known
    (tmp_path / podbirth.BIRTH_NAME).write_text("{not json")
    assert podbirth.pod_born(tmp_path, "uid-b", 500.0) == 500.0


def test_the_settings_file_says_which_template_the_member_runs() -> None:
    text = render.settings_file(port=5432, max_wal_senders=10, max_replication_slots=10, wal={},
                                template={podbirth.TEMPLATE_ORDINAL: "1", podbirth.TEMPLATE_BORN: "1700000000.500"})
    assert "pgsfs.primary_ordinal = '1'\n" in text and "pgsfs.pod_born = '1700000000.500'\n" in text


def test_a_promoted_member_restarted_before_the_rollout_reached_it_keeps_its_role() -> None:
    # Review M3: switch 1 -> 0. Pod 1 (rolled, born 200) handed the role to pod 0 (born 100, its
    # template still names 1). Pod 0's container restarts: pod 1's younger template names pod 0.
    assert sw.decide_template(0, 100.0, 1, successor_names=0, successor_born=200.0) == sw.KEEP_ROLE
    # The normal switch to a lower ordinal: pod 1 (rolled first, born 200, names 0) hands off to pod 0,
    # whose older template still names 1.
    assert sw.decide_template(1, 200.0, 0, successor_names=1, successor_born=100.0) == sw.HAND_OFF
    # Agreement, or nothing known (an older agent, no POD_UID): the template is followed, as before.
    assert sw.decide_template(0, 100.0, 1, successor_names=1, successor_born=200.0) == sw.HAND_OFF
    assert sw.decide_template(0, None, 1, successor_names=0, successor_born=200.0) == sw.HAND_OFF
    assert sw.decide_template(0, 100.0, 1, successor_names=None, successor_born=None) == sw.HAND_OFF
    # The ordinal moved twice: the younger successor names a third member.
    assert sw.decide_template(0, 100.0, 1, successor_names=2, successor_born=200.0) == sw.REFUSE_TEMPLATES_DISAGREE


@given(own=st.integers(0, 2), successor=st.integers(0, 2), names=st.one_of(st.none(), st.integers(0, 2)),
       own_born=st.one_of(st.none(), st.floats(0, 1e9)), successor_born=st.one_of(st.none(), st.floats(0, 1e9)))
def test_a_former_primary_keeps_its_role_only_when_a_younger_template_names_it(
    own: int, successor: int, names: int | None, own_born: float | None, successor_born: float | None
) -> None:
    decided = sw.decide_template(own, own_born, successor, names, successor_born)
    if decided == sw.KEEP_ROLE:
        assert names == own and own_born is not None and successor_born is not None and successor_born > own_born
    if names is None or names == successor:
        assert decided == sw.HAND_OFF


def test_a_member_kept_primary_on_a_replica_ordinal_is_synchronous_and_says_its_template(
    make_config: Callable[..., Any], log: ListLogger, clock: FakeClock, tmp_path: Path
) -> None:
    # Review M3 with PGSFS_SYNCHRONOUS_STANDBYS: pod 0, kept primary while its template still names
    # pod 1, gets synchronous_standby_names over the other members as any primary does.
    config = make_config(POD_NAME="postgresql-sfs-0", PGSFS_PRIMARY_ORDINAL="1", PGSFS_SYNCHRONOUS_STANDBYS="ANY 1",
                         PGDATA=str(tmp_path / "pgdata"), PGSFS_STATE_DIR=str(tmp_path / "state"), POD_UID="uid-0")
    nothing = lambda name, rdtype: discovery.DnsAnswer(name, rdtype, discovery.NO_RECORD, negative_ttl=5)  # noqa: E731
    ctx = Context(config, cast(Any, SimpleNamespace(wal=None)), World(Runner(), nothing, clock=clock), log)
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "state").mkdir()
    files = ManagedFiles(ctx)
    files.write_config(tmp_path / "pgdata", standby=False)
    conf = parse_conf((tmp_path / "pgdata" / render.CONF_NAME).read_text())
    assert conf["synchronous_standby_names"].startswith('ANY 1 ("postgresql-sfs-1", "postgresql-sfs-2"')
    assert "postgresql-sfs-0" not in conf["synchronous_standby_names"]
    assert conf[podbirth.TEMPLATE_ORDINAL] == "1" and float(conf[podbirth.TEMPLATE_BORN]) > 0
    files.write_config(tmp_path / "pgdata", standby=True)  # the same member as a plain standby: none
    assert "synchronous_standby_names" not in parse_conf((tmp_path / "pgdata" / render.CONF_NAME).read_text())
