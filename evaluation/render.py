"""Stages ``prompts`` and ``render-<model>``: the prompt set once, then its images per model, resumable.

Both run on the builder's executor (``coprov2.executor.run_stage``): shards over ``accelerate`` ranks,
each pipeline call committed as it finishes, a rerun skips what is done.

- Seeds: an image's seed is the row's own (I2P's ``sd_seed``, the release's ``evaluation_seed``) plus
  its index k, else derived from the run seed, the row id and k; each image has its own CPU generator,
  so an image does not depend on its batch, its shard or the number of processes.
- Release-compatible mode (``--release_compatible``): the release's ``inference.py``. One generator on
  the pipeline's device, seeded 0, walks the rows in CSV order, one image per row and per call, a row's
  ``evaluation_seed`` using its own generator instead; JPEG files named by the ``image`` column. An image
  then depends on every row before it, so this mode is one shard; the generator's state is committed
  with every batch, so a killed run still resumes exactly.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from PIL import Image

from coprov2.errors import UserError
from coprov2.executor import Stage, distributed_state
from coprov2.images.render import load_t2i_pipeline
from coprov2.seeds import derive_seed
from coprov2.stage_io import ShardWriter, StageDir, batched, file_sha256
from evaluation.prompt_sets import read_prompt_set

PROMPTS_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("category", pa.string()),
        ("seed", pa.int64()),
        ("guidance", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image", pa.string()),
    ]
)
RENDER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("category", pa.string()),
        ("seed", pa.int64()),
        ("guidance", pa.float64()),
        ("file", pa.string()),
        ("model", pa.string()),
        ("lora", pa.string()),
        ("lora_scale", pa.float64()),
        ("route", pa.string()),
    ]
)
PROMPT_BATCH = 1000
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


@dataclass
class PromptSetConfig:
    source: str
    config: str | None
    split: str
    max_prompts: int | None
    #: Replaces every row's category (a published attack set names the one category it attacks).
    category: str | None = None


class PromptSetStage(Stage):
    """Copies the prompt set's rows, in order, into the run (so every model renders the same rows)."""

    name = "prompts"
    schema = PROMPTS_SCHEMA

    def num_shards(self, root: Path) -> int:
        return 1

    def inputs(self, root: Path) -> dict[str, Any]:
        path = Path(self.config.source)
        return {"source_sha256": file_sha256(path)} if path.is_file() else {}

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        c = self.config
        rows = read_prompt_set(c.source, c.config, c.split, c.max_prompts)
        if c.category:
            rows = ({**row, "category": c.category} for row in rows)
        for number, batch in enumerate(batched(rows, PROMPT_BATCH)):
            if number >= writer.committed:
                writer.commit(batch, stats={"prompts": dict(Counter(r["category"] for r in batch))})


@dataclass
class RenderSettings:
    """What determines a model's images (the render stage's resume guard)."""

    label: str
    model: str
    lora: str | None
    lora_scale: float
    images_per_prompt: int
    steps: int
    guidance: float
    height: int | None
    width: int | None
    dtype: str
    seed: int
    release_compatible: bool
    image_format: str
    batch_size: int
    shard_prompts: int
    #: The routed model: its router and its experts (category -> source); None for any other model.
    router: str | None = None
    router_experts: dict[str, str] | None = None


def image_seed(run_seed: int, row: dict[str, Any], k: int) -> int:
    return row["seed"] + k if row["seed"] is not None else derive_seed(run_seed, "eval", row["id"], k)


