"""Who the agent runs as: root only to hand postgres what it needs, then postgres for everything else.

Like the official image's entrypoint (root fixes ownership, then `gosu postgres` re-runs it), a start
as root does the few things that need root, then becomes postgres in this very process. From then
on the agent, initdb, the temporary server, pg_basebackup and the initdb.d scripts all run as one
user with no capabilities, so no signal ever crosses users (stopping a child of another uid needs
CAP_KILL, which the shipped securityContext does not grant).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config
from agent.errors import DataDirConflict
from agent.files import fix_tree_ownership, open_dir_nofollow
from agent.pgdata import staging_dir_for, tombstone_for, work_dir_for
from agent.runner import RunAs

POSTGRES_USER_NAME = "postgres"
# The official image's socket directory (mode 2777 there): postgres' lock file and socket go here.
SOCKET_DIR = Path("/var/run/postgresql")
# Where Debian and the official image keep nss_wrapper (the official entrypoint searches the same).
NSS_WRAPPER_GLOBS = ("/usr/lib/*/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so", "/lib/*/libnss_wrapper.so")
NSS_VARIABLES = ("LD_PRELOAD", "NSS_WRAPPER_PASSWD", "NSS_WRAPPER_GROUP")


@dataclass(frozen=True)
class Prepared:
    """What root changed before dropping to postgres (the `ownership_fixed` and `mode_fixed` lines),
    and the groups postgres keeps."""

    groups: tuple[int, ...]
    entries_chowned: int
    chowned_dirs: tuple[str, ...]
    pgdata_mode_was: int | None = None


def postgres_account() -> RunAs | None:
    """The account PostgreSQL runs as when the agent is root; None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_USER_NAME)
    except KeyError as exc:
        raise DataDirConflict(
            "running as root but there is no 'postgres' user to run PostgreSQL as",
            hint="use an image based on the official postgres image (user postgres, uid 999)",
        ) from exc
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def account_groups(account: RunAs) -> tuple[int, ...]:
    """The groups postgres keeps: its own (as initgroups gives them) and the container's
    supplementary groups except root's (Kubernetes gives every process fsGroup and
    supplementalGroups; the volume's group access rests on them)."""
    own = set(os.getgrouplist(POSTGRES_USER_NAME, account.gid))
    given = set(os.getgroups()) - {0}
    return tuple(sorted(own | given))


def writable_by(path: Path, uid: int, gids: tuple[int, ...]) -> bool:
    """Whether uid (with these groups, and no capabilities) may create entries in directory `path`."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IXOTH)


def refuse_links(config: Config) -> None:
    """Refuse, before root touches anything, a PGDATA, state directory or WAL directory that is a
    symbolic link: postgres can write where they live, so it could plant one aiming root's chown at /etc."""
    named = [("PGDATA", config.pgdata), ("PGSFS_STATE_DIR", config.state_dir)]
    if config.waldir is not None:
        named.append(("POSTGRES_INITDB_WALDIR", config.waldir))
    for setting, path in named:
        if path.is_symlink():
            raise DataDirConflict(
                f"{setting} {path} is a symbolic link (to {os.readlink(path)}); the agent, as root, never "
                "follows a link where postgres can write, since postgres could have planted it",
                hint=f"set {setting} to the real directory, or remove the link if you did not make it "
                "(then find out who did: only code running as postgres could)",
                path=str(path),
            )


def _chown_mode(path: Path, uid: int, mode: int | None) -> None:
    """chown (owner only) and chmod a directory through a descriptor that refuses a symbolic link."""
    fd = open_dir_nofollow(path)
    try:
        os.fchown(fd, uid, -1)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _make_dir(path: Path, setting: str, value: Path, mode: int = 0o777) -> None:
    """mkdir -p, or a clear refusal naming the setting (a read-only root filesystem, a bad path)."""
    try:
        path.mkdir(mode=mode, parents=True)
    except OSError as exc:
        raise DataDirConflict(
            f"{path} (for {setting}={value}) could not be created: {exc.strerror}",
            hint="point it at a directory on a writable volume: under a read-only root filesystem only the "
            "volumes, /tmp and /var/run/postgresql can be written",
            setting=setting,
        ) from exc


