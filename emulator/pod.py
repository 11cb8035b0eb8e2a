"""A pod as a kubelet and container runtime make it: namespaces, mounts, signals, exec, logs.

The container is started by a shim (this file run as a script, stdlib only, like containerd-shim):
inside the pod's network namespace it unshares UTS, mount and PID namespaces, forks the container's
PID 1, which mounts the pod's volume and files and execs the container command, then waits for it
and records its exit status. Either dying takes the other with it (PR_SET_PDEATHSIG), and PID 1
dying takes every process of the pod (PID namespace semantics).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from emulator.manifests import EmptyDir, SecurityContext

# Linux constants (sched.h, mount.h, prctl.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

BASE_PATH = ("/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
             ":/sbin:/bin")
SA_DIR = "/run/secrets/kubernetes.io/serviceaccount"
SOCKET_DIR = "/run/postgresql"
_START_TIMEOUT = 10.0


class PodError(RuntimeError):
    """A pod or container operation failed."""


# --------------------------------------------------------------------------------------------
# Shim and container init: run as `python -I pod.py SPEC.json`; stdlib only, no project imports.


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc().mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None)
    _check(rc, f"mount {src} on {target}")


def _load_hostroot() -> Any:
    """emulator/hostroot.py, loaded by path: the shim runs isolated (-I), with no project on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_pgsfs_hostroot", Path(__file__).with_name("hostroot.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mount_empty_dir(target: str, opts: str, keep: list[str]) -> None:
    """A tmpfs at `target`; the "image" files below it (the host's checkout and venvs, which may
    live under /tmp) are bound back in, reached through descriptors opened before the cover."""
    below = [p for p in keep if os.path.commonpath([p, target]) == target and p != target]
    fds = {p: os.open(p, os.O_PATH) for p in below if os.path.exists(p)}
    try:
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        for path, fd in fds.items():
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    finally:
        for fd in fds.values():
            os.close(fd)


