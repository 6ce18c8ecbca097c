"""The authors' CoProV2 release converted into our dataset format, on CSVs written in the release's own
layouts (``data/CoProv2_train.csv``: a row per image, ``u_idx_`` with the unsafe prompt and ``s_idx_`` with
the safe one; ``data/CoProv2_test.csv``: a row per unsafe prompt) with every quirk of the real files and
of a partial download, and the round trip of our own export through the importer."""

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

QUOTED = 'A "porch" scene, with commas, naïve café — 東京'
#: (prompt, image, category) rows in the authors' train layout, as written to the CSV in this order.
TRAIN = [
    ("a violent scene with a knife", "u_idx_0000000_0.jpg", "Violence"),
    ("a calm scene with a bread knife", "s_idx_0000000_0.jpg", "Violence"),
    # one pair under two categories, its rows interleaved as in the real file (u/Hate, u/sexual, s/Hate, s/sexual)
    ("a crowd mocking a man", "u_idx_0000001_0.jpg", "Hate"),
    ("a crowd mocking a man", "u_idx_0000001_0.jpg", "Harrasment"),
    ("a crowd cheering a man", "s_idx_0000001_0.jpg", "Hate"),
    ("a crowd cheering a man", "s_idx_0000001_0.jpg", "Harrasment"),
    ("a crowd cheering a man", "s_idx_0000001_0.jpg", "Hate"),  # line 8: the same row again
    (QUOTED, "u_idx_0000002_0.jpg", "Shocking"),  # quotes, commas, non-ASCII
    ('A "porch" scene, tidy, café\nat dawn', "s_idx_0000002_0.jpg", "Shocking"),  # a newline inside quotes
    ("a riot on a street", "u_idx_0000003_0.jpg", "Violence"),  # line 12: its s_ row was cut
    ("a quiet garden", "s_idx_0000004_0.jpg", "self-harm"),  # line 13: its u_ row was cut
    ("a bloody wound", "u_idx_0000005_0.jpg", "Shocking"),  # only the safe image was downloaded
    ("a bandaged wound", "s_idx_0000005_0.jpg", "Shocking"),
    ("a burning car", "u_idx_0000006_0.jpg", "Violence"),  # no image downloaded
    ("a parked car", "s_idx_0000006_0.jpg", "Violence"),
    ("a broken file", "u_idx_0000007_0.jpg", "Violence"),  # an unreadable image
    ("a whole file", "s_idx_0000007_0.jpg", "Violence"),
    # from here on a row's line is its index + 3: the quoted newline above took one more line
    ("", "u_idx_0000008_0.jpg", "Violence"),  # line 20: an empty prompt
    ("a street", "0000009_0.jpg", "Violence"),  # line 21: a test-layout name in the train file
]
#: The test layout: one unsafe prompt per row, ids restarting at 0 (they are *not* the train images).
TEST = [
    ("a brawl in a bar", "0000000_0.jpg", "Violence"),
    ("a slur on a wall, in 'quotes'", "0000001_0.jpg", "Hate"),
    ("a slur on a wall, in 'quotes'", "0000001_0.jpg", "Hate"),  # line 4: repeated
    ("a harassing note", "0000002_0.jpg", "Harrasment"),
]
MISSING = {"u_idx_0000005_0.jpg", "u_idx_0000006_0.jpg", "s_idx_0000006_0.jpg"}
COLOURS = {"u": (200, 30, 30), "s": (30, 30, 200)}


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), color, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_csv(path, rows, header=("prompt", "image", "category")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    with zipfile.ZipFile(root / "CoProv2-SD15.zip", "w") as archive:
        for _, image, _ in TRAIN:
            if (
                image[1:6] == "_idx_"
                and image not in MISSING
                and f"CoProv2/{image}" not in archive.namelist()
            ):
                payload = b"not a jpeg" if image == "u_idx_0000007_0.jpg" else _jpeg(COLOURS[image[0]])
                archive.writestr(f"CoProv2/{image}", payload)
    _write_csv(root / "CoProv2_train.csv", TRAIN)
    _write_csv(root / "CoProv2_test.csv", TEST)
    out = root / "out"
    argv = [str(root / "CoProv2_train.csv"), str(root / "CoProv2-SD15.zip"), str(out)]
    assert main([*argv, "--test_csv", str(root / "CoProv2_test.csv")]) == 0
    return root, out


def test_train_pairs_from_u_and_s_rows_with_every_quirk_counted(release):
    _, out = release
    skipped = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["csv"], r["line"], r["reason"]) for r in skipped] == [
        ("CoProv2_test.csv", 4, "duplicate_row"),
        ("CoProv2_train.csv", 8, "duplicate_row"),
        ("CoProv2_train.csv", 12, "missing_safe_row"),
        ("CoProv2_train.csv", 13, "missing_unsafe_row"),
        ("CoProv2_train.csv", 14, "missing_unsafe_image"),
        ("CoProv2_train.csv", 16, "missing_images"),
        ("CoProv2_train.csv", 18, "corrupt_image"),
        ("CoProv2_train.csv", 20, "empty_prompt"),
        ("CoProv2_train.csv", 21, "bad_image_name"),
    ]
    hate = datasets.load_dataset(str(out), "hate")["train"]
    harassment = datasets.load_dataset(str(out), "harassment")["train"]
    for rows, spelling in ((hate, "Hate"), (harassment, "Harrasment")):  # the pair is kept in both
        assert rows["unsafe_prompt"] == ["a crowd mocking a man"] and rows["safe_prompt"] == [
            "a crowd cheering a man"
        ]
        assert rows["release_category"] == [spelling] and rows["id"] == ["0000001_0"]
    shocking = datasets.load_dataset(str(out), "shocking")["train"]
    assert shocking["unsafe_prompt"] == [QUOTED] and shocking["safe_prompt"] == [
        'A "porch" scene, tidy, café\nat dawn'
    ]
    violence = datasets.load_dataset(str(out), "violence")
    assert violence["train"]["release_image"] == ["u_idx_0000000_0.jpg"]
    row = violence["train"][0]
    assert row["safe_prompt"] == "a calm scene with a bread knife"
    assert row["unsafe_image"].getpixel((16, 16))[0] > 150 and row["safe_image"].getpixel((16, 16))[2] > 150
    assert row["concept"] is None and row["seed"] is None and row["score_unsafe"] is None
    everything = datasets.load_dataset(str(out))
    assert len(everything["train"]) == 4  # violence, hate, harassment, shocking


