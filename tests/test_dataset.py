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
