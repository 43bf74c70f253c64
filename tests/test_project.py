"""The project's own files agree with each other: packaging, conda, MLproject, DVC, CI."""

from __future__ import annotations

import configparser
import re
import tomllib

import yaml

from conftest import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_lists_the_same_packages_as_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    (pip_section,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    conda_requirements = [r for r in pip_section if not r.startswith("-e")]
    assert conda_requirements == pyproject["project"]["dependencies"]
    names = {_name(r) for r in conda_requirements}
    assert {"tensorflow", "keras", "mlflow", "dvc", "numpy", "pillow", "matplotlib", "scikit-learn"} <= names
    python = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]


def test_mlproject_points_at_conda_and_runs_the_pipeline() -> None:
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert mlproject["conda_env"] == "conda.yaml"
    assert mlproject["entry_points"]["main"]["command"] == "dvc repro"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stage_commands = {stage.get("do", stage)["cmd"] for stage in stages.values()}
    for name, entry in mlproject["entry_points"].items():
        if name == "main":
            continue
        command = entry["command"]
        for parameter, spec in entry.get("parameters", {}).items():
            command = command.replace(f"{{{parameter}}}", spec["default"])
        expected = {c.replace("${item}", "fine_tuning") for c in stage_commands}
        assert command in expected, f"MLproject entry point {name} runs {command!r}, which no DVC stage runs"


def test_dvc_analytics_are_off() -> None:  # the stages' deps: tests/test_dvc_graph.py
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert config["core"]["analytics"] == "false"
    assert config["core"]["check_update"] == "false"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make repro" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_importing_the_package_turns_mlflow_telemetry_off() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    code = "import catsdogs.serve; from mlflow.telemetry.utils import is_telemetry_disabled as d; print(d())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_onednn_default_is_not_mistaken_for_a_user_choice_in_child_processes() -> None:
    """Training turns oneDNN on by default, serving off (but on a CPU with native bfloat16, where the models
    are bfloat16); a child of a catsdogs process (a dvc stage, `mlflow models serve`) inherits the default
    but must still see it as a default, not a choice."""
    import os
    import subprocess
    import sys

    import catsdogs

    serving = "1" if catsdogs.cpu_has_fast_bfloat16() else "0"

    code = ("import os, catsdogs; print(catsdogs.ONEDNN_SET_BY_USER, os.environ['TF_ENABLE_ONEDNN_OPTS']); "
            "import catsdogs.serve; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    clean = {k: v for k, v in os.environ.items() if "ONEDNN_OPTS" not in k}

    def child(**env: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert child() == ["False", "1", serving]  # training default on, serving off unless bfloat16 is native
    inherited = {"TF_ENABLE_ONEDNN_OPTS": "1", "CATSDOGS_DEFAULT_TF_ENABLE_ONEDNN_OPTS": "1"}
    assert child(**inherited) == ["False", "1", serving]
    assert child(TF_ENABLE_ONEDNN_OPTS="1") == ["True", "1", "1"]  # the user's choice holds, serving too
    assert child(**{**inherited, "TF_ENABLE_ONEDNN_OPTS": "0"}) == ["True", "0", "0"]


def test_readme_results_table_is_the_generated_report() -> None:
    """The README shows reports/results.md's table as generated, so the two cannot drift apart."""
    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    results = table((ROOT / "reports" / "results.md").read_text())
    assert results and results[0].startswith("| model | book | test accuracy")
    readme = (ROOT / "README.md").read_text()
    assert "\n".join(results) in readme, "copy reports/results.md's table into README.md's Results section"


def test_markdown_links_resolve_and_every_kept_benchmark_is_listed() -> None:
    """The READMEs' relative links name files that exist; reports/README.md lists every kept benchmark."""
    index_page = ROOT / "reports" / "README.md"
    pages = {page: page.read_text() for page in (ROOT / "README.md", ROOT / "bench" / "README.md", index_page)}
    broken = []
    for page, text in pages.items():
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    index = pages[index_page]
    kept = sorted(path.name for path in (ROOT / "reports").glob("benchmark-*.md"))
    assert kept and [name for name in kept if f"]({name})" not in index] == []


def test_no_measured_figures_in_params_comments() -> None:
    """params.yaml says what a key means; timings and accuracies live in reports/ (they go stale)."""
    figures = re.compile(r"\d+(\.\d+)?\s?(ms|min|%|images/s)(\W|$)")
    comments = [line.split("#", 1)[1] for line in (ROOT / "params.yaml").read_text().splitlines() if "#" in line]
    assert [c for c in comments if figures.search(c)] == []
