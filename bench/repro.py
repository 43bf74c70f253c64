"""The whole default pipeline from an empty cache, timed stage by stage, with its peak memory.

    python -m bench.repro WORKSPACE [--out reports/benchmark_repro.json]

Runs `dvc repro` (download to register) in WORKSPACE, a fresh clone (bench.harness.make_workspace), and
follows its output: a stage lasts from DVC's "Running stage" line to the next one (so DVC's caching
of its outputs counts too). Memory: the resident set of the whole process tree (dvc and the stage
it runs), sampled every 0.2 s; its maximum per stage and overall. CPU: the share of the machine's
CPU time (all cores) that was busy during each stage, and the share the host took (steal): a stage
that is slow with an idle CPU is waiting on something; one with a high steal share is the host's doing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.harness import write_result

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
GIB = 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_repro.json"))
    args = parser.parse_args()
    result = timed_repro(args.workspace)
    write_result(args.out, result)


def timed_repro(workspace: Path, env: dict | None = None, targets: list[str] | None = None) -> dict:
    """`dvc repro` (of `targets`, or the whole pipeline) in `workspace`, stage by stage."""
    command = ["dvc", "repro", *(targets or [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workspace, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = MemorySampler(process.pid)
    sampler.start()
    stages: list[dict] = []

    def end_stage(now: float) -> None:
        if stages:
            stage = stages[-1]
            stage["seconds"] = round(now - stage.pop("start"), 1)
            stage.update(cpu_shares(stage.pop("cpu_times"), psutil.cpu_times()))

    for line in process.stdout:
        sys.stdout.write(line)
        match = STAGE_LINE.match(line)
        if match:
            now = time.perf_counter() - started
            end_stage(now)
            stages.append({"stage": match.group(1), "start": now, "cpu_times": psutil.cpu_times()})
            sampler.stage = match.group(1)
    returncode = process.wait()
    total = time.perf_counter() - started
    sampler.stop()
    end_stage(total)
    for stage in stages:
        stage["peak_rss_gib"] = round(sampler.peaks.get(stage["stage"], 0) / GIB, 2)
    if returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {returncode} (its output is above)")
    return {"command": " ".join(command), "total_seconds": round(total, 1),
            "peak_rss_gib": round(max(sampler.peaks.values(), default=0) / GIB, 2), "stages": stages}


def cpu_shares(before, after) -> dict:
    """Busy and host-stolen shares of all cores' time between two psutil.cpu_times() snapshots."""
    delta = {field: getattr(after, field) - getattr(before, field) for field in before._fields
             if field not in ("guest", "guest_nice")}  # Linux counts guest time in user time already
    total = sum(delta.values())
    if total <= 0:  # no clock tick in between
        return {"cpu_busy": None, "cpu_steal": None}
    idle = delta["idle"] + delta.get("iowait", 0.0)
    steal = delta.get("steal", 0.0)
    return {"cpu_busy": round((total - idle - steal) / total, 2), "cpu_steal": round(steal / total, 2)}


class MemorySampler(threading.Thread):
    """Largest summed RSS of a process and its descendants, per current stage."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.stage = "(dvc start-up)"
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = 0
            for process in processes:
                try:
                    rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)

    def stop(self) -> None:
        self._done.set()
        self.join()


if __name__ == "__main__":
    main()
