"""Team mode on real services: PostgreSQL, SeaweedFS (S3) and `mlflow server` with basic auth, started by
`catsdogs services up` on free loopback ports, then a tiny pipeline logged to them, pushed to the DVC
remote, pulled into a fresh clone and served from the server. Skipped, saying how to install what is
missing, where the PostgreSQL server binaries or SeaweedFS are absent; under CI=true that is a failure."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from bench.harness import served_model
from catsdogs import services, synthetic
from catsdogs.config import MODEL_NAMES
from conftest import ROOT, pipeline_project, require_binaries, run_checked, subprocess_env

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    try:
        services.postgres_bindir()
        services.weed_binary()
    except services.ServiceError as err:
        return str(err)
    return None


require_binaries(_missing(), "team tests")


@pytest.fixture(scope="module")
def team() -> Iterator[dict]:
    """The services up in a fresh DIR (under /tmp, which the postgres user can reach); down at the end."""
    root = Path(tempfile.mkdtemp(prefix="catsdogs-services-"))
    os.chmod(root, 0o755)
    try:
        state = services.up(root / ".services")
        env = services.read_env_file(root / ".services" / "env")
        yield {"dir": root / ".services", "state": state, "env": env}
    finally:
        services.down(root / ".services")
        shutil.rmtree(root, ignore_errors=True)


def team_env(team: dict, **extra: str) -> dict[str, str]:
    # fail fast where the tests stop a service on purpose
    return subprocess_env(**{**team["env"], "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", **extra})


@pytest.fixture(scope="module")
def clone_a(team: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline run with the team env sourced, its results committed and pushed (`dvc push`)."""
    project = pipeline_project(tmp_path_factory.mktemp("a"))
    env = team_env(team)
    run_checked(["dvc", "repro"], project, env)
    run_checked(["git", "add", "-A"], project, env)
    run_checked(["git", "commit", "-qm", "pipeline results"], project, env)
    run_checked(["dvc", "push"], project, env)
    return project


