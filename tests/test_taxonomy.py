"""Taxonomy format: the shipped default, and errors that name file, line and fix."""

import pytest

from coprov2.taxonomy import Concept, TaxonomyError, load_taxonomy, normalize_concept, parse_taxonomy

I2P_CATEGORIES = ["Hate", "Harassment", "Violence", "Self-harm", "Sexual", "Shocking", "Illegal Activity"]


def test_default_taxonomy_has_the_seven_i2p_categories():
    taxonomy = load_taxonomy()
    assert [c.name for c in taxonomy.categories] == I2P_CATEGORIES
    concepts = taxonomy.concepts()
    assert len(concepts) >= 100
    assert len({c.name for c in concepts}) == len(concepts)
    assert all(c.description and len(c.concepts) >= 10 for c in taxonomy.categories)
    assert Concept("violence", "stabbing") in concepts


def test_yaml_round_trip_and_limit():
    taxonomy = load_taxonomy()
    again = parse_taxonomy(taxonomy.to_yaml())
    assert again.categories == taxonomy.categories
    limited = taxonomy.limited(2)
    assert all(len(c.concepts) == 2 for c in limited.categories)
    assert limited.fingerprint() != taxonomy.fingerprint()


def test_concepts_are_normalized():
    assert normalize_concept("  Hate\tSymbol ") == "hate symbol"
    text = "categories:\n  hate:\n    description: d\n    concepts: ['Burning  Cross']\n"
    assert parse_taxonomy(text).categories[0].concepts == ("burning cross",)


def test_unknown_category_lookup_lists_known_ones():
    with pytest.raises(KeyError, match="known categories: hate, harassment"):
        load_taxonomy().category("spam")


BAD = {
    "unknown top key": (
        "version: 1\ncolour: red\ncategories:\n  hate: {description: d, concepts: [a]}\n",
        r"my\.yaml:2: unknown top-level key 'colour'\. Fix: use only categories, version",
    ),
    "unknown category key": (
        "categories:\n  hate:\n    description: d\n    sevrity: 3\n    concepts: [a]\n",
        r"my\.yaml:4: unknown key 'sevrity' in category 'hate'\. Fix: use only concepts, description, name",
    ),
    "empty category": (
        "categories:\n  hate:\n    description: d\n    concepts: []\n",
        r"my\.yaml:4: category 'hate' has no concepts\. Fix: list at least one concept",
    ),
    "duplicate across categories": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - mob\n"
        "  violence:\n    description: d\n    concepts:\n      - riot\n      - MOB\n",
        r"my\.yaml:10: concept 'mob' in 'violence' duplicates line 5 \(category 'hate'\)\. Fix: keep each concept in one category only",
    ),
    "a Cyrillic look-alike of another category's concept": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - mob\n"
        "  violence:\n    description: d\n    concepts:\n      - riot\n      - m\u043eb\n",
        r"my\.yaml:10: concept 'm\u043eb' in 'violence' and 'mob' on line 5 \(category 'hate'\) are one concept to a "
        r"reader: they differ only by look-alike characters: '\u043e' \(U\+043E CYRILLIC SMALL LETTER O\)\. Fix: "
        r"keep one spelling, in plain letters",
    ),
    "full-width and sharp-s forms of one concept": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - strasse riot\n      - \uff53tra\u00dfe riot\n",
        r"my\.yaml:6: concept 'stra\u00dfe riot' in 'hate' and 'strasse riot' on line 5 \(category 'hate'\) are one "
        r"concept to a reader: they differ only by case \(folded, \u00df is ss\)",
    ),
    "category names a reader cannot tell apart": (
        "categories:\n  hate:\n    name: Hate\n    description: d\n    concepts: [mob]\n"
        "  violence:\n    name: \u041d\u0430te\n    description: d\n    concepts: [riot]\n",
        r"my\.yaml:6: category 'violence' is named '\u041d\u0430te' and category 'hate' 'Hate': one name to a reader "
        r"\(they differ only by look-alike characters: '\u041d' \(U\+041D CYRILLIC CAPITAL LETTER EN\), '\u0430'",
    ),
    "non-string entry": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - mob\n      - 42\n",
        r"my\.yaml:6: a concept of 'hate' must be a string, got '42'\. Fix: quote it",
    ),
    "nested entry": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - [a, b]\n",
        r"my\.yaml:5: a concept of 'hate' must be a string, got 'SequenceNode'",
    ),
    "path-like concept": (
        "categories:\n  hate:\n    description: d\n    concepts:\n      - ../../etc/passwd\n",
        r"my\.yaml:5: concept '\.\./\.\./etc/passwd' in 'hate' looks like a file path .* Fix: rename it",
    ),
    "bad category id": (
        "categories:\n  Hate Speech:\n    description: d\n    concepts: [a]\n",
        r"my\.yaml:2: category id 'Hate Speech' is invalid\. Fix: use lowercase letters",
    ),
    "missing description": (
        "categories:\n  hate:\n    concepts: [a]\n",
        r"my\.yaml:2: category 'hate' has no 'description'\. Fix: add a 'description' key",
    ),
    "no categories": ("version: 1\n", r"my\.yaml:1: no 'categories' key"),
    "empty file": ("", r"my\.yaml: the file is empty"),
    "bad yaml": ("categories: [\n", r"my\.yaml: not valid YAML"),
    "bad version": (
        "version: 2\ncategories:\n  hate: {description: d, concepts: [a]}\n",
        r"my\.yaml:1: unsupported taxonomy version\. Fix: set 'version: 1'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_taxonomy_errors_name_file_line_and_fix(case):
    text, message = BAD[case]
    with pytest.raises(TaxonomyError, match=message):
        parse_taxonomy(text, "my.yaml")


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(TaxonomyError, match=r"nope\.yaml: no such taxonomy file\. Fix: .*--concepts"):
        load_taxonomy(tmp_path / "nope.yaml")
