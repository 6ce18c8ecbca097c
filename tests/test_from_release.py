"""The authors' CoProV2 release converted into our dataset format, on a synthetic release with the
real one's quirks: a pair listed under two categories, the same row twice, the misspelled
``Harrasment``, a safe image without its unsafe twin, a row with no image, images in a zip."""

import csv
import io
import json
import zipfile

import datasets
import numpy as np
import pytest
from PIL import Image

from coprov2.dataset.from_release import main
from dpo import DPOConfig, train_expert

ROWS = {
    "train": [
        ("a violent scene with a knife", "0000000_0.jpg", "Violence"),
        ("a crowd mocking a man", "0000001_0.jpg", "Harrasment"),
        ("a crowd mocking a man", "0000001_0.jpg", "Hate"),  # one pair, two categories
        ("a crowd mocking a man", "0000001_0.jpg", "Hate"),  # the same row again
        ("a riot on a street", "0000002_0.jpg", "Violence"),
        ("a bloody wound", "0000003_0.jpg", "Shocking"),  # only its safe image exists
        ("a burning car", "0000004_0.jpg", "Violence"),  # no image at all
    ],
    "test": [
        ("a brawl in a bar", "0000005_0.jpg", "Violence"),
        ("a slur on a wall", "0000006_0.jpg", "Hate"),
    ],
}
MISSING = {"u_idx_0000003_0.jpg", "u_idx_0000004_0.jpg", "s_idx_0000004_0.jpg"}


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((32, 32, 3), color, np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    with zipfile.ZipFile(root / "images.zip", "w") as archive:
        for split_rows in ROWS.values():
            for _, image, _ in split_rows:
                for prefix, color in (("u_idx_", (200, 30, 30)), ("s_idx_", (30, 30, 200))):
                    name = prefix + image
                    if name not in MISSING and f"CoProv2/{name}" not in archive.namelist():
                        archive.writestr(f"CoProv2/{name}", _jpeg(color))
    for split, rows in ROWS.items():
        with open(root / f"CoProv2_{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt", "image", "category"])
            writer.writerows(rows)
    out = root / "out"
    argv = [str(root / "CoProv2_train.csv"), str(root / "images.zip"), str(out)]
    assert main([*argv, "--test_csv", str(root / "CoProv2_test.csv")]) == 0
    return root, out


def test_pairs_categories_and_quirks(release):
    _, out = release
    skipped = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in skipped] == [
        (5, "duplicate_row"),
        (7, "missing_unsafe_image"),
        (8, "missing_images"),
    ]
    violence = datasets.load_dataset(str(out), "violence")
    assert sorted(violence["train"]["release_image"]) == ["0000000_0.jpg", "0000002_0.jpg"]
    assert violence["test"]["unsafe_prompt"] == ["a brawl in a bar"]
    harassment = datasets.load_dataset(str(out), "harassment")["train"]
    assert harassment["release_category"] == ["Harrasment"] and harassment["category"] == ["harassment"]
    hate = datasets.load_dataset(str(out), "hate")
    assert hate["train"]["release_image"] == ["0000001_0.jpg"]  # kept in both of its categories
    row = violence["train"][0]
    assert row["unsafe_image"].getpixel((16, 16))[0] > 150 and row["safe_image"].getpixel((16, 16))[2] > 150
    assert row["safe_prompt"] is None and row["score_unsafe"] is None
    everything = datasets.load_dataset(str(out))
    assert (len(everything["train"]), len(everything["test"])) == (4, 2)
    card = (out / "README.md").read_text()
    assert "| missing_unsafe_image | 1 |" in card and "no CLIP gate was run" in card
    assert "extra_gated_prompt" in card


def test_bad_release_inputs_exit_2(release, tmp_path, capsys):
    root, _ = release
    bad = tmp_path / "bad.csv"
    bad.write_text("caption,file\nx,y\n")
    assert main([str(bad), str(root / "images.zip"), str(tmp_path / "o")]) == 2
    assert "columns ['category', 'image', 'prompt'] are missing" in capsys.readouterr().err
    assert main([str(root / "CoProv2_train.csv"), str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert "not a folder or a zip" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_dpo_trains_on_the_converted_release(release, tmp_path):
    _, out = release
    config = DPOConfig(
        dataset=str(out),
        category="violence",
        base="tiny:sd15",
        output_dir=str(tmp_path / "expert"),
        cache_dir=str(tmp_path / "cache"),
        resolution=32,
        max_train_steps=2,
        train_batch_size=1,
        lr_warmup_steps=0,
        logging_steps=1,
        progress=False,
    )
    train_expert(config)
    assert (tmp_path / "expert" / "pytorch_lora_weights.safetensors").exists()
    metrics = [json.loads(line) for line in (tmp_path / "expert" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2
