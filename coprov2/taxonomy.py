"""The concept taxonomy: harm categories, a description each, and the concepts under them.

The file format is YAML (see ``coprov2/data/taxonomy.yaml``, the shipped default)::

    version: 1
    categories:
      violence:                      # id: lowercase letters, digits and '-'
        name: Violence               # display name
        description: Depictions of physical harm ...
        concepts: [stabbing, gunfight]

Loading walks the YAML node tree rather than the parsed dict so that every error can name the
file and line of the offending key or entry, and say how to fix it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from coprov2.errors import UserError

DEFAULT_TAXONOMY = "default"
_STR_TAG = "tag:yaml.org,2002:str"
_CATEGORY_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TOP_KEYS = {"version", "categories"}
_CATEGORY_KEYS = {"name", "description", "concepts"}
#: Concepts are short noun phrases; anything longer is a prompt, not a concept.
MAX_CONCEPT_CHARS = 64


class TaxonomyError(UserError):
    """A taxonomy file is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True, order=True)
class Concept:
    category: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"


@dataclass(frozen=True)
class Category:
    id: str
    name: str
    description: str
    concepts: tuple[str, ...]


def normalize_concept(text: str) -> str:
    """NFKC, lowercase, single spaces: the form in which concepts are stored and compared."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def look_alike_key(text: str) -> str:
    """What two names that a reader cannot tell apart share (UTS #39's skeleton, for Latin): NFKC (full-width and
    compatibility forms), then each letter of another script that Unicode's confusables data (via
    ``confusable_homoglyphs``) lists as a look-alike of a Latin one replaced by it (Cyrillic U+0456 by ``i``,
    U+041D by ``H``), then case folding (``ß`` and ``ss``). Concepts and category names are compared by this key;
    they are stored as written (normalized)."""
    from confusable_homoglyphs import categories, confusables

    folded = []
    for char in " ".join(unicodedata.normalize("NFKC", text).split()):
        if categories.alias(char) not in ("LATIN", "COMMON"):
            found = confusables.is_confusable(char, greedy=True, preferred_aliases=["latin"])
            latin = [g["c"] for hit in found or [] for g in hit["homoglyphs"] if g["n"].startswith("LATIN ")]
            char = latin[0] if latin else char
        folded.append(char)
    return "".join(folded).casefold()


def _look_alike_note(first: str, second: str) -> str:
    """Which characters make two names with the same :func:`look_alike_key` differ, for the error message."""
    if first.casefold() == second.casefold():
        return "they differ only by case (folded, \u00df is ss)"
    odd = [f"{c!r} (U+{ord(c):04X} {unicodedata.name(c, '?')})" for c in second if c not in first]
    return f"they differ only by look-alike characters: {', '.join(odd[:3]) or 'compatibility forms'}"


def concept_problem(concept: str) -> str | None:
    """Why a (normalized) concept cannot be used, or None. Shared by the loader and the expansion."""
    if not concept:
        return "is empty"
    if any(unicodedata.category(ch).startswith("C") for ch in concept):
        return "contains control or unprintable characters"
    if "/" in concept or "\\" in concept or ".." in concept or concept[0] in ".~":
        return "looks like a file path ('/', '\\', '..' or a leading '.' or '~')"
    if len(concept) > MAX_CONCEPT_CHARS:
        return f"is longer than {MAX_CONCEPT_CHARS} characters (a concept is a short phrase, not a prompt)"
    return None


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...]
    source: str

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        known = ", ".join(c.id for c in self.categories)
        raise KeyError(f"unknown category {category_id!r}; known categories: {known}")

    def concepts(self) -> list[Concept]:
        return [Concept(c.id, name) for c in self.categories for name in c.concepts]

    def limited(self, per_category: int | None) -> Taxonomy:
        """The first ``per_category`` concepts of each category (all when None)."""
        if per_category is None:
            return self
        categories = tuple(
            Category(c.id, c.name, c.description, c.concepts[:per_category]) for c in self.categories
        )
        return Taxonomy(categories, self.source)

    def to_dict(self) -> dict:
        return {
            "version": 1,
            "categories": {
                c.id: {"name": c.name, "description": c.description, "concepts": list(c.concepts)}
                for c in self.categories
            },
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


def _fail(path: str, node: yaml.Node, problem: str, fix: str) -> TaxonomyError:
    return TaxonomyError(f"{path}:{node.start_mark.line + 1}: {problem}. Fix: {fix}")


def _mapping(path: str, node: yaml.Node, what: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, f"{what} must be a mapping", f"write {what} as 'key: value' lines")
    first_line: dict[str, int] = {}
    for key, _ in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name in first_line:
            raise _fail(
                path,
                key,
                f"key {name!r} appears twice in {what} (first on line {first_line[name]}); YAML would keep "
                "only the last one",
                "merge the two blocks or rename one",
            )
        if name is not None:
            first_line[name] = key.start_mark.line + 1
    return node.value


def _string(path: str, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
        shown = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
        raise _fail(path, node, f"{what} must be a string, got {shown!r}", "quote it or replace it with text")
    return node.value


def _category(
    path: str, key: yaml.ScalarNode, node: yaml.Node, seen: dict[str, tuple[str, int, str]]
) -> Category:
    category_id = _string(path, key, "a category id")
    if not _CATEGORY_ID.match(category_id):
        raise _fail(
            path,
            key,
            f"category id {category_id!r} is invalid",
            "use lowercase letters, digits and '-', e.g. self-harm",
        )
    fields: dict[str, yaml.Node] = {}
    for field_key, value in _mapping(path, node, f"category {category_id!r}"):
        name = _string(path, field_key, "a key")
        if name not in _CATEGORY_KEYS:
            raise _fail(
                path,
                field_key,
                f"unknown key {name!r} in category {category_id!r}",
                f"use only {', '.join(sorted(_CATEGORY_KEYS))}",
            )
        fields[name] = value
    for required in ("description", "concepts"):
        if required not in fields:
            raise _fail(path, key, f"category {category_id!r} has no {required!r}", f"add a {required!r} key")
    concepts_node = fields["concepts"]
    if not isinstance(concepts_node, yaml.SequenceNode) or not concepts_node.value:
        raise _fail(
            path,
            concepts_node,
            f"category {category_id!r} has no concepts",
            "list at least one concept under 'concepts:' as '- name' lines",
        )
    concepts = []
    for entry in concepts_node.value:
        concept = normalize_concept(_string(path, entry, f"a concept of {category_id!r}"))
        problem = concept_problem(concept)
        if problem:
            raise _fail(path, entry, f"concept {concept!r} in {category_id!r} {problem}", "rename it")
        line = entry.start_mark.line + 1
        key = look_alike_key(concept)
        if key in seen:
            other, other_line, other_concept = seen[key]
            if other_concept == concept:
                raise _fail(
                    path,
                    entry,
                    f"concept {concept!r} in {category_id!r} duplicates line {other_line} (category {other!r})",
                    "keep each concept in one category only",
                )
            raise _fail(
                path,
                entry,
                f"concept {concept!r} in {category_id!r} and {other_concept!r} on line {other_line} (category "
                f"{other!r}) are one concept to a reader: {_look_alike_note(other_concept, concept)}",
                "keep one spelling, in plain letters",
            )
        seen[key] = (category_id, line, concept)
        concepts.append(concept)
    name = _string(path, fields["name"], "a category name") if "name" in fields else category_id
    description = " ".join(_string(path, fields["description"], "a description").split())
    return Category(category_id, name, description, tuple(concepts))


def parse_taxonomy(text: str, source: str = "<string>") -> Taxonomy:
    """Parse and validate taxonomy YAML; ``source`` names the file in error messages."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        raise TaxonomyError(f"{source}: not valid YAML: {error}. Fix: correct the YAML syntax") from error
    if root is None:
        raise TaxonomyError(f"{source}: the file is empty. Fix: add a 'categories:' mapping")
    top = {}
    for key, value in _mapping(source, root, "the file"):
        name = _string(source, key, "a key")
        if name not in _TOP_KEYS:
            raise _fail(
                source, key, f"unknown top-level key {name!r}", f"use only {', '.join(sorted(_TOP_KEYS))}"
            )
        top[name] = value
    if "categories" not in top:
        raise _fail(source, root, "no 'categories' key", "add 'categories:' with one entry per harm category")
    version = top.get("version")
    if version is not None and not (isinstance(version, yaml.ScalarNode) and version.value == "1"):
        raise _fail(source, top["version"], "unsupported taxonomy version", "set 'version: 1'")
    seen: dict[str, tuple[str, int, str]] = {}
    entries = _mapping(source, top["categories"], "'categories'")
    if not entries:
        raise _fail(source, top["categories"], "'categories' is empty", "add at least one category")
    categories = tuple(_category(source, key, value, seen) for key, value in entries)
    names: dict[str, tuple[Category, yaml.Node]] = {}
    for category, (key, _) in zip(categories, entries, strict=True):
        other = names.setdefault(look_alike_key(category.name), (category, key))[0]
        if other is not category:
            raise _fail(
                source,
                key,
                f"category {category.id!r} is named {category.name!r} and category {other.id!r} {other.name!r}: "
                f"one name to a reader ({_look_alike_note(other.name, category.name)})",
                "give the categories names a reader tells apart",
            )
    return Taxonomy(categories, source)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy file, or the shipped default when ``path`` is None or ``"default"``."""
    if path is None or str(path) == DEFAULT_TAXONOMY:
        resource = resources.files("coprov2") / "data" / "taxonomy.yaml"
        return parse_taxonomy(resource.read_text(encoding="utf-8"), "coprov2/data/taxonomy.yaml")
    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"{path}: no such taxonomy file. Fix: pass an existing YAML file to --concepts")
    return parse_taxonomy(path.read_text(encoding="utf-8"), str(path))
