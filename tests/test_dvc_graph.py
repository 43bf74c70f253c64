"""dvc.yaml tells the truth: each stage depends on its module's import closure inside src/catsdogs and on the
files it reads, so that a change to any of them reruns the stage (and `dvc repro` never calls stale results
up to date). The closure is computed from the imports, so the next new import cannot silently break it."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = ROOT / "src" / "catsdogs"
MANIFESTS = ["data/splits/train.csv", "data/splits/val.csv", "data/splits/test.csv"]
# Files read by a function whatever the params say: a stage whose modules call it must declare them.
# tracking.run_tags hashes the split manifests into every training run's data_hash tag.
READS = {"run_tags": MANIFESTS, "data_hash": MANIFESTS}
# The register stage logs the whole package as the served model's code (code_paths): all of it is a dep.
WHOLE_PACKAGE = {"register"}


def imports_of(module: str) -> set[str]:
    """The catsdogs modules `module` imports, at top level or inside functions."""
    tree = ast.parse((PACKAGE / f"{module.removeprefix('catsdogs.').replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "catsdogs"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "catsdogs":
            found.add(node.module)
            # `from catsdogs import layers` imports the submodule catsdogs.layers
            found |= {f"{node.module}.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").is_file()
                      and node.module == "catsdogs"}
    return found


def calls(module: str) -> set[str]:
    """The names `module` calls (plain or attribute calls)."""
    tree = ast.parse((ROOT / source_file(module)).read_text())
    return {getattr(node.func, "id", getattr(node.func, "attr", "")) for node in ast.walk(tree)
            if isinstance(node, ast.Call)}


def closure(module: str) -> set[str]:
    """`module` and every catsdogs module it imports, directly or not, with the package's __init__."""
    seen, todo = {"catsdogs"}, [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += sorted(imports_of(current) - seen)
    return seen


def source_file(module: str) -> str:
    path = "__init__" if module == "catsdogs" else module.removeprefix("catsdogs.").replace(".", "/")
    return f"src/catsdogs/{path}.py"


def stage_deps(stages: dict) -> dict[str, tuple[str, list[str]]]:
    """{stage name: (its module, its deps)}, with foreach stages expanded for their first item."""
    out = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            item = stage["foreach"][0]
            stage = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${item}", item))
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        out[name] = (module, [str(dep) for dep in stage.get("deps", [])])
    return out


def missing_deps(dvc: dict) -> dict[str, list[str]]:
    """{stage: the files it imports or reads that its deps do not cover}; empty when dvc.yaml is truthful."""
    missing = {}
    for stage, (module, deps) in stage_deps(dvc["stages"]).items():
        modules = closure(module)
        needed = {source_file(m) for m in modules}
        for m in modules - {"catsdogs.tracking"}:
            for function in calls(m) & set(READS):
                needed |= set(READS[function])
        if stage in WHOLE_PACKAGE:
            needed |= {f"src/catsdogs/{p.name}" for p in PACKAGE.glob("*.py")}
        covered = [n for n in needed if any(n == d or n.startswith(d.rstrip("/") + "/") for d in deps)]
        if gaps := sorted(needed - set(covered)):
            missing[stage] = gaps
    return missing


def load_dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_declares_its_import_closure_and_the_files_it_reads() -> None:
    assert missing_deps(load_dvc()) == {}


def test_the_check_fails_when_a_stage_imports_a_module_it_does_not_declare() -> None:
    dvc = load_dvc()
    broken = copy.deepcopy(dvc)
    broken["stages"]["split"]["deps"].remove("src/catsdogs/images.py")
    broken["stages"]["train_fine_tuning"]["deps"].remove("data/splits/val.csv")
    assert missing_deps(broken) == {"split": ["src/catsdogs/images.py"], "train_fine_tuning": ["data/splits/val.csv"]}


def test_closure_follows_imports_through_modules() -> None:
    # train imports models, which imports layers; every module runs the package's __init__ (the oneDNN default)
    assert {"catsdogs", "catsdogs.models", "catsdogs.layers", "catsdogs.config"} <= closure("catsdogs.train")
    assert "catsdogs.train" not in closure("catsdogs.serve"), "serving imports no training code"


@pytest.mark.parametrize("stage", ["train_scratch", "evaluate", "register"])
def test_stages_run_their_own_module(stage: str) -> None:
    module, _ = stage_deps(load_dvc()["stages"])[stage]
    assert Path(ROOT / source_file(module)).is_file()
