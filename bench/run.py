"""The performance benchmark: writes reports/benchmark.md and reports/benchmark.json.

    python bench/run.py --data ../shared/data/cats_and_dogs_filtered.zip \
        --weights ../shared/weights/vgg16_notop.h5 [--workspace ../catsdogs-bench] [--only PART ...]

(`make bench` runs this with the paths above.) Parts, in order; each writes its own JSON under
reports/, and the report is rebuilt from whatever JSON is there, so one part can be rerun alone:
- repro:    a fresh clone of this repository's HEAD in --workspace (an empty DVC cache and MLflow
            store), params.yaml pointed at --data and --weights and otherwise the defaults, then
            `dvc repro` timed stage by stage (bench/repro.py);
- pipeline: training throughput of the augmented model against the book's ImageDataGenerator
            pipeline, in that workspace (bench/pipeline.py);
- serving:  the registered champion behind `mlflow models serve` (bench/serving.py).
Never part of the test suite: it takes about 35 minutes on 2 cores with AMX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from catsdogs.report import BOOK_ACCURACY

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
PARTS = ("repro", "pipeline", "serving")
TARGET = {"scratch": 0.74, "augmented": 0.84, "feature_extraction": 0.96, "fine_tuning": 0.975}
LIMITS = {"repro_minutes": 45, "peak_rss_gib": 6, "speedup": 2.0, "serving_p50_ms": 150}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the dataset archive (data.url)")
    parser.add_argument("--weights", type=Path, required=True, help="VGG16 no-top weights (pretrained.weights)")
    parser.add_argument("--workspace", type=Path, default=ROOT.parent / "catsdogs-bench")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    env = bench_env(workspace)
    bench = [sys.executable, "-u"]
    if "repro" in args.only:
        make_workspace(workspace, args.data.resolve(), args.weights.resolve())
        run([*bench, ROOT / "bench/repro.py", workspace, "--out", REPORTS / "benchmark_repro.json"], workspace, env)
    if "pipeline" in args.only:
        run([*bench, ROOT / "bench/pipeline.py", "--out", REPORTS / "benchmark_pipeline.json"], workspace, env)
    if "serving" in args.only:
        run([*bench, ROOT / "bench/serving.py", workspace, "--out", REPORTS / "benchmark_serving.json"], workspace, env)
    write_report(workspace)


def bench_env(workspace: Path) -> dict:
    """The workspace's own code (not an editable install of this checkout), the venv's tools, no telemetry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(workspace / "src"), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def make_workspace(workspace: Path, data: Path, weights: Path) -> None:
    if workspace.exists():
        shutil.rmtree(workspace)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workspace)], check=True)
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"]["url"], params["pretrained"]["weights"] = str(data), str(weights)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def run(command: list, cwd: Path, env: dict) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(part) for part in command], cwd=cwd, env=env, check=True)


