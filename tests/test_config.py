"""Config precedence (defaults < preset < YAML < flags), errors, and the CLI's help."""

import pytest

from coprov2.build import main
from coprov2.config import BuildConfig, parse_build_args


def test_precedence_preset_then_yaml_then_flags(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("prompts_per_concept: 5\nllm_temperature: 0.7\nseed: 3\n")
    config = parse_build_args(
        ["--preset", "smoke", "--config", str(config_file), "--seed", "9", "--llm-model", "my/model"]
    )
    assert config.prompts_per_concept == 5  # YAML over preset (2)
    assert config.llm_temperature == 0.7  # YAML over default
    assert config.seed == 9  # flag over YAML
    assert config.llm_model == "my/model"  # flag over preset, dashed alias
    assert config.num_shards == 2  # preset over default
    assert parse_build_args([]).llm_model == BuildConfig().llm_model


def test_unknown_yaml_option_is_named(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("prompts_per_concpet: 5\n")
    with pytest.raises(ValueError, match=r"run\.yaml: unknown option\(s\) prompts_per_concpet"):
        parse_build_args(["--config", str(config_file)])


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="num_shards must be >= 1, got 0"):
        BuildConfig(num_shards=0)
    with pytest.raises(ValueError, match=r"stage 'push' is unknown; choose from taxonomy, .*, gate, dataset"):
        BuildConfig(stage="push")
    with pytest.raises(ValueError, match="t2i_batch_pairs must be >= 1, got 0"):
        BuildConfig(t2i_batch_pairs=0)


def test_tiny_model_names_resolve_to_written_folders(tmp_path):
    config = BuildConfig(output_dir=str(tmp_path))
    assert config.resolve_model("org/model") == "org/model"
    folder = config.resolve_model("tiny:clip")
    assert folder == str(tmp_path / "tiny-models" / "clip")
    assert (tmp_path / "tiny-models" / "clip" / "config.json").exists()
    with pytest.raises(ValueError, match="unknown tiny model 'tiny:gpt'; choose from tiny:sd15"):
        config.resolve_model("tiny:gpt")


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--concepts",
        "--expand_to",
        "--prompts_per_concept",
        "--llm_backend",
        "--config",
        "--stage",
    ):
        assert flag in text
    assert "resumes" in text


def test_cli_reports_a_bad_taxonomy_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "concepts.yaml"
    bad.write_text("categories:\n  hate:\n    description: d\n    concepts: []\n")
    assert main(["--concepts", str(bad), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"error: {bad}:4: category 'hate' has no concepts" in capsys.readouterr().err


def test_every_stage_config_field_is_fed_by_an_option():
    """BuildConfig.stage_config refuses to build a stage config with a field no flag sets."""
    from dataclasses import fields

    from coprov2.config import FEEDS, SECTIONS

    config = BuildConfig(t2i_steps=3, llm_model="m", seed=5, clip_batch_size=7)
    for section in SECTIONS:
        built = config.stage_config(section)
        assert {f.name for f in fields(built)} == {f.name for f in fields(SECTIONS[section])}
    assert config.stage_config("images").steps == 3 and config.stage_config("images").seed == 5
    assert config.stage_config("prompts").llm.model == config.stage_config("taxonomy").llm.model == "m"
    assert config.stage_config("gate").batch_size == 7
    targets = [target for targets in FEEDS.values() for target in targets]
    assert len(targets) == len(set(targets)), "a stage field fed by two options"
