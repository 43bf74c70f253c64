"""Team mode: what sharing through the DVC remote and the tracking server costs and saves.

    python -m bench.team WORKSPACE --services DIR [--stage feature_extraction] [--repro-seconds S]

WORKSPACE is a git clone after `dvc repro` with DIR's env sourced (its runs on the tracking server).
Measures, with DIR's env:
1. `dvc push` of everything (the first push uploads; a second finds nothing to do), and the size pushed;
2. a fresh `git clone` of WORKSPACE and `dvc pull` there: wall time, then `dvc status` must be clean;
3. in that clone (thrown away after), one training stage (`python -m catsdogs.train STAGE`) logged to a
   SQLite store and to the tracking server, alternately, after a warm-up: the server's share of its time.
Writes reports/benchmark_team.json and reports/team.md (with --repro-seconds, the `dvc repro` time of the
same pipeline, measured by the caller, next to the pull).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import REPORTS
from bench.run import machine
from catsdogs import services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--services", type=Path, required=True, help="the services' DIR (its env file)")
    parser.add_argument("--stage", default="feature_extraction", help="the training stage timed both ways")
    parser.add_argument("--repro-seconds", type=float, help="`dvc repro` of WORKSPACE from scratch, for comparison")
    parser.add_argument("--note", default="", help="a sentence for the report (how the repro time was taken)")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args()
    env = {**os.environ, **services.read_env_file(args.services / "env")}
    workspace = args.workspace.resolve()
    result = {"push": push(workspace, env)}
    clone = workspace.parent / f"{workspace.name}-fresh-clone"
    try:
        result["pull"] = pull(workspace, clone, env)
        result["logging"] = logging_cost(clone, env, args.stage)  # in the throwaway clone: WORKSPACE stays as is
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    result["repro_seconds"] = args.repro_seconds
    result["note"] = args.note
    result["machine"] = machine()
    shown = [arg for arg in sys.argv[1:] if arg != args.note and arg != "--note"]  # the note is in the text
    result["command"] = " ".join(["python -m bench.team", *map(shlex.quote, shown)])
    result["date"] = time.strftime("%Y-%m-%d")
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "benchmark_team.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.reports / "team.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return round(seconds, 1), done.stdout + done.stderr


def cache_bytes(workspace: Path) -> int:
    cache = workspace / ".dvc" / "cache"
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


def push(workspace: Path, env: dict[str, str]) -> dict:
    """`dvc push` twice: the first uploads what the remote lacks (all of it, the first time), the second nothing."""
    first, said = timed(["dvc", "push"], workspace, env)
    again, _ = timed(["dvc", "push"], workspace, env)
    return {"seconds": first, "said": said.strip().splitlines()[-1], "seconds_when_up_to_date": again,
            "cache_bytes": cache_bytes(workspace)}


def pull(workspace: Path, clone: Path, env: dict[str, str]) -> dict:
    shutil.rmtree(clone, ignore_errors=True)
    clone_seconds, _ = timed(["git", "clone", "--quiet", str(workspace), str(clone)], workspace.parent, env)
    seconds, _ = timed(["dvc", "pull"], clone, env)
    _, status = timed(["dvc", "status"], clone, env)
    return {"git_clone_seconds": clone_seconds, "seconds": seconds, "bytes": cache_bytes(clone),
            "dvc_status": status.strip().splitlines()[-1]}


def logging_cost(workspace: Path, env: dict[str, str], stage: str, rounds: int = 2) -> dict:
    """The same stage logging to a local SQLite store and to the server, alternately, after a warm-up run;
    the median of each (one pair of runs is at the mercy of this machine's run-to-run noise)."""
    sqlite = workspace / "bench-logging.db"
    local = {key: value for key, value in env.items() if not key.startswith("MLFLOW_TRACKING_")}
    local["MLFLOW_TRACKING_URI"] = f"sqlite:///{sqlite}"
    command = [sys.executable, "-m", "catsdogs.train", stage]
    timed(command, workspace, local)  # warm-up: the OS file cache, TensorFlow's first start
    runs: dict[str, list[float]] = {"sqlite": [], "server": []}
    for _ in range(rounds):
        runs["sqlite"].append(timed(command, workspace, local)[0])
        runs["server"].append(timed(command, workspace, env)[0])
    seconds = {where: statistics.median(times) for where, times in runs.items()}
    overhead = (seconds["server"] - seconds["sqlite"]) / seconds["sqlite"]
    return {"stage": f"train_{stage}", "runs": runs, "seconds": seconds, "server_overhead": round(overhead, 3)}


def markdown(r: dict) -> str:
    m, push_, pull_, cost = r["machine"], r["push"], r["pull"], r["logging"]
    lines = [
        "# Team mode: sharing through the DVC remote and the tracking server",
        "",
        f"Generated by `{r['command']}` on {r['date']}. Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['cpu_features']}), {m['memory_gib']} GiB; DVC {m['dvc']}, MLflow {m['mlflow']}. Services: "
        "`catsdogs services up` on this machine (PostgreSQL, SeaweedFS, `mlflow server` with basic auth).",
        "",
        "| what | time | size |",
        "|---|---|---|",
        f"| `dvc push` (it said: {push_.get('said', 'not recorded')}) | {push_['seconds']:.1f} s | "
        f"{push_['cache_bytes'] / 1e6:.0f} MB in the cache |",
        f"| `dvc push` again (nothing to do) | {push_['seconds_when_up_to_date']:.1f} s | |",
        f"| fresh clone: `dvc pull` of everything | {pull_['seconds']:.1f} s | {pull_['bytes'] / 1e6:.0f} MB |",
    ]
    if r.get("repro_seconds"):
        lines.append(f"| the same results by `dvc repro` from scratch | {r['repro_seconds'] / 60:.1f} min | |")
    sqlite, server = cost["seconds"]["sqlite"], cost["seconds"]["server"]
    verdict = "met" if cost["server_overhead"] < 0.05 else "**not met**"
    lines += [
        "",
        f"After the pull, `dvc status` said: \"{pull_['dvc_status']}\".",
        "",
        f"Logging cost: `{cost['stage']}` took {sqlite:.1f} s logging to SQLite and {server:.1f} s logging to the "
        f"tracking server: {cost['server_overhead']:+.1%} (target: under 5%, {verdict}). Medians of "
        f"{len(cost.get('runs', {}).get('sqlite', [0]))} runs each, alternating, after a warm-up run "
        f"(seconds: SQLite {cost.get('runs', {}).get('sqlite')}, server {cost.get('runs', {}).get('server')}).",
        "",
    ]
    if r.get("note"):
        lines += [r["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
