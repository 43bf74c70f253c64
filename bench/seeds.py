"""The VGG16 models across training seeds: how much of their accuracy is the luck of one run.

    python -m bench.seeds WORKSPACE [--seeds 7 1] [--out reports/benchmark_seeds.json]

In WORKSPACE after `dvc repro` (whose own run is train.seed's default): for each extra seed, a folder
WORKSPACE/.bench-seeds/<seed> sharing the workspace's data splits and cached VGG16 activations
(symlinks), with params.yaml's train.seed changed and an MLflow store of its own; there
`python -m catsdogs.train` feature_extraction then fine_tuning, and `python -m catsdogs.evaluate` of
both. The seed changes the heads' initialisation, dropout and shuffling, not the data split or the
cached augmented views (features are computed once). Reports validation and test accuracy and test log
loss of each model per seed, the default run included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bench.harness import write_result
from catsdogs.config import VGG16_MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 1])
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_seeds.json"))
    args = parser.parse_args()
    result = run_seeds(args.workspace.resolve(), args.seeds)
    write_result(args.out, result)


def run_seeds(workspace: Path, seeds: list[int]) -> dict:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    if params["pretrained"]["weights"] != "imagenet":  # a path relative to the workspace
        params["pretrained"]["weights"] = str(workspace / params["pretrained"]["weights"])
    runs = [{"seed": params["train"]["seed"], "default": True, **results(workspace)}]
    for seed in seeds:
        folder = workspace / ".bench-seeds" / str(seed)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for shared in ("data", "features"):
            (folder / shared).symlink_to(workspace / shared)
        params["train"]["seed"] = seed
        params["mlflow"]["tracking_uri"] = f"sqlite:///{folder}/mlflow.db"
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for module, name in [("train", m) for m in VGG16_MODELS] + [("evaluate", m) for m in VGG16_MODELS]:
            print(f"+ seed {seed}: python -m catsdogs.{module} {name}", flush=True)
            subprocess.run([sys.executable, "-m", f"catsdogs.{module}", name], cwd=folder, check=True)
        runs.append({"seed": seed, "default": False, **results(folder)})
    return {"models": list(VGG16_MODELS), "runs": runs}


def results(folder: Path) -> dict:
    out = {}
    for name in VGG16_MODELS:
        trained = json.loads((folder / "models" / name / "metrics.json").read_text())
        tested = json.loads((folder / "evaluation" / name / "metrics.json").read_text())
        out[name] = {"val_accuracy": trained["val_accuracy"], "test_accuracy": tested["accuracy"],
                     "test_log_loss": tested["log_loss"], "test_ece": tested.get("ece")}
    return out


if __name__ == "__main__":
    sys.exit(main())
