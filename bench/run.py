"""The performance benchmark: writes reports/benchmark.md and reports/benchmark.json.

    python -m bench.run --data ../shared/data/cats_and_dogs_filtered.zip \
        --weights ../shared/weights/vgg16_notop.h5 [--workspace ../catsdogs-bench] [--only PART ...]

(`make bench` runs this with the paths above.) Parts, in order; each writes its own JSON under
reports/, and the report is rebuilt from whatever JSON is there, so one part can be rerun alone:
- repro:    a fresh clone of this repository's HEAD in --workspace (an empty DVC cache and MLflow
            store), params.yaml pointed at --data and --weights and otherwise the defaults, then
            `dvc repro` timed stage by stage (bench.repro);
- pipeline: training throughput of the augmented model against the book's ImageDataGenerator
            pipeline, in that workspace (bench.pipeline);
- serving:  the registered champion behind `mlflow models serve` (bench.serving).
Never part of the test suite: it takes about 35 minutes on 2 cores with AMX.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
from pathlib import Path

import psutil

from bench.harness import REPORTS, ROOT, make_workspace, run_part
from catsdogs.report import BOOK_ACCURACY

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
    data, weights = args.data.resolve(), args.weights.resolve()
    if "repro" in args.only:
        make_workspace(workspace, data, weights)
        run_part("repro", [workspace, "--out", REPORTS / "benchmark_repro.json"], workspace)
    if "pipeline" in args.only:
        run_part("pipeline", ["--out", REPORTS / "benchmark_pipeline.json"], workspace)
    if "serving" in args.only:
        run_part("serving", [workspace, "--out", REPORTS / "benchmark_serving.json"], workspace)
    write_report(workspace, inputs(data, weights))


def inputs(data: Path, weights: Path) -> dict:
    """What the run really used: each file's path, size and sha256 (a report says what it measured)."""
    def describe(path: Path) -> dict:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}

    return {"data": describe(data), "weights": describe(weights)}


def load(name: str) -> dict | None:
    path = REPORTS / f"benchmark_{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def machine() -> dict:
    import tensorflow as tf

    from catsdogs import cpu_model
    from catsdogs.models import fast_bfloat16

    cpu = cpu_model()
    flags = Path("/proc/cpuinfo").read_text().split()
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


def write_report(workspace: Path, used: dict) -> None:
    repro, pipeline, serving = load("repro"), load("pipeline"), load("serving")
    accuracy = accuracies(workspace)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    summary = {"commit": commit, "machine": machine(), "inputs": used, "test_accuracy": accuracy,
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
    sections = (header, accuracy_section, repro_section, pipeline_section, serving_section)
    return "\n".join(line for section in sections for line in section(s)) + "\n"


def header(s: dict) -> list[str]:
    m, used = s["machine"], s["inputs"]
    return [
        "# Benchmark: the default pipeline on this machine",
        "",
        f"Generated by `python -m bench.run` from commit `{s['commit'][:12]}`. Machine: {m['cpu']}, {m['cores']} "
        f"cores ({m['cpu_features']}), {m['memory_gib']} GiB, GPU: {'yes' if m['gpu'] else 'none'}; Python "
        f"{m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, MLflow {m['mlflow']}, DVC {m['dvc']}.",
        "",
        f"Command: `python -m bench.run --data {used['data']['path']} --weights {used['weights']['path']}`. Inputs: "
        f"data `{Path(used['data']['path']).name}` ({used['data']['bytes']:,} bytes, sha256 "
        f"`{used['data']['sha256'][:16]}...`); VGG16 weights `{Path(used['weights']['path']).name}` "
        f"({used['weights']['bytes']:,} bytes, sha256 `{used['weights']['sha256'][:16]}...`). Whether those weights "
        "are the official ImageNet file is for the reader to check against its sha256.",
    ]


def accuracy_section(s: dict) -> list[str]:
    lines = ["", "## Test accuracy (held-out test split)", "", "| model | book | target | ours | |",
             "|---|---|---|---|---|"]
    for name, book in s["book_accuracy"].items():
        ours = s["test_accuracy"].get(name)
        target = s["target_accuracy"][name]
        shown = f"{ours:.1%}" if ours is not None else "not run"
        lines.append(f"| {name} | {book:.1%} | >= {target:.1%} | {shown} | "
                     f"{verdict(ours is not None and ours >= target)} |")
    return lines


def repro_section(s: dict) -> list[str]:
    repro = s["repro"]
    lines: list[str] = []
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
    return lines


def pipeline_section(s: dict) -> list[str]:
    pipeline = s["pipeline"]
    lines: list[str] = []
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
    return lines


def serving_section(s: dict) -> list[str]:
    serving = s["serving"]
    lines: list[str] = []
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
    return lines


if __name__ == "__main__":
    main()
