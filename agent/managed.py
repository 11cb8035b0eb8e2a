"""The files the agent owns in PGDATA and its state directory, rewritten at every start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent import archive, upgrade, walbudget
from agent.context import Part
from agent.errors import ConfigError
from agent.files import fix_tree_ownership, write_atomic
from agent.identity import PRIMARY
from agent.plan import PASSFILE_NAME
from agent.podbirth import TEMPLATE_BORN, TEMPLATE_ORDINAL, pod_born
from agent.postgres import config_problem
from agent.render import (
    CONF_NAME,
    passfile_line,
    primary_conninfo,
    settings_file,
    synchronous_standby_names,
    with_hba_block,
    with_include,
    without_handoff_conninfo,
)


class ManagedFiles(Part):
    """Settings file and its include, the pg_hba block, standby settings, the passfile, ownership."""

    def write_passfile(self) -> Path:
        """The 0600 passfile primary_conninfo and pg_basebackup read: never the password inline."""
        path = self.config.state_dir / PASSFILE_NAME
        write_atomic(
            path,
            passfile_line(self.config.replication_user, self.config.replication_password.reveal()),
            mode=0o600,
            owner=self.owner,
        )
        return path

    def write_archive_config(self) -> dict[str, str]:
        """pgbackrest.conf (0600, in the state directory) and the archive settings that use it; {} when
        archiving is off (PGSFS_BACKUP_REPO unset)."""
        cfg = self.config
        if cfg.archive is None:
            return {}
        locks = cfg.state_dir / "pgbackrest"
        self._mkdir_owned(locks)
        path = cfg.state_dir / archive.CONF_NAME
        text = archive.config_text(cfg.archive, pgdata=str(cfg.pgdata), port=cfg.port, superuser=cfg.superuser,
                                   work_dir=str(locks))  # fmt: skip
        write_atomic(path, text, mode=0o600, owner=self.owner)
        return archive.server_settings(cfg.archive, str(path))

    def recovery_settings(self, datadir: Path) -> dict[str, str]:
        """A restored cluster still in archive recovery: restore_command and its target, from the
        PGSFS_RESTORE_* settings, or once they are gone from the restore record (agent/archive.py)."""
        cfg = self.config
        if cfg.archive is None or not (datadir / "recovery.signal").exists():
            return {}
        if cfg.archive.restore_from is not None:
            # The settings as they are now: a target corrected after recovery stopped short of it applies.
            record: tuple[str, archive.RestoreTarget] | None = (cfg.archive.restore_from, cfg.archive.restore_target)
        else:
            try:
                record = archive.read_restore_record((cfg.state_dir / archive.RESTORE_RECORD).read_text())
            except OSError:
                record = None
        if record is None:
            # recovery.signal without our record: someone restored by hand, with settings of their own.
            return {}
        source, target = record
        return archive.recovery_settings(cfg.archive, source, target, str(cfg.state_dir / archive.CONF_NAME))

    def synchronous_names(self) -> str:
        """synchronous_standby_names for the primary: the policy over every other member's pod name
        (ordinals up to max_replication_slots: one slot per member bounds how many there can be)."""
        cfg = self.config
        if not cfg.synchronous_standbys or cfg.standalone:
            return ""
        ident = cfg.identity
        members = [ident.peer_pod(n) for n in range(cfg.max_replication_slots + 1) if n != ident.ordinal]
        return synchronous_standby_names(cfg.synchronous_standbys, members)

    def template_settings(self, datadir: Path) -> dict[str, str]:
        """pgsfs.primary_ordinal and, with a POD_UID, pgsfs.pod_born: what a former primary asks its
        successor before a handoff, to tell whose pod template is current (review M3); and, on a
        cluster made by an upgrade, pgsfs.upgraded_from: what a member of the old cluster checks
        before it clones it (agent/upgrade.py)."""
        cfg = self.config
        out = {TEMPLATE_ORDINAL: str(cfg.identity.primary_ordinal)}
        origin = upgrade.recorded_origin(cfg.state_dir, datadir)
        if origin is not None:
            out[upgrade.ORIGIN_SETTING] = origin.setting()
        born = pod_born(cfg.state_dir, cfg.pod_uid, time.time(), owner=self.owner)
        if born is not None:
            out[TEMPLATE_BORN] = f"{born:.3f}"
        return out

    def write_config(self, datadir: Path, *, standby: bool, upstream: str | None = None, connect: bool = True) -> None:
        """The managed files: settings file and its include, pg_hba block, standby settings.

        A standby streams from the primary ordinal, or from `upstream` (a pod's FQDN: a switchover's
        successor follows the writable member), or (`connect=False`) from nobody until promoted.
        """
        cfg = self.config
        started = self.world.clock()
        standby_settings: dict[str, str] | None = None
        written = [CONF_NAME, "postgresql.conf", "pg_hba.conf"]
        designated = cfg.identity.role == PRIMARY
        if standby:
            passfile = self.write_passfile()
            standby_settings = {
                "primary_conninfo": "" if not connect else primary_conninfo(
                    host=(upstream or cfg.primary_fqdn).rstrip("."),
                    port=cfg.port,
                    user=cfg.replication_user,
                    passfile=str(passfile),
                    application_name=cfg.identity.pod_name,
                ),
                "primary_slot_name": cfg.identity.slot_name,
            }
        tuned = cfg.conf_dir.is_dir()  # the user's tuning directory (a ConfigMap) is mounted
        wal = self.plan.wal or walbudget.decide(cfg.wal_configured(),
                                                       walbudget.observe(datadir, (), (), cfg.volume_size))
        settings = settings_file(
            port=cfg.port,
            max_wal_senders=cfg.max_wal_senders,
            max_replication_slots=cfg.max_replication_slots,
            wal=wal.written.conf_values(),
            standby=standby_settings,
            # The primary ordinal still a standby gets it too: it applies from the promotion on. So does
            # a member kept primary on a replica ordinal (a stale pod template, review M3).
            synchronous_standby_names=self.synchronous_names() if designated or not standby else "",
            template=self.template_settings(datadir),
            archive={**self.write_archive_config(), **({} if standby else self.recovery_settings(datadir))},
            conf_dir=str(cfg.conf_dir) if tuned else None,
        )
        write_atomic(datadir / CONF_NAME, settings, mode=0o600, owner=self.owner)
        conf = datadir / "postgresql.conf"
        write_atomic(conf, with_include(conf.read_text() if conf.exists() else ""), mode=0o600, owner=self.owner)
        hba = datadir / "pg_hba.conf"
        write_atomic(
            hba,
            with_hba_block(hba.read_text() if hba.exists() else "", cfg.replication_user, cfg.host_auth_method),
            mode=0o600,
            owner=self.owner,
        )
        if standby:
            write_atomic(datadir / "standby.signal", "", mode=0o600, owner=self.owner)
            written.append("standby.signal")
        if tuned:
            self._check_conf_dir(datadir)
        # postgresql.auto.conf from a clone may carry the primary's ALTER SYSTEM settings; that is
        # wanted, but a primary_conninfo there (someone ran pg_basebackup -R) would win over ours.
        # The one a handoff sets on its successor is ours: removed if it outlived the handoff.
        self._remove_handoff_conninfo(datadir)
        self._phase(
            "config_written", started, datadir=str(datadir), files=written, standby=standby,
            wal_volume_mb=wal.written.volume_mb, wal_held_aside_mb=wal.held_mb or None, **wal.written.conf_values(),
            synchronous_standbys=(cfg.synchronous_standbys or None) if designated else None,
            upstream=upstream.rstrip(".") if standby and connect and upstream else None,
            archive_repo=cfg.archive.location if cfg.archive else None,
        )  # fmt: skip
        if wal.problem is not None:
            self.log.warning(
                "wal_budget_exceeded",
                problem=wal.problem,
                effective=wal.effective.conf_values(),
                hint="WAL could fill the volume and stop the primary: lower the setting (PGSFS_* variables, "
                "ALTER SYSTEM or postgres -c), leave them at auto, or grow the PersistentVolumeClaim",
            )

    def _remove_handoff_conninfo(self, datadir: Path) -> None:
        auto = datadir / "postgresql.auto.conf"
        try:
            text = auto.read_text()
        except OSError:
            return
        kept, removed = without_handoff_conninfo(text)
        if removed:
            write_atomic(auto, kept, mode=0o600, owner=self.owner)
            self.log.info("handoff_conninfo_removed", file=str(auto),
                          note="a switchover's former primary pointed this member at itself to hand its WAL over; "
                          "done, so the managed settings apply")  # fmt: skip

    def _check_conf_dir(self, datadir: Path) -> None:
        """postgres reads every configuration file (the user's tuning included) and says what it
        rejects: a bad setting stops the start here, named, instead of in a crash loop of postgres."""
        said = config_problem(self.world.runner, datadir)
        if said is not None:
            raise ConfigError(
                [f"PGSFS_CONF_DIR={self.config.conf_dir}: postgres rejects the configuration: {said}"],
                hint="fix or remove that setting in the ConfigMap (postgresql.conf syntax, names of this "
                "major); nothing else was changed",
            )

    def fix_ownership(self) -> None:
        """PGDATA owned by postgres with mode 0700, as postgres insists (a foreign owner was refused in the plan)."""
        st = os.stat(self.pgdata)
        if self.owner is not None:
            changed = fix_tree_ownership(self.pgdata, *self.owner)
            fix_tree_ownership(self.config.state_dir, *self.owner)
            if changed:
                self.log.info("ownership_fixed", pgdata=str(self.pgdata), entries=changed)
        if st.st_mode & 0o077:
            os.chmod(self.pgdata, 0o700)
            self.log.info("mode_fixed", pgdata=str(self.pgdata), was=oct(st.st_mode & 0o777))