def _container_init(plan: dict[str, Any]) -> None:
    """PID 1 of the pod: mount what the kubelet mounts, set the hostname, exec the command.

    The command runs under the container's securityContext (capability bounding set, no_new_privs,
    user and groups) through util-linux's setpriv, as runc would set them before the exec.
    """
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    # Our own /proc, showing only this PID namespace.
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # The image's interpreter is readable by every user; the host's may not be (see hostroot.py).
    _load_hostroot().expose(plan.get("expose", []))
    read_only = bool(plan.get("read_only_root"))
    # Bind mounts first: their sources may live under /tmp or /run, hidden below.
    vol_parent = plan.get("volume_parent_tmpfs")
    if vol_parent:
        _mount("tmpfs", vol_parent, "tmpfs", MS_NOSUID | MS_NODEV, plan["volume_parent_opts"])
        os.makedirs(plan["mount_path"], exist_ok=True)
    # A mount point as the source: the bind takes the claim's filesystem itself.
    _mount(plan["volume_dir"], plan["mount_path"], None, MS_BIND)
    for src, target in plan.get("shared", []):
        # Beside the claim, under the same private parent: nothing is made on the host's root.
        if not vol_parent or os.path.commonpath([vol_parent, target]) != vol_parent:
            raise OSError(f"a shared claim is emulated only beside the data volume, under {vol_parent}: {target}")
        os.makedirs(target, exist_ok=True)
        _mount(src, target, None, MS_BIND)
    for src, target in plan["files"]:
        _mount(src, target, None, MS_BIND)
    if read_only:
        # readOnlyRootFilesystem: the image's files are read-only. Only the root's own mount flag
        # changes: mounts made before (the volume) keep theirs, and a bind mount made after copies
        # its source's, so every bind is done above.
        _mount("/", "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        if vol_parent:
            _mount(vol_parent, vol_parent, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    # Private /run and /dev/shm, as a container has (nothing shared between pods). /tmp stays the
    # host's unless an emptyDir covers it (the checkout and its venvs, which CI may keep there,
    # are bound back in then).
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.makedirs(SOCKET_DIR)
    if not read_only:
        # The image's /var/run/postgresql (2775, postgres): writable only while the root is.
        _mount("tmpfs", SOCKET_DIR, "tmpfs", MS_NOSUID | MS_NODEV, plan["socket_dir_opts"])
    if plan.get("service_account", True):
        # The service account's files (only the namespace here: nothing in the pod talks to the API).
        os.makedirs(SA_DIR)
        Path(SA_DIR, "namespace").write_text(plan["namespace"])
        os.chmod(SA_DIR, 0o755)
    if read_only:
        _mount("/run", "/run", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for target, opts in plan.get("empty_dirs", []):
        # emptyDir: a fresh writable directory (mode 0777, as the kubelet makes it).
        _mount_empty_dir(target, opts, plan.get("expose", []))
    hostname = plan["hostname"].encode()
    _check(_libc().sethostname(hostname, len(hostname)), "sethostname")
    os.chdir(plan.get("workdir", "/"))
    argv = [*plan.get("security_prefix", []), *plan["argv"]]
    os.execvpe(argv[0], argv, plan["env"])


def _write_json(dir_fd: int, name: str, data: dict[str, Any]) -> None:
    """Atomically write name (relative to dir_fd: the path may be hidden by the pod's mounts)."""
    tmp = name + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _guard(pipe_r: int, shim_pid: int) -> None:
    """Kill the pod's PID 1 when the shim dies: its own parent-death signal does not survive
    the agent's switch to the postgres user (the kernel clears it on credential changes)."""
    pidfd: list[int] = []

    def on_shim_death(_signum: int, _frame: Any) -> None:
        for fd in pidfd:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGHUP, on_shim_death)
    _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0), "prctl")
    if os.getppid() != shim_pid:
        os._exit(0)
    data = os.read(pipe_r, 64)
    if data.strip():
        with contextlib.suppress(ProcessLookupError):
            pidfd.append(os.pidfd_open(int(data)))
    while True:
        signal.pause()