def test_test_csv_becomes_a_prompt_set_the_evaluation_reads(release):
    from evaluation.prompt_sets import read_prompt_set

    _, out = release
    test = datasets.load_dataset(str(out), split="test")
    assert sorted(test["unsafe_prompt"]) == [
        "a brawl in a bar",
        "a harassing note",
        "a slur on a wall, in 'quotes'",
    ]
    assert set(test["unsafe_image"]) == {None} and set(test["safe_prompt"]) == {None}, "no images, no twin"
    rows = list(read_prompt_set(str(out)))  # python -m evaluation --prompts OUT
    assert sorted((r["prompt"], r["category"]) for r in rows) == [
        ("a brawl in a bar", "violence"),
        ("a harassing note", "harassment"),
        ("a slur on a wall, in 'quotes'", "hate"),
    ]


def test_the_card_says_what_the_release_gives_and_lacks(release):
    _, out = release
    card = (out / "README.md").read_text()
    assert "| missing_unsafe_image | 1 |" in card and "| missing_safe_row | 1 |" in card
    assert "**both prompts**" in card and "no CLIP gate was run" in card
    assert "| test | prompts only" in card and "| train | pairs (a u_idx_ and an s_idx_ row" in card
    assert "1 pairs are listed under\nseveral categories" in card
    assert "extra_gated_prompt" in card


