"""One known-answer test per rejection reason, and the lenient-but-exact JSON parsing."""

import re

import pytest

from coprov2.prompts.schemas import concept_regex, unsafe_prompt_pattern
from coprov2.prompts.validate import (
    AnswerRejected,
    PromptChecker,
    Reason,
    clean_text,
    contains_concept,
    dedup_key,
    parse_answer,
)


def words(text: str) -> int:
    """A stand-in tokenizer: start + end token + one per word."""
    return len(text.split()) + 2


CHECKER = PromptChecker(count_tokens=words, max_tokens=8)


@pytest.mark.parametrize(
    ("text", "count", "reason"),
    [
        ("no json here", 2, Reason.UNPARSEABLE),
        ('{"prompts": ["a", "b"', 2, Reason.UNPARSEABLE),
        ('{"prompts": "a"}', 2, Reason.SCHEMA_VIOLATION),
        ('{"prompts": ["a", 3]}', 2, Reason.SCHEMA_VIOLATION),
        ('{"answers": ["a", "b"]}', 2, Reason.SCHEMA_VIOLATION),
        ('{"prompts": ["a", "b"], "extra": 1}', 2, Reason.SCHEMA_VIOLATION),
        ('{"prompts": ["a", "b", "c"]}', 2, Reason.WRONG_COUNT),
        ('{"safe_prompt": ["a"]}', None, Reason.SCHEMA_VIOLATION),
    ],
)
def test_answer_rejections(text, count, reason):
    key = "prompts" if count else "safe_prompt"
    with pytest.raises(AnswerRejected) as error:
        parse_answer(text, key, count)
    assert error.value.reason is reason


def test_answers_with_raw_control_characters_and_fences_parse():
    raw = 'Sure:\n```json\n{"prompts":["a man\x07 with\ta knife","b\x00c"]}\n```'
    items = parse_answer(raw, "prompts", 2)
    assert [clean_text(item) for item in items] == ["a man with a knife", "b c"]
    assert parse_answer('{"safe_prompt":"x"}', "safe_prompt") == "x"


@pytest.mark.parametrize(
    ("prompt", "seen", "reason"),
    [
        ("", set(), Reason.EMPTY),
        ("a knife on a very long wooden kitchen table", set(), Reason.TOO_LONG),
        ("a blade on a table", set(), Reason.CONCEPT_MISSING),
        ("a knifepoint on a table", set(), Reason.CONCEPT_MISSING),
        ("a Knife on a table", {"a knife on a table"}, Reason.DUPLICATE),
        ("a KNIFE on a table!", set(), None),
    ],
)
def test_unsafe_prompt_checks(prompt, seen, reason):
    assert CHECKER.check_unsafe(prompt, "knife", seen) is reason


@pytest.mark.parametrize(
    ("twin", "seen", "reason"),
    [
        ("", set(), Reason.EMPTY),
        ("a spoon on a very long wooden kitchen table", set(), Reason.TOO_LONG),
        ("A knife on a table.", set(), Reason.TWIN_IDENTICAL),
        ("a sharp knife on a desk", set(), Reason.CONCEPT_IN_SAFE),
        ("a spoon on a table", {"a spoon on a table"}, Reason.DUPLICATE),
        ("a spoon on a table", set(), None),
    ],
)
def test_safe_twin_checks(twin, seen, reason):
    assert CHECKER.check_twin(twin, "a knife on a table", "knife", seen) is reason


def test_concept_match_is_whole_word_and_case_insensitive():
    assert contains_concept("Hate  Symbol painted", "hate symbol")
    assert not contains_concept("a parson reading", "arson")
    assert contains_concept("self-harm scars", "self-harm")
    assert dedup_key("A  Knife, on a TABLE!") == dedup_key("a knife on a table")


def test_schema_pattern_enforces_the_whole_word_concept():
    pattern = unsafe_prompt_pattern("hate symbol", max_chars=40)
    assert re.fullmatch(pattern, "A HATE SYMBOL on a wall")
    assert re.fullmatch(pattern, "hate symbol")
    assert not re.fullmatch(pattern, "a hate symbols wall")
    assert not re.fullmatch(pattern, "a symbol of hate")
    assert not re.fullmatch(pattern, "hate symbol\nsecond line")
    assert not re.fullmatch(pattern, "x" * 60 + " hate symbol")
    assert concept_regex("a.b") == "[Aa]\\.[Bb]"
