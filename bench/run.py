"""The performance benchmark: writes reports/benchmark.md and reports/benchmark.json.

    python -m bench.run --data ../shared/data/cats_and_dogs_filtered.zip \
        --weights ../shared/weights/vgg16_notop.h5 [--workspace ../catsdogs-bench] [--only PART ...]

(`make bench` runs this with the paths above.) Parts, in order; each writes its own JSON under
reports/, and the report is rebuilt from whatever JSON is there, so one part can be rerun alone:
- repro:    a fresh clone of this repository's HEAD in --workspace (an empty DVC cache and MLflow
            store), params.yaml pointed at --data and --weights and otherwise the defaults, then
            `dvc repro` timed stage by stage (bench.repro);
- champion: the registered model's own speed in memory, Keras against its int8 copy, and their
            test accuracy (bench.champion);
- serving:  the registered champion behind `mlflow models serve`: 1 client, then 4 (bench.serving);
- seeds:    the VGG16 models retrained with two more training seeds (bench.seeds);
- pipeline: training throughput of the augmented model against the book's ImageDataGenerator
            pipeline, in that workspace (bench.pipeline);
- float32:  the repro part again in --workspace-float32 with `train.precision: float32`, the stand-in
            for a CPU without native bfloat16.
Never part of the test suite: it takes about two hours on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
from pathlib import Path

import psutil

from bench.harness import REPORTS, ROOT, make_workspace, run_part
from catsdogs.report import BOOK_ACCURACY

PARTS = ("repro", "champion", "serving", "seeds", "pipeline", "float32")
TARGET = {"scratch": 0.74, "augmented": 0.84, "feature_extraction": 0.96, "fine_tuning": 0.975}
LIMITS = {"repro_minutes": 29.5, "peak_rss_gib": 5.2, "float32_repro_minutes": 45, "speedup": 2.0,
          "log_loss": 0.10, "ece": 0.02, "one_image_ms": 43.0, "batch_images_per_second": 29.0,
          "int8_accuracy_drop": 0.004, "served_overhead_ms": 10.0, "served_share_of_batch_rate": 0.90}
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the dataset archive (data.url)")
    parser.add_argument("--weights", type=Path, required=True, help="VGG16 no-top weights (pretrained.weights)")
    parser.add_argument("--workspace", type=Path, default=ROOT.parent / "catsdogs-bench")
    parser.add_argument("--workspace-float32", type=Path, default=ROOT.parent / "catsdogs-bench-float32")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    workspace, workspace32 = args.workspace.resolve(), args.workspace_float32.resolve()
    data, weights = args.data.resolve(), args.weights.resolve()
    if "repro" in args.only:
        make_workspace(workspace, data, weights)
        run_part("repro", [workspace, "--out", REPORTS / "benchmark_repro.json"], workspace)
    for part in ("champion", "serving", "seeds", "pipeline"):
        if part in args.only:
            where = [] if part == "pipeline" else [workspace]
            run_part(part, [*where, "--out", REPORTS / f"benchmark_{part}.json"], workspace)
    if "float32" in args.only:
        make_workspace(workspace32, data, weights, precision="float32")
        run_part("repro", [workspace32, "--out", REPORTS / "benchmark_repro_float32.json"], workspace32)
        (REPORTS / "benchmark_float32_models.json").write_text(json.dumps(model_results(workspace32), indent=2) + "\n")
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
        "cpu_features": ", ".join(f for f in CPU_FLAGS if f in flags),
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


def model_results(workspace: Path) -> dict:
    """Per model: its test metrics (evaluate) and its final validation metrics (train)."""
    out = {}
    for name in BOOK_ACCURACY:
        test, trained = (workspace / folder / name / "metrics.json" for folder in ("evaluation", "models"))
        if test.is_file() and trained.is_file():
            out[name] = {"test": json.loads(test.read_text()), "train": json.loads(trained.read_text())}
    return out


def write_report(workspace: Path, used: dict) -> None:
    accuracy = accuracies(workspace)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    summary = {"commit": commit, "machine": machine(), "inputs": used, "test_accuracy": accuracy,
               "book_accuracy": BOOK_ACCURACY, "target_accuracy": TARGET, "limits": LIMITS,
               "models": model_results(workspace), "float32_models": load("float32_models"),
               **{part: load(part) for part in ("repro", "repro_float32", "pipeline", "champion", "serving", "seeds")}}
    (REPORTS / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    (REPORTS / "benchmark.md").write_text(markdown(summary))
    print(f"wrote {REPORTS / 'benchmark.md'} and {REPORTS / 'benchmark.json'}")


def percent(share: float | None) -> str:
    return "" if share is None else f"{share:.0%}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(s: dict) -> str:
    sections = (header, targets_section, accuracy_section, calibration_section, champion_section, serving_section,
                seeds_section, repro_section, pipeline_section)
    return "\n".join(line for section in sections for line in section(s)) + "\n"


def header(s: dict) -> list[str]:
    m, used = s["machine"], s["inputs"]
    return [
        "# Benchmark: the default pipeline on this machine (issue #20's targets first)",
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


def targets(s: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, target, met) for every target of the benchmark; met None: not measured."""
    lim, models, rows = s["limits"], s.get("models") or {}, []
    fe, ft = models.get("feature_extraction"), models.get("fine_tuning")
    if fe and ft:
        fe_test, ft_test = fe["test"]["accuracy"], ft["test"]["accuracy"]
        rows.append(("fine_tuning test accuracy", f"{ft_test:.1%} (feature_extraction {fe_test:.1%})",
                     f">= {TARGET['fine_tuning']:.1%} and >= feature_extraction",
                     ft_test >= TARGET["fine_tuning"] and ft_test >= fe_test))
        fe_val, ft_val = fe["train"]["val_accuracy"], ft["train"]["val_accuracy"]
        rows.append(("fine-tuning against its start, validation accuracy", f"{ft_val:.1%} against {fe_val:.1%}",
                     "fine_tuning > feature_extraction", ft_val > fe_val))
        rows += calibration_rows(fe, ft, lim)
    champion = s.get("champion")
    if champion:
        keras, int8 = champion["keras"], champion["int8"]
        rows.append(("champion in memory, one image",
                     f"{int8['one_image_ms']} ms (Keras model {keras['one_image_ms']} ms)",
                     f"<= {lim['one_image_ms']:g} ms", int8["one_image_ms"] <= lim["one_image_ms"]))
        rows.append(("champion in memory, batches of 16",
                     f"{int8['batch_images_per_second']} images/s (Keras model {keras['batch_images_per_second']})",
                     f">= {lim['batch_images_per_second']:g} images/s",
                     int8["batch_images_per_second"] >= lim["batch_images_per_second"]))
        rows.append(("champion's test accuracy against the uncompressed model",
                     f"{int8['test_accuracy']:.1%} against {keras['test_accuracy']:.1%}",
                     f"within {lim['int8_accuracy_drop'] * 100:.1f} pt",
                     int8["test_accuracy"] >= keras["test_accuracy"] - lim["int8_accuracy_drop"] - 1e-9))
    serving = s.get("serving")
    if serving and champion:
        seq, con, own = serving["sequential"], serving["concurrent"], champion["int8"]
        rows.append(("served, one image per request, sequential p50", f"{seq['p50_ms']} ms",
                     f"<= {own['one_image_ms'] + lim['served_overhead_ms']:.1f} ms "
                     f"(own time + {lim['served_overhead_ms']:g})",
                     seq["p50_ms"] <= own["one_image_ms"] + lim["served_overhead_ms"]))
        share = con["images_per_second"] / own["batch_images_per_second"]
        rows.append((f"served, {con['clients']} clients, {con['seconds']:.0f} s",
                     f"{con['images_per_second']} images/s ({share:.1%} of in memory), {con['errors']} errors",
                     f">= {lim['served_share_of_batch_rate']:.0%} of in memory, 0 errors",
                     share >= lim["served_share_of_batch_rate"] and con["errors"] == 0))
    for key, label, limit in (
            ("repro", "`dvc repro`, defaults (`train.precision: auto`)", lim["repro_minutes"]),
            ("repro_float32", "`dvc repro`, `train.precision: float32`", lim["float32_repro_minutes"])):
        repro = s.get(key)
        if not repro:
            rows.append((label, "not run", f"<= {limit:g} min", None))
            continue
        minutes = repro["total_seconds"] / 60
        measured, ok = f"{minutes:.1f} min, peak {repro['peak_rss_gib']:.2f} GiB", minutes <= limit
        calibration: list[tuple[str, str, str, bool]] = []  # the float32 run's, judged as the default run's
        if key == "repro":
            target = f"<= {limit:g} min, <= {lim['peak_rss_gib']:g} GiB"
            ok = ok and repro["peak_rss_gib"] <= lim["peak_rss_gib"]
        else:
            models32 = s.get("float32_models") or {}
            acc = {name: model["test"]["accuracy"] for name, model in models32.items()}
            measured += "; test " + " / ".join(f"{acc[n]:.1%}" if n in acc else "n/a" for n in TARGET)
            target = f"<= {limit:g} min with the accuracy targets met"
            ok = ok and all(acc.get(n, 0) >= t for n, t in TARGET.items())
            if {"feature_extraction", "fine_tuning"} <= set(models32):
                calibration = calibration_rows(models32["feature_extraction"], models32["fine_tuning"], lim,
                                               " in float32")
        rows += [(label, measured, target, ok), *calibration]
    return rows


