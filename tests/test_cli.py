"""The `catsdogs` command: predict with the registered champion, the augmentation preview, the UI; and its errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from bench.harness import free_port, server_process
from catsdogs import synthetic
from catsdogs.cli import main
from conftest import ROOT, subprocess_env


def test_predict_prints_label_and_probabilities_per_file(champion: dict, in_project, capsys) -> None:
    rng = np.random.default_rng(4)
    good = in_project / "photo.jpg"
    synthetic.make_photo(rng).save(good)
    grey = in_project / "grey.png"
    synthetic.make_image("cat", rng).convert("L").save(grey)
    broken = in_project / "broken.jpg"
    broken.write_bytes(b"not an image")
    code = main(["predict", str(good), str(grey), str(broken), str(in_project / "missing.jpg"), str(in_project)])
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
    assert f"{in_project}\terror: a folder: name its files (folder/*.jpg), or classify folders with catsdogs " in err


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


def test_every_dvc_stage_is_a_command(tmp_path, monkeypatch) -> None:
    """`catsdogs <stage> [NAME]` runs what dvc.yaml runs as `python -m catsdogs.<stage> [NAME]`; here outside
    the project, where each says what is missing in one line."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = [stage.get("do", stage)["cmd"].removeprefix("python -m catsdogs.") for stage in stages.values()]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = command.replace("${item}", "fine_tuning").split()
        with pytest.raises(SystemExit, match=f"^{' '.join(argv)}: \\S+ is missing; run"):
            main(argv)


def test_demo_data_writes_a_data_set_the_pipeline_reads(tmp_path, capsys) -> None:
    from catsdogs.data import class_counts, find_labelled_images

    assert main(["demo-data", str(tmp_path / "demo"), "--per-class", "4", "--layout", "kaggle"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 8 images under {tmp_path / 'demo'}"
    assert class_counts(find_labelled_images(tmp_path / "demo")[1]) == {"cat": 4, "dog": 4}
    for bad in (["--per-class", "0"], ["--layout", "flat"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo-data", str(tmp_path / "other"), *bad])
        assert exit_info.value.code == 2 and "--per-class must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("bad", [["--count", "0"], ["--out", "preview.txt"], ["--out", "preview"]])
def test_augment_preview_refuses_a_count_or_file_type_it_cannot_draw(bad: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["augment-preview", "photo.jpg", *bad])
    assert exit_info.value.code == 2 and "--out a file name ending in one of" in capsys.readouterr().err


def test_ui_refuses_a_port_in_use_or_out_of_range(tmp_path, monkeypatch, capsys) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as held:  # a UI left running, say
        port = held.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before it touched the store
    assert capsys.readouterr().err.strip() == (f"catsdogs ui: port {port} on 127.0.0.1 is in use (a UI left "
                                               "running?); choose another: catsdogs ui --port PORT")
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--port", "70000"])
    assert exit_info.value.code == 2 and "'70000' is not a TCP port (1-65535)" in capsys.readouterr().err


def test_augment_preview_writes_a_grid(in_project, tmp_path) -> None:
    photo = tmp_path / "photo.jpg"
    synthetic.make_photo(np.random.default_rng(0), (200, 150)).save(photo)
    out = tmp_path / "preview.png"
    assert main(["augment-preview", str(photo), "--out", str(out), "--count", "7"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 800


@pytest.mark.slow
def test_ui_serves_the_store_and_prints_the_link_to_its_training_runs(tmp_path: Path) -> None:
    import mlflow

    shutil.copy(ROOT / "params.yaml", tmp_path)  # its store: sqlite:///mlflow.db, here
    experiment = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("catsdogs")
    catsdogs, env, port = str(Path(sys.executable).parent / "catsdogs"), subprocess_env(), free_port()
    url = f"http://127.0.0.1:{port}"
    link = f"training runs: {url}/#/experiments/{experiment}?workflowType=machine_learning"
    log = tmp_path / "ui.log"
    with server_process([catsdogs, "ui", "--port", str(port)], tmp_path, env, log, f"{url}/health", timeout=180):
        assert log.read_text().splitlines()[0] == link
        got = requests.get(f"{url}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment}, timeout=30)
        assert got.json()["experiment"]["name"] == "catsdogs"
        # with a tracking server as the store (MLFLOW_TRACKING_URI), the server is the UI: its link, nothing started
        remote = subprocess.run([catsdogs, "ui", "--port", str(free_port())], cwd=tmp_path, capture_output=True,
                                text=True, env={**env, "MLFLOW_TRACKING_URI": url}, timeout=120)
        assert remote.returncode == 0 and remote.stdout.strip() == link