def shim_main(plan_path: str) -> int:
    """The shim: new namespaces, fork PID 1, record its host PID and exit status."""
    plan = json.loads(Path(plan_path).read_text())
    libc = _libc()
    # Die with whoever started us (the emulator), and check it did not already die.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != plan["parent_pid"]:
        return 125
    state = Path(plan["state_file"])
    dir_fd = os.open(state.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The guard is forked before the PID namespace exists, so the pod never sees it.
    guard_r, guard_w = os.pipe()
    guard = os.fork()
    if guard == 0:
        os.close(guard_w)
        _guard(guard_r, os.getppid())
    os.close(guard_r)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    pid = os.fork()
    if pid == 0:
        try:
            _container_init(plan)
        except BaseException as exc:
            print(f"container init failed: {exc}", file=sys.stderr, flush=True)
            os._exit(127 if isinstance(exc, FileNotFoundError) else 128)
    os.write(guard_w, f"{pid}\n".encode())
    _write_json(dir_fd, state.name, {"pid1": pid, "started_at": time.time()})
    _, status = os.waitpid(pid, 0)
    os.kill(guard, signal.SIGKILL)
    os.waitpid(guard, 0)
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else None
    # Like a container runtime: 128 + N for death by signal N.
    exit_code = 128 + sig if sig is not None else code
    _write_json(dir_fd, state.name, {"pid1": pid, "finished_at": time.time(),
                                     "exit_code": exit_code, "signal": sig})
    return exit_code


# --------------------------------------------------------------------------------------------
# Host side.


def postgres_ids() -> tuple[int, int]:
    """uid and gid of the local postgres user (created by the postgresql-15 package)."""
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def resolv_conf(dns_ip: str, namespace: str, domain: str) -> str:
    """/etc/resolv.conf as the kubelet writes it for ClusterFirst pods."""
    return (f"nameserver {dns_ip}\n"
            f"search {namespace}.svc.{domain} svc.{domain} {domain}\n"
            "options ndots:5\n")


def hosts_file(ip: str, fqdn: str, hostname: str) -> str:
    """/etc/hosts as the kubelet writes it for a pod with hostname and subdomain."""
    return ("# Kubernetes-managed hosts file.\n"
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\n"
            "fe00::0\tip6-mcastprefix\n"
            "fe00::1\tip6-allnodes\n"
            "fe00::2\tip6-allrouters\n"
            f"{ip}\t{fqdn}\t{hostname}\n")


def security_prefix(sc: SecurityContext | None) -> list[str]:
    """setpriv arguments that apply a securityContext the way runc does before exec'ing the command.

    The capability bounding set becomes exactly the container's capabilities (root's effective set
    after the exec), no_new_privs follows allowPrivilegeEscalation, and a runAsUser switches user
    and group (gid from the image's passwd entry, else 0, as the kubelet does) with fsGroup and
    supplementalGroups as supplementary groups.
    """
    if sc is None:
        return []
    caps = ",".join(["-all", *(f"+{c.lower()}" for c in sc.capabilities)])
    argv = ["setpriv", f"--bounding-set={caps}"]
    if sc.no_new_privs:
        argv.append("--no-new-privs")
    if sc.run_as_user is not None or sc.run_as_group is not None:
        uid = sc.run_as_user or 0
        gid = sc.run_as_group
        if gid is None:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = 0
        argv += [f"--reuid={uid}", f"--regid={gid}"]
    groups = sc.groups
    argv.append(f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups")
    return [*argv, "--"]


def apply_fs_group(volume: Path, gid: int, policy: str) -> int:
    """What the kubelet does to a volume for fsGroup: group-own it, setgid dirs, group rw.

    With OnRootMismatch nothing is walked when the root already matches. Returns entries changed.
    """
    st = os.stat(volume)
    if policy == "OnRootMismatch" and st.st_gid == gid and (st.st_mode & 0o2070) == 0o2070:
        return 0
    changed = 0
    # Each directory is visited as "." of its own walk step, so only files are listed by name.
    for dirpath, _dirnames, filenames in os.walk(volume):
        for name in [".", *filenames]:
            full = dirpath if name == "." else os.path.join(dirpath, name)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                continue
            os.lchown(full, -1, gid)
            mode = info.st_mode & 0o7777
            mode |= 0o2770 if stat.S_ISDIR(info.st_mode) else 0o660
            os.chmod(full, mode)
            changed += 1
    return changed


@dataclass(frozen=True)
class PodTemplate:
    """What every container of one pod is made of (resolved from the StatefulSet spec)."""

    name: str
    namespace: str
    service_name: str
    domain: str
    dns_ip: str
    netns: str
    ip: str
    command: tuple[str, ...]
    env: dict[str, str]
    mount_path: str
    # The claim on the node: the mount point of its filesystem (emulator/volumes.py), or a plain
    # directory; either way both runtimes bind-mount it at mount_path.
    volume_dir: Path
    pod_dir: Path
    log_path: Path
    stop_signal: signal.Signals = signal.SIGINT
    grace_period: float = 30.0
    agent_bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    security: SecurityContext | None = None
    empty_dirs: tuple[EmptyDir, ...] = ()
    # Claims every pod mounts (host directory, mount path): one volume for the StatefulSet.
    shared_mounts: tuple[tuple[Path, str], ...] = ()
    # A container image to run with podman instead of the host's agent (see emulator/podman.py).
    image: str | None = None
    # automountServiceAccountToken: the service account's directory is mounted (its namespace file).
    service_account: bool = True
    # lifecycle.preStop exec command, run before the stop signal within the grace period.
    pre_stop: tuple[str, ...] | None = None

    @property
    def fqdn(self) -> str:
        """The pod's DNS name under its governing Service."""
        return f"{self.name}.{self.service_name}.{self.namespace}.svc.{self.domain}"

    def container_env(self) -> dict[str, str]:
        """The container's environment: what a runtime sets, then the manifest's variables."""
        env = {"PATH": f"{self.agent_bin_dir}:{BASE_PATH}", "HOSTNAME": self.name, "HOME": "/root"}
        env.update(self.env)
        return env


@dataclass
class ContainerStatus:
    """One run of the container, as `kubectl describe pod` would show it."""

    restart: int
    log_offset: int
    started_at: float
    pid1: int | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None


class Container:
    """One run of the pod's container: the shim process and the host PID of the pod's PID 1."""

    def __init__(self, shim: subprocess.Popen[bytes], state_file: Path, status: ContainerStatus,
                 name: str | None = None, on_finish: Callable[[], None] | None = None):
        self.shim = shim
        self.state_file = state_file
        self.status = status
        # The runtime's name for it (podman), None for the emulator's own shim.
        self.name = name
        self._on_finish = on_finish
        self._pidfd: int | None = None
        self._lock = threading.Lock()

    def attach_pid(self, pid: int | None) -> None:
        """Hold a pidfd on PID 1 as the runtime reported it (no PID-reuse races)."""
        if pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
        self.status.pid1 = pid

    def _attach(self, timeout: float) -> None:
        """Wait for the shim to report PID 1, then hold a pidfd on it (no PID-reuse races)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._read_state()
            if state.get("pid1"):
                pid = int(state["pid1"])
                try:
                    self._pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    self._pidfd = None
                self.status.pid1 = pid
                return
            if self.shim.poll() is not None:
                return
            time.sleep(0.01)
        raise PodError(f"container shim {self.shim.pid} did not start PID 1 in {timeout}s")

    def _read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    @property
    def pid1(self) -> int | None:
        """Host PID of the pod's PID 1 (None if it never started)."""
        return self.status.pid1

    def running(self) -> bool:
        """True while the shim (and so PID 1) lives."""
        if self.shim.poll() is None:
            return True
        self._finish()
        return False

    def _finish(self) -> None:
        with self._lock:
            if self.status.finished_at is not None:
                return
            state = self._read_state()
            self.status.finished_at = state.get("finished_at", time.time())
            code = self.shim.returncode
            self.status.exit_code = state.get("exit_code", code if code >= 0 else 128 - code)
            self.status.signal = state.get("signal")
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if self._on_finish is not None:
                self._on_finish()

    def send_signal(self, sig: int) -> bool:
        """Signal the pod's PID 1 through its pidfd; False if it is already gone."""
        with self._lock:
            if self._pidfd is None or self.shim.poll() is not None:
                return False
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                return False
            return True

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the container to exit; True if it did."""
        try:
            self.shim.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        self._finish()
        return True

    def stop(self, sig: int, grace: float) -> bool:
        """The kubelet's kill: `sig`, up to `grace` s, then SIGKILL; True if it exited in time."""
        if not self.running():
            return True
        self.send_signal(sig)
        if self.wait(grace):
            return True
        self.send_signal(signal.SIGKILL)
        if not self.wait(10.0):
            # PID 1 is unkillable only in D state; take the shim down too so nothing is left.
            self.shim.kill()
            self.wait(10.0)
        return False


class Pod:
    """One pod: a sandbox (network namespace, generated files, volume) and its containers."""

    def __init__(self, template: PodTemplate, register_pid: Callable[[int], None] | None = None):
        self.t = template
        self.register_pid = register_pid or (lambda _pid: None)
        self.containers: list[Container] = []
        # What the last preStop hook returned (None: none ran).
        self.pre_stop_result: subprocess.CompletedProcess[str] | None = None
        self._prepare_sandbox()

    @property
    def name(self) -> str:
        """Pod name."""
        return self.t.name

    @property
    def ip(self) -> str:
        """Pod IP."""
        return self.t.ip

    def _prepare_sandbox(self) -> None:
        t = self.t
        t.pod_dir.mkdir(parents=True, exist_ok=True)
        t.volume_dir.mkdir(parents=True, exist_ok=True)
        if t.security is not None and t.security.fs_group is not None:
            # On a mounted volume this is its filesystem's root (lost+found included), as the
            # kubelet applies fsGroup to the mounted volume.
            apply_fs_group(t.volume_dir, t.security.fs_group, t.security.fs_group_change_policy)
            for shared, _ in t.shared_mounts:
                apply_fs_group(shared, t.security.fs_group, t.security.fs_group_change_policy)
        t.log_path.parent.mkdir(parents=True, exist_ok=True)
        (t.pod_dir / "resolv.conf").write_text(resolv_conf(t.dns_ip, t.namespace, t.domain))
        (t.pod_dir / "hosts").write_text(hosts_file(t.ip, t.fqdn, t.name))

    def _plan(self, state_file: Path) -> dict[str, Any]:
        t = self.t
        uid, gid = postgres_ids()
        mount_path = Path(t.mount_path)
        plan: dict[str, Any] = {
            "parent_pid": os.getpid(),
            "state_file": str(state_file),
            "hostname": t.name,
            "namespace": t.namespace,
            "service_account": t.service_account,
            "volume_dir": str(t.volume_dir),
            "mount_path": str(mount_path),
            "files": [[str(t.pod_dir / "resolv.conf"), "/etc/resolv.conf"],
                      [str(t.pod_dir / "hosts"), "/etc/hosts"]],
            "socket_dir_opts": f"mode=2775,uid={uid},gid={gid}",
            "argv": list(t.command),
            "env": t.container_env(),
            "security_prefix": security_prefix(t.security),
            "read_only_root": bool(t.security and t.security.read_only_root_filesystem),
            "empty_dirs": [[d.mount_path, _empty_dir_opts(d, t.security)] for d in t.empty_dirs],
            "shared": [[str(source), target] for source, target in t.shared_mounts],
            # The interpreter, its venv and the checkout (an editable install) must be readable by
            # whatever user the agent becomes, as they are in the image.
            "expose": [os.path.abspath(t.agent_bin_dir.parent), os.path.realpath(t.agent_bin_dir / "python"),
                       str(Path(__file__).resolve().parents[1])],
        }
        # The mount point must exist; rather than create it on the host, put a private tmpfs on
        # its parent (/var/lib/postgresql: the postgres user's home, owned by it as in the image).
        parent = mount_path.parent
        if len(parent.parts) >= 4 and parent.is_dir():
            plan["volume_parent_tmpfs"] = str(parent)
            plan["volume_parent_opts"] = f"mode=0755,uid={uid},gid={gid}"
        elif not mount_path.is_dir():
            raise PodError(f"cannot mount the volume at {mount_path}: no such directory")
        return plan

    @property
    def container(self) -> Container | None:
        """The current (latest) container, if one was started."""
        return self.containers[-1] if self.containers else None

    @property
    def restarts(self) -> int:
        """How many times the container was restarted."""
        return max(0, len(self.containers) - 1)

    def start_container(self, exec_prefix: list[str]) -> Container:
        """Start a new container; `exec_prefix` enters the pod's netns (Network.exec_argv)."""
        if self.container is not None and self.container.running():
            raise PodError(f"{self.name}: container already running")
        restart = len(self.containers)
        state_file = self.t.pod_dir / f"container-{restart}.json"
        # A recreated pod reuses its directory: never read a previous incarnation's state.
        state_file.unlink(missing_ok=True)
        with self.t.log_path.open("ab") as log:
            offset = log.tell()
            starts = self.t.log_path.with_name(self.t.log_path.name + ".starts")
            with starts.open("a") as fh:
                fh.write(f"{restart} {offset}\n")
            if self.t.image:
                name, shim = self._spawn_podman(restart, log)
            else:
                name, shim = None, self._spawn_shim(restart, state_file, exec_prefix, log)
        self.register_pid(shim.pid)
        status = ContainerStatus(restart=restart, log_offset=offset, started_at=time.time())
        if name is None:
            container = Container(shim, state_file, status)
            self.containers.append(container)
            container._attach(_START_TIMEOUT)
        else:
            from emulator import podman

            container = Container(shim, state_file, status, name=name,
                                  on_finish=lambda: podman.remove(name))
            self.containers.append(container)
            container.attach_pid(podman.container_pid(name, _START_TIMEOUT * 3,
                                                      running=lambda: shim.poll() is None))
        if container.pid1:
            self.register_pid(container.pid1)
        return container

    def _spawn_shim(self, restart: int, state_file: Path, exec_prefix: list[str],
                    log: Any) -> subprocess.Popen[bytes]:
        plan_file = self.t.pod_dir / f"container-{restart}.plan.json"
        # The plan holds the resolved secrets, as the kubelet's own state would: keep it private.
        fd = os.open(plan_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._plan(state_file), fh)
        # A session of its own: a Ctrl-C at the terminal must not reach the pods directly.
        return subprocess.Popen(
            [*exec_prefix, sys.executable, "-I", str(Path(__file__).resolve()), str(plan_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/",
        )

    def _spawn_podman(self, restart: int, log: Any) -> tuple[str, subprocess.Popen[bytes]]:
        from emulator import podman

        t = self.t
        assert t.image is not None
        name = f"{t.netns}-{restart}"
        podman.remove(name)  # a leftover of a crashed run of this very pod
        env_file = t.pod_dir / f"container-{restart}.env"
        # The image's own PATH, HOME and HOSTNAME apply: only the manifest's variables are passed.
        podman.write_env_file(env_file, t.env)
        files = [(t.pod_dir / "resolv.conf", "/etc/resolv.conf"), (t.pod_dir / "hosts", "/etc/hosts")]
        if t.service_account:
            namespace_file = t.pod_dir / "namespace"
            namespace_file.write_text(t.namespace)
            files.append((namespace_file, f"{SA_DIR}/namespace"))
        argv = podman.run_argv(
            name=name, image=t.image, netns=t.netns, hostname=t.name, command=t.command,
            env_file=env_file, volume_dir=t.volume_dir, mount_path=t.mount_path, files=files,
            security=t.security, empty_dirs=t.empty_dirs, stop_signal=int(t.stop_signal),
            grace=t.grace_period, shared=t.shared_mounts,
        )
        shim = subprocess.Popen(argv, env=podman.podman_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        return name, shim

    def running(self) -> bool:
        """True while the current container runs."""
        c = self.container
        return c is not None and c.running()

    def stop(self, grace: float | None = None, sig: int | None = None, pre_stop: bool = True) -> bool:
        """Stop the container as the kubelet does: the preStop hook (bounded by the grace period),
        then STOPSIGNAL (or `sig`), the rest of the grace period (at least 2 s, as the kubelet
        grants a hook that ran over), SIGKILL. True if in time. A grace of 0 (a forced delete) skips
        the hook, as `pre_stop=False` does."""
        c = self.container
        if c is None:
            return True
        grace = self.t.grace_period if grace is None else grace
        if pre_stop and self.t.pre_stop and grace > 0 and c.running():
            started = time.monotonic()
            with contextlib.suppress(PodError):
                self.pre_stop_result = self.exec(list(self.t.pre_stop), timeout=grace)
            grace = max(2.0, grace - (time.monotonic() - started))
        return c.stop(sig if sig is not None else self.t.stop_signal, grace)

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send one signal to the pod's PID 1 (no escalation); False if it is not running."""
        c = self.container
        return c is not None and c.send_signal(sig)

    def exec_argv(self, argv: list[str], user: str | None = None, privileged: bool = False) -> list[str]:
        """Command line that runs `argv` inside the pod's namespaces (as `user`, default root).

        `privileged` skips the container's securityContext: the node's view, for tests that must
        see every process (like `kubectl debug node/...`), never what a pod's user gets.
        """
        c = self.container
        if c is None or c.pid1 is None or not c.running():
            raise PodError(f"{self.name}: container is not running")
        cmd = ["nsenter", "-t", str(c.pid1), "-n", "-m", "-u", "-p", "--"]
        if user is None:
            if not privileged:
                # kubectl exec and exec probes run with the container's securityContext.
                cmd += security_prefix(self.t.security)
        else:
            entry = pwd.getpwnam(user)
            cmd += ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                    "--init-groups", "--"]
        return cmd + list(argv)

    def exec_env(self, env: dict[str, str] | None = None,
                 user: str | None = None) -> dict[str, str]:
        """The environment of an exec: the container's, plus `env`."""
        merged = self.t.container_env()
        if user is not None:
            entry = pwd.getpwnam(user)
            merged.update({"HOME": entry.pw_dir, "USER": user, "LOGNAME": user})
        merged.update(env or {})
        return merged

    def exec(self, argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
             timeout: float = 60.0, input_text: str | None = None,
             privileged: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the pod like `kubectl exec` (bounded by `timeout`; killed after it)."""
        c = self.container
        if self.t.image:
            from emulator import podman

            if c is None or c.name is None or not c.running():
                raise PodError(f"{self.name}: container is not running")
            cmd = podman.exec_argv(c.name, argv, env_keys=sorted(env or {}), user=user,
                                   interactive=input_text is not None, privileged=privileged)
            run_env = podman.podman_env(env)
        else:
            cmd, run_env = self.exec_argv(argv, user, privileged), self.exec_env(env, user)
        proc = subprocess.Popen(
            cmd, env=run_env, cwd="/",
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            out, err = proc.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -signal.SIGKILL, out,
                                               err + f"\n(killed after {timeout}s)")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def probe(self, argv: tuple[str, ...], timeout: float) -> tuple[bool, str]:
        """An exec probe: exit 0 within `timeout` passes; a timeout fails (and is killed)."""
        try:
            res = self.exec(list(argv), timeout=timeout)
        except PodError as exc:
            return False, str(exc)
        return res.returncode == 0, (res.stdout + res.stderr).strip()


    def logs(self, previous: bool = False) -> str:
        """The current container's output, or the previous one's (`kubectl logs --previous`)."""
        return read_logs(self.t.log_path, previous)


def _empty_dir_opts(d: EmptyDir, sc: SecurityContext | None) -> str:
    """tmpfs options for an emptyDir: 0777 (group-owned and setgid with fsGroup), sizeLimit."""
    opts = "mode=0777"
    if sc is not None and sc.fs_group is not None:
        opts = f"mode=2777,gid={sc.fs_group}"
    if d.tmpfs_size:
        opts += f",size={d.tmpfs_size}"
    return opts


def read_logs(log_path: Path, previous: bool = False) -> str:
    """One container run's part of a pod log file, using the `.starts` offsets beside it."""
    starts_file = log_path.with_name(log_path.name + ".starts")
    try:
        starts = [int(line.split()[1]) for line in starts_file.read_text().splitlines() if line]
        data = log_path.read_bytes()
    except OSError:
        return ""
    if not starts:
        return data.decode(errors="replace")
    if previous:
        if len(starts) < 2:
            return ""
        return data[starts[-2]:starts[-1]].decode(errors="replace")
    return data[starts[-1]:].decode(errors="replace")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process started with its own session, and everything in its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(shim_main(sys.argv[1]))
