"""A LoRA's card carries its base's licence: from the base's own card, the known bases' table, else ``other``."""

import pytest

from cards.licence import UNKNOWN, base_licence
from cards.model_card import lora_model_card


def _card_yaml(base: str, folder=None) -> str:
    card = lora_model_card(
        title="t", summary="s", method="m", base_model=base, settings={}, measured={}, tags=[],
        licence=base_licence(base, folder),
    )  # fmt: skip
    return str(card).split("---")[1]


@pytest.mark.parametrize(
    ("base", "lines"),
    [
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", ["license: creativeml-openrail-m"]),
        ("stabilityai/stable-diffusion-xl-base-1.0", ["license: openrail++"]),
        (
            "stabilityai/stable-diffusion-3.5-large",
            [
                "license: other",
                "license_name: stabilityai-ai-community",
                "license_link: https://huggingface.co/stabilityai/stable-diffusion-3.5-large/blob/main/LICENSE.md",
            ],
        ),
        (
            "black-forest-labs/FLUX.1-dev",
            [
                "license: other",
                "license_name: flux-1-dev-non-commercial-license",
                "license_link: https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
            ],
        ),
        ("black-forest-labs/FLUX.1-schnell", ["license: apache-2.0"]),
        (
            "someone/unknown-model",
            [
                "license: other",
                f"license_name: {UNKNOWN}",
                "license_link: https://huggingface.co/someone/unknown-model",
            ],
        ),
    ],
)
def test_the_card_carries_the_base_licence(base, lines):
    header = _card_yaml(base)
    for line in lines:
        assert line in header
    assert "openrail++" not in header or "openrail++" in lines[0]


def test_a_base_folder_with_its_own_card_gives_its_licence_and_one_without_gives_no_guess(tmp_path):
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    assert "license: mit" in _card_yaml(str(tmp_path / "own"))
    (tmp_path / "bare").mkdir()
    header = _card_yaml("tiny:flux", tmp_path / "bare")
    assert (
        "license: other" in header and f"license_name: {UNKNOWN}" in header and "license_link" not in header
    )
