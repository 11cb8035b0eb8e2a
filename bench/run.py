"""`python -m bench [--quick]`: every measurement in one bounded run, then the table and a JSON file.

Order: start-up (#7); in one sandbox (network, BIND with a query log): primary first start (#1),
cold start on the emulated StatefulSet (#2), a primary and a replica kept up for probes (#6),
restarts (#5) and DNS trials without a negative cache (#3), then the clone benchmark (#4);
in a second sandbox with unbound as negative cache: the DNS trials again (#3); last, switchovers on
the emulated StatefulSet under write loads (#9).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from bench import backup, clone, cold, dnswait, image, primary, probes, report, restart, startup, switchover, upgrade
from bench.common import AGENT, PG_BIN, REPO, RESULTS, TIME, Section
from bench.context import Ctx, OutOfTime
from bench.members import Member, new_member
from bench.members import start as start_member
from bench.sandbox import Sandbox

FULL = {"runs": 5, "dns_trials": 20, "scale": 50, "budget": 1320.0}
QUICK = {"runs": 3, "dns_trials": 6, "scale": 10, "budget": 480.0}


def _prerequisites() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (network and mount namespaces)")
    for path in (PG_BIN / "postgres", TIME, AGENT):
        if not path.exists():
            problems.append(f"{path} is missing")
    for prog in ("ip", "named", "unbound", "nsenter", "setpriv", "pgbench"):
        if shutil.which(prog) is None and not (PG_BIN / prog).exists():
            problems.append(f"{prog} is not installed")
    return problems


class Runner:
    """Runs sections one by one: an error or the end of the budget is recorded, never fatal."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.sections: list[Section] = []

    @contextlib.contextmanager
    def guard(self, sec: Section) -> Iterator[Section]:
        """Record `sec`, its duration, and any failure in it."""
        started = time.monotonic()
        if sec not in self.sections:
            self.sections.append(sec)
        try:
            yield sec
        except OutOfTime as exc:
            sec.error = f"skipped: {exc}"
            self.ctx.say(f"{sec.key}: {sec.error}")
        except Exception as exc:
            sec.error = f"{type(exc).__name__}: {exc}"
            self.ctx.say(f"{sec.key} FAILED: {sec.error}")
            traceback.print_exc(file=sys.stderr)
        finally:
            sec.seconds += time.monotonic() - started

    def section(self, fn: Callable[..., Section], *args: Any, key: str) -> bool:
        """Run a function that builds a whole section; False if it failed or ran out of time."""
        started = time.monotonic()
        holder = Section(key, key)
        with self.guard(holder):
            built = fn(*args)
            built.seconds = time.monotonic() - started
            self.sections[self.sections.index(holder)] = built
            return True
        return False


def main_sandbox(run: Runner, ctx: Ctx, only: set[str]) -> None:
    """Everything that needs the sandbox with BIND answering directly."""
    rest = restart.section()
    dns = dnswait.section()
    with Sandbox() as sb:
        if "primary" in only:
            run.section(primary.run, sb, ctx, key="primary_first_start")
        if "image" in only:
            run.section(image.run, sb, ctx, key="image_first_start")
        if "cold" in only:
            run.section(cold.run, ctx, key="cold_start")
        pg0 = new_member(sb, "postgresql-sfs-0", "pg0")
        pg1 = new_member(sb, "postgresql-sfs-1", "pg1")
        sb.publish([("postgresql-sfs-0", pg0.host.ip)])
        if only & {"probes", "restart", "dns"}:
            setup = Section("members", "primary and replica for probes, restarts and DNS trials")
            with run.guard(setup):
                ctx.check_time(30)
                setup.data["primary_start_s"] = round(start_member(sb, ctx, pg0), 3)
                setup.data["replica_clone_s"] = round(start_member(sb, ctx, pg1, primary=pg0), 3)
                ctx.say(f"members up: primary {setup.data['primary_start_s']} s, "
                        f"replica {setup.data['replica_clone_s']} s")  # fmt: skip
            if not setup.error:
                run.sections.remove(setup)
                members_tests(run, sb, ctx, only, pg0, pg1, rest, dns)
        if "clone" in only:
            clone_primary(run, sb, ctx, pg0, rest if "restart" in only else None)
        if "backup" in only:
            run.section(backup.run, sb, ctx, key="backup")
        if "upgrade" in only:
            run.section(upgrade.run, sb, ctx, key="upgrade")


