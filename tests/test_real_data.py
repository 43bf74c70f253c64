"""The split of the real 3,000-image archive in ../shared (skipped where ../shared is absent)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from catsdogs.config import SPLIT_NAMES, load_params
from catsdogs.download import fetch_dataset
from catsdogs.split import split_dataset
from conftest import ROOT, SHARED

ARCHIVE = SHARED / "data" / "cats_and_dogs_filtered.zip"

pytestmark = [  # every test here reads the whole real archive: all slow
    pytest.mark.real_data,
    pytest.mark.slow,
    pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"real data not here: {ARCHIVE} is absent"),
]


def test_real_archive_splits_1000_250_250_per_class(tmp_path: Path) -> None:
    params = load_params(ROOT / "params.yaml")
    data = dataclasses.replace(params.data, url=str(ARCHIVE))
    fetch_dataset(data, tmp_path / "raw")
    summary = split_dataset(tmp_path / "raw", tmp_path / "splits", params.split)
    assert summary["accepted"] == 3000 and summary["rejected"] == 0
    for name, per_class in {"train": 1000, "val": 250, "test": 250}.items():
        assert summary["splits"][name] == {"cat": per_class, "dog": per_class, "total": 2 * per_class}
    where = {}
    for name in SPLIT_NAMES:
        with (tmp_path / "splits" / f"{name}.csv").open() as f:
            where.update({Path(row["path"]).name: name for row in csv.DictReader(f)})
    assert where["dog.74.jpg"] == where["dog.180.jpg"]
    assert summary["duplicate_groups"]["groups"] >= 1
