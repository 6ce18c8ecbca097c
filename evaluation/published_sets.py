"""Published adversarial prompt sets, by short name (``--prompts ringabell-violence-k38``).

None of their prompts ship with this repository: a public file is downloaded once from its authors'
repository at a pinned commit into ``<cache_dir>/published/`` and checked against its sha256; a gated set is
read from the Hub with the user's own token after they were granted access. Each set carries the attack that
made it (the name its ASR is reported under) and the CoProV2 category it attacks, which replaces the set's
own category column (Ring-A-Bell's files have none; UnlearnDiffAtk's carry I2P's several per row).

| name | what | access | licence |
|---|---|---|---|
| ``ringabell-violence-k38`` | Ring-A-Bell's violence prompts, eta 5.5, K 38 (250) | public file | MIT |
| ``ringabell-violence-k77`` | the same, eta 5.5, K 77 (250) | public file | MIT |
| ``ringabell-violence-eta5-k77`` | the same, eta 5, K 77 (250) | public file | MIT |
| ``ringabell-nudity`` | Ring-A-Bell's nudity prompts (Hub ``Chia15/RingABell-Nudity``) | gated: request access on the Hub | the authors' terms on the Hub |
| ``unlearndiffatk-nudity`` | UnlearnDiffAtk's nudity prompts (142 I2P rows) | public file | MIT |
| ``unlearndiffatk-violence`` | UnlearnDiffAtk's violence prompts (756 I2P rows) | public file | MIT |
| ``unlearndiffatk-illegal`` | UnlearnDiffAtk's illegal-activity prompts (727 I2P rows) | public file | MIT |

UnlearnDiffAtk's files are the I2P prompts its attack starts from (it optimizes a prefix per prompt against
the model under attack, at attack time); evaluated as they are, they give that benchmark's pre-attack ASR.
Ring-A-Bell's are the finished adversarial prompts, made against SD v1.4's text encoder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from coprov2.errors import UserError

logger = logging.getLogger(__name__)

RING_A_BELL = (
    "https://raw.githubusercontent.com/chiayi-hsu/Ring-A-Bell/e4585ada0a5eb185fbef89bb94147c97f8d2f79a/"
)
UNLEARN_DIFF_ATK = "https://raw.githubusercontent.com/OPTML-Group/Diffusion-MU-Attack/5a3e5d37fb8787113e5d479204ab593a60e303e0/"


@dataclass(frozen=True)
class PublishedSet:
    """Where a published set lives, what attack made it and which CoProV2 category it attacks."""

    name: str
    #: A URL of a file (with ``sha256``) or a Hub dataset id (gated).
    source: str
    attack: str
    category: str
    licence: str
    sha256: str | None = None

    @property
    def gated(self) -> bool:
        return self.sha256 is None


PUBLISHED_SETS = {s.name: s for s in (
    PublishedSet("ringabell-violence-k38", RING_A_BELL + "data/InvPrompt/Violence/Violence_eta_5.5_K_38.csv",
                 "ringabell-violence-k38", "violence", "MIT",
                 "d769a433571f7f33b71c7a1b22deb7cc68756f944f2c9dce5924a530ab3ced57"),
    PublishedSet("ringabell-violence-k77", RING_A_BELL + "data/InvPrompt/Violence/Violence_eta_5.5_K_77.csv",
                 "ringabell-violence-k77", "violence", "MIT",
                 "6a7c8126ff9054d13025c77b5e23531fbbbdfcab73bc424c17a76862d8ac44a1"),
    PublishedSet("ringabell-violence-eta5-k77", RING_A_BELL + "data/InvPrompt/Violence/Violence_eta_5_K_77.csv",
                 "ringabell-violence-eta5-k77", "violence", "MIT",
                 "06ad1bcba205028fa845dfaf2e5cde8bbb8296ee60957844521252bb2edb8a08"),
    PublishedSet("ringabell-nudity", "Chia15/RingABell-Nudity", "ringabell-nudity", "sexual",
                 "the authors' terms on the Hub"),
    PublishedSet("unlearndiffatk-nudity", UNLEARN_DIFF_ATK + "prompts/nudity.csv", "unlearndiffatk-nudity",
                 "sexual", "MIT", "0a40f6e63bca976513d1d56df71480239ba1eb5c7a9de4df2f535d80f6e0eccd"),
    PublishedSet("unlearndiffatk-violence", UNLEARN_DIFF_ATK + "prompts/violence.csv", "unlearndiffatk-violence",
                 "violence", "MIT", "548c603038d559e71d9b0ecce8aa5867e41869ef948a227fb4be29d4c2bb1b13"),
    PublishedSet("unlearndiffatk-illegal", UNLEARN_DIFF_ATK + "prompts/illegal.csv", "unlearndiffatk-illegal",
                 "illegal-activity", "MIT", "2de0690881b50d072f634c77159152ea4fb2d4adbfed1d717f2232c5c68f1100"),
)}  # fmt: skip


def download(url: str, path: Path) -> None:
    """``url`` into ``path`` (written beside it and renamed: a cut download leaves nothing under the name).

    urllib, not huggingface_hub: these files live on GitHub, not on the Hub."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as handle:
            handle.write(response.read())
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot download {url} ({error}); check the network, or give the file's path"
        ) from None
    partial.replace(path)


def resolve_published(name: str, cache_dir: str | Path) -> tuple[str, PublishedSet]:
    """The local file (or Hub id) of published set ``name``, fetched and checked once; and the set itself."""
    published = PUBLISHED_SETS[name]
    if published.gated:
        logger.info("%s is gated on the Hub (%s): request access there and log in", name, published.source)
        return published.source, published
    path = Path(cache_dir) / "published" / f"{name}.csv"
    if not path.is_file():
        logger.info("downloading %s from %s", name, published.source)
        download(published.source, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != published.sha256:
        path.unlink()
        raise UserError(f"{name}: the downloaded file's sha256 is {digest}, not the pinned {published.sha256}; "
                        f"it was removed, so the next run downloads it again from {published.source}")  # fmt: skip
    return str(path), published
