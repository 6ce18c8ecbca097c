"""Every CLI answers every mistyped or malformed flag with one line naming it and exit 2, never a traceback.

The cases are generated from each parser's own options, so a flag added tomorrow is covered without a new
test: for every option, a misspelling, a missing value, a wrong type (int, float, bool), the flag given
twice, and a value outside its choices.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Every ``python -m`` entry point of the toolkit (a module with ``make_parser()`` and ``main(argv)``).
CLIS = [
    "coprov2.build",
    "coprov2.dataset.from_release",
    "coprov2.dataset.release_layout",
    "coprov2.gate.retrieval",
    "coprov2.tiny",
    "dpo.train",
    "dpo.toy",
    "merge.__main__",
    "merge.router.__main__",
    "evaluation.__main__",
    "evaluation.attack",
    "evaluation.dataset",
    "evaluation.gallery",
    "workflow.__main__",
]


def _parser_module(name: str):
    module = importlib.import_module(name)
    if name == "coprov2.build":
        from coprov2 import config

        return module, config.make_parser()
    return module, module.make_parser()


def _misspelt(flag: str, taken: set[str]) -> str:
    """``flag`` with one letter dropped (or, if that is a flag too, one letter doubled)."""
    for typo in (flag[:-1], flag[:3] + flag[4:], flag + flag[-1]):
        if typo not in taken and len(typo) > 3:
            return typo
    raise AssertionError(flag)


def _cases(parser: argparse.ArgumentParser) -> Iterator[tuple[str, list[str], list[str]]]:
    """(kind, argv, words the error line must contain) for every option of ``parser``."""
    taken = set(parser._option_string_actions)
    yield "unknown", ["--no_such_option_anywhere", "1"], ["unknown option --no_such_option_anywhere"]
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        typo = _misspelt(flag, taken)
        yield "misspelt", [typo, "1"], [f"unknown option {typo}", f"did you mean {flag}?"]
        takes_value = action.nargs != 0
        value = [str(action.choices[0])] if action.choices else (["1"] if takes_value else [])
        yield "twice", [flag, *value, flag, *value], [flag, "given twice"]
        if action.nargs in (None, "+"):
            yield "missing value", [flag], [flag, "expected"]
        if action.type in (int, float):
            yield "wrong type", [flag, "x1"], [flag, f"invalid {action.type.__name__} value: 'x1'"]
        if getattr(action.type, "__name__", "") == "string_to_bool":
            yield "wrong type", [flag, "maybe"], [flag, "Truthy value expected"]
        if action.choices:
            yield "bad choice", [flag, "no_such_choice"], [flag, "invalid choice: 'no_such_choice'"]


def _all_cases() -> Iterator[tuple[str, str, list[str], list[str]]]:
    for name in CLIS:
        _, parser = _parser_module(name)
        for kind, argv, words in _cases(parser):
            yield name, kind, argv, words


def test_every_cli_answers_every_bad_flag_with_one_line_and_exit_2(capsys):
    counts: dict[str, int] = {}
    for name, kind, argv, words in _all_cases():
        module, _ = _parser_module(name)
        code = module.main(argv)  # anything but a UserError propagates here, traceback and all
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (name, argv, code, out, err)
        assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), (name, argv, lines[0])
        assert f"python -m {name.removesuffix('.__main__')} --help" in lines[0]
        counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {"unknown", "misspelt", "twice", "missing value", "wrong type", "bad choice"}
    assert sum(counts.values()) > 500, counts  # the parsers together have over 150 options


@pytest.mark.parametrize("name", CLIS)
def test_a_prefix_of_a_flag_is_not_that_flag(name, capsys):
    """argparse would take ``--output_d`` for ``--output_dir``; a typo must not land on another option."""
    module, parser = _parser_module(name)
    flag = max((f for f in parser._option_string_actions if f.startswith("--")), key=len)
    assert module.main([flag[:-2]]) == 2
    assert f"unknown option {flag[:-2]}" in capsys.readouterr().err


def test_every_entry_point_is_swept():
    """A module with a ``__main__`` block is a CLI: it must be in :data:`CLIS`, so its flags are swept too."""
    root = Path(__file__).resolve().parents[1]
    found = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for package in ("coprov2", "dpo", "merge", "evaluation", "workflow", "cards")
        for path in (root / package).rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
    }
    assert found == set(CLIS)


def test_library_callers_get_the_same_user_error():
    from coprov2.errors import UserError
    from dpo.train import parse_args

    with pytest.raises(UserError, match=r"unknown option --lerning_rate \(did you mean --learning_rate\?\)"):
        parse_args(["--lerning_rate", "1e-5"])