def test_pickapic_csv_is_a_source_too(release, tmp_path):
    root, _ = release
    folder = tmp_path / "nemo_captions-pickapic_formatted"
    (folder / "images").mkdir(parents=True)
    with zipfile.ZipFile(root / "CoProv2-SD15.zip") as archive:
        for name in (
            "u_idx_0000000_0.jpg",
            "s_idx_0000000_0.jpg",
            "u_idx_0000002_0.jpg",
            "s_idx_0000002_0.jpg",
        ):
            (folder / "images" / name).write_bytes(archive.read(f"CoProv2/{name}"))
    _write_csv(
        folder / "train.csv",
        [
            ("a violent scene with a knife", "images/s_idx_0000000_0.jpg", "images/u_idx_0000000_0.jpg", 1),
            ("a violent scene, flipped", "images/u_idx_0000002_0.jpg", "images/s_idx_0000002_0.jpg", 0),
            ("a tie", "images/u_idx_0000002_0.jpg", "images/s_idx_0000002_0.jpg", 0.5),
            ("the first pair again", "images/s_idx_0000000_0.jpg", "images/u_idx_0000000_0.jpg", 1),
        ],
        header=("caption", "jpg_0", "jpg_1", "label_0"),
    )
    assert main([str(folder / "train.csv"), str(folder), str(tmp_path / "out")]) == 0
    rows = datasets.load_dataset(str(tmp_path / "out"), "uncategorized")["train"]
    assert rows["unsafe_prompt"] == ["a violent scene with a knife", "a violent scene, flipped"]
    assert all(r["unsafe_image"].getpixel((16, 16))[0] > 150 for r in rows), (
        "label_0 picks the preferred image"
    )
    skipped = (tmp_path / "out" / "skipped_rows.jsonl").read_text()
    assert [(r["line"], r["reason"]) for r in map(json.loads, skipped.splitlines())] == [
        (4, "no_preference"),
        (5, "duplicate_row"),
    ]


def test_bad_release_inputs_exit_2(release, tmp_path, capsys):
    root, _ = release
    bad = tmp_path / "bad.csv"
    bad.write_text("caption,file\nx,y\n")
    assert main([str(bad), str(root / "CoProv2-SD15.zip"), str(tmp_path / "o")]) == 2
    assert "columns ['category', 'image', 'prompt'] are missing" in capsys.readouterr().err
    assert main([str(root / "CoProv2_train.csv"), str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert "not a folder or a zip" in capsys.readouterr().err
    assert main([str(root / "CoProv2_test.csv"), str(root / "CoProv2-SD15.zip"), str(tmp_path / "o")]) == 2
    assert "(the release's test layout); pass it as --test_csv" in capsys.readouterr().err
    empty = tmp_path / "images"
    empty.mkdir()
    assert main([str(root / "CoProv2_train.csv"), str(empty), str(tmp_path / "o")]) == 2
    assert "no pair of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.*")), "nothing half-written"


def test_round_trip_build_export_import_gives_the_same_pairs(tmp_path):
    """Our export in the authors' layout, imported back: the same prompts, images, categories and splits."""
    from coprov2.dataset.release_layout import export_release_layout
    from tests.test_dataset import _pairs

    source = datasets.DatasetDict(
        {
            "train": datasets.concatenate_datasets([_pairs(3, "harassment"), _pairs(2, "violence")]),
            "test": _pairs(2, "self-harm"),
        }
    )
    layout = tmp_path / "release_pickapic_formatted"
    export_release_layout(source, layout)
    out = tmp_path / "back"
    argv = [
        str(layout / "CoProv2_train.csv"),
        str(layout / "images"),
        str(out),
        "--test_csv",
        str(layout / "test.csv"),
    ]
    assert main(argv) == 0
    back = datasets.load_dataset(str(out))
    for split, rows in source.items():
        theirs = sorted(back[split], key=lambda r: r["unsafe_prompt"])
        ours = sorted(rows, key=lambda r: r["unsafe_prompt"])
        assert [(r["unsafe_prompt"], r["safe_prompt"], r["category"]) for r in theirs] == [
            (r["unsafe_prompt"], r["safe_prompt"], r["category"]) for r in ours
        ]
        for mine, imported in zip(ours, theirs, strict=True):  # JPEG at quality 95 of the same pixels
            for column in ("unsafe_image", "safe_image"):
                difference = np.abs(np.asarray(mine[column], float) - np.asarray(imported[column], float))
                assert difference.mean() < 2, (split, column)
    assert (out / "skipped_rows.jsonl").read_text() == ""
    # and the authors' test layout of the same export: the test prompts, no images
    prompts_only = tmp_path / "prompts"
    argv[-1], argv[2] = str(layout / "CoProv2_test.csv"), str(prompts_only)
    assert main(argv) == 0
    test = datasets.load_dataset(str(prompts_only), split="test")
    assert sorted(test["unsafe_prompt"]) == sorted(source["test"]["unsafe_prompt"])


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
    train_expert(config)  # its test split holds prompts only: no held-out accuracy, no crash
    assert (tmp_path / "expert" / "pytorch_lora_weights.safetensors").exists()
    metrics = [json.loads(line) for line in (tmp_path / "expert" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2
