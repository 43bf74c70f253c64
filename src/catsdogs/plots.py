"""`catsdogs plots`: DVC's plots as an HTML page that draws with no network.

    catsdogs plots [show] [DVC_ARGS...]    dvc plots show, offline (e.g. -o DIR, --open, a target)
    catsdogs plots diff [DVC_ARGS...]      dvc plots diff, offline (e.g. two experiments' names)

`dvc plots show` writes a page whose charts load vega, vega-lite and vega-embed from a CDN: offline,
or behind a proxy that blocks it, the page stays blank. This command writes DVC an HTML template with
the three libraries inlined (bundled by vl-convert-python, no download) and runs `dvc plots` with it
(--html-template). The page (dvc_plots/index.html unless -o says otherwise) opens from disk.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Vega-Lite major version of the specs DVC's plot templates write ($schema .../vega-lite/v5.json).
VEGA_LITE_VERSION = "5.20"
# The bundle's entry point: the three libraries as the globals DVC's chart scripts call (vegaEmbed).
GLOBALS = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"
TEMPLATE = Path(".dvc/tmp/catsdogs-offline-plots.html")  # DVC's own scratch folder: git-ignored

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>catsdogs: DVC plots</title>
    <!-- vega, vega-lite and vega-embed, inlined: the page needs no network -->
    <script type="text/javascript">
__BUNDLE__
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template(path: Path = TEMPLATE) -> Path:
    """Write the HTML template DVC fills in: DVC's own page, with the chart libraries inlined (no {scripts},
    so that DVC adds no CDN links)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(GLOBALS, vl_version=VEGA_LITE_VERSION)
    if "</script" in bundle.lower():  # would end the inline script early
        bundle = bundle.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.replace("__BUNDLE__", bundle), encoding="utf-8")
    return path


def workspace_has_plots() -> bool:
    """Whether any of the files that dvc.yaml declares as plots is in the workspace."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return any(Path(out.fs_path).exists() for out in repo.index.plots)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = args.pop(0) if args and args[0] in ("show", "diff") else "show"
    if not Path("dvc.yaml").is_file():
        print("catsdogs plots: run it in the project folder (where dvc.yaml is)", file=sys.stderr)
        return 2
    if command == "show" and not workspace_has_plots():
        # DVC itself says "failed to load some plots" and writes an empty page, with exit status 0
        print("catsdogs plots: no plots in the workspace yet: `dvc repro` makes them (in a clone of a team's "
              "project, `dvc pull` fetches them)", file=sys.stderr)
        return 1
    template = offline_template()
    dvc = [sys.executable, "-m", "dvc", "plots", command, "--html-template", str(template.resolve()), *args]
    return subprocess.run(dvc, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