def prepare_as_root(config: Config, account: RunAs) -> Prepared:
    """Give postgres the directories it needs: the volume, the state directory, PGDATA, the socket dir.

    Only ownership and modes change, and only where postgres could not otherwise work; nothing is
    deleted or moved, and no symbolic link is followed (refused at PGDATA and the state directory).
    Runs before any child is started.
    """
    refuse_links(config)
    groups = account_groups(account)
    chowned: list[str] = []
    volume = config.pgdata.parent
    if not volume.is_dir():
        # Only when missing: mkdir of an existing mount point under a read-only root fails (EROFS).
        _make_dir(volume, "PGDATA", config.pgdata)
    # The agent builds beside PGDATA and renames into place, so postgres must write in its parent.
    # With the shipped manifest fsGroup already allows that; a bare root-owned volume does not.
    if not writable_by(volume, account.uid, groups):
        _chown_mode(volume, account.uid, stat.S_IMODE(os.stat(volume).st_mode) | stat.S_IRWXU)
        chowned.append(str(volume))
    state_dir = config.state_dir
    entries = 0
    if state_dir.is_dir():
        # The owner only: a setgid volume (fsGroup) gives new files its group, and that stays.
        entries += fix_tree_ownership(state_dir, account.uid, None)
        _chown_mode(state_dir, account.uid, 0o700)
    else:
        # New, so not a fix worth reporting.
        _make_dir(state_dir, "PGSFS_STATE_DIR", state_dir, mode=0o700)
        _chown_mode(state_dir, account.uid, 0o700)
    if config.waldir is not None:
        # As the official entrypoint does at every start: create it, hand it to postgres, mode 0700
        # (a WAL volume's root is root's, where initdb as postgres could not create the directory).
        if not config.waldir.is_dir():
            _make_dir(config.waldir, "POSTGRES_INITDB_WALDIR", config.waldir, mode=0o700)
        entries += fix_tree_ownership(config.waldir, account.uid, None)
        _chown_mode(config.waldir, account.uid, 0o700)
    builds = (work_dir_for(config.pgdata), staging_dir_for(config.pgdata), tombstone_for(config.pgdata))
    for tree in (config.pgdata, *builds):
        # A build directory that is a link is left alone: postgres uses it with its own rights only.
        if tree.is_dir() and not tree.is_symlink():
            entries += fix_tree_ownership(tree, account.uid, None)
    mode_was = None
    if config.pgdata.is_dir() and stat.S_IMODE(os.lstat(config.pgdata).st_mode) & 0o077:
        mode_was = stat.S_IMODE(os.lstat(config.pgdata).st_mode)
        _chown_mode(config.pgdata, account.uid, 0o700)
    # Best effort, as in the official entrypoint: with a read-only root filesystem it is an emptyDir.
    try:
        if SOCKET_DIR.is_dir() and not writable_by(SOCKET_DIR, account.uid, groups):
            os.chown(SOCKET_DIR, account.uid, account.gid)
            os.chmod(SOCKET_DIR, 0o3775)  # noqa: S103 (the official image uses 2777 here)
            chowned.append(str(SOCKET_DIR))
    except OSError:
        pass
    return Prepared(groups, entries, tuple(chowned), mode_was)


def drop_to(account: RunAs, groups: tuple[int, ...]) -> None:
    """Become the account for good: groups, gid, then uid (which clears every capability)."""
    os.setgroups(list(groups))
    os.setgid(account.gid)
    os.setuid(account.uid)
    # Defence in depth (review F-I2): the drop must be for good, whatever capabilities the runtime left.
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RuntimeError("root could be regained after dropping to postgres: refusing to go on")
    os.environ["HOME"] = account.home
    os.environ["USER"] = os.environ["LOGNAME"] = POSTGRES_USER_NAME


def check_unprivileged(config: Config) -> None:
    """Started as a non-root user: the volume must let us build beside PGDATA."""
    volume = config.pgdata.parent
    uid = os.geteuid()
    groups = tuple(sorted({os.getegid(), *os.getgroups()}))
    try:
        ok = writable_by(volume, uid, groups) if volume.exists() else writable_by(volume.parent, uid, groups)
    except OSError:
        ok = False
    if not ok:
        raise DataDirConflict(
            f"the agent runs as uid {uid} (groups {', '.join(map(str, groups))}) and cannot write in "
            f"{volume}, the directory holding PGDATA, where it builds and keeps its state",
            hint="set the pod's securityContext.fsGroup (the kubelet then makes the volume group-writable), "
            "or start the container as root (it fixes ownership, then drops to postgres)",
            volume=str(volume),
        )


def find_nss_wrapper() -> str | None:
    """The nss_wrapper library, if the image has one."""
    import glob

    for pattern in NSS_WRAPPER_GLOBS:
        for candidate in sorted(glob.glob(pattern)):
            if os.path.getsize(candidate) > 0:
                return candidate
    return None


def nss_wrapper_env(state_dir: Path) -> dict[str, str]:
    """When our uid has no passwd entry (OpenShift's arbitrary uids), a fake one for initdb and psql.

    initdb refuses to run as a user it cannot look up; the official image solves this the same way.
    Returns the variables to set, or nothing when the uid is known or nss_wrapper is missing.
    """
    uid, gid = os.geteuid(), os.getegid()
    try:
        pwd.getpwuid(uid)
        return {}
    except KeyError:
        pass
    library = find_nss_wrapper()
    if library is None:
        return {}
    folder = state_dir / "nss"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwd, group = folder / "passwd", folder / "group"
    home = str(state_dir.parent)
    passwd.write_text(f"{POSTGRES_USER_NAME}:x:{uid}:{gid}:PostgreSQL:{home}:/bin/false\n")
    group.write_text(f"{POSTGRES_USER_NAME}:x:{gid}:\n")
    return {"LD_PRELOAD": library, "NSS_WRAPPER_PASSWD": str(passwd), "NSS_WRAPPER_GROUP": str(group)}