def calibration_rows(fe: dict, ft: dict, lim: dict, where: str = "") -> list[tuple[str, str, str, bool]]:
    """The log loss and ECE targets, judged on both VGG16 models' test metrics."""
    rows = []
    for key, label, limit, shown in (("log_loss", "test log loss", lim["log_loss"], "{:.3f}"),
                                     ("ece", "test expected calibration error", lim["ece"], "{:.2%}")):
        values = [m["test"].get(key) for m in (fe, ft)]
        measured = " / ".join("n/a" if v is None else shown.format(v) for v in values)
        if key == "ece" and all("ece_by_chance_p95" in m["test"] for m in (fe, ft)):
            chance = " / ".join(shown.format(m["test"]["ece_by_chance_p95"]) for m in (fe, ft))
            measured += f" (a calibrated model, by chance alone: up to {chance})"
        rows.append((f"{label}{where}, feature_extraction / fine_tuning", measured, f"<= {shown.format(limit)}",
                     all(v is not None and v <= limit for v in values)))
    return rows


def targets_section(s: dict) -> list[str]:
    lines = ["", "## Targets", "", "| figure | measured | target | |", "|---|---|---|---|"]
    for figure, measured, target, ok in targets(s):
        lines.append(f"| {figure} | {measured} | {target} | {'not measured' if ok is None else verdict(ok)} |")
    return lines


