"""The `catsdogs` command: predict with the registered champion, and the augmentation preview."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from catsdogs import synthetic
from catsdogs.cli import main
from conftest import ROOT


def test_predict_prints_label_and_probabilities_per_file(champion: dict, in_project, capsys) -> None:
    rng = np.random.default_rng(4)
    good = in_project / "photo.jpg"
    synthetic.make_photo(rng).save(good)
    grey = in_project / "grey.png"
    synthetic.make_image("cat", rng).convert("L").save(grey)
    broken = in_project / "broken.jpg"
    broken.write_bytes(b"not an image")
    code = main(["predict", str(good), str(grey), str(broken), str(in_project / "missing.jpg")])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert code == 1, "a file that could not be classified makes the exit status 1"
    assert len(lines) == 2
    for line, path in zip(lines, (good, grey), strict=True):
        name, label, probabilities = line.split("\t")
        assert name == str(path) and label in {"cat", "dog"}
        p = dict(item.split("=") for item in probabilities.split())
        assert float(p["p_cat"]) + float(p["p_dog"]) == pytest.approx(1.0, abs=2e-4)
        assert (float(p["p_dog"]) >= 0.5) == (label == "dog")
    assert "broken.jpg\terror: not an image (unknown format)" in err
    assert "missing.jpg\terror:" in err


def test_predict_before_a_model_is_registered_says_so_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    """A project whose tracking store holds no champion yet (before its first `dvc repro`)."""
    shutil.copy(ROOT / "params.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    photo = tmp_path / "photo.jpg"
    synthetic.make_photo(np.random.default_rng(0)).save(photo)
    assert main(["predict", str(photo)]) == 1
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("catsdogs predict:")]
    assert said == ["catsdogs predict: cannot load model models:/catsdogs@champion: Registered Model with "
                    "name=catsdogs not found (dvc repro registers the champion; --model names another)"]
    assert "Traceback" not in err


def test_commands_outside_the_project_say_where_to_run_them(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    photo = tmp_path / "photo.jpg"
    synthetic.make_photo(np.random.default_rng(0)).save(photo)
    assert main(["augment-preview", str(photo)]) == 1
    assert capsys.readouterr().err.strip() == ("catsdogs augment-preview: params.yaml is missing; run from the "
                                               "project root (where dvc.yaml is)")
    # predict needs no params.yaml when --model names the model; a model that is not there is one line
    assert main(["predict", "--model", str(tmp_path / "no-model"), str(photo)]) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("catsdogs predict:")]
    assert len(said) == 1 and said[0].startswith(f"catsdogs predict: cannot load model {tmp_path / 'no-model'}: ")


def test_augment_preview_writes_a_grid(in_project, tmp_path) -> None:
    photo = tmp_path / "photo.jpg"
    synthetic.make_photo(np.random.default_rng(0), (200, 150)).save(photo)
    out = tmp_path / "preview.png"
    assert main(["augment-preview", str(photo), "--out", str(out), "--count", "7"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 800
