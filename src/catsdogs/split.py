"""Stage `split`: validates every image in data/raw and writes the train / val / test manifests.

Reads data/raw/ (any layout data.py recognises) and writes data/splits/{train,val,test}.csv
(path, label, group, sha256), data/splits/rejected.csv (path, label, reason) and
data/splits/summary.json (counts, a DVC metric). Images are referenced, not copied.

- Every file is decoded for real; unreadable, truncated, empty, non-image and oversized
  files are rejected with a reason, never crash the stage, and are counted.
- Exact duplicates (same bytes) and near-duplicates (perceptual hashes within
  split.near_duplicate_distance bits) form groups, and a group always stays inside one split,
  so no photo leaks between train, validation and test.
- Groups are ordered per class by a keyed hash of their content (split.seed) and dealt out to
  test, val, then train until each holds its share: deterministic, independent of file names
  and order, and stable when unrelated images are added (each added image moves at most one
  existing image across each split boundary).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from tqdm import tqdm

from catsdogs import configure_logging
from catsdogs.config import RAW_DIR, SPLIT_NAMES, SPLITS_DIR, SplitParams, load_params
from catsdogs.data import LabelledImage, MissingInputError, class_counts, find_labelled_images, manifest_path
from catsdogs.images import ImageError, read_rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """An image that decoded: its content hash and 64-bit perceptual hash."""

    image: LabelledImage
    sha256: str
    phash: int


@dataclass(frozen=True)
class Rejected:
    image: LabelledImage
    reason: str


@dataclass
class Group:
    """Images of one photo (exact or near-duplicates); `key` is content-derived, so names don't matter."""

    members: list[Checked]

    @property
    def key(self) -> str:
        return min(m.sha256 for m in self.members)

    @property
    def label(self) -> str:
        counts = Counter(m.image.label for m in self.members)
        return min(counts, key=lambda label: (-counts[label], label))


def main() -> None:
    configure_logging()
    try:
        params = load_params()
        summary = split_dataset(RAW_DIR, SPLITS_DIR, params.split)
    except (ValueError, MissingInputError) as err:  # LayoutError, too few images and ConfigError are ValueErrors
        sys.exit(f"split: {err}")
    log.info(
        "split: %s; rejected %d; duplicate groups %d",
        {name: summary["splits"][name]["total"] for name in SPLIT_NAMES},
        summary["rejected"],
        summary["duplicate_groups"]["groups"],
    )


def split_dataset(raw_dir: Path, out_dir: Path, params: SplitParams) -> dict:
    """Validate, group and split the images under raw_dir; write manifests and summary to out_dir."""
    if not raw_dir.is_dir():
        raise MissingInputError(f"{raw_dir} is missing; run: dvc repro download")
    layout, images = find_labelled_images(raw_dir)
    log.info("%s: %d files, layout %s, per class %s", raw_dir, len(images), layout, class_counts(images))
    checked, rejected = check_images(images, params.max_pixels)
    groups = group_duplicates(checked, params.near_duplicate_distance)
    assignment = assign_splits(groups, params)
    summary = summarise(images, checked, rejected, groups, assignment)
    write_outputs(out_dir, assignment, rejected, summary)
    return summary


