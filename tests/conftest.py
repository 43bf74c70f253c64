"""Shared fixtures: generated image data, a params.yaml to tweak, and a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from catsdogs import synthetic
from catsdogs.config import VGG16_MODELS, Params, build

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# The tests' runs last seconds: MLflow's system metrics sample every second (its default, 10 s, would log none).
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")


# Fixtures that build the generated project (split, VGG16 features, four trained and registered models): a
# test that uses one, directly or through another fixture, is in the slow tier (`make test-fast` skips it).
PROJECT_FIXTURES = {"tiny_project"}


# The longest test files, longest first: `make test` hands whole files to two workers in collection order
# (pytest-xdist's --dist loadfile), so these start at once, side by side, and the short files fill in around them.
LONGEST_FILES = ("test_team.py", "test_pipeline.py", "test_bench.py", "test_score.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROJECT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


@pytest.fixture(autouse=True)
def keras_dtype_policy() -> Iterator[None]:
    """Training sets Keras's global dtype policy (mixed_bfloat16 on a CPU with native bfloat16): every test
    starts at Keras's default, whatever a fixture or the test before it trained."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def require_binaries(missing: str | None, what: str) -> None:
    """At a module's top: skip it where `missing` names an absent binary (the message says how to get it);
    under CI=true, where .ci/run installs them, fail instead."""
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{what} cannot run in CI: {missing}")
    pytest.skip(f"{what} skipped: {missing}", allow_module_level=True)


def params_dict(**overrides: object) -> dict:
    """The project's params.yaml as a dict, with dotted-key overrides (like dvc exp run -S)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    return raw


def make_params(**overrides: object) -> Params:
    return build(Params, params_dict(**overrides), where="")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder-per-class data set of 20 + 20 real JPEGs."""
    root = tmp_path / "images"
    synthetic.write_dataset(root, per_class=20, layout="classes")
    return root


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes, int | None]] = {}
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status, body, declared = self.routes.get(self.path, (404, b"not found", None))
        if callable(status):
            status = status(self.hits[self.path])
        self.send_response(status)
        self.send_header("Content-Length", str(declared if declared is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class LocalServer:
    """Serves registered bodies on 127.0.0.1; `declared` > len(body) simulates a truncated transfer."""

    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"routes": {}, "hits": {}})
        self.handler = handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, status: object = 200, declared: int | None = None) -> str:
        self.handler.routes[path] = (status, body, declared)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path: str) -> int:
        return self.handler.hits.get(path, 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


def copy_project(dest: Path) -> Path:
    """A copy of the project's pipeline files (not data, not .venv) for end-to-end runs."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml", "MLproject", "conda.yaml"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a pipeline subprocess: this venv's tools, no MLflow settings leaked by in-process
    tests (mlflow.set_tracking_uri and set_experiment export them), no phoning home, a git identity."""
    bin_dir = str(Path(sys.executable).parent)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {
        **inherited,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        **extra,
    }


def run_checked(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def random_vgg16_weights(path: Path, size: int, seed: int = 0) -> Path:
    """A VGG16 conv base's weights file with seeded random weights (no download): every session's models
    are the same, so what a test measures on them (how closely the int8 copy follows, say) is too."""
    import keras

    keras.utils.set_random_seed(seed)
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3)).save_weights(path)
    return path


def pipeline_project(tmp_path: Path) -> Path:
    """A git + DVC repository of the project's pipeline over a generated archive (48 px CNNs, 64 px VGG16 models,
    1 epoch per model)."""
    project = copy_project(tmp_path / "project")
    images = tmp_path / "images"
    synthetic.write_dataset(images, per_class=15, layout="filtered")
    archive = synthetic.zip_folder(images, tmp_path / "cats_and_dogs_filtered.zip")
    random_vgg16_weights(tmp_path / "vgg.weights.h5", 48)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["url"] = archive.as_uri()
    params["split"].update(train=0.6, val=0.2, test=0.2)
    params["image_size"] = 48
    params["pretrained"]["weights"] = str(tmp_path / "vgg.weights.h5")
    params["pretrained"]["input_size"] = 64  # the VGG16 models take 64 px images, the CNNs 48 (as 224 and 150)
    params["features"]["views"] = 1  # view 0 only: the VGG16 models train on the images themselves
    params["features"]["int8"] = False  # the stages' wiring is under test here; int8 features: tests/test_train.py
    for name in VGG16_MODELS:
        params["models"][name]["views"] = None
    for settings in params["models"].values():
        settings.update(epochs=1, batch_size=8)
    params["register"]["min_val_accuracy"] = None  # one epoch on 18 images: the gate compares, no floor
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_checked(["git", "init", "-q"], project)
    run_checked(["dvc", "init", "-q"], project)
    shutil.copy2(ROOT / ".dvc" / "config", project / ".dvc" / "config")  # the project's remote `storage`
    run_checked(["git", "add", "-A"], project)
    run_checked(["git", "commit", "-qm", "project"], project)
    return project


SIZE = 48  # the smallest image the book's CNN takes: fast tests


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: generated images split into manifests, random VGG16 weights, cached features."""
    from catsdogs.config import FEATURES_DIR, load_params
    from catsdogs.features import compute_features
    from catsdogs.split import split_dataset

    root = tmp_path_factory.mktemp("project")
    synthetic.write_dataset(root / "data" / "raw", per_class=24, layout="classes")
    random_vgg16_weights(root / "vgg.weights.h5", SIZE)
    raw = params_dict(**{"image_size": SIZE, "pretrained.weights": "vgg.weights.h5", "pretrained.input_size": None,
                         "features.views": 3,  # as params.yaml: the VGG16 models' views are the defaults
                         "split.train": 0.5, "split.val": 0.25, "split.test": 0.25,
                         "mlflow.tracking_uri": f"sqlite:///{root}/mlflow.db",
                         "register.min_val_accuracy": None})  # one epoch on 24 images: no floor
    for settings in raw["models"].values():
        settings.update(epochs=1, batch_size=8)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with contextlib.chdir(root):
        params = load_params()
        split_dataset(Path("data/raw"), Path("data/splits"), params.split)
        compute_features(params, Path("data/splits"), FEATURES_DIR)
    return root


@pytest.fixture(scope="session")
def trained(tiny_project: Path) -> dict:
    """All four models trained for one epoch in tiny_project: {name: metrics}."""
    from catsdogs.config import BACKUP_DIR, MODEL_NAMES, MODELS_DIR, load_params
    from catsdogs.train import train_model

    with contextlib.chdir(tiny_project), pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        params = load_params()
        return {name: train_model(name, params, MODELS_DIR / name, BACKUP_DIR / name) for name in MODEL_NAMES}


@pytest.fixture
def in_project(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tiny_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tiny_project


@pytest.fixture(scope="session")
def champion(trained: dict, tiny_project: Path) -> dict:
    """The fine-tuned tiny model evaluated, compressed to int8 and registered once as models:/catsdogs@champion."""
    import mlflow

    from catsdogs.compress import compress_model
    from catsdogs.config import COMPRESSED_DIR, EVALUATION_DIR, MODELS_DIR, load_params
    from catsdogs.evaluate import evaluate_model
    from catsdogs.register import register_model

    with contextlib.chdir(tiny_project):
        params = load_params()
        mlflow.set_tracking_uri(params.mlflow.tracking_uri)
        evaluate_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")
        compress_model(params, MODELS_DIR / "fine_tuning", COMPRESSED_DIR)
        return register_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")
