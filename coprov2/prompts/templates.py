"""Chat templates as data: one YAML file per task with a ``system`` and a ``user`` message.

``string.Template`` placeholders (``$concept``) rather than ``str.format`` so that the JSON examples in
the templates need no brace escaping. A missing placeholder raises an error naming the template file.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from coprov2.errors import UserError

TEMPLATE_NAMES = ("unsafe_prompts", "safe_twin", "expand_concepts")


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    source: str
    system: str
    user: str

    def render(self, **values: object) -> list[dict[str, str]]:
        try:
            return [
                {"role": "system", "content": string.Template(self.system).substitute(values)},
                {"role": "user", "content": string.Template(self.user).substitute(values)},
            ]
        except (KeyError, ValueError) as error:
            raise UserError(f"template {self.source}: bad or unknown placeholder {error}") from None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.system}\x1f{self.user}".encode()).hexdigest()[:16]


def load_template(name: str, templates_dir: str | Path | None = None) -> ChatTemplate:
    """Load template ``name`` from ``templates_dir`` if it has one, else the shipped default."""
    if name not in TEMPLATE_NAMES:
        raise UserError(f"unknown template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    custom = Path(templates_dir) / f"{name}.yaml" if templates_dir else None
    if custom is not None and custom.is_file():
        text, source = custom.read_text(encoding="utf-8"), str(custom)
    else:
        text = (resources.files("coprov2") / "data" / "templates" / f"{name}.yaml").read_text(
            encoding="utf-8"
        )
        source = f"coprov2/data/templates/{name}.yaml"
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or set(data) != {"system", "user"}:
        raise UserError(f"template {source} must hold exactly the keys 'system' and 'user'")
    return ChatTemplate(name, source, str(data["system"]), str(data["user"]))