def check_images(images: list[LabelledImage], max_pixels: int) -> tuple[list[Checked], list[Rejected]]:
    """Decode every file (in threads: Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(
            tqdm(
                pool.map(lambda image: _check(image, max_pixels), images),
                total=len(images),
                desc="check images",
                unit="img",
                file=sys.stderr,
            )
        )
    checked = [r for r in results if isinstance(r, Checked)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    for r in rejected:
        log.warning("rejected %s: %s", r.image.path, r.reason)
    return checked, rejected


def _check(image: LabelledImage, max_pixels: int) -> Checked | Rejected:
    try:
        data = image.path.read_bytes()
        rgb = read_rgb(data, max_pixels)
    except ImageError as err:
        return Rejected(image, str(err))
    except OSError as err:
        return Rejected(image, f"unreadable file: {err.strerror or err}")
    bits = imagehash.phash(rgb).hash.flatten()
    return Checked(image, hashlib.sha256(data).hexdigest(), int.from_bytes(np.packbits(bits).tobytes(), "big"))


def group_duplicates(checked: list[Checked], max_distance: int) -> list[Group]:
    """Union exact duplicates (sha256) and near-duplicates (phash Hamming distance <= max_distance)."""
    parent = list(range(len(checked)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_with_hash: dict[str, int] = {}
    for i, item in enumerate(checked):
        union(i, first_with_hash.setdefault(item.sha256, i))

    hashes = np.array([item.phash for item in checked], dtype=np.uint64)
    for start in range(0, len(hashes), 1024):
        block = hashes[start : start + 1024]
        distances = popcount(block[:, None] ^ hashes[None, :])
        for a, b in zip(*np.nonzero(distances <= max_distance), strict=True):
            if start + a < b:
                union(int(start + a), int(b))

    members: dict[int, list[Checked]] = defaultdict(list)
    for i, item in enumerate(checked):
        members[find(i)].append(item)
    return sorted((Group(m) for m in members.values()), key=lambda g: g.key)


def split_targets(n: int, params: SplitParams) -> dict[str, int]:
    """Images per split for a class of n images."""
    sizes = {"train": params.train, "val": params.val, "test": params.test}
    if not params.uses_fractions:
        targets = {name: int(size) for name, size in sizes.items()}
        if sum(targets.values()) > n:
            raise ValueError(
                f"a class has only {n} usable images but split asks for "
                f"{targets['train']} + {targets['val']} + {targets['test']}; lower split.train/val/test "
                "or give fractions of each class (e.g. 0.7 / 0.15 / 0.15)"
            )
        return targets
    targets = {"test": round(params.test * n), "val": round(params.val * n)}
    whole = abs(params.train + params.val + params.test - 1) < 1e-9
    targets["train"] = n - targets["test"] - targets["val"] if whole else round(params.train * n)
    return targets


def assign_splits(groups: list[Group], params: SplitParams) -> dict[str, list[Group]]:
    """Deal each class's groups, in keyed-hash order, to test, val and train; leftovers are unused."""
    by_label: dict[str, list[Group]] = defaultdict(list)
    for group in groups:
        by_label[group.label].append(group)
    assignment: dict[str, list[Group]] = {name: [] for name in (*SPLIT_NAMES, "unused")}
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda g: _score(g.key, params.seed))
        room = split_targets(sum(len(g.members) for g in ordered), params)
        for group in ordered:
            name = next((s for s in ("test", "val", "train") if room[s] >= len(group.members)), "unused")
            if name != "unused":
                room[name] -= len(group.members)
            assignment[name].append(group)
    return assignment


def _score(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def summarise(
    images: list[LabelledImage],
    checked: list[Checked],
    rejected: list[Rejected],
    groups: list[Group],
    assignment: dict[str, list[Group]],
) -> dict:
    duplicates = [g for g in groups if len(g.members) > 1]
    exact = sum(1 for g in duplicates if len({m.sha256 for m in g.members}) == 1)
    splits = {}
    for name in (*SPLIT_NAMES, "unused"):
        counts = class_counts([m.image for g in assignment[name] for m in g.members])
        splits[name] = {**counts, "total": sum(counts.values())}
    return {
        "classes": sorted({image.label for image in images}),
        "files": len(images),
        "accepted": len(checked),
        "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(r.reason.split(":")[0] for r in rejected).most_common()),
        "splits": splits,
        "duplicate_groups": {
            "groups": len(duplicates),
            "exact": exact,
            "near": len(duplicates) - exact,
            "images": sum(len(g.members) for g in duplicates),
            "label_conflicts": sum(1 for g in duplicates if len({m.image.label for m in g.members}) > 1),
        },
    }


def write_outputs(
    out_dir: Path, assignment: dict[str, list[Group]], rejected: list[Rejected], summary: dict
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        rows = [
            [m.image.path.as_posix(), m.image.label, g.key[:16], m.sha256] for g in assignment[name] for m in g.members
        ]
        _write_csv(manifest_path(name, out_dir), ["path", "label", "group", "sha256"], sorted(rows))
    _write_csv(
        out_dir / "rejected.csv",
        ["path", "label", "reason"],
        sorted([r.image.path.as_posix(), r.image.label, r.reason] for r in rejected),
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_suffix(".csv.partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)



def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (Hamming weight): np.bitwise_count on NumPy 2, unpacked bytes on 1.26."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    bits = np.unpackbits(np.ascontiguousarray(values).view(np.uint8), axis=-1)
    return bits.reshape(*values.shape, 64).sum(axis=-1)


if __name__ == "__main__":
    main()
