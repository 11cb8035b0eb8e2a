"""Durable file operations: atomic writes, fsync of directories, ownership, reads root can trust."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every file and directory of the filesystem holding `path` to disk (syncfs(2)).

    One call after building a cluster with fsync off replaces thousands of fsyncs; since Linux 5.8
    it reports write-back errors too. Where syncfs is missing, sync(2) does the same, for all.
    """
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_atomic(path: Path, content: str, *, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write beside, fsync, rename over, fsync the directory: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, content.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def open_dir_nofollow(path: Path) -> int:
    """A descriptor of directory `path`; OSError (ELOOP, ENOTDIR) when it is a symbolic link or no
    directory, so whatever root does through it stays in that very directory."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_limited(path: Path, limit: int = 65536) -> bytes:
    """At most `limit` bytes of the regular file `path`, never through a symbolic link (ELOOP) and
    never from a FIFO or a device (EINVAL), which could block or never end: how root, and the probes,
    read a file in a directory postgres can write."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"not a regular file: {path}")
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, limit - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


def fix_tree_ownership(root: Path, uid: int, gid: int | None) -> int:
    """chown every entry under root that is not uid:gid (gid None: only the owner, keeping the
    group, as the official entrypoint's `find ! -user postgres -exec chown postgres` does);
    returns how many were changed.

    No symbolic link is ever followed, the top included (a link there is refused with ELOOP): the
    walk holds each directory open and changes its entries through that descriptor, so a link
    planted anywhere, even while the walk runs, is changed itself and never its target.
    """
    top = open_dir_nofollow(root)
    changed = 0
    try:
        for _path, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in (".", *dirnames, *filenames):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if st.st_uid != uid or (gid is not None and st.st_gid != gid):
                    os.chown(name, uid, -1 if gid is None else gid, dir_fd=dir_fd, follow_symlinks=False)
                    changed += 1
    finally:
        os.close(top)
    return changed


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def tree_size(root: Path) -> int:
    """Bytes of the regular files below root (links not followed)."""
    return sum(f.lstat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


def remove_durably(path: Path) -> None:
    """Unlink `path` if it exists, and make that survive a crash (fsync of its directory)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
