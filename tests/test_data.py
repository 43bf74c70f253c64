"""Layout recognition, label normalisation and the tf.data input of the models."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs import synthetic
from catsdogs.data import (
    LayoutError,
    batched,
    binary_class_names,
    class_counts,
    find_labelled_images,
    image_dataset,
    normalise_label,
)


@pytest.mark.parametrize("layout", sorted(synthetic.LAYOUTS))
def test_each_layout_gives_cat_and_dog(tmp_path: Path, layout: str) -> None:
    paths = synthetic.write_dataset(tmp_path, per_class=6, layout=layout)
    _, images = find_labelled_images(tmp_path)
    assert class_counts(images) == {"cat": 6, "dog": 6}
    assert sorted(i.path for i in images) == sorted(paths)
    for image in images:
        assert image.label in image.path.as_posix().lower()


def test_filtered_layout_merges_subsets_and_ignores_stray_files(tmp_path: Path) -> None:
    synthetic.write_dataset(tmp_path, per_class=9, layout="filtered")
    (tmp_path / "cats_and_dogs_filtered" / "vectorize.py").write_text("print('hi')\n")
    macos = tmp_path / "__MACOSX" / "cats_and_dogs_filtered"
    macos.mkdir(parents=True)
    (macos / "._cat.0.jpg").write_bytes(b"resource fork")
    layout, images = find_labelled_images(tmp_path)
    assert "train" in layout and "validation" in layout
    assert class_counts(images) == {"cat": 9, "dog": 9}
    assert {p.path.parts[-3] for p in images} == {"train", "validation"}


def test_petimages_junk_is_kept_for_the_split_stage_to_reject(tmp_path: Path) -> None:
    synthetic.write_dataset(tmp_path, per_class=3, layout="petimages")
    (tmp_path / "PetImages" / "Cat" / "Thumbs.db").write_bytes(b"\0\1junk")
    (tmp_path / "readme[1].txt").write_text("license")
    _, images = find_labelled_images(tmp_path)
    assert class_counts(images) == {"cat": 4, "dog": 3}


def test_kaggle_flat_layout_skips_unlabelled_files(tmp_path: Path) -> None:
    synthetic.write_dataset(tmp_path, per_class=4, layout="kaggle")
    (tmp_path / "train" / "12345.jpg").write_bytes(b"no label in name")
    _, images = find_labelled_images(tmp_path)
    assert class_counts(images) == {"cat": 4, "dog": 4}


def test_mapping_is_sorted_and_normalised(tmp_path: Path) -> None:
    for name in ("Dogs", "cats", "Puppies"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"x")
    _, images = find_labelled_images(tmp_path)
    assert list(class_counts(images)) == ["cat", "dog", "puppy"]


@pytest.mark.parametrize(
    ("raw", "label"),
    [("cats", "cat"), ("Dog", "dog"), ("Dogs ", "dog"), ("puppies", "puppy"), ("glass", "glass"), ("bus", "bus")],
)
def test_normalise_label(raw: str, label: str) -> None:
    assert normalise_label(raw) == label


def test_one_class_or_nothing_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(b"x")
    with pytest.raises(LayoutError, match="expected class folders"):
        find_labelled_images(tmp_path)


def test_batched_input_is_seeded_reshuffled_each_epoch_and_not_autotuned(tmp_path: Path) -> None:
    synthetic.write_dataset(tmp_path, per_class=5, layout="classes")
    _, images = find_labelled_images(tmp_path)
    names = binary_class_names(images)
    decoded = image_dataset(images, names, 24, 40_000_000)

    def epochs(seed: int | None, count: int = 2) -> list[list[tuple[float, float]]]:
        """Per epoch, each image in the order served, as (label, sum of its pixels): the generated images differ."""
        data = batched(decoded, 4, shuffle_seed=seed)
        assert data.options().autotune.enabled is False  # see batched(): idle waits between epochs
        out = []
        for _ in range(count):
            batches = list(data)
            assert all(x.dtype.name == "float32" and x.shape[1:] == (24, 24, 3) for x, _ in batches)
            out.append([(float(label), float(pixels.numpy().sum()))
                        for x, y in batches for pixels, label in zip(x, y.numpy(), strict=True)])
        return out

    in_order, again = epochs(None)
    assert in_order == again  # validation and test data: never shuffled
    assert [label for label, _ in in_order] == [float(names.index(image.label)) for image in images]
    assert len({pixels for _, pixels in in_order}) == len(images)
    first, second = epochs(seed=3)
    assert sorted(first) == sorted(in_order) and first != second  # every image once, a new order each epoch
    assert epochs(seed=3) == [first, second]  # the same seed, the same orders
