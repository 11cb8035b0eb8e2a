"""The securityContext as the emulator reads it and hands it to setpriv and podman; who may write where."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.privileges import writable_by
from emulator.manifests import DEFAULT_CAPABILITIES, ManifestError, SecurityContext, security_context, shipped_security
from emulator.pod import apply_fs_group, security_prefix
from emulator.podman import security_flags

CAPS = st.sampled_from([*DEFAULT_CAPABILITIES, "KILL", "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"])


def _spec(pod_sc: dict[str, object] | None = None, ctr_sc: dict[str, object] | None = None) -> tuple[dict, dict]:
    container = {"name": "c", "securityContext": ctr_sc} if ctr_sc is not None else {"name": "c"}
    pod = {"containers": [container]}
    if pod_sc is not None:
        pod["securityContext"] = pod_sc
    return pod, container


def test_the_shipped_manifest() -> None:
    sc = shipped_security()
    assert sc.capabilities == ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")
    assert sc.run_as_user is None and sc.fs_group == 999 and sc.fs_group_change_policy == "OnRootMismatch"
    assert sc.no_new_privs and sc.read_only_root_filesystem
    assert sc.groups == (999,)


def test_no_security_context_is_the_runtime_default() -> None:
    sc = security_context(*_spec())
    assert sc == SecurityContext()
    assert "KILL" in sc.capabilities and not sc.no_new_privs


@given(drop=st.lists(CAPS, max_size=5), add=st.lists(CAPS, max_size=5), drop_all=st.booleans())
def test_capabilities_are_defaults_minus_drop_plus_add(drop: list[str], add: list[str], drop_all: bool) -> None:
    raw = {"drop": (["ALL"] if drop_all else []) + [f"CAP_{c}" if i % 2 else c for i, c in enumerate(drop)],
           "add": [c.lower() for c in add]}
    caps = set(security_context(*_spec(ctr_sc={"capabilities": raw})).capabilities)
    base = set() if drop_all else set(DEFAULT_CAPABILITIES) - set(drop)
    assert caps == base | set(add)


def test_the_container_wins_over_the_pod() -> None:
    sc = security_context(*_spec({"runAsUser": 1, "runAsGroup": 2, "fsGroup": 3, "supplementalGroups": [4, 3]},
                                 {"runAsUser": 10}))
    assert (sc.run_as_user, sc.run_as_group, sc.fs_group) == (10, 2, 3)
    assert sc.groups == (3, 4)


def test_run_as_non_root_without_a_user_is_refused() -> None:
    with pytest.raises(ManifestError, match="runAsNonRoot"):
        security_context(*_spec({"runAsNonRoot": True}))
    with pytest.raises(ManifestError, match="privileged"):
        security_context(*_spec(ctr_sc={"privileged": True}))


def test_setpriv_arguments() -> None:
    root = SecurityContext(capabilities=("CHOWN", "SETUID"), no_new_privs=True, fs_group=999)
    assert security_prefix(root) == ["setpriv", "--bounding-set=-all,+chown,+setuid", "--no-new-privs",
                                     "--groups=999", "--"]
    user = SecurityContext(run_as_user=1000680000, run_as_group=0, capabilities=())
    assert security_prefix(user) == ["setpriv", "--bounding-set=-all", "--reuid=1000680000", "--regid=0",
                                     "--clear-groups", "--"]
    assert security_prefix(None) == []


def test_podman_flags() -> None:
    sc = SecurityContext(run_as_user=999, run_as_group=999, fs_group=999, capabilities=(), no_new_privs=True,
                         read_only_root_filesystem=True)
    assert security_flags(sc) == ["--cap-drop=all", "--security-opt=no-new-privileges", "--read-only",
                                  "--read-only-tmpfs=false", "--user=999:999", "--group-add=999"]


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")


@ROOT_ONLY
def test_writable_by_follows_owner_then_group_then_others(tmp_path: Path) -> None:
    d = tmp_path / "vol"
    d.mkdir()
    os.chmod(d, 0o2775)
    os.chown(d, 0, 999)
    assert writable_by(d, 0, ())
    assert writable_by(d, 4242, (999,))
    assert not writable_by(d, 4242, (4242,))
    os.chmod(d, 0o755)
    assert not writable_by(d, 4242, (999,))
    os.chown(d, 4242, 999)
    assert writable_by(d, 4242, ())
    os.chmod(d, 0o555)
    assert not writable_by(d, 4242, (999,))  # the owner's bits decide for the owner


@ROOT_ONLY
def test_fs_group_as_the_kubelet_applies_it(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    (vol / "sub" / "f").write_text("x")
    os.chmod(vol / "sub" / "f", 0o600)
    assert apply_fs_group(vol, 999, "OnRootMismatch") == 3
    assert stat.S_IMODE(os.stat(vol).st_mode) & 0o2070 == 0o2070 and os.stat(vol).st_gid == 999
    assert stat.S_IMODE(os.stat(vol / "sub" / "f").st_mode) == 0o660
    # The root matches now: OnRootMismatch walks nothing; Always walks again.
    assert apply_fs_group(vol, 999, "OnRootMismatch") == 0
    assert apply_fs_group(vol, 999, "Always") == 3
