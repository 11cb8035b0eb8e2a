"""7. Start-up cost: `pg-sfs-agent version` against a bare interpreter, and what the imports cost."""

from __future__ import annotations

import subprocess
import sys

from bench.common import AGENT, Row, Section, Series, Timing, parse_time_output, timed
from bench.context import Ctx

# What `pg-sfs-agent postgres` imports before its first step (psycopg comes with the first connection).
POSTGRES_PATH_IMPORTS = "import agent.cli, agent.log, agent.config, agent.bootstrap, agent.heartbeat, psycopg"


def _timed(argv: list[str]) -> Timing:
    done = subprocess.run(
        timed(argv), capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-500:]}")
    return parse_time_output(done.stderr)


def importtime(code: str, top: int = 10) -> list[dict[str, object]]:
    """The `top` imports by cumulative microseconds under `python -X importtime -c code`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, self_us, cumulative_us, name = (part.strip() for part in line.replace("import time:", "|").split("|"))
        rows.append({"module": name, "self_ms": int(self_us) / 1000, "cumulative_ms": int(cumulative_us) / 1000})
    rows.sort(key=lambda r: -float(r["cumulative_ms"]))  # type: ignore[arg-type]
    return rows[:top]


def run(ctx: Ctx) -> Section:
    """Interleaved runs of the agent's version command and of `python -c pass`."""
    sec = Section("startup", "7. `pg-sfs-agent version` start-up")
    count = max(ctx.runs, 10)
    wall, mem, cpu, floor_wall, floor_mem = Series(), Series(), Series(), Series(), Series()
    _timed([str(AGENT), "version"])  # warm the page cache
    for _ in range(count):
        got = _timed([str(AGENT), "version"])
        wall.add(got.wall)
        mem.add(got.peak_mb)
        cpu.add(got.cpu)
        got = _timed([sys.executable, "-c", "pass"])
        floor_wall.add(got.wall)
        floor_mem.add(got.peak_mb)
    extra = {"peak_rss_mb": mem.to_dict(), "floor_peak_rss_mb": floor_mem.to_dict(), "cpu_s": cpu.to_dict()}
    row = Row("version", "pg-sfs-agent version", "s", wall, floor_wall, "python -c pass (same venv)",
              goal="(context)", extra=extra)  # fmt: skip
    row.note = f"peak RSS {mem.median:.0f} MB (bare interpreter {floor_mem.median:.0f} MB)"
    sec.rows.append(row)
    sec.data["importtime_version"] = importtime("import agent.cli")
    sec.data["importtime_postgres_path"] = importtime(POSTGRES_PATH_IMPORTS)
    total = Series()
    probe = f"import time; t = time.perf_counter(); {POSTGRES_PATH_IMPORTS}; print(time.perf_counter() - t)"
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
        total.add(float(done.stdout) * 1000)
    sec.data["postgres_path_import_ms"] = total.to_dict()
    sec.notes.append(
        f"{count} runs; the imports of the `postgres` path (agent.cli ... psycopg) take {total.median:.0f} ms "
        "(median of 5; python -X importtime's top entries are in the JSON)"
    )
    ctx.say(f"version: {wall.median:.3f}s ({mem.median:.0f} MB) vs python -c pass {floor_wall.median:.3f}s")
    return sec
