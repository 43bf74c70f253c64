"""Batch scoring on Spark: `catsdogs score` in local mode and on a real standalone cluster (a master and two
workers on loopback, started here with Spark's own launcher), against the pyfunc's own predict."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.harness import free_port
from catsdogs import synthetic
from conftest import require_binaries, subprocess_env

_no_java = shutil.which("java") is None and not os.environ.get("JAVA_HOME")
require_binaries("Java 17+ (apt-get install openjdk-17-jre-headless)" if _no_java else None, "Spark tests")
import pyspark  # noqa: E402  (a project extra that the test extra installs)

CATSDOGS = str(Path(sys.executable).parent / "catsdogs")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Good photos in cat/ and dog/ folders, odd formats elsewhere, and bad files mixed in."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(21)
    good = {}
    for label, folder in (("cat", "cat"), ("dog", "Dogs")):  # folder names as data sets spell them
        (root / folder).mkdir()
        for i in range(5):
            path = root / folder / f"{label}.{i}.jpg"
            synthetic.make_image(label, rng).save(path)
            good[str(path)] = label
    (root / "misc").mkdir()
    for name, data in synthetic.odd_images(rng).items():
        (root / "misc" / name).write_bytes(data)
        good[str(root / "misc" / name)] = None
    photo = synthetic.encode(synthetic.make_photo(rng))
    bad = {"cat/truncated.jpg": photo[: len(photo) // 2], "Dogs/not_an_image.png": b"hello, no pixels here",
           "misc/empty.gif": b"", "misc/bomb.png": synthetic.decompression_bomb()}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    (root / "misc" / "notes.txt").write_text("not an image file name: skipped by the folder search")
    return {"root": root, "good": good, "bad": {str(root / name) for name in bad}}


def score(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CATSDOGS, "score", *args], cwd=project, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=600)


def expected(project: Path, paths: list[str]) -> pd.DataFrame:
    """The registered pyfunc's own answers for these files."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/catsdogs@champion")
    images = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths]
    return model.predict(pd.DataFrame({"image": images})).set_index(pd.Index(paths))


def check(result: pd.DataFrame, photos: dict, project: Path) -> None:
    rows = result.set_index("path")
    assert set(rows.index) == set(photos["good"]) | photos["bad"], "one row per image file, no more"
    good = sorted(photos["good"])
    want = expected(project, good)
    assert rows.loc[good, "error"].isna().all()
    assert list(rows.loc[good, "label"]) == list(want["label"])
    for column in ("p_cat", "p_dog"):
        np.testing.assert_allclose(rows.loc[good, column], want[column], atol=1e-6)
    for path in photos["bad"]:
        assert isinstance(rows.loc[path, "error"], str) and rows.loc[path, "error"], path
        assert pd.isna(rows.loc[path, "label"]) and pd.isna(rows.loc[path, "p_dog"])
    assert rows.loc[str(photos["root"] / "misc" / "bomb.png"), "error"].startswith("too large")
    for path, label in rows["folder_label"].items():
        parent = {"cat": "cat", "Dogs": "dog"}.get(Path(path).parent.name)
        assert label == parent if parent else pd.isna(label), path


@pytest.fixture(scope="module")
def local_result(champion: dict, tiny_project: Path, photos: dict, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("scored") / "local.parquet"
    done = score(tiny_project, str(photos["root"]), "--out", str(out), "--master", "local[2]")
    assert done.returncode == 0, done.stderr[-3000:]
    return done, pd.read_parquet(out)


def test_local_mode_matches_the_pyfunc_and_marks_bad_files(local_result, photos: dict, tiny_project: Path) -> None:
    done, result = local_result
    check(result, photos, tiny_project)
    summary = done.stdout.strip().splitlines()[-1]
    total, bad = len(photos["good"]) + len(photos["bad"]), len(photos["bad"])
    assert summary.startswith(f"{total} files, {total - bad} scored, {bad} errors, ")


def test_tables_of_paths_and_csv_output(champion: dict, tiny_project: Path, photos: dict, tmp_path: Path) -> None:
    chosen = sorted(photos["good"])[:3]
    relative = os.path.relpath(chosen[0], tiny_project)  # relative to the working directory, as manifests are
    table = tmp_path / "paths.csv"
    pd.DataFrame({"path": [relative, *chosen[1:], str(tmp_path / "gone.jpg")]}).to_csv(table, index=False)
    out = tmp_path / "out.csv"
    done = score(tiny_project, str(table), "--out", str(out), "--format", "csv", "--master", "local[1]")
    assert done.returncode == 0, done.stderr[-3000:]
    result = pd.concat(pd.read_csv(part) for part in sorted(out.glob("part-*.csv"))).set_index("path")
    assert result.loc[str(tmp_path / "gone.jpg"), "error"] == "No such file or directory"
    want = expected(tiny_project, chosen)
    as_given = [relative, *chosen[1:]]  # rows keep the table's paths, to join on
    np.testing.assert_allclose(result.loc[as_given, "p_dog"], want["p_dog"], atol=1e-6)
    assert result.loc[as_given, "error"].isna().all()


def test_bad_inputs_and_unknown_models_fail_in_one_line_before_spark(champion: dict, tiny_project: Path,
                                                                   photos: dict, tmp_path: Path) -> None:
    missing = score(tiny_project, str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"catsdogs score: {tmp_path / 'nowhere'}: no such file or folder"
    unknown = score(tiny_project, str(photos["root"]), "--out", str(tmp_path / "o"), "--model", "models:/nope/1")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    assert unknown.stderr.startswith("catsdogs score: cannot load model models:/nope/1")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone Spark master and two one-core workers on 127.0.0.1, stopped by their process groups."""
    spark_home = Path(pyspark.__file__).parent
    work = tmp_path_factory.mktemp("spark")
    env = subprocess_env(SPARK_HOME=str(spark_home), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(work),
                         SPARK_WORKER_DIR=str(work / "workers"), PYSPARK_PYTHON=sys.executable)
    spark_class = str(spark_home / "bin" / "spark-class")
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(free_port())]]
    commands += [[spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                  "--cores", "1", "--memory", "2g", "--webui-port", str(free_port())] for _ in range(2)]
    processes = []
    try:
        for i, command in enumerate(commands):
            log = (work / f"process{i}.log").open("wb")
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            if i == 0:
                _wait_for_log(work / "process0.log", "I have been elected leader", processes[0])
        for i in (1, 2):
            _wait_for_log(work / f"process{i}.log", "Successfully registered with master", processes[i])
        yield master_url
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def _wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {timeout} s"
        time.sleep(0.5)


def test_a_standalone_cluster_gives_the_same_rows(cluster: str, local_result, photos: dict, tiny_project: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "cluster.parquet"
    env = subprocess_env(SPARK_LOCAL_IP="127.0.0.1")
    done = score(tiny_project, str(photos["root"]), "--out", str(out), "--master", cluster,
                 "--conf", "spark.executor.memory=1g", "--conf", "spark.driver.host=127.0.0.1", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    on_cluster = pd.read_parquet(out).sort_values("path").reset_index(drop=True)
    local = local_result[1].sort_values("path").reset_index(drop=True)
    pd.testing.assert_frame_equal(on_cluster[local.columns], local, check_exact=False, atol=1e-6)
    check(on_cluster, photos, tiny_project)
