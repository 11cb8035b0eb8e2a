"""PersistentVolumes as real filesystems: one sparse ext4 image per claim, loop-mounted on its directory.

A pod's volume is then what a CSI volume is on a node: a filesystem of the requested size, with
`lost+found` at its root, that fills up (ENOSPC) when the size is used, and that outlives the pod
(a re-created pod with the same name mounts the same image again, like a retained PVC).

Mounts are made in the emulator's own (the root) mount namespace, so the pod shims (pod.py) and
podman (podman.py) bind-mount the directory as they always did and get the filesystem. Every mount is
found and released by its exact path, read from /proc/self/mountinfo: nothing here matches patterns
outside the directories it is given. mount, umount, mkfs.ext4 and losetup run as programs (there is no
library for them); a failure raises VolumeError with the program's stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where Cluster puts the run directory of each emulator run: <RUNS_DIR>/<prefix>/volumes/<claim>.
RUNS_DIR = REPO_ROOT / ".emulator" / "runs"
_RUN_PREFIX = re.compile(r"^pgsfs-[0-9a-f]{6}$")
_COMMAND_TIMEOUT = 60.0
# How long a busy volume gets to become unmountable before it is detached lazily.
UMOUNT_RETRY = 5.0
LOST_FOUND = "lost+found"

# Provisioning is check-then-create: two callers for one claim (the controller creating the pod and a
# test reaching for its volume) must not both format it.
_lock = threading.Lock()


class VolumeError(RuntimeError):
    """A volume could not be created, mounted or released."""


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo: where, what filesystem, from which device."""

    mount_point: Path
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[MountEntry]:
    """Every mount of this process's mount namespace, in mount order."""
    entries = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        entries.append(MountEntry(Path(_unescape(fields[4])), fields[sep + 1], _unescape(fields[sep + 2])))
    return entries


def _canonical(path: Path) -> Path:
    return Path(os.path.realpath(path))