def _write_image(image: Image.Image, path: Path, image_format: str) -> None:
    """Written beside its target and renamed: a killed run leaves no half image under the final name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="JPEG" if image_format == "jpeg" else "PNG")
    os.replace(tmp, path)


def load_lora(pipe: Any, source: str, scale: float, base: str) -> None:
    """Load LoRA ``source`` into ``pipe`` at ``scale``; one made for another base is refused, named."""
    from merge.experts import check_compatible, load_expert

    check_compatible([load_expert(source)], base)
    try:
        pipe.load_lora_weights(source, adapter_name="evaluated")
    except (RuntimeError, ValueError, KeyError) as error:  # shape mismatches: a LoRA of another architecture
        raise UserError(
            f"--loras {source}: does not fit base {base} ({type(error).__name__}: {str(error)[:200]}); "
            "evaluate it with the base it was trained on"
        ) from None
    pipe.set_adapters(["evaluated"], adapter_weights=[scale])


class RenderStage(Stage):
    """Renders the run's prompt set with one model (base, or base + LoRA) into image files + an index."""

    schema = RENDER_SCHEMA

    def __init__(self, config: RenderSettings, resolve_model: Any = str) -> None:
        super().__init__(config)
        self.name = f"render-{config.label}"
        self.resolve_model = resolve_model

    def images_dir(self, root: Path) -> Path:
        return root / "images" / self.config.label

    def num_shards(self, root: Path) -> int:
        if self.config.release_compatible:
            return 1
        return max(1, math.ceil(StageDir.finished(root, "prompts").total_rows() / self.config.shard_prompts))

    def inputs(self, root: Path) -> dict[str, Any]:
        return {"prompts": StageDir.finished(root, "prompts").manifest_sha256()}

    @functools.cache  # noqa: B019 - one pipeline per stage object, which lives for one model's render
    def pipe(self) -> Any:
        c = self.config
        pipe = load_t2i_pipeline(self.resolve_model(c.model), distributed_state().device, c.dtype)
        if c.lora:
            load_lora(pipe, c.lora, c.lora_scale, c.model)
        if c.router:
            from merge.router import ConceptRouter, RoutedPipeline

            return RoutedPipeline(pipe, ConceptRouter.from_pretrained(c.router), c.router_experts, c.lora_scale,
                                  f"--router {c.router}")  # fmt: skip
        return pipe

    def _call(self, prompts: list[str], generators: list[torch.Generator], guidance: float, width, height):
        """The images of ``prompts``, and each one's route (the routed model; else None)."""
        c = self.config
        with torch.inference_mode():
            output = self.pipe()(
                prompt=prompts, num_inference_steps=c.steps, guidance_scale=guidance, height=height,
                width=width, generator=generators, output_type="pil",
            )  # fmt: skip
        routes = [",".join(r.categories) for r in output.routes] if c.router else [None] * len(prompts)
        return output.images, routes

    def _row(
        self,
        prompt_row: dict[str, Any],
        file: str,
        seed: int | None,
        guidance: float,
        route: str | None = None,
    ) -> dict[str, Any]:
        c = self.config
        return {
            "id": Path(file).stem, "prompt_id": prompt_row["id"], "prompt": prompt_row["prompt"],
            "category": prompt_row["category"], "seed": seed, "guidance": guidance,
            "file": str(Path("images") / c.label / file), "model": c.model, "lora": c.lora, "lora_scale": c.lora_scale,
            "route": route,
        }  # fmt: skip

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        self.images_dir(root).mkdir(parents=True, exist_ok=True)
        if self.config.release_compatible:
            self._run_release(root, writer)
            return
        c = self.config
        start = index * c.shard_prompts
        rows = StageDir.finished(root, "prompts").iter_rows(start, start + c.shard_prompts)
        for number, batch in enumerate(batched(rows, c.batch_size)):
            if number < writer.committed:
                continue
            jobs = [(row, k) for row in batch for k in range(c.images_per_prompt)]
            groups: dict[tuple, list[tuple[dict[str, Any], int]]] = {}
            for row, k in jobs:  # I2P rows carry their own guidance and size: one call per setting
                key = (row["guidance"] if row["guidance"] is not None else c.guidance,
                       row["width"] or c.width, row["height"] or c.height)  # fmt: skip
                groups.setdefault(key, []).append((row, k))
            out = []
            for (guidance, width, height), group in groups.items():
                seeds = [image_seed(c.seed, row, k) for row, k in group]
                images, routes = self._call(
                    [row["prompt"] for row, _ in group],
                    [torch.Generator("cpu").manual_seed(s) for s in seeds], guidance, width, height,
                )  # fmt: skip
                for (row, k), seed, image, route in zip(group, seeds, images, routes, strict=True):
                    file = f"{row['position']:07d}_{k}.{EXTENSIONS[c.image_format]}"
                    _write_image(image, self.images_dir(root) / file, c.image_format)
                    out.append(self._row(row, file, seed, guidance, route))
            writer.commit(out, stats={"images": dict(Counter(r["category"] for r in out))})

    def _run_release(self, root: Path, writer: ShardWriter) -> None:
        c = self.config
        device = distributed_state().device
        shared = torch.Generator(device).manual_seed(0)
        if writer.state is not None:
            shared.set_state(torch.frombuffer(bytearray(writer.state), dtype=torch.uint8))
        rows = StageDir.finished(root, "prompts").iter_rows()
        for number, batch in enumerate(batched(rows, c.batch_size)):
            if number < writer.committed:
                continue
            out = []
            for row in batch:
                if not row["image"]:
                    raise UserError(
                        f"--release_compatible: prompt row {row['position']} has no 'image' file name; "
                        "the release's mode names files by that column"
                    )
                own = row["seed"] is not None
                generator = torch.Generator(device).manual_seed(row["seed"]) if own else shared
                (image,), (route,) = self._call([row["prompt"]], [generator], c.guidance, c.width, c.height)
                _write_image(image, self.images_dir(root) / row["image"], "jpeg")
                out.append(self._row(row, row["image"], row["seed"] if own else None, c.guidance, route))
            state = shared.get_state().numpy().tobytes()
            writer.commit(out, stats={"images": dict(Counter(r["category"] for r in out))}, state=state)

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        return {"model": self.config.model, "lora": self.config.lora, "router": self.config.router}