def load(name: str) -> dict | None:
    path = REPORTS / f"benchmark_{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def machine() -> dict:
    import tensorflow as tf

    from catsdogs.models import fast_bfloat16

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    flags = cpuinfo.split()
    return {
        "cpu": cpu, "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu_features": ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
        "gpu": bool(tf.config.list_physical_devices("GPU")), "fast_bfloat16": fast_bfloat16(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": __import__("keras").__version__,
        "mlflow": __import__("mlflow").__version__,
        "dvc": subprocess.run(["dvc", "--version"], capture_output=True, text=True).stdout.strip(),
    }


def accuracies(workspace: Path) -> dict:
    out = {}
    for name in BOOK_ACCURACY:
        path = workspace / "evaluation" / name / "metrics.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())["accuracy"]
    return out


def write_report(workspace: Path) -> None:
    repro, pipeline, serving = load("repro"), load("pipeline"), load("serving")
    accuracy = accuracies(workspace)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    summary = {"commit": commit, "machine": machine(), "test_accuracy": accuracy,
               "book_accuracy": BOOK_ACCURACY, "target_accuracy": TARGET, "limits": LIMITS,
               "repro": repro, "pipeline": pipeline, "serving": serving}
    (REPORTS / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    (REPORTS / "benchmark.md").write_text(markdown(summary))
    print(f"wrote {REPORTS / 'benchmark.md'} and {REPORTS / 'benchmark.json'}")


def percent(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(s: dict) -> str:
    m = s["machine"]
    lines = [
        "# Benchmark: the default pipeline on this machine",
        "",
        f"Generated by `bench/run.py` from commit `{s['commit'][:12]}`. Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['cpu_features']}), {m['memory_gib']} GiB, GPU: {'yes' if m['gpu'] else 'none'}; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, MLflow {m['mlflow']}, DVC {m['dvc']}.",
        "",
        "Command: `python bench/run.py --data ../shared/data/cats_and_dogs_filtered.zip "
        "--weights ../shared/weights/vgg16_notop.h5` (= `make bench`); data and weights as in issue #5. The VGG16 "
        "weights are the stand-in VGG16 weights of `../shared/weights`, not the official ImageNet file.",
        "",
        "## Test accuracy (held-out test split, 500 images)",
        "",
        "| model | book | target | ours | |",
        "|---|---|---|---|---|",
    ]
    for name, book in s["book_accuracy"].items():
        ours = s["test_accuracy"].get(name)
        target = s["target_accuracy"][name]
        shown = f"{ours:.1%}" if ours is not None else "not run"
        lines.append(f"| {name} | {book:.1%} | >= {target:.1%} | {shown} | "
                     f"{verdict(ours is not None and ours >= target)} |")
    repro = s["repro"]
    if repro:
        minutes = repro["total_seconds"] / 60
        lines += [
            "",
            f"## `dvc repro` from an empty cache: {minutes:.1f} min, peak memory {repro['peak_rss_gib']:.2f} GiB",
            "",
            f"Limits: {s['limits']['repro_minutes']} min ({verdict(minutes <= s['limits']['repro_minutes'])}), "
            f"{s['limits']['peak_rss_gib']} GiB ({verdict(repro['peak_rss_gib'] < s['limits']['peak_rss_gib'])}). "
            "Peak memory: resident set of dvc and the stage it runs, together.",
            "",
            "CPU busy: share of all cores' time in use during the stage; stolen: share the host took (steal).",
            "",
            "| stage | wall time | peak memory | CPU busy | stolen |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {st['stage']} | {st['seconds'] / 60:.1f} min | {st['peak_rss_gib']:.2f} GiB | "
                  f"{percent(st.get('cpu_busy'))} | {percent(st.get('cpu_steal'))} |" for st in repro["stages"]]
    pipeline = s["pipeline"]
    if pipeline:
        lines += [
            "",
            f"## Training throughput of the augmented model: {pipeline['speedup']:.2f}x the book's pipeline "
            f"({verdict(pipeline['speedup'] >= s['limits']['speedup'])}, target >= {s['limits']['speedup']}x)",
            "",
            f"Same CNN, same training split, {pipeline['epochs']} epochs each, each side in its own process "
            "(`bench/pipeline.py`).",
            "",
            "| pipeline | precision | oneDNN (TF_ENABLE_ONEDNN_OPTS) | images/s per epoch | images/s |",
            "|---|---|---|---|---|",
        ]
        for side in ("legacy", "ours"):
            d = pipeline[side]
            lines.append(f"| {side}: {d['pipeline']} | {d['precision']} | {d['TF_ENABLE_ONEDNN_OPTS']} | "
                         f"{', '.join(map(str, d['epoch_images_per_second']))} | {d['images_per_second']} |")
        ceiling = pipeline.get("ceiling")
        if ceiling:
            for precision, rate in ceiling["images_per_second"].items():
                lines.append(f"| ceiling: one batch in memory, no augmentation | {precision} | "
                             f"{ceiling['TF_ENABLE_ONEDNN_OPTS']} | | {rate} |")
            needed = s["limits"]["speedup"] * pipeline["legacy"]["images_per_second"]
            lines += [
                "",
                f"The ceiling rows train the same CNN with no input pipeline at all: no pipeline can feed it faster "
                f"on this machine. {s['limits']['speedup']}x the legacy pipeline needs {needed:.1f} images/s; the "
                f"fastest ceiling is {pipeline['ceiling_speedup']:.2f}x the legacy pipeline, and ours reaches "
                f"{pipeline['ours']['images_per_second'] / max(ceiling['images_per_second'].values()):.0%} of it. "
                f"`train.precision: auto` picks bfloat16 only on a GPU or a CPU with AVX512-BF16 or AMX "
                f"({'present' if s['machine'].get('fast_bfloat16') else 'absent here'}).",
            ]
    serving = s["serving"]
    if serving:
        seq, con = serving["sequential"], serving["concurrent"]
        lines += [
            "",
            f"## Serving: median {seq['p50_ms']:.0f} ms for one image "
            f"({verdict(seq['p50_ms'] <= s['limits']['serving_p50_ms'])}, target <= "
            f"{s['limits']['serving_p50_ms']} ms); {con['errors']} errors under {con['clients']} clients",
            "",
            f"`{serving['command']}`; request: one {serving['image']} (`bench/serving.py`).",
            "",
            "| load | requests | errors | p50 | p95 | p99 | images/s |",
            "|---|---|---|---|---|---|---|",
            f"| 1 client, sequential | {seq['requests']} | {seq['errors']} | {seq['p50_ms']} ms | {seq['p95_ms']} ms "
            f"| {seq['p99_ms']} ms | {1000 / seq['p50_ms']:.1f} (1/p50) |",
            f"| {con['clients']} clients, {con['seconds']:.0f} s | {con['requests']} | {con['errors']} | "
            f"{con['p50_ms']} ms | {con['p95_ms']} ms | {con['p99_ms']} ms | {con['images_per_second']} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
