"""Concept-level train/test split of the exported dataset."""

import pytest

from coprov2.dataset.export import held_out_concepts


def test_split_holds_out_whole_concepts_per_category():
    concepts = {"hate": [f"h{i}" for i in range(10)], "violence": ["v0", "v1", "v1"], "sexual": ["s0"]}
    held = held_out_concepts(concepts, ratio=0.25, seed=0)
    assert sum(c == "hate" for c, _ in held) == 3  # ceil(0.25 * 10)
    assert sum(c == "violence" for c, _ in held) == 1
    assert not any(c == "sexual" for c, _ in held), "a category's only concept stays in train"
    assert held == held_out_concepts(concepts, ratio=0.25, seed=0)
    assert held != held_out_concepts(concepts, ratio=0.25, seed=1)
    assert held_out_concepts(concepts, ratio=0.0, seed=0) == set()
    with pytest.raises(ValueError, match=r"test_ratio must be within \[0, 1\), got 1"):
        held_out_concepts(concepts, ratio=1, seed=0)


def _pairs(n: int, category: str):
    import datasets
    from PIL import Image

    rows = [
        {
            "unsafe_prompt": f"unsafe prompt {category} {i}",
            "safe_prompt": f"safe prompt {category} {i}",
            "category": category,
            "unsafe_image": Image.new("RGB", (16, 16), (200, 0, 0)),
            "safe_image": Image.new("RGB", (16, 16), (0, 0, 200)),
        }
        for i in range(n)
    ]
    features = datasets.Features(
        {
            "unsafe_prompt": datasets.Value("string"),
            "safe_prompt": datasets.Value("string"),
            "category": datasets.Value("string"),
            "unsafe_image": datasets.Image(),
            "safe_image": datasets.Image(),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def test_release_layout_is_what_the_release_train_script_reads(tmp_path):
    """The release's train.py: ``load_dataset(folder)[split]``, ``Image.open(folder/jpg_0)``, label_0 == 1 keeps jpg_0 first."""
    import csv
    import os

    import datasets
    import numpy as np
    from PIL import Image

    from coprov2.dataset.release_layout import export_release_layout, from_release_category

    dataset = datasets.DatasetDict({"train": _pairs(2, "harassment"), "test": _pairs(1, "self-harm")})
    folder = tmp_path / "coprov2_pickapic_formatted"
    assert export_release_layout(dataset, folder) == {"train": 2, "test": 1}

    with (folder / "CoProv2_test.csv").open(newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"prompt": "unsafe prompt self-harm 0", "image": "0000002_0.jpg", "category": "self-harm"}
        ]
    with (folder / "CoProv2_train.csv").open(newline="") as handle:
        train_rows = list(csv.DictReader(handle))
    assert [(r["image"], r["prompt"]) for r in train_rows] == [
        ("u_idx_0000000_0.jpg", "unsafe prompt harassment 0"),
        ("s_idx_0000000_0.jpg", "safe prompt harassment 0"),
        ("u_idx_0000001_0.jpg", "unsafe prompt harassment 1"),
        ("s_idx_0000001_0.jpg", "safe prompt harassment 1"),
    ], "the authors' train layout: a row per image, each with its own prompt"
    assert {r["category"] for r in train_rows} == {"Harrasment"}, "the release's spelling"
    assert (
        from_release_category("Harrasment") == "harassment"
        and from_release_category("Illegal Activity") == "illegal-activity"
    )
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(
        f"{kind}_idx_{i:07d}_0.jpg" for kind in "us" for i in range(3)
    )

    loaded = datasets.load_dataset(str(folder))
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 2, "test": 1}
    row = loaded["train"][0]
    assert row["caption"] == "unsafe prompt harassment 0" and row["label_0"] == 1
    assert row["safe_caption"] == "safe prompt harassment 0"
    preferred = np.asarray(Image.open(os.path.join(str(folder), row["jpg_0"])).convert("RGB"), dtype=float)
    rejected = np.asarray(Image.open(os.path.join(str(folder), row["jpg_1"])).convert("RGB"), dtype=float)
    assert abs(preferred.mean(axis=(0, 1)) - (0, 0, 200)).max() < 3, "jpg_0 is the safe image"
    assert abs(rejected.mean(axis=(0, 1)) - (200, 0, 0)).max() < 3

    with pytest.raises(ValueError, match=r"columns \['safe_image'\] are missing"):
        export_release_layout(
            datasets.DatasetDict({"train": _pairs(1, "hate").remove_columns("safe_image")}), tmp_path / "x"
        )


def test_a_rebuilt_folder_does_not_load_the_previous_builds_cache(tmp_path):
    """datasets keys its cache for a README-``configs`` folder on the YAML, not on the files: the card's
    ``dataset_info`` (rows and bytes) is what changes with the data."""
    import datasets

    from coprov2.dataset.release_layout import export_release_layout

    folder = tmp_path / "coprov2_pickapic_formatted"
    export_release_layout(datasets.DatasetDict({"train": _pairs(2, "hate")}), folder)
    assert len(datasets.load_dataset(str(folder), split="train")) == 2
    export_release_layout(datasets.DatasetDict({"train": _pairs(3, "violence")}), folder)
    rebuilt = datasets.load_dataset(str(folder), split="train")
    assert len(rebuilt) == 3 and set(rebuilt["category"]) == {"Violence"}


def test_export_files_stay_under_max_shard_size_and_keep_every_row(tmp_path):
    """Rows streamed into size-capped parquet files named like the Hub's, all readable back in order."""
    import datasets
    from datasets import Features, Image, Value

    from coprov2.dataset.parquet_writer import ShardedParquetWriter

    features = Features({"id": Value("string"), "image": Image()})
    writer = ShardedParquetWriter(tmp_path / "data", "train", features.arrow_schema, max_bytes=300_000)
    payloads = [bytes([i]) * (40_000 + 1000 * i) for i in range(30)]
    for i, payload in enumerate(payloads):
        writer.write({"id": str(i), "image": {"bytes": payload, "path": None}})
    files = writer.close()
    assert len(files) > 3
    assert [f.name for f in files] == [
        f"train-{k:05d}-of-{len(files):05d}.parquet" for k in range(len(files))
    ]
    assert all(f.stat().st_size <= 300_000 for f in files)
    rows = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    rows = rows.cast_column("image", Image(decode=False))
    assert rows["id"] == [str(i) for i in range(30)]
    assert [r["image"]["bytes"] for r in rows] == payloads
