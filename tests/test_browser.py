"""What a user sees, in a real headless Chromium: the MLflow UI over the tiny project's runs, and the offline
DVC plots page. Playwright drives the system's Chromium (Debian: apt-get install -y chromium).

Where Chromium or Playwright is missing these tests skip, saying how to install them; under CI=true they fail.
Screenshots go to test-output/browser/ (CATSDOGS_TEST_OUTPUT overrides the folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from bench.harness import (
    TRAINING_VIEW,
    VEGA_DRAWN,
    chromium,
    chromium_executable,
    offline_context,
    tracking_ui,
)
from catsdogs.config import MODELS_DIR
from catsdogs.tracking import data_hash
from conftest import ROOT, require_binaries, run_checked

INSTALL = "apt-get install -y chromium && pip install -e '.[browser]'"
SHOTS = Path(os.environ.get("CATSDOGS_TEST_OUTPUT", ROOT / "test-output")) / "browser"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright for Python is not installed; install: {INSTALL}"
    if chromium_executable() is None:
        return f"no chromium on PATH; install: {INSTALL}"
    return None


require_binaries(_missing(), "browser tests")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def ui(champion: dict, tiny_project: Path) -> Iterator[dict]:
    """`mlflow server` over the tiny project's store (four trained runs, the champion evaluated and registered)
    on a free loopback port; stopped by its process group."""
    with tracking_ui(tiny_project) as url:
        client = mlflow.MlflowClient(f"sqlite:///{tiny_project}/mlflow.db")
        experiment = client.get_experiment_by_name("catsdogs")
        runs = {name: json.loads((tiny_project / MODELS_DIR / name / "run.json").read_text())["run_id"]
                for name in ("scratch", "augmented", "feature_extraction", "fine_tuning")}
        yield {"url": url, "experiment": experiment.experiment_id, "runs": runs, "project": tiny_project}


def test_the_experiment_opens_on_its_training_runs_with_their_datasets(ui: dict, page) -> None:
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment']}?{TRAINING_VIEW}")  # README's link
    page.wait_for_url("**/runs**")
    for name in ui["runs"]:
        page.get_by_text(name, exact=True).first.wait_for()
    digest = data_hash(ui["project"] / "data" / "splits")[:12]
    page.get_by_text(f"train ({digest})").first.wait_for()
    page.screenshot(path=SHOTS / "runs_with_datasets.png")
    assert page.get_by_text(f"val ({digest})").count() >= 1
    assert "/overview" not in page.url  # not the GenAI overview ("Traces: 0")
    experiment = mlflow.MlflowClient(f"sqlite:///{ui['project']}/mlflow.db").get_experiment(ui["experiment"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_run_shows_its_metric_charts_and_system_metrics(ui: dict, page) -> None:
    run = f"{ui['url']}/#/experiments/{ui['experiment']}/runs/{ui['runs']['fine_tuning']}"
    page.goto(f"{run}/model-metrics?{TRAINING_VIEW}")
    page.get_by_text("accuracy", exact=True).first.wait_for()  # the chart of the per-epoch metric
    page.get_by_text("final_val_accuracy", exact=True).first.wait_for()
    _wait_for_charts(page)
    page.screenshot(path=SHOTS / "run_metrics.png")

    page.goto(f"{run}/system-metrics?{TRAINING_VIEW}")
    page.get_by_text("cpu_utilization_percentage").first.wait_for()
    _wait_for_charts(page)
    page.screenshot(path=SHOTS / "run_system_metrics.png")


def test_the_confusion_matrix_artifact_loads_as_an_image(ui: dict, page) -> None:
    run = f"{ui['url']}/#/experiments/{ui['experiment']}/runs/{ui['runs']['fine_tuning']}"
    page.goto(f"{run}/artifacts/evaluation/confusion_matrix.png?{TRAINING_VIEW}")
    page.get_by_text("evaluation/confusion_matrix.png").first.wait_for()  # the file the preview shows
    image = page.locator("img[src^='blob:']").first  # the UI fetches the artifact and shows it from a blob
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => img.naturalWidth") > 100
    page.screenshot(path=SHOTS / "confusion_matrix_artifact.png")


def test_the_registered_model_shows_its_champion_and_the_gate(ui: dict, champion: dict, page) -> None:
    page.goto(f"{ui['url']}/#/models/catsdogs?{TRAINING_VIEW}")
    page.get_by_text("champion").first.wait_for()
    page.get_by_text("validation gate").first.wait_for()  # the registered model's description
    page.screenshot(path=SHOTS / "registered_model.png")
    page.goto(f"{ui['url']}/#/models/catsdogs/versions/{champion['version']}?{TRAINING_VIEW}")
    page.get_by_text("promoted").first.wait_for()  # the version's gate tag
    page.screenshot(path=SHOTS / "champion_version.png")


def test_the_dvc_plots_page_draws_with_the_network_blocked(tiny_project: Path, trained: dict, tmp_path: Path,
                                                           browser) -> None:
    """`catsdogs plots` over the project's dvc.yaml and the tiny project's training histories."""
    project = tmp_path / "plots"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("mlruns", "mlflow.db", "features"))
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    run_checked(["dvc", "init", "--no-scm", "-q"], project)
    run_checked([sys.executable, "-m", "catsdogs.cli", "plots", "-o", "dvc_plots"], project)
    html = (project / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html

    requested: list[str] = []
    context = offline_context(browser, requested)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto((project / "dvc_plots" / "index.html").as_uri())
    charts = page.locator(".vega-embed")
    charts.first.wait_for()
    page.wait_for_function(VEGA_DRAWN)
    # One vega chart per history.csv plus the top-level comparison (the tiny project evaluated fine_tuning only).
    assert charts.count() >= 5
    assert page.evaluate("() => Array.from(document.images).every(img => img.naturalWidth > 0)")
    page.screenshot(path=SHOTS / "dvc_plots_offline.png")
    context.close()
    assert not errors and not requested, (errors, requested)


def _wait_for_charts(page) -> None:
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot, canvas, svg.main-svg, .recharts-surface').length > 0")