def calibration_section(s: dict) -> list[str]:
    models = s.get("models") or {}
    if not models:
        return []
    lines = ["", "## Calibration (test split)", "",
             "Each model's probability is sigmoid(logit / T), T fitted on the validation set after training "
             "(src/catsdogs/calibration.py). ECE: expected calibration error over ten bins of p. By chance: the ECE "
             "a perfectly calibrated model answering the same probabilities measures on this many test images "
             "(labels drawn from them, 1,000 draws: mean, 95th percentile); an ECE below the percentile cannot "
             "tell miscalibration from the luck of the split.", "",
             "| model | T | log loss | log loss before | Brier | ECE | ECE before | ECE by chance |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        t = m["test"]
        chance = "n/a" if "ece_by_chance" not in t else f"{t['ece_by_chance']:.2%}, {t['ece_by_chance_p95']:.2%}"
        cells = [_num(t.get("temperature"), "{:.2f}"), _num(t.get("log_loss"), "{:.3f}"),
                 _num(t.get("log_loss_uncalibrated"), "{:.3f}"), _num(t.get("brier"), "{:.3f}"),
                 _num(t.get("ece"), "{:.2%}"), _num(t.get("ece_uncalibrated"), "{:.2%}"), chance]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Reliability diagrams: `evaluation/<model>/reliability_diagram.png` in the workspace and in each "
              "model's MLflow run; all four on one chart: [reliability.png](reliability.png) (`dvc repro report`)."]
    return lines


def _num(value: float | None, shown: str) -> str:
    return "n/a" if value is None else shown.format(value)


def champion_section(s: dict) -> list[str]:
    c = s.get("champion")
    if not c:
        return []
    lines = ["", f"## The champion in memory: the int8 copy against the Keras model ({c['model']})", "",
             f"`bench/champion.py`: decoded test images, one image per call ({c['repeats']} calls, median and p95) "
             f"and all {c['images']} in batches of {c['batch']} (the median of {c.get('passes', 1)} passes; "
             "each pass in the last column).", "",
             "| model | one image | one image p95 | batches of 16 | test accuracy | test log loss | passes |",
             "|---|---|---|---|---|---|---|"]
    for label, name in (("keras", "Keras (.keras, TensorFlow)"), ("int8", "int8 copy (OpenVINO)")):
        m = c[label]
        each = " / ".join(str(rate) for rate in m.get("batch_images_per_second_passes", [m["batch_images_per_second"]]))
        lines.append(f"| {name} | {m['one_image_ms']} ms | {m['one_image_p95_ms']} ms | "
                     f"{m['batch_images_per_second']} images/s | {m['test_accuracy']:.1%} | {m['test_log_loss']:.3f} | "
                     f"{each} |")
    lines += ["", f"Speed-up: {c['int8_speedup_one_image']}x for one image, {c['int8_speedup_batch']}x in batches; "
              f"test accuracy {c['int8_accuracy_change'] * 100:+.1f} pt."]
    return lines