def members_tests(
    run: Runner, sb: Sandbox, ctx: Ctx, only: set[str], pg0: Member, pg1: Member, rest: Section, dns: Section
) -> None:
    """Probes on the running pair, then restarts of each and DNS trials against the primary."""
    if "probes" in only:
        run.section(probes.run, sb, ctx, pg0, pg1, key="probes")
    pg1.stop()
    if "restart" in only:
        with run.guard(rest):
            restart.run_member(sb, ctx, rest, pg1, "replica", "fresh cluster")
    if "dns" in only:
        with run.guard(dns):
            dnswait.run_variant(sb, ctx, pg0, dns, cached=False)
    pg0.stop()
    if "restart" in only:
        with run.guard(rest):
            restart.run_member(sb, ctx, rest, pg0, "primary", "fresh cluster")


def clone_primary(run: Runner, sb: Sandbox, ctx: Ctx, pg0: Member, rest: Section | None) -> None:
    """The clone benchmark on pgbench data, then a restart of that larger primary."""

    def started_then_cloned() -> Section:
        ctx.check_time(120)
        start_member(sb, ctx, pg0)
        return clone.run(sb, ctx, pg0)

    done = run.section(started_then_cloned, key="clone")
    pg0.stop()
    if rest is not None and done:
        with run.guard(rest):
            restart.run_member(sb, ctx, rest, pg0, "primary", f"pgbench s{ctx.pgbench_scale}")


def negcache_sandbox(run: Runner, ctx: Ctx, dns: Section) -> None:
    """The DNS trials again, with unbound caching negative answers in front of BIND."""
    with run.guard(dns):
        ctx.check_time(60)
        with Sandbox(negative_cache=True) as sb:
            pg0 = new_member(sb, "postgresql-sfs-0", "pg0")
            start_member(sb, ctx, pg0)
            dnswait.run_variant(sb, ctx, pg0, dns, cached=True)
            pg0.stop()


def _git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmarks within the budget, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 runs, 6 DNS trials, pgbench scale 10")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 5; --quick 3)")
    parser.add_argument("--dns-trials", type=int, help="DNS trials per set-up (default 20; --quick 6)")
    parser.add_argument("--scale", type=int, help="pgbench scale of the clone benchmark (default 50; --quick 10)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 1320; --quick 480)")
    sections = "startup,primary,image,cold,probes,restart,dns,clone,backup,upgrade,switchover"
    parser.add_argument("--only", default=sections, help=f"comma-separated subset of: {sections}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    problems = _prerequisites()
    if problems:
        print("bench: cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    base = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logdir = args.out / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(
        runs=args.runs or base["runs"],
        dns_trials=args.dns_trials or base["dns_trials"],
        quick=args.quick,
        deadline=time.monotonic() + (args.budget or base["budget"]),
        logdir=logdir,
        pgbench_scale=args.scale or base["scale"],
    )
    only = set(args.only.split(","))
    run = Runner(ctx)
    started = time.time()
    load_at_start = os.getloadavg()
    ctx.say(f"bench: {ctx.runs} runs, {ctx.dns_trials} DNS trials, pgbench scale {ctx.pgbench_scale}, "
            f"budget {ctx.remaining():.0f} s; logs in {logdir}")  # fmt: skip
    try:
        if "startup" in only:
            run.section(startup.run, ctx, key="startup")
        dns = dnswait.section()
        main_sandbox(run, ctx, only)
        if "dns" in only:
            dns = next((s for s in run.sections if s.key == "dns"), dns)
            negcache_sandbox(run, ctx, dns)
        if "switchover" in only:
            run.section(switchover.run, ctx, key="switchover")
    except KeyboardInterrupt:
        ctx.say("interrupted: everything started was stopped; partial results follow")
    except Exception as exc:
        ctx.say(f"bench aborted: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    order = ["startup", "primary_first_start", "image_first_start", "cold_start", "dns", "clone", "restart", "probes",
             "backup", "upgrade", "switchover"]
    sections = sorted(run.sections, key=lambda s: order.index(s.key) if s.key in order else 99)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "commit": _git_commit(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "quick": ctx.quick,
        "runs": ctx.runs,
        "dns_trials": ctx.dns_trials,
        "pgbench_scale": ctx.pgbench_scale,
        "seconds": round(time.time() - started, 1),
    }
    out = args.out / f"bench-{stamp}{'-quick' if ctx.quick else ''}.json"
    report.write(out, meta, sections)
    report.write(args.out / "latest.json", meta, sections)
    (args.out / "latest.md").write_text(report.table(sections, markdown=True) + "\n\n" + report.notes(sections) + "\n")
    print()
    print(report.table(sections))
    print()
    print(report.notes(sections))
    print(f"\nbench took {meta['seconds']:.0f} s; JSON: {out}; Markdown: {args.out / 'latest.md'}")
    return 0
