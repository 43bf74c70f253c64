"""The split stage: validation, duplicate groups, stratified deterministic splits."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catsdogs import synthetic
from catsdogs.config import SPLIT_NAMES
from catsdogs.split import popcount, split_dataset
from conftest import make_params

FRACTIONS = {"split.train": 0.6, "split.val": 0.2, "split.test": 0.2}


def _split(raw: Path, out: Path, **overrides: object) -> dict:
    return split_dataset(raw, out, make_params(**{**FRACTIONS, **overrides}).split)


def _rows(out: Path, name: str) -> list[dict]:
    with (out / f"{name}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _where(out: Path) -> dict[str, str]:
    """File name -> split."""
    return {Path(row["path"]).name: name for name in SPLIT_NAMES for row in _rows(out, name)}


def test_stratified_counts_and_disjoint(dataset: Path, tmp_path: Path) -> None:
    summary = _split(dataset, tmp_path / "out")
    for name, expected in {"train": 12, "val": 4, "test": 4}.items():
        labels = [row["label"] for row in _rows(tmp_path / "out", name)]
        assert labels.count("cat") == labels.count("dog") == expected
        assert summary["splits"][name] == {"cat": expected, "dog": expected, "total": 2 * expected}
    paths = [row["path"] for name in SPLIT_NAMES for row in _rows(tmp_path / "out", name)]
    assert len(paths) == len(set(paths)) == 40
    assert all(Path(p).is_file() for p in paths), "manifest paths resolve from the working directory"
    assert summary["rejected"] == 0 and summary["accepted"] == 40


def test_counts_per_class_and_too_few_images(dataset: Path, tmp_path: Path) -> None:
    summary = _split(dataset, tmp_path / "out", **{"split.train": 10, "split.val": 3, "split.test": 5})
    assert [summary["splits"][n]["total"] for n in ("train", "val", "test", "unused")] == [20, 6, 10, 4]
    with pytest.raises(ValueError, match="only 20 usable images"):
        _split(dataset, tmp_path / "out2", **{"split.train": 1000, "split.val": 250, "split.test": 250})


def test_same_params_same_bytes(dataset: Path, tmp_path: Path) -> None:
    _split(dataset, tmp_path / "a")
    _split(dataset, tmp_path / "b")
    for name in (*SPLIT_NAMES, "rejected", "summary"):
        suffix = ".json" if name == "summary" else ".csv"
        assert (tmp_path / "a" / f"{name}{suffix}").read_bytes() == (tmp_path / "b" / f"{name}{suffix}").read_bytes()
    _split(dataset, tmp_path / "c", **{"split.seed": 7})
    assert (tmp_path / "a" / "test.csv").read_bytes() != (tmp_path / "c" / "test.csv").read_bytes()


def test_assignment_ignores_file_names_and_stays_stable(dataset: Path, tmp_path: Path) -> None:
    _split(dataset, tmp_path / "before")
    before = _where(tmp_path / "before")
    # Renaming files changes nothing: the order comes from content.
    renamed = tmp_path / "renamed"
    shutil.copytree(dataset, renamed)
    for path in sorted(renamed.rglob("*.jpg")):
        path.rename(path.with_name("x_" + path.name))
    _split(renamed, tmp_path / "after_rename")
    assert {k[2:]: v for k, v in _where(tmp_path / "after_rename").items()} == before
    # Adding 10 unrelated images moves at most 2 existing ones per added image (one per boundary).
    grown = tmp_path / "grown"
    shutil.copytree(dataset, grown)
    rng = np.random.default_rng(99)
    for i in range(5):
        for label in synthetic.LABELS:
            synthetic.make_image(label, rng).save(grown / label / f"new_{i}.jpg")
    _split(grown, tmp_path / "after_add", **{"split.train": 0.6, "split.val": 0.2, "split.test": 0.2})
    after = _where(tmp_path / "after_add")
    moved = [name for name, split in before.items() if after[name] != split]
    assert len(moved) <= 2 * 10


def _add_duplicates(root: Path) -> None:
    """An exact copy of a dog image, and a photo saved twice (smaller, recompressed) as dogs."""
    shutil.copy(root / "dog" / "dog_0.jpg", root / "dog" / "copy_of_0.jpg")
    photo = synthetic.make_photo(np.random.default_rng(5))
    photo.save(root / "dog" / "photo.jpg", quality=95)
    photo.resize((120, 90)).save(root / "dog" / "photo_small.jpg", quality=60)


@pytest.mark.parametrize("seed", range(6))
def test_duplicates_never_cross_splits(dataset: Path, tmp_path: Path, seed: int) -> None:
    _add_duplicates(dataset)
    summary = _split(dataset, tmp_path / "out", **{"split.seed": seed})
    where = _where(tmp_path / "out")
    assert where["copy_of_0.jpg"] == where["dog_0.jpg"]
    assert where["photo_small.jpg"] == where["photo.jpg"]
    assert summary["duplicate_groups"] == {"groups": 2, "exact": 1, "near": 1, "images": 4, "label_conflicts": 0}
    groups = {row["group"] for name in SPLIT_NAMES for row in _rows(tmp_path / "out", name)}
    assert len(groups) == 41  # 43 files in 41 groups


def test_bad_files_are_rejected_with_reasons_and_odd_ones_kept(dataset: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, data in synthetic.broken_files(rng).items():
        (dataset / "cat" / name).write_bytes(data)
    for name, data in synthetic.odd_images(rng).items():
        (dataset / "dog" / name).write_bytes(data)
    summary = _split(dataset, tmp_path / "out", **{"split.max_pixels": 1_000_000})
    rejected = {Path(r["path"]).name: r["reason"] for r in _rows(tmp_path / "out", "rejected")}
    expected = {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image",
                "garbage.png": "not an image", "huge.png": "too large"}
    for name, reason in expected.items():
        assert reason in rejected[name]
    assert summary["rejected"] == len(rejected) >= 5
    kept = _where(tmp_path / "out")
    assert set(synthetic.odd_images(rng)) <= set(kept)
    assert summary["accepted"] == 45 and summary["files"] == 45 + summary["rejected"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_popcount_without_numpy_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject allows NumPy 1.26, which has no np.bitwise_count: the near-duplicate distance still works."""
    values = np.array([[0, 1, 2**64 - 1], [0b1011, 2**63, 12345678901234567890]], dtype=np.uint64)
    expected = [[bin(int(v)).count("1") for v in row] for row in values]
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(popcount(values), expected)


def test_near_duplicates_group_without_numpy_2(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_numpy_2 = _split(dataset, tmp_path / "a")
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert _split(dataset, tmp_path / "b") == with_numpy_2
    for name in SPLIT_NAMES:
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (tmp_path / "b" / f"{name}.csv").read_bytes()
