"""What a kill, a bad value or a changed file did to the build (issue: hardening), one test per case.

Each numbered test failed on the code before the fix: a half-written tiny model, NaN options and
NaN expert weights, an images option missing from the resume guard, a DPO cache that survived an
in-place rewrite of its dataset, a duplicated taxonomy key. Then the option walk: every option of
every stage (and of dpo.train) either changes that stage's resume fingerprint or is listed as
output-neutral with the test that proves it.
"""

import dataclasses
import json
import math
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file, save_file

from coprov2.config import SECTIONS, BuildConfig, parse_build_args
from coprov2.errors import UserError
from coprov2.executor import config_fingerprint
from coprov2.expand import TaxonomyStage
from coprov2.gate.stage import GateStage
from coprov2.images.stage import ImagesStage
from coprov2.prompts.stage import PromptsStage
from coprov2.stage_io import StageConfigMismatch, StageDir
from coprov2.taxonomy import TaxonomyError, load_taxonomy
from coprov2.tiny import resolve_tiny_model
from dpo import DPOConfig


def test_1_a_half_written_tiny_model_is_rebuilt_not_trusted(tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "tiny-models" / "clip"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(b"")  # what a kill right after transformers' first write leaves
    resolved = resolve_tiny_model("tiny:clip", tmp_path / "tiny-models")
    assert AutoConfig.from_pretrained(resolved).model_type == "clip"
    assert not list((tmp_path / "tiny-models").glob(".*partial*"))


@pytest.mark.parametrize("option", ["gate_min_score", "t2i_guidance", "llm_temperature", "test_ratio"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_2_non_finite_options_are_refused_by_name(option, value):
    with pytest.raises(UserError, match=f"--{option} must be a finite number"):
        parse_build_args([f"--{option}={value}"])


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    from dpo import train_expert
    from dpo.toy import TOY_RESOLUTION, toy_concepts, write_toy_dataset

    root = tmp_path_factory.mktemp("hardening")
    data = write_toy_dataset(root / "data", toy_concepts(1, captions=2, held_out=1), pairs_per_caption=2)
    config = DPOConfig(
        dataset=str(data), category="concept-0", base="tiny:sd15", output_dir=str(root / "expert"),
        cache_dir=str(root / "cache"), resolution=TOY_RESOLUTION, max_train_steps=1, train_batch_size=2,
        gradient_accumulation_steps=1, lr_warmup_steps=0, progress=False,
    )  # fmt: skip
    return root, data, train_expert(config).output_dir


def test_2_merge_refuses_an_expert_with_nan_weights(expert, tmp_path, capsys):
    from merge.__main__ import main

    root, _, folder = expert
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "pytorch_lora_weights.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key][0, 0] = math.nan
    save_file(tensors, weights)
    args = ["--experts", str(folder), str(broken), "--method", "linear", "--base", "tiny:sd15"]
    assert main([*args, "--output_dir", str(tmp_path / "m"), "--cache_dir", str(root / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"error: expert {broken}: layer " in err and "holds NaN or infinite weights" in err
    assert not (tmp_path / "m" / "pytorch_lora_weights.safetensors").exists()


def test_3_a_render_option_changes_the_images_fingerprint_and_a_resume_with_it_is_refused(tmp_path):
    build = BuildConfig(t2i_batch_pairs=4)
    before = config_fingerprint(build.stage_config("images"))
    after = config_fingerprint(BuildConfig(t2i_batch_pairs=1).stage_config("images"))
    assert before != after
    stage = StageDir(tmp_path, "images", 1)
    stage.bind_config(before)
    with pytest.raises(StageConfigMismatch, match=r"changed: batch_pairs"):
        stage.bind_config(after)


def test_4_dpo_inputs_change_key_when_a_parquet_file_is_rewritten_in_place(expert):
    from dpo.data import load_preference_pairs

    _, data, _ = expert
    before = load_preference_pairs(str(data), None, "train").fingerprint
    path = next(data.rglob("train-*.parquet"))
    table = pq.read_table(path)
    swapped = table.rename_columns(
        [
            "safe_image" if c == "unsafe_image" else "unsafe_image" if c == "safe_image" else c
            for c in table.column_names
        ]
    ).select(table.column_names)
    pq.write_table(swapped, path)  # same path, same rows, winner and loser swapped
    after = load_preference_pairs(str(data), None, "train")
    assert after.fingerprint != before
    pq.write_table(table, path)


def test_5_a_duplicated_category_key_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "concepts.yaml"
    path.write_text(
        "categories:\n"
        "  hate:\n    description: d\n    concepts: [a]\n"
        "  hate:\n    description: e\n    concepts: [b]\n"
    )
    with pytest.raises(TaxonomyError, match=r"concepts\.yaml:5: key 'hate' appears twice .*first on line 2"):
        load_taxonomy(path)


def test_yaml_config_refuses_duplicate_keys_and_wrong_types(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(UserError, match=r"run\.yaml:2: key 'seed' appears twice"):
        parse_build_args(["--config", str(path)])
    path.write_text("seed: [1, 2]\n")
    with pytest.raises(UserError, match=r"option seed must be int, got \[1, 2\]"):
        parse_build_args(["--config", str(path)])
    path.write_text("- seed\n")
    with pytest.raises(UserError, match="must be a mapping of option: value, got a list"):
        parse_build_args(["--config", str(path)])


#: Output-neutral fields of each stage config, and the test that shows the output does not change.
PROVEN_NEUTRAL = {
    "taxonomy": {
        "concepts": "test_taxonomy_and_templates_are_fingerprinted_by_content",
        "templates_dir": "test_taxonomy_and_templates_are_fingerprinted_by_content",
    },
    "prompts": {"templates_dir": "test_taxonomy_and_templates_are_fingerprinted_by_content"},
    "gate": {
        "min_score": "test_build_e2e.py::test_an_all_rejected_run_exports_nothing_and_says_why",
        "percentile": "test_build_e2e.py::test_an_all_rejected_run_exports_nothing_and_says_why",
        "require_own_closer": "test_build_e2e.py::test_an_all_rejected_run_exports_nothing_and_says_why",
    },
    "llm": dict.fromkeys(
        ("base_url", "api_key_env", "concurrency", "timeout_s", "max_attempts", "retry_backoff_s"),
        "test_llm_backends.py::test_a_flaky_server_gives_the_same_pairs_as_a_healthy_one",
    ),
}
STAGE_CLASSES = {"taxonomy": TaxonomyStage, "prompts": PromptsStage, "images": ImagesStage, "gate": GateStage}


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    return "something"  # None


def _leaves(config, prefix=""):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _replace(config, path, value):
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(config, **{head: _replace(getattr(config, head), rest, value)})
    return dataclasses.replace(config, **{head: value})


@pytest.mark.parametrize("section", list(STAGE_CLASSES))
def test_option_walk_every_stage_option_changes_the_fingerprint_or_is_proven_neutral(section):
    stage_class = STAGE_CLASSES[section]
    config = BuildConfig(expand_to=3).stage_config(section)
    base = config_fingerprint(config, stage_class.OUTPUT_NEUTRAL)
    neutral = {**PROVEN_NEUTRAL.get(section, {}), **{f"llm.{k}": v for k, v in PROVEN_NEUTRAL["llm"].items()}}
    for path, value in _leaves(config):
        changed = config_fingerprint(_replace(config, path, _changed(value)), stage_class.OUTPUT_NEUTRAL)
        if path in stage_class.OUTPUT_NEUTRAL:
            assert path in neutral, (
                f"{section}.{path} is listed as output-neutral without a test that shows it"
            )
            assert changed == base
        else:
            assert changed != base, f"changing {section}.{path} does not change the {section} fingerprint"
    assert set(SECTIONS) >= set(STAGE_CLASSES)


def test_option_walk_dpo_every_option_is_in_the_resume_guard_or_cannot_change_the_weights():
    neutral = {
        "output_dir", "cache_dir", "progress", "push_to_hub", "hub_public", "dry_run", "resume",
        "logging_steps", "checkpoints_total_limit",
        # test_dpo.py::test_each_trains_one_expert_per_category_and_checkpointing_changes_nothing
        "checkpointing_steps",
    }  # fmt: skip
    config = DPOConfig(dataset="d")
    base = json.dumps(config.hyperparameters(), sort_keys=True)
    for f in dataclasses.fields(DPOConfig):
        value = getattr(config, f.name)
        in_range = {
            "resolution": 64,
            "lora_alpha": 8.0,
            "timestep_max": 500,
            "proportion_empty_prompts": 0.1,
            "retain_share": 0.5,
            "beta": 1000.0,
            "max_sequence_length": 128,
            "weighting_scheme": "mode",
        }
        new = ["to_q"] if isinstance(value, list) else in_range.get(f.name, _changed(value))
        changed = json.dumps(dataclasses.replace(config, **{f.name: new}).hyperparameters(), sort_keys=True)
        assert (changed == base) == (f.name in neutral), f.name


def test_taxonomy_and_templates_are_fingerprinted_by_content(tmp_path):
    from coprov2.prompts.templates import TEMPLATE_NAMES, load_template

    root = tmp_path / "out"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    text = "categories:\n  hate:\n    description: d\n    concepts: [slur]\n"
    a.write_text(text)
    b.write_text(text)
    templates = tmp_path / "templates"
    templates.mkdir()
    for name in TEMPLATE_NAMES:
        template = load_template(name)
        (templates / f"{name}.yaml").write_text(
            yaml.safe_dump({"system": template.system, "user": template.user})
        )

    def fingerprint(concepts, templates_dir=None):
        config = dataclasses.replace(
            BuildConfig(expand_to=2).stage_config("taxonomy"),
            concepts=str(concepts),
            templates_dir=templates_dir,
        )
        return TaxonomyStage(config, backend=lambda: None).fingerprint(root)

    assert fingerprint(a) == fingerprint(b) == fingerprint(a, str(templates))
    b.write_text(text.replace("slur", "insult"))
    assert fingerprint(b) != fingerprint(a)
    template = load_template("expand_concepts")
    (templates / "expand_concepts.yaml").write_text(
        yaml.safe_dump({"system": template.system + " Be brief.", "user": template.user})
    )
    assert fingerprint(a, str(templates)) != fingerprint(a)
