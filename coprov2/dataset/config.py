"""Config of stage ``dataset`` (a leaf module: no stage imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DatasetConfig:
    """The exported dataset and its push."""

    test_ratio: float = field(
        default=0.25, metadata={"help": "share of each category's concepts held out as test"}
    )
    license: str = field(default="cc-by-nc-4.0", metadata={"help": "license in the dataset card"})
    max_shard_size: str = field(
        default="500MB",
        metadata={"help": "largest parquet file of the dataset (e.g. 500MB, 2GB), as on the Hub"},
    )
    release_layout: bool = field(
        default=True,
        metadata={
            "help": "also write the SafetyDPO release layout (images + CSVs its train.py reads) "
            "to <output_dir>/release_pickapic_formatted"
        },
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "after export, push the dataset to this Hub repo (created private, gated)"},
    )
    hub_gated: str = field(
        default="manual", metadata={"help": "gate approval: manual or auto", "choices": ("manual", "auto")}
    )
    hub_public: bool = field(
        default=False, metadata={"help": "make the repo public (still gated); default private"}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "print the Hub calls and files instead of pushing"}
    )
    seed: int = 0
