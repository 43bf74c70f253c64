"""The small CNN's pixel scaling and initialisation (params `cnn`): the book's against centred pixels + He.

    python bench/cnn_init.py [--epochs N] [--out reports/benchmark_cnn_init.json]

Run inside a project folder whose `dvc repro split` is done (bench/run.py's workspace, for example).
Trains the `scratch` model twice, as its stage prepares it (models.scratch in params.yaml: epochs,
optimizer, schedule, dropout, seed), once per setting below, and reports validation accuracy after
each epoch. Early stopping is left out so that both run the whole budget (--epochs: another one);
about 50 s per epoch and setting on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

SETTINGS = {
    "book": {"centered_inputs": False, "initializer": "glorot_uniform"},  # pixels / 255, Keras's default
    "centred_he": {"centered_inputs": True, "initializer": "he_uniform"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="default: models.scratch.epochs")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_cnn_init.json"))
    args = parser.parse_args()

    import catsdogs  # noqa: F401  (its defaults apply before TensorFlow loads)
    from catsdogs.config import CnnParams, load_params

    params = load_params()
    if args.epochs:
        scratch = dataclasses.replace(params.models["scratch"], epochs=args.epochs)
        params = dataclasses.replace(params, models={**params.models, "scratch": scratch})
    result = {"model": "scratch", "epochs": params.models["scratch"].epochs, "settings": {}}
    for name, setting in SETTINGS.items():
        print(f"cnn benchmark: {name} {setting} ...", flush=True)
        curve = val_accuracy_curve(dataclasses.replace(params, cnn=CnnParams(**setting)))
        result["settings"][name] = {**setting, "val_accuracy": curve, "best_val_accuracy": max(curve),
                                    "final_val_accuracy": curve[-1]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def val_accuracy_curve(params) -> list[float]:
    import keras

    from catsdogs.models import set_precision
    from catsdogs.train import prepare

    set_precision(params.train.precision)
    keras.utils.set_random_seed(params.train.seed)
    model, _, train, val, _ = prepare("scratch", params)
    history = model.fit(train, validation_data=val, epochs=params.models["scratch"].epochs, verbose=2)
    return [round(float(v), 4) for v in history.history["val_accuracy"]]


if __name__ == "__main__":
    main()
