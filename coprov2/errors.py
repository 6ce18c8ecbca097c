"""The one family of errors a user can fix (a bad option, a missing file, a server that keeps failing).

Every CLI of the toolkit (``coprov2.build``, ``dpo.train``, ``merge``, the dataset tools) catches
:class:`UserError` and prints it as one line naming the input and the fix, with exit code 2; any
other exception is a bug and keeps its traceback. It subclasses ``ValueError`` so that library
callers catching ``ValueError`` keep working.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


class UserError(ValueError):
    """An input the user can fix; the message names the input and the fix."""


def run_cli(body: Callable[[], int]) -> int:
    """Run a CLI's ``body``: a :class:`UserError` becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return body()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def check_finite(name: str, value: float | int | None, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False) -> None:  # fmt: skip
    """``value`` of option ``name`` is a finite number within ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"--{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise UserError(f"--{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise UserError(f"--{name} must be <= {high}, got {value}")


def check_ranges(config: object, ranges: dict[str, tuple[float | None, float | None, bool]]) -> None:
    """:func:`check_finite` for every option of ``config`` named in ``ranges`` (low, high, low excluded)."""
    for name, (low, high, low_open) in ranges.items():
        check_finite(name, getattr(config, name), low, high, low_open=low_open)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise UserError(
                    f"{self.name}:{key_node.start_mark.line + 1}: key {key!r} appears twice (first on line "
                    f"{seen[key]}); the second would silently replace the first. Fix: merge or rename them"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml_file(path: str | Path) -> object:
    """YAML from ``path`` with duplicate keys refused; a missing or malformed file is a UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()
