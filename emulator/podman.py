"""Pods as containers of the built image: podman in the pod's network namespace.

The default runtime of the emulator runs the host's agent in namespaces of its own making; this one
runs the image users deploy, with the manifest's securityContext turned into podman's flags, the
pod's volume, hosts and resolv.conf bind-mounted, and every exec (probes, `kubectl exec`) through
`podman exec`, so the kubelet's view (capabilities, user) is the runtime's own. Containers are named
after the pod's network namespace, which is unique to the emulator run, and removed when they exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from emulator.manifests import EmptyDir, SecurityContext

REPO_ROOT = Path(__file__).resolve().parents[1]
# Podman's settings for this machine kind: runc, rlimits runc may set, no default network.
CONTAINERS_CONF = REPO_ROOT / "docker" / "containers.conf"


class PodmanError(RuntimeError):
    """podman is missing or a podman command failed."""


def podman_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every podman command runs with (our containers.conf)."""
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    env.update(extra or {})
    return env


def available() -> bool:
    """Whether podman is installed."""
    return shutil.which("podman") is not None


def image_exists(image: str) -> bool:
    """Whether `image` is in local storage."""
    if not available():
        return False
    res = subprocess.run(["podman", "image", "exists", image], env=podman_env(), check=False,
                         capture_output=True, timeout=60)
    return res.returncode == 0


def security_flags(sc: SecurityContext | None) -> list[str]:
    """podman run flags for a securityContext: what the kubelet asks the runtime for."""
    if sc is None:
        return []
    flags = ["--cap-drop=all", *(f"--cap-add={c.lower()}" for c in sc.capabilities)]
    if sc.no_new_privs:
        flags.append("--security-opt=no-new-privileges")
    if sc.read_only_root_filesystem:
        # Kubernetes adds no tmpfs of its own: what must be writable is an emptyDir.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if sc.run_as_user is not None:
        user = str(sc.run_as_user)
        if sc.run_as_group is not None:
            user += f":{sc.run_as_group}"
        flags.append(f"--user={user}")
    elif sc.run_as_group is not None:
        flags.append(f"--user=0:{sc.run_as_group}")
    flags += [f"--group-add={g}" for g in sc.groups]
    return flags


def empty_dir_flags(dirs: tuple[EmptyDir, ...]) -> list[str]:
    """tmpfs mounts for emptyDirs (0777, as the kubelet makes them; sizeLimit as the tmpfs size)."""
    flags = []
    for d in dirs:
        opts = f"type=tmpfs,destination={d.mount_path},tmpfs-mode=1777"
        if d.tmpfs_size:
            opts += f",tmpfs-size={d.tmpfs_size}"
        flags += ["--mount", opts]
    return flags


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """The container's environment as podman's --env-file (0600: it holds the Secret's values)."""
    for key, value in env.items():
        if "\n" in value:
            raise PodmanError(f"env {key}: a value with a newline cannot go through --env-file")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{key}={value}\n" for key, value in env.items())


def run_argv(*, name: str, image: str, netns: str, hostname: str, command: tuple[str, ...],
             env_file: Path, volume_dir: Path, mount_path: str, files: list[tuple[Path, str]],
             security: SecurityContext | None, empty_dirs: tuple[EmptyDir, ...],
             stop_signal: int, grace: float, shared: tuple[tuple[Path, str], ...] = ()) -> list[str]:
    """`podman run` for one container of a pod (in the foreground: its output is the pod log)."""
    argv = [
        "podman", "run", "--rm", "--name", name, "--pull=never",
        f"--network=ns:/run/netns/{netns}", f"--hostname={hostname}", "--no-hosts", "--dns=none",
        f"--env-file={env_file}", f"--stop-signal={stop_signal}", f"--stop-timeout={max(1, int(grace))}",
        "--mount", f"type=bind,source={volume_dir},destination={mount_path}",
        # Podman would add a passwd entry for an unknown --user; Kubernetes runtimes do not.
        "--passwd=false",
    ]
    for source, target in shared:
        argv += ["--mount", f"type=bind,source={source},destination={target}"]
    for source, target in files:
        argv += ["--mount", f"type=bind,source={source},destination={target},ro=true"]
    argv += security_flags(security) + empty_dir_flags(empty_dirs)
    argv += [f"--entrypoint={json.dumps([command[0]])}", image, *command[1:]]
    return argv


def exec_argv(name: str, argv: list[str], *, env_keys: list[str], user: str | None,
              interactive: bool, privileged: bool = False) -> list[str]:
    """`podman exec`: values of env_keys come from podman's own environment (never argv).

    `privileged` gives the exec every capability: the node's view, for tests only.
    """
    cmd = ["podman", "exec"]
    if interactive:
        cmd.append("-i")
    if privileged:
        cmd.append("--privileged")
    if user is not None:
        cmd.append(f"--user={user}")
    cmd += [f"--env={key}" for key in env_keys]
    return [*cmd, name, *argv]


def container_pid(name: str, timeout: float, running: Callable[[], bool] = lambda: True) -> int | None:
    """Host PID of the container's PID 1 once it runs; None if the container ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(["podman", "container", "inspect", "--format", "{{.State.Pid}}", name],
                             env=podman_env(), capture_output=True, text=True, check=False, timeout=30)
        if res.returncode == 0 and res.stdout.strip() not in ("", "0"):
            return int(res.stdout.strip())
        if not running():
            return None
        time.sleep(0.05)
    raise PodmanError(f"container {name} did not start in {timeout}s")


def remove(name: str) -> None:
    """Remove the container if it still exists (never raises: cleanup)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["podman", "rm", "--force", "--time=0", "--ignore", name], env=podman_env(),
                       capture_output=True, check=False, timeout=60)


def remove_named_after(prefix: str) -> list[str]:
    """Remove the containers an emulator run named `prefix` left (names `<prefix>-<pod>-<n>`)."""
    if not available():
        return []
    res = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"], env=podman_env(),
                         capture_output=True, text=True, check=False, timeout=60)
    names = [n for n in res.stdout.split() if n.startswith(f"{prefix}-")]
    for name in names:
        remove(name)
    return names