def seeds_section(s: dict) -> list[str]:
    seeds = s.get("seeds")
    if not seeds:
        return []
    lines = ["", "## The VGG16 models across training seeds", "",
             "`bench/seeds.py`: the same split and cached activations, `train.seed` changed (head initialisation, "
             "dropout, shuffling).", "",
             "| train.seed | "
             + " | ".join(f"{m}: val | {m}: test | {m}: test log loss | {m}: test ECE" for m in seeds["models"]) + " |",
             "|---|" + "---|---|---|---|" * len(seeds["models"])]
    columns = (("val_accuracy", "{:.1%}"), ("test_accuracy", "{:.1%}"), ("test_log_loss", "{:.3f}"),
               ("test_ece", "{:.2%}"))
    for run in seeds["runs"]:
        cells = [_num(run[m].get(key), shown) for m in seeds["models"] for key, shown in columns]
        lines.append(f"| {run['seed']}{' (default)' if run['default'] else ''} | " + " | ".join(cells) + " |")
    summary = []
    for m in seeds["models"]:
        for key, shown in columns:
            values = [run[m].get(key) for run in seeds["runs"]]
            if None in values:
                summary.append("n/a")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.append(f"{shown.format(statistics.mean(values))} ± {shown.format(spread)}")
    lines.append("| mean ± standard deviation | " + " | ".join(summary) + " |")
    return lines


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
    repro, repro32 = s.get("repro"), s.get("repro_float32")
    if not repro:
        return []
    by_stage32 = {st["stage"]: st for st in (repro32 or {}).get("stages", [])}
    title = (f"## `dvc repro` from an empty cache: {repro['total_seconds'] / 60:.1f} min, "
             f"peak {repro['peak_rss_gib']:.2f} GiB")
    if repro32:
        title += f"; in float32 {repro32['total_seconds'] / 60:.1f} min, peak {repro32['peak_rss_gib']:.2f} GiB"
    lines = [
        "", title, "",
        "Peak memory: resident set of dvc and the stage it runs, together. CPU busy: share of all cores' time in "
        "use during the stage; stolen: share the host took (steal). float32: the same defaults with "
        "`train.precision: float32` in a second fresh clone (the stand-in for a CPU without native bfloat16).",
        "",
        "| stage | wall time | peak memory | CPU busy | stolen | float32: wall time | float32: peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for st in repro["stages"]:
        other = by_stage32.get(st["stage"])
        extra = f"{other['seconds'] / 60:.1f} min | {other['peak_rss_gib']:.2f} GiB" if other else " | "
        lines.append(f"| {st['stage']} | {st['seconds'] / 60:.1f} min | {st['peak_rss_gib']:.2f} GiB | "
                     f"{percent(st.get('cpu_busy'))} | {percent(st.get('cpu_steal'))} | {extra} |")
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
    if not serving:
        return []
    seq, con = serving["sequential"], serving["concurrent"]
    return [
        "",
        "## Serving the champion over HTTP",
        "",
        f"`{serving['command']}`; request: one {serving['image']} (`bench/serving.py`). Peak memory of the "
        f"server's processes under load: {serving.get('server_peak_rss_mib', 'n/a')} MiB; their CPU time per "
        f"request under load: {con.get('server_cpu_ms_per_request', 'n/a')} ms.",
        "",
        "| load | requests | errors | p50 | p95 | p99 | images/s |",
        "|---|---|---|---|---|---|---|",
        f"| 1 client, sequential | {seq['requests']} | {seq['errors']} | {seq['p50_ms']} ms | {seq['p95_ms']} ms "
        f"| {seq['p99_ms']} ms | {1000 / seq['p50_ms']:.1f} (1/p50) |",
        f"| {con['clients']} clients, {con['seconds']:.0f} s | {con['requests']} | {con['errors']} | "
        f"{con['p50_ms']} ms | {con['p95_ms']} ms | {con['p99_ms']} ms | {con['images_per_second']} |",
    ]


if __name__ == "__main__":
    main()