@pytest.fixture(scope="module")
def clone_b(team: dict, clone_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of A that pulls everything from the DVC remote."""
    clone = tmp_path_factory.mktemp("b") / "project"
    run_checked(["git", "clone", "-q", str(clone_a), str(clone)], clone.parent)
    run_checked(["dvc", "pull"], clone, team_env(team))
    return clone


@pytest.fixture
def as_admin(team: dict, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team["state"].admin_password)
    import mlflow

    return mlflow.MlflowClient(team["state"].tracking_uri, team["state"].tracking_uri)


def snapshot(client) -> dict:
    """Every run (with its metrics and artifacts), model version and alias on the server."""
    experiment = client.get_experiment_by_name("catsdogs")
    runs = client.search_runs([experiment.experiment_id])
    model = client.get_registered_model("catsdogs")
    return {
        "runs": {r.info.run_id: (r.info.status, sorted(r.data.metrics.items()),
                                 sorted(a.path for a in client.list_artifacts(r.info.run_id))) for r in runs},
        "versions": sorted(v.version for v in client.search_model_versions("name='catsdogs'")),
        "aliases": dict(model.aliases),
    }


def test_services_answer_on_loopback_and_keep_their_secrets_in_dir(team: dict) -> None:
    state = team["state"]
    assert state.host == "127.0.0.1"
    assert set(services.status(team["dir"]).values()) == {f"running on 127.0.0.1:{state.ports[n]}"
                                                         for n in services.SERVICES}
    for name in ("env", "state.json", "basic_auth.ini", "s3.json"):
        assert (team["dir"] / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    assert team["env"]["MLFLOW_TRACKING_URI"] == state.tracking_uri
    assert len(state.admin_password) >= 24 and state.admin_password != "password1234"
    # `up` again is a no-op: the same processes keep answering
    pids = {name: services.read_pid(services.Paths(team["dir"]), name) for name in ("s3", "mlflow")}
    assert services.up(team["dir"]).tracking_uri == state.tracking_uri
    assert {name: services.read_pid(services.Paths(team["dir"]), name) for name in pids} == pids


def test_without_credentials_the_server_answers_401(team: dict, tmp_path: Path) -> None:
    url = f"{team['state'].tracking_uri}/api/2.0/mlflow/experiments/search"
    assert requests.get(url, params={"max_results": 1}, timeout=10).status_code == 401
    assert requests.get(url, params={"max_results": 1}, auth=("admin", "wrong"), timeout=10).status_code == 401
    ok = requests.get(url, params={"max_results": 1}, auth=("admin", team["state"].admin_password), timeout=10)
    assert ok.status_code == 200
    # a command without the login says which variables to set, in one line
    (tmp_path / "photo.jpg").write_bytes(synthetic.encode(synthetic.make_photo(np.random.default_rng(1))))
    env = {key: value for key, value in team_env(team).items()
           if key not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    predicted = subprocess.run([str(Path(sys.executable).parent / "catsdogs"), "predict", "photo.jpg"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 1 and "Traceback" not in predicted.stderr
    assert "401" in predicted.stderr and "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in predicted.stderr


def test_the_pipeline_logs_runs_models_and_the_registry_to_the_server(team: dict, clone_a: Path, as_admin) -> None:
    client = as_admin
    experiment = client.get_experiment_by_name("catsdogs")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage LIKE 'train_%'")
    assert sorted(r.data.tags["mlflow.runName"] for r in runs) == sorted(MODEL_NAMES)
    gates = client.search_runs([experiment.experiment_id], "attributes.run_name LIKE 'gate: %'")
    assert [r.info.run_name for r in gates] == ["gate: catsdogs v1"]  # the register stage's validation gate
    for run in [*runs, *gates]:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1
        assert "test_accuracy" in run.data.metrics
    champion = client.get_model_version_by_alias("catsdogs", "champion")
    assert champion.tags["source_model"] == "fine_tuning"
    # nothing was written to a local store, and the artifacts are in the object store's bucket
    assert not (clone_a / "mlflow.db").exists() and not (clone_a / "mlruns").exists()
    keys = [o["Key"] for o in services.s3_client(team["state"]).list_objects_v2(Bucket="mlflow")["Contents"]]
    assert any(key.endswith("model.keras") for key in keys)


def test_a_fresh_clone_pulls_everything_and_has_nothing_to_rerun(team: dict, clone_a: Path, clone_b: Path) -> None:
    for relative in [f"models/{n}/model.keras" for n in MODEL_NAMES] + ["features/train_block4.npy",
                                                                        "data/splits/train.csv"]:
        assert (clone_b / relative).read_bytes() == (clone_a / relative).read_bytes(), relative
    raw_a = sorted(p.relative_to(clone_a) for p in (clone_a / "data" / "raw").rglob("*.jpg"))
    assert raw_a and raw_a == sorted(p.relative_to(clone_b) for p in (clone_b / "data" / "raw").rglob("*.jpg"))
    env = team_env(team)
    assert "up to date" in run_checked(["dvc", "status"], clone_b, env).stdout
    assert "Running stage" not in run_checked(["dvc", "repro"], clone_b, env).stdout


def test_the_champion_is_served_from_the_server_in_the_fresh_clone(team: dict, clone_b: Path) -> None:
    credentials = {key: team["env"][key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    photo = synthetic.encode(synthetic.make_photo(np.random.default_rng(5)))
    with served_model(clone_b, tracking_uri=team["state"].tracking_uri, extra_env=credentials, timeout=240) as url:
        payload = {"dataframe_records": [{"image": base64.b64encode(photo).decode()}]}
        response = requests.post(f"{url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text[:500]
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] in {"cat", "dog"} and abs(prediction["p_cat"] + prediction["p_dog"] - 1) < 1e-6
    (clone_b / "photo.jpg").write_bytes(photo)
    predicted = run_checked([str(Path(sys.executable).parent / "catsdogs"), "predict", "photo.jpg"], clone_b,
                            team_env(team))
    assert predicted.stdout.split("\t")[1] == prediction["label"]


def test_a_read_only_user_can_read_but_not_register_or_move_the_alias(team: dict, clone_a: Path) -> None:
    password = services.add_user(team["dir"], "reader")
    base, auth = f"{team['state'].tracking_uri}/api/2.0/mlflow", ("reader", password)
    read = requests.get(f"{base}/registered-models/get", params={"name": "catsdogs"}, auth=auth, timeout=10)
    assert read.status_code == 200
    version = read.json()["registered_model"]["latest_versions"][0]
    create = requests.post(f"{base}/model-versions/create", auth=auth, timeout=10,
                           json={"name": "catsdogs", "source": version["source"], "run_id": version["run_id"]})
    assert create.status_code == 403, create.text[:300]
    alias = requests.post(f"{base}/registered-models/alias", auth=auth, timeout=10,
                          json={"name": "catsdogs", "alias": "champion", "version": version["version"]})
    assert alias.status_code == 403, alias.text[:300]
    # the register stage run with that login stops at its first change, in one line that names the login
    env = team_env(team, MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD=password)
    stage = subprocess.run([sys.executable, "-m", "catsdogs.register"], cwd=clone_a, env=env, capture_output=True,
                           text=True, timeout=300)
    assert stage.returncode == 1 and "Traceback" not in stage.stderr
    last = stage.stderr.strip().splitlines()[-1]
    assert last.startswith("register: ") and "403" in last and "may not make this change" in last, last


def test_two_training_stages_log_at_the_same_time(team: dict, clone_a: Path, as_admin) -> None:
    env = team_env(team)
    started = [subprocess.Popen([sys.executable, "-m", "catsdogs.train", name], cwd=clone_a, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in ("scratch", "feature_extraction")]
    outputs = [process.communicate(timeout=600)[0] for process in started]
    assert [process.returncode for process in started] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    for name in ("scratch", "feature_extraction"):
        run_id = (clone_a / "models" / name / "run.json").read_text().split('"run_id": "')[1].split('"')[0]
        run = as_admin.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "final_val_accuracy"} <= set(run.data.metrics)


def test_a_stage_whose_server_dies_stops_with_one_line_then_resumes(team: dict, clone_a: Path, as_admin) -> None:
    """The MLflow server is killed while `train scratch` logs its epochs: one clear line naming the tracking
    URI, no traceback; with the server up again, the same command resumes into the same run and finishes."""
    paths = services.Paths(team["dir"])
    params = clone_a / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("epochs: 1\n", "epochs: 20\n", 1))  # scratch comes first
    env = team_env(team)
    try:
        process = subprocess.Popen([sys.executable, "-m", "catsdogs.train", "scratch"], cwd=clone_a, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        history = clone_a / ".backup" / "scratch" / "history.csv"
        deadline = time.monotonic() + 300
        while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # two epochs logged
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        services.stop_process(paths, "mlflow", timeout=30)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode != 0
        assert "Traceback" not in stderr, stderr[-3000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("train scratch: the MLflow tracking store") and team["state"].tracking_uri in last
        run_id = (clone_a / ".backup" / "scratch" / "run_id").read_text().strip()

        services.up(team["dir"])
        run_checked([sys.executable, "-m", "catsdogs.train", "scratch"], clone_a, env)
        assert f'"run_id": "{run_id}"' in (clone_a / "models" / "scratch" / "run.json").read_text()
        run = as_admin.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert len(as_admin.get_metric_history(run_id, "val_accuracy")) >= 20
    finally:
        params.write_text(original)


def test_down_then_up_keeps_every_run_artifact_version_and_alias(team: dict, clone_a: Path, as_admin) -> None:
    before = snapshot(as_admin)
    assert before["aliases"] == {"champion": before["versions"][0]}
    assert set(services.down(team["dir"])) == set(services.SERVICES)
    assert set(services.status(team["dir"]).values()) == {"stopped"}
    services.up(team["dir"])
    assert snapshot(as_admin) == before


def test_push_and_pull_fail_cleanly_while_the_object_store_is_down(team: dict, clone_a: Path) -> None:
    paths = services.Paths(team["dir"])
    cache = clone_a / ".dvc" / "cache"
    cached = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    (clone_a / "extra.txt").write_text("new data\n")
    env = team_env(team)
    run_checked(["dvc", "add", "extra.txt"], clone_a, env)
    services.stop_process(paths, "s3", timeout=30)
    try:
        for command in (["dvc", "push"], ["dvc", "pull", "--force"]):
            done = subprocess.run(command, cwd=clone_a, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode != 0, command
            assert "ERROR" in done.stderr + done.stdout, command
        assert set(cached) <= {p.relative_to(cache) for p in cache.rglob("*") if p.is_file()}
        assert (clone_a / "extra.txt").read_text() == "new data\n"
    finally:
        services.up(team["dir"])


def test_no_secret_is_in_the_tracked_files(team: dict, clone_a: Path) -> None:
    """The services' secrets never reach git, here or in a project that used them; nor does any key-like text."""
    state = team["state"]
    live = [state.admin_password, state.pg_password, state.s3_secret_key, state.flask_secret]
    patterns = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                                        r"(?i)(password|secret_access_key)\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{16,}")]
    for repo in (ROOT, clone_a):
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        for name in filter(None, tracked.decode().split("\0")):
            path = repo / name
            if not path.is_file() or path.stat().st_size > 5_000_000:
                continue
            text = path.read_bytes().decode("utf-8", errors="ignore")
            assert not any(secret in text for secret in live), f"{repo.name}/{name} holds a live secret"
            hits = [p.pattern for p in patterns if p.search(text)]
            assert not hits, f"{repo.name}/{name} looks like it holds a secret ({hits})"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".services/env"], cwd=ROOT)
    assert ignored.returncode == 0, ".services/ must be git-ignored"