class FolderStage(Stage):
    """An already rendered folder as a model: files matched to the prompt set's ``image`` column (the
    release's layout), or, for a set without one, every image of the folder with no prompt."""

    schema = RENDER_SCHEMA

    def __init__(self, label: str, folder: str) -> None:
        super().__init__(FolderSettings(label, str(Path(folder).resolve())))
        self.name = f"render-{label}"

    def num_shards(self, root: Path) -> int:
        return 1

    def inputs(self, root: Path) -> dict[str, Any]:
        return {"prompts": StageDir.finished(root, "prompts").manifest_sha256()}

    def run_shard(self, root: Path, index: int, writer: ShardWriter) -> None:
        from evaluation.metrics.fid import image_files

        folder = Path(self.config.folder)
        files = image_files(folder, "--image_folders")
        prompts = StageDir.finished(root, "prompts")
        rows = []
        if next(prompts.iter_rows(0, 1))["image"]:
            for row in prompts.iter_rows():
                if not (folder / row["image"]).is_file():
                    raise UserError(
                        f"--image_folders {folder}: has no {row['image']} (prompt row {row['position']})"
                    )
                rows.append(self._row(row["id"], row["prompt"], row["category"], folder / row["image"]))
        else:
            rows = [self._row(f.stem, None, "all", f) for f in files]
        for batch in batched(rows, PROMPT_BATCH):
            writer.commit(batch, stats={"images": dict(Counter(r["category"] for r in batch))})

    def _row(self, prompt_id: str, prompt: str | None, category: str, path: Path) -> dict[str, Any]:
        return {"id": path.stem, "prompt_id": prompt_id, "prompt": prompt, "category": category, "seed": None,
                "guidance": None, "file": str(path), "model": self.config.folder, "lora": None, "lora_scale": None,
                "route": None}  # fmt: skip

    def manifest_extra(self, root: Path) -> dict[str, Any]:
        return {"model": self.config.folder, "lora": None}


@dataclass
class FolderSettings:
    label: str
    folder: str
