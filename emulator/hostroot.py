"""Make the host's Python and checkout readable by the postgres user, inside a private mount namespace.

In the image the agent's interpreter lives in /usr and /opt, readable by everyone, and the agent
drops from root to postgres part-way through a start. On a developer's or CI's machine the
interpreter may live under /root/.pyenv (and a checkout under a 0700 directory), so after the drop
a lazy import fails. The image never has that problem, so the emulator gives the pod the image's
property without touching the host: in the pod's own mount namespace, every directory on the way
to those paths that others cannot traverse is covered by a 0755 tmpfs whose entries are bind mounts
of the originals (reached through a file descriptor opened before the cover, as /proc/self/fd/N).

Stdlib only: the pod shim imports it before anything of the project's. Run as a program,
`python -I hostroot.py PATH... -- ARGV` does this in a new mount namespace, then execs ARGV (the
integration tests start the agent so).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


def _others_cannot_traverse(path: str) -> bool:
    return not os.stat(path).st_mode & stat.S_IXOTH


def _cover(directory: str) -> None:
    """Put a 0755 tmpfs on `directory` holding bind mounts of everything it held."""
    st = os.stat(directory)
    names = os.listdir(directory)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV,
               f"mode=0755,uid={st.st_uid},gid={st.st_gid}")
        for name in names:
            source = f"/proc/self/fd/{fd}/{name}"
            target = os.path.join(directory, name)
            try:
                info = os.lstat(source)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(source), target)
                continue
            if stat.S_ISDIR(info.st_mode):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
            _mount(source, target, None, MS_BIND | MS_REC)
    finally:
        os.close(fd)


def expose(paths: list[str]) -> list[str]:
    """Cover each ancestor of `paths` that others cannot traverse; returns the covered directories.

    Must run in a private mount namespace: the covers are mounts.
    """
    covered: list[str] = []
    for path in paths:
        parts = os.path.realpath(path).split(os.sep)[1:]
        current = ""
        for part in parts[:-1] if os.path.isfile(path) else parts:
            current += os.sep + part
            if current in covered or not os.path.isdir(current):
                continue
            if _others_cannot_traverse(current):
                _cover(current)
                covered.append(current)
    return covered


def main(argv: list[str]) -> int:
    """`hostroot.py PATH... -- ARGV`: new mount namespace, expose the paths, exec ARGV."""
    if "--" not in argv:
        print("usage: hostroot.py PATH... -- ARGV", file=sys.stderr)
        return 2
    split = argv.index("--")
    paths, command = argv[:split], argv[split + 1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        print(f"hostroot: unshare: {os.strerror(err)}", file=sys.stderr)
        return 126
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    expose(paths)
    os.execvp(command[0], command)
    return 127  # not reached


def wrap(argv: list[str], paths: list[str]) -> list[str]:
    """The command line that runs argv with `paths` readable by every user (for tests)."""
    return [sys.executable, "-I", os.path.abspath(__file__), *paths, "--", *argv]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
