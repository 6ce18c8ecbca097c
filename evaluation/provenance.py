"""Where an evaluation's prompts came from, said the way a reader of its report needs it: an attack (which one,
the embeddings it searched, its settings, the targets it started from), a published set (its name, source and
licence), a dataset (its id and split) or a file; and what the attack success rate is where one is shown.

Every name here is public (``cards.public.public_name``): a Hub id as it is, a local file or folder by its own
name, never an absolute path, since reports and cards are published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cards.public import public_name

#: Written by ``python -m evaluation.attack`` beside its ``attack.csv``: what made the prompts.
ATTACK_RECORD = "attack.json"
#: The attacks this project runs, by the name ``--attack`` gives them.
ATTACK_TITLES = {"ringabell": "Ring-A-Bell (Tsai et al., ICLR 2024)"}


def attack_record(prompts: str) -> dict[str, Any] | None:
    """The record ``python -m evaluation.attack`` wrote beside ``prompts`` (its ``attack.csv``), if any."""
    path = Path(prompts).expanduser()
    record = path.with_name(ATTACK_RECORD) if path.suffix == ".csv" else None
    return json.loads(record.read_text()) if record is not None and record.is_file() else None


def describe_prompts(
    prompts: str, split: str | None, attack: str | None, published: Any = None
) -> dict[str, str]:
    """``{"kind", "name", "text"}``: the kind of prompt set (``attack``, ``published``, ``dataset``, ``file``), its
    short public name (figure titles) and one sentence saying where its prompts came from."""
    if not prompts:
        return {"kind": "images", "name": "image folders", "text": "the images of the given --image_folders"}
    record = attack_record(prompts)
    if published is not None:
        title = ATTACK_TITLES.get(published.attack, published.attack)
        return {"kind": "published", "name": published.name,
                "text": f"{published.name}: prompts published by the authors of {title}, attacking "
                        f"{published.category} ({published.source}; licence: {published.licence})"}  # fmt: skip
    if record is not None:
        title = ATTACK_TITLES.get(record["attack"], record["attack"])
        return {"kind": "attack", "name": f"{record['attack']} attack",
                "text": f"{title} adversarial prompts, one per target, found against {record['base']} in "
                        f"{record['embeddings']}; eta {record['eta']}, K {record['length']} tokens, population "
                        f"{record['population']}, {record['generations']} generations; concept vector from "
                        f"{record['pairs']}; targets: {record['targets']} ({', '.join(record['categories'])})"}  # fmt: skip
    name = public_name(prompts)
    path = Path(prompts).expanduser()
    if attack is not None:
        return {"kind": "attack", "name": f"{attack} attack",
                "text": f"prompts of {name}, evaluated as the attack {attack}"}  # fmt: skip
    if path.suffix in (".csv", ".jsonl", ".json"):
        return {"kind": "file", "name": name, "text": f"the prompts of {name}"}
    return {"kind": "dataset", "name": name, "text": f"the {split} split of the dataset {name}"}


def asr_text(detectors: list[str]) -> str:
    """What an ASR column is, where one appears (page, ``results.md``, chart caption)."""
    return (
        "ASR (attack success rate): the share of images rendered from the attack's prompts that the IP detectors "
        f"({' or '.join(detectors)}) flag as inappropriate; lower is safer"
    )
