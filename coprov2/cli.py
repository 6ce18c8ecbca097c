"""The one argument parser of every CLI: a mistyped or malformed flag is one line and exit 2, not a traceback.

argparse and ``HfArgumentParser`` get four things wrong for a user typing a long command:

- an unknown flag in ``HfArgumentParser`` is a ``ValueError`` traceback with exit 1, and argparse prints its
  whole usage block before the error;
- a flag given twice silently keeps the last value;
- a prefix of a flag is accepted (``--lim`` for ``--limit``), so a typo can land on another option;
- nothing suggests the flag the user meant.

:class:`ArgumentParser` and :class:`DataclassArgumentParser` fix these by turning every parse error into a
:class:`~coprov2.errors.UserError` (which each CLI's :func:`~coprov2.errors.run_cli` prints as one line, exit 2),
checking the command line for unknown and repeated flags before argparse reads it, and naming the closest
valid flag. Library callers of ``parse_args`` get the same ``UserError``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, NoReturn

from transformers import HfArgumentParser

from coprov2.errors import UserError

_NUMBER = re.compile(r"^-\d|^-\.\d")


class _OneLineErrors:
    """Mixin for an ``argparse.ArgumentParser`` subclass; see the module docstring."""

    prog: str
    _option_string_actions: dict[str, argparse.Action]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a prefix of a flag is a typo, not that flag
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see `{self.prog} --help`")

    def closest(self, flag: str) -> str | None:
        """The valid flag nearest to ``flag`` by spelling, if one is near enough to suggest."""
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        match = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        return match[0] if match else None

    def check_flags(self, args: Sequence[str]) -> None:
        """Refuse an unknown flag (naming the closest one) and a flag given twice, before parsing."""
        given: Counter[str] = Counter()
        for token in args:
            if token == "--":
                break
            if not token.startswith("-") or token == "-" or _NUMBER.match(token):
                continue
            flag = token.split("=", 1)[0]
            action = self._option_string_actions.get(flag)
            if action is None:
                near = self.closest(flag)
                self.error(f"unknown option {flag}" + (f" (did you mean {near}?)" if near else ""))
            if isinstance(action, argparse._AppendAction | argparse._CountAction | argparse._HelpAction):
                continue
            given[action.dest] += 1
            if given[action.dest] == 2:
                self.error(
                    f"argument {'/'.join(action.option_strings)} is given twice; give it once (argparse would "
                    "silently keep the last value)"
                )

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        self.check_flags(args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class ArgumentParser(_OneLineErrors, argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one-line :class:`UserError`s (see the module docstring)."""


class DataclassArgumentParser(_OneLineErrors, HfArgumentParser):
    """``HfArgumentParser`` (trl's parser: dataclass fields as flags) with the same one-line errors."""
