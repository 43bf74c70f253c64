"""Record what a user sees of a project's runs: MLflow UI pages and the offline DVC plots page, as screenshots
and text, in a headless Chromium (the browser tests' harness).

    python -m bench.ui PROJECT --out reports/ui

PROJECT is a project folder after `dvc repro` (its mlflow.db, models/*/run.json, dvc.yaml). Writes OUT/*.png
and OUT/pages.md: each page's address and the text a user reads on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import mlflow

from bench.harness import TRAINING_VIEW, VEGA_DRAWN, bench_env, chromium, offline_context, tracking_ui

TEXT_LIMIT = 1500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/ui"))
    args = parser.parse_args()
    project, out = args.project.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("catsdogs").experiment_id
    tuned = json.loads((project / "models" / "fine_tuning" / "run.json").read_text())["run_id"]
    versions = sorted(client.search_model_versions("name = 'catsdogs'"), key=lambda v: int(v.version))
    refused = [v for v in versions if v.tags.get("gate") == "refused"]
    records = []
    with tracking_ui(project) as url, chromium() as browser:
        run = f"{url}/#/experiments/{experiment}/runs/{tuned}"
        pages = {
            "runs": (f"{url}/#/experiments/{experiment}?{TRAINING_VIEW}", "Dataset"),
            "run_system_metrics": (f"{run}/system-metrics?{TRAINING_VIEW}", "cpu_utilization_percentage"),
            "run_metrics": (f"{run}/model-metrics?{TRAINING_VIEW}", "final_val_accuracy"),
            "registered_model": (f"{url}/#/models/catsdogs?{TRAINING_VIEW}", "champion"),
        }
        if refused:
            pages["refused_version"] = (f"{url}/#/models/catsdogs/versions/{refused[-1].version}?{TRAINING_VIEW}",
                                        "refused")
        context = browser.new_context(viewport={"width": 1500, "height": 950})
        context.set_default_timeout(60_000)
        page = context.new_page()
        for name, (address, expected) in pages.items():
            page.goto(address)
            page.get_by_text(expected).first.wait_for()
            page.wait_for_timeout(2000)  # charts finish drawing
            records.append(_record(page, name, out))
        context.close()

        plots = project / "dvc_plots"
        subprocess.run([sys.executable, "-m", "catsdogs.cli", "plots", "-o", str(plots)], cwd=project,
                       env=bench_env(project), check=True)
        requested: list[str] = []
        context = offline_context(browser, requested)
        page = context.new_page()
        page.goto((plots / "index.html").as_uri())
        page.wait_for_function(VEGA_DRAWN)
        page.wait_for_timeout(2000)
        charts = page.locator(".vega-embed").count()
        records.append(_record(page, "plots_offline", out,
                               f"{charts} vega charts drawn; requests beyond file:// refused: {len(requested)}"))
        context.close()
    lines = ["# What a user sees (recorded by `python -m bench.ui`)", ""]
    for name, address, text in records:
        lines += [f"## {name}", "", f"- page: `{address}`", f"- screenshot: `{name}.png`", "", "```",
                  text, "```", ""]
    (out / "pages.md").write_text("\n".join(lines))
    print(f"wrote {len(records)} pages to {out}")


def _record(page, name: str, out: Path, note: str = "") -> tuple[str, str, str]:
    page.screenshot(path=out / f"{name}.png")
    text = " | ".join(line.strip() for line in page.inner_text("body").splitlines() if line.strip())
    return name, page.url, (f"{note}\n" if note else "") + text[:TEXT_LIMIT]


if __name__ == "__main__":
    main()
