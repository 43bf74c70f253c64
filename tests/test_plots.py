"""`catsdogs plots`: the HTML template that lets DVC's plots page draw with no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs import plots
from conftest import copy_project, run_checked


def test_the_template_inlines_the_chart_libraries_and_has_no_cdn_links(tmp_path: Path) -> None:
    template = plots.offline_template(tmp_path / "template.html").read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template  # DVC adds its CDN links at {scripts}
    assert "<script src=" not in template and "<link" not in template  # nothing loaded from elsewhere
    assert "window.vegaEmbed=" in template.replace(" ", "")  # the global that DVC's chart scripts call
    assert template.count("</script>") == 1  # the inlined bundle does not end its script early
    assert len(template) > 500_000  # the libraries themselves, not links to them


def test_outside_a_dvc_project_it_says_where_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert plots.main([]) == 2
    assert "dvc.yaml" in capsys.readouterr().err


def test_before_any_run_it_says_how_to_make_the_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_project(tmp_path / "project")  # a fresh clone: dvc.yaml, no outputs
    run_checked(["dvc", "init", "-q", "--no-scm"], project)
    monkeypatch.chdir(project)
    assert plots.main(["-o", str(tmp_path / "page")]) == 1
    assert "`dvc repro` makes them" in capsys.readouterr().err
    assert not (tmp_path / "page").exists()
    history = project / "models" / "scratch" / "history.csv"
    history.parent.mkdir(parents=True)
    history.write_text("epoch,val_accuracy\n0,0.5\n1,0.6\n")
    assert plots.main(["-o", str(tmp_path / "page")]) == 0  # one model's history is enough for a page
    assert "val_accuracy" in (tmp_path / "page" / "index.html").read_text()
