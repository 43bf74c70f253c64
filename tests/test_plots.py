"""`catsdogs plots`: the HTML template that lets DVC's plots page draw with no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs import plots


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