def mount_at(path: Path) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path`, or None."""
    target = _canonical(path)
    found = [m for m in mounts() if m.mount_point == target]
    return found[-1] if found else None


def mounted_under(root: Path) -> list[Path]:
    """Mount points strictly below `root` (deepest first: the order to unmount them in)."""
    base = _canonical(root)
    below = {m.mount_point for m in mounts() if base in m.mount_point.parents}
    return sorted(below, key=lambda p: len(p.parts), reverse=True)


def _tool(name: str) -> str:
    """A system program by name; cron and sudo may leave /usr/sbin out of PATH."""
    found = shutil.which(name) or next((str(Path(d, name)) for d in ("/usr/sbin", "/sbin")
                                        if Path(d, name).exists()), None)
    if found is None:
        raise VolumeError(f"{name} is not installed (util-linux / e2fsprogs)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a system program; VolumeError with its stderr if it fails."""
    res = subprocess.run([_tool(argv[0]), *argv[1:]], capture_output=True, text=True, check=False,
                         timeout=_COMMAND_TIMEOUT)
    if res.returncode != 0:
        raise VolumeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def image_path(volume_dir: Path) -> Path:
    """The default image of a volume: beside its directory, `<dir>.img`."""
    return volume_dir.with_name(volume_dir.name + ".img")


def _format(image: Path, size_bytes: int) -> None:
    """A new sparse file of `size_bytes` holding an empty ext4 filesystem, created atomically."""
    image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".partial")
    # 0600: the image holds the raw blocks of every file in the volume, secrets included.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size_bytes)  # sparse: a 10 GiB volume costs what is written to it
    finally:
        os.close(fd)
    # -m 0: no blocks reserved for root, as the kubelet's mount-utils formats ext4 volumes
    # (mkfs.ext4 -F -m0): the agent and postgres run as postgres, so a 5 % root reserve would make
    # the volume smaller for them than it is on a cluster. Lazy inode table and journal init: the
    # blocks of a new sparse file already read as zeros, so writing them would only cost time and
    # disk (the 128 MiB journal of a 10 GiB volume).
    try:
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
              str(partial)])
    except VolumeError as exc:
        partial.unlink(missing_ok=True)
        raise VolumeError(f"cannot make a {size_bytes}-byte ext4 volume: {exc}") from None
    # Only a fully formatted image gets the real name: a crash during mkfs leaves no half volume.
    os.replace(partial, image)


def ensure_volume(dir: Path, size_bytes: int | None, image: Path | None = None) -> None:
    """Make `dir` the claim's volume: with a size, its ext4 image (created once) loop-mounted there;
    None keeps a plain directory. Idempotent: a mounted volume is left as it is."""
    dir.mkdir(parents=True, exist_ok=True)
    if size_bytes is None:
        return
    image = image if image is not None else image_path(dir)
    with _lock:
        if mount_at(dir) is not None:
            return
        # Mounting over files would hide them: they were meant for the volume, say so.
        if any(dir.iterdir()):
            raise VolumeError(f"{dir} already holds files; a volume mounted there would hide them")
        if not image.exists():
            _format(image, size_bytes)
        _run(["mount", "-o", "loop", str(image), str(dir)])


def _loop_backing_file(device: str) -> str | None:
    """The file a loop device reads, or None once it is detached."""
    try:
        return Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def _try_umount(dir: Path) -> bool:
    """One umount: True once nothing is mounted there, False while it is busy."""
    res = subprocess.run([_tool("umount"), str(dir)], capture_output=True, text=True, check=False,
                         timeout=_COMMAND_TIMEOUT)
    if res.returncode == 0 or mount_at(dir) is None:
        return True
    if "busy" in res.stderr:
        return False
    raise VolumeError(f"umount {dir} failed ({res.returncode}): {res.stderr.strip()}")


def release_volume(dir: Path, retry: float = UMOUNT_RETRY) -> bool:
    """Unmount the loop volume on `dir` and detach its loop device; False if nothing was mounted.

    A busy volume is retried for `retry` s, then detached lazily (it goes once its last user does).
    The image file stays: it is the claim's data.
    """
    entry = mount_at(dir)
    if entry is None:
        return False
    if not entry.source.startswith("/dev/loop"):
        raise VolumeError(f"{dir} is a {entry.fstype} mount of {entry.source}, not a loop volume")
    backing = _loop_backing_file(entry.source)
    try:
        wait_until(lambda: _try_umount(dir), retry, 0.1, f"{dir} to be unmountable")
    except TimeoutError:
        _run(["umount", "--lazy", str(dir)])
    # mount -o loop sets autoclear, so the device usually went with the umount; detach it if not
    # (still the same backing file: never a device someone attached since).
    if backing is not None and _loop_backing_file(entry.source) == backing:
        res = subprocess.run([_tool("losetup"), "-d", entry.source], capture_output=True, text=True,
                             check=False, timeout=_COMMAND_TIMEOUT)
        if res.returncode != 0 and _loop_backing_file(entry.source) == backing:
            raise VolumeError(f"losetup -d {entry.source} failed ({res.returncode}): {res.stderr.strip()}")
    return True


def wipe(dir: Path) -> None:
    """Delete everything in the volume but the filesystem's own lost+found (as a new PV has it)."""
    if not dir.is_dir():
        return
    keep = LOST_FOUND if mount_at(dir) is not None else None
    for entry in dir.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def release_stale(live_prefixes: set[str], runs_dir: Path = RUNS_DIR) -> list[Path]:
    """Release the loop volumes of dead runs: mounts at exactly `<runs_dir>/<prefix>/volumes/<claim>`
    whose prefix is not live. Returns the released mount points; raises after trying them all."""
    base = _canonical(runs_dir)
    released: list[Path] = []
    problems: list[str] = []
    for entry in mounts():
        try:
            prefix, sub, _claim = entry.mount_point.relative_to(base).parts
        except ValueError:
            continue  # not under the runs directory, or not at the depth of a volume
        if sub != "volumes" or not _RUN_PREFIX.match(prefix) or prefix in live_prefixes:
            continue
        if not entry.source.startswith("/dev/loop"):
            continue  # not one of ours (a test's tmpfs, say): left to whoever mounted it
        try:
            if release_volume(entry.mount_point):
                released.append(entry.mount_point)
        except VolumeError as exc:
            problems.append(str(exc))
    if problems:
        raise VolumeError("stale volumes not released: " + "; ".join(problems))
    return released
