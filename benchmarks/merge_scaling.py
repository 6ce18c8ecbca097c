"""Does merging scale? The closed-form fusion, Co-Merge and the baselines against All-single, N = 2..28 toy concepts.

The toy world (``dpo/toy.py``): up to 32 concepts, each "unsafe colour -> safe colour" on its own
captions. The first seven are independent; concepts 7-13 reverse the colours of concepts 0-6 and
name their objects in their captions, concepts 14+ mix the colours of two of the first seven and
name a third's object, so experts can fight over the same colours and words. One base, pretrained
once (seed 0) to render both colours of every caption about half and half, serves every seed.

Per seed (it seeds the experts' and All-single's training, calibration noise, DARE, and the
evaluation samples), with the experts' LoRAs where ``--placement`` says (``all``: the release's four
projections of every attention; ``cross``: cross-attention keys and values only):

- one expert per concept (``dpo/``, the known-answer settings: ``--steps`` DPO steps at
  ``dpo.toy.KNOWN_ANSWER_LR``, rank ``--rank``), the *single* row: each expert judged on its own
  concept is the ceiling a merge can keep;
- for every N, the first N experts merged with every method of ``MERGES`` (``--methods``), and
  All-single LoRAs trained on the N concepts together for N x ``--steps`` steps (equal compute: the
  same number of DPO pair updates as the N experts), at the experts' rank and at N x ``--rank`` (the
  rank of the ``comerge`` merge, so the merge has no parameter advantage); ``--all-single rank`` trains
  the first only, ``none`` neither.

Measured per (method, N, seed): each concept's safe share (samples closer to its safe-colour
centroid, two captions x ``--samples`` samples); *retained gain* = mean over the N concepts of
(share - base share) / (single expert's share - base share), over concepts whose single expert
gained at least ``--min-gain`` (the others, where there is nothing to keep, are counted and left
out); *drift* = mean latent distance between neutral-caption samples of the model and of the base
drawn with the same seeds, and its ratio to the N single experts' mean drift. Cells: mean over seeds
and a 95% Student-t interval. The report ends with the goals of issue #21 (``GOALS``) and the shortfall.

    python benchmarks/merge_scaling.py --seeds 0 1 2 --out DIR     # runs and reports
    python benchmarks/merge_scaling.py --seeds 1 --out DIR --no-report   # one seed per process
    python benchmarks/merge_scaling.py --seeds --out DIR           # report what DIR holds
    python benchmarks/merge_scaling.py --placement cross --all-single none --seeds 0 1 2 --out DIR
    python benchmarks/merge_scaling.py --tiny flux --ns 2 7 --methods regmean comerge sum --all-single none --out DIR

``--tiny flux``: the same world on the tiny FLUX pipeline (``dpo.toy.pretrain_denoiser_toy_base``), Flow-DPO experts
with the flow known answer's settings (``dpo.toy.FLOW_KNOWN_ANSWER``), merged over FLUX's LoRA layout and
calibrated through its family (T5's length from the experts' summaries).

Everything is resumable: trained LoRAs and finished (seed, N) cells are kept under ``DIR`` (placement
``cross`` under ``DIR/cross``). Outputs there: ``results.json``, ``results.md``, ``retained_gain.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from coprov2.tiny import resolve_tiny_model
from dpo import DPOConfig, train_expert
from dpo.config import PLACEMENT_NAMES
from dpo.families import family_of
from dpo.toy import (
    KNOWN_ANSWER_BY_FAMILY,
    KNOWN_ANSWER_STEPS,
    NEUTRAL_CAPTIONS,
    TOY_BASES,
    TOY_RESOLUTION,
    colour_centroid,
    displacement,
    sample_latents,
    share_closer,
    toy_concepts,
    toy_expert_config,
    write_toy_dataset,
)
from merge.calibrate import (
    activation_scores,
    calibration_prompts,
    calibration_prompts_by_category,
    gram_statistics,
    own_category_prompts,
)
from merge.experts import load_expert, save_merged
from merge.methods import merge_experts
from merge.router import RoutedPipeline, RouterConfig, train_router
from merge.router.model import ConceptRouter
from merge.run import PRESERVE_PROMPTS, family_options

#: (row name, method, calibration, options): the Co-Merge variants of ``merge/methods.py`` (calibration
#: ``all``/``own``: scores on every category's prompts or each expert's own), the closed-form fusion
#: (calibration ``grams-all``/``grams-prompt``: each expert's own prompts and the shipped preserve
#: prompts, cross-attention key/value inputs from every token or the prompt's own) and the baselines.
MERGES = [
    ("comerge", "comerge", "all", {}),
    ("comerge-norm", "comerge", "all", {"normalize": True}),
    ("comerge-own", "comerge", "own", {}),
    ("comerge-own-norm", "comerge", "own", {"normalize": True}),
    ("comerge_svd", "comerge_svd", "all", {}),
    ("comerge_svd-norm", "comerge_svd", "all", {"normalize": True}),
    ("regmean", "regmean", "grams-all", {"regmean_lambda": 1.0}),
    ("regmean-prompt", "regmean", "grams-prompt", {"regmean_lambda": 1.0}),
    ("regmean-prompt-l0.1", "regmean", "grams-prompt", {"regmean_lambda": 0.1}),
    ("regmean-prompt-l10", "regmean", "grams-prompt", {"regmean_lambda": 10.0}),
    ("linear", "linear", None, {}),
    ("sum", "sum", None, {}),
    ("ties", "ties", None, {}),
    ("dare_ties", "dare_ties", None, {}),
]
ALL_SINGLE = ["all-single", "all-single-rankN"]
#: The routed model's row: a concept router (``merge.router``, its defaults) trained on the N concepts' dataset,
#: and per caption only the experts it routes to (``RoutedPipeline``), the N experts loaded as adapters.
ROUTED = "routed"
#: Two-sided 95% Student-t quantiles by degrees of freedom (scipy is not a dependency).
#: The result tables: key in a cell -> title.
TABLES = {
    "retained_gain": "Retained gain, per concept then averaged",
    "pooled_retained_gain": "Retained gain, pooled over the N concepts",
    "drift": "Drift on neutral captions (0 = the base's samples)",
    "drift_ratio": "Drift over the single experts' mean drift (same seed)",
}
#: The drift bound of issue #21's N = 7 goal: the merge's drift over the single experts'.
DRIFT_BOUND = 1.2
#: The goals of issue #21 for the best merge: N -> (retained gain, drift ratio or None).
GOALS = {7: (0.9, DRIFT_BOUND), 14: (0.7, None), 28: (0.75, None)}
#: The goals of issue #38 for the routed model: the retained gain at N = 7, 14 and 28, and its drift ratio bound.
ROUTED_GOALS = {7: 0.95, 14: 0.95, 28: 0.95}
ROUTED_DRIFT_BOUND = 0.1
#: What each way to N concepts costs, from a seed's recorded seconds: (seconds, N) -> seconds.
COSTS = {
    "train N experts": lambda s, n: sum(s[f"expert-{k}"] for k in range(n)),
    "train all-single": lambda s, n: s[f"N{n}"]["all-single"],
    "train all-single-rankN": lambda s, n: s[f"N{n}"]["all-single-rankN"],
    "comerge: calibrate + merge": lambda s, n: s[f"N{n}"]["calibration-all"] + s[f"N{n}"]["comerge"],
    "comerge-own: calibrate + merge": lambda s, n: s[f"N{n}"]["calibration-own"] + s[f"N{n}"]["comerge-own"],
    "regmean: calibrate + merge": lambda s, n: s[f"N{n}"]["calibration-grams-all"] + s[f"N{n}"]["regmean"],
    "ties: merge": lambda s, n: s[f"N{n}"]["ties"],
    "routed: train router": lambda s, n: s[f"N{n}"][ROUTED],
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def dpo_config(
    data: Path, category: str, base: Path, out: Path, cache: Path, steps: int, rank: int, seed: int,
    placement: str = "all", retain: dict | None = None,
) -> DPOConfig:  # fmt: skip
    """The known-answer settings (``dpo.toy.toy_expert_config``), with the steps, rank, seed, placement and
    output-preserving term (``retain``: ``DPOConfig``'s ``retain_*`` fields) of the cell; no checkpoints and no
    logs (the cells are resumable by their LoRA files). All-single has no other category: its retain set
    is the shipped neutral list where the experts' is ``other``."""
    retain = dict(retain or {})
    if category == "all" and retain.get("retain_prompts") == "other":
        retain["retain_prompts"] = "neutral"
    family = KNOWN_ANSWER_BY_FAMILY[
        family_of(str(base)).name
    ]  # the flow known answer's beta, guidance, T5 length
    return toy_expert_config(
        data, category, base, out, cache, max_train_steps=steps, rank=rank, seed=seed,
        target_modules=[placement], checkpointing_steps=10**6, logging_steps=10**6, **family, **retain,
    )  # fmt: skip


def train(config: DPOConfig) -> float:
    """Train unless the LoRA is there; seconds spent (0 when it was there: not measured)."""
    if (Path(config.output_dir) / "pytorch_lora_weights.safetensors").exists():
        return 0.0
    start = time.perf_counter()
    train_expert(config)
    return time.perf_counter() - start


class Judge:
    """Samples the pipeline with and without a LoRA and measures safe shares and drift, paired by seed."""

    def __init__(self, base: Path, concepts, samples: int, seed: int) -> None:
        self.pipe = DiffusionPipeline.from_pretrained(str(base))
        self.pipe.set_progress_bar_config(disable=True)
        self.concepts, self.samples, self.seed = concepts, samples, seed
        self.centroids = [
            (colour_centroid(self.pipe, c.safe_colour), colour_centroid(self.pipe, c.unsafe_colour))
            for c in concepts
        ]
        self.neutral_base = sample_latents(self.pipe, NEUTRAL_CAPTIONS, samples, seed=seed + 1)

    def measure(self, lora: Path | None, indices: list[int]) -> tuple[list[float], float]:
        """Safe share of each concept in ``indices`` and drift on the neutral captions."""
        if lora is not None:
            self.pipe.load_lora_weights(str(lora))
        captions = [c for k in indices for c in (self.concepts[k].captions[0], self.concepts[k].held_out[0])]
        latents = sample_latents(self.pipe, captions, self.samples, seed=self.seed)
        neutral = sample_latents(self.pipe, NEUTRAL_CAPTIONS, self.samples, seed=self.seed + 1)
        if lora is not None:
            self.pipe.unload_lora_weights()
        return self.shares(latents, indices), displacement(self.neutral_base, neutral)

    def shares(self, latents: torch.Tensor, indices: list[int]) -> list[float]:
        """Safe share of each concept of ``indices`` from the latents of its two judged captions, in order."""
        size = 2 * self.samples
        return [
            share_closer(latents[p * size : (p + 1) * size], *self.centroids[k])
            for p, k in enumerate(indices)
        ]

    def measure_routed(self, routed: RoutedPipeline, indices: list[int]) -> tuple[list[float], float, dict]:
        """:meth:`measure` for the routed model: the captions grouped by route, each group sampled as
        :meth:`measure` samples a model (one call, the same seed) with its experts on, or none. A caption routed to
        its own expert alone is therefore sampled exactly as that expert's single measure samples it, and captions
        routed to no expert as the base's: where the routing is exact, the retained gain is 1 and the drift 0 by
        construction, and the cell measures the routing. Also returned: the share of the concepts' captions routed
        to their own concept alone, and of the neutral captions routed to any."""
        concepts = [k for k in indices for _ in range(2)]
        captions = [c for k in indices for c in (self.concepts[k].captions[0], self.concepts[k].held_out[0])]
        latents, routes = self._routed_latents(routed, captions, self.seed)
        neutral, neutral_routes = self._routed_latents(routed, NEUTRAL_CAPTIONS, self.seed + 1)
        shares = self.shares(latents, indices)
        routing = {
            "own_concept_alone": statistics.fmean(
                r.categories == (self.concepts[k].name,) for r, k in zip(routes, concepts, strict=True)
            ),
            "neutral_routed": statistics.fmean(bool(r.categories) for r in neutral_routes),
        }
        return shares, displacement(self.neutral_base, neutral), routing

    def _routed_latents(self, routed: RoutedPipeline, captions: list[str], seed: int):
        out: list[torch.Tensor | None] = [None] * len(captions)
        routes = routed.routes(captions)
        for route, members in routed.groups(routes).items():
            with routed.activate(route):
                latents = sample_latents(routed.pipe, [captions[i] for i in members], self.samples, seed=seed)
            for position, index in enumerate(members):
                out[index] = latents[position * self.samples : (position + 1) * self.samples]
        return torch.cat(out), routes


def routed_model(base: Path, data: Path, experts: list[Path], concepts, out: Path, cache: Path, seed: int):
    """The routed model of the first ``len(experts)`` concepts: its router trained on their dataset (unless there),
    seconds spent training it (0 when it was there)."""
    start, seconds = time.perf_counter(), 0.0
    if not (out / "model.safetensors").exists():
        train_router(RouterConfig(dataset=str(data), base=str(base), output_dir=str(out), cache_dir=str(cache),
                                  seed=seed, progress=False))  # fmt: skip
        seconds = time.perf_counter() - start
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    experts_by_category = {c.name: str(e) for c, e in zip(concepts, experts, strict=False)}
    return RoutedPipeline(pipe, ConceptRouter.from_pretrained(str(out)), experts_by_category), seconds


def calibrate(scope: str, base: Path, loaded, experts: list[Path], prompts, own, preserve, seed: int):
    """One calibration of ``MERGES``: Co-Merge's scores (``all``/``own``) or the fusion's Grams (``grams-<tokens>``)."""
    common = {"resolution": TOY_RESOLUTION, "seed": seed, "progress": False}
    common["family_options"] = family_options(str(base), loaded)
    sources = [str(e) for e in experts]
    if scope == "all":
        return activation_scores(str(base), loaded, sources, prompts, **common)
    if scope == "own":
        return activation_scores(str(base), loaded, sources, prompts, expert_prompts=own, **common)
    return gram_statistics(
        str(base), loaded, sources, prompts, expert_prompts=own, preserve_prompts=preserve,
        text_tokens=scope.removeprefix("grams-"), **common,
    )  # fmt: skip


def run_seed(args, root: Path, base: Path, concepts, seed: int) -> None:
    """Train, merge and measure every cell of one seed; each finished N is written at once (resumable)."""
    cache, here = root / "cache", placement_dir(root, args.placement, args.retain) / f"seed-{seed}"
    path = here / "results.json"
    state = json.loads(path.read_text()) if path.exists() else {"cells": {}, "seconds": {}}
    judge = Judge(base, concepts, args.samples, seed)
    data = root / "data"
    experts = []
    for k, concept in enumerate(concepts):
        out = here / "experts" / concept.name
        seconds = train(
            dpo_config(
                data,
                concept.name,
                base,
                out,
                cache,
                args.steps,
                args.rank,
                seed * 1000 + k,
                args.placement,
                args.retain,
            )
        )
        state["seconds"][f"expert-{k}"] = state["seconds"].get(f"expert-{k}", 0.0) + seconds
        experts.append(out)
    if "base" not in state:
        state["base"] = judge.measure(None, list(range(len(concepts))))[0]
        singles = [judge.measure(expert, [k]) for k, expert in enumerate(experts)]
        state["single"] = [shares[0] for shares, _ in singles]
        state["single_drift"] = [drift for _, drift in singles]
    loaded = [load_expert(str(e)) for e in experts]
    merges = [m for m in MERGES if m[0] in args.methods]
    preserve = calibration_prompts(str(PRESERVE_PROMPTS))
    for n in args.ns:
        ranks = {"both": (args.rank, args.rank * n), "rank": (args.rank,), "none": ()}[args.all_single]
        done = state["cells"].get(str(n), {})  # a cell measured before gains only the methods it lacks
        singles = [(name, rank) for name, rank in zip(ALL_SINGLE, ranks, strict=False) if name not in done]
        todo = [m for m in merges if m[0] not in done]
        route = ROUTED in args.methods and ROUTED not in done
        if not singles and not todo and not route:
            continue
        start = time.perf_counter()
        subset = root / f"data-{n}"
        cells, seconds = {}, dict(state["seconds"].get(f"N{n}", {}))
        for name, rank in singles:
            out = here / f"N{n}" / name
            seconds[name] = train(
                dpo_config(
                    subset,
                    "all",
                    base,
                    out,
                    cache,
                    args.steps * n,
                    rank,
                    seed * 1000 + 999,
                    args.placement,
                    args.retain,
                )
            )
            cells[name] = judge.measure(out, list(range(n)))
        by_category = calibration_prompts_by_category(str(subset), args.calibration_per_category)
        prompts, own = own_category_prompts(by_category, [c.name for c in concepts[:n]])
        scores = {}
        for scope in sorted({m[2] for m in todo if m[2]}):
            tick = time.perf_counter()
            scores[scope] = calibrate(scope, base, loaded[:n], experts[:n], prompts, own, preserve, seed)
            seconds[f"calibration-{scope}"] = time.perf_counter() - tick
        for name, method, scope, options in todo:
            tick = time.perf_counter()
            calibrated = scores.get(scope)
            if scope and scope.startswith("grams"):
                merged = merge_experts(loaded[:n], method, grams=calibrated, seed=seed, **options)
            else:
                rows, inputs = calibrated if scope else (None, None)
                merged = merge_experts(
                    loaded[:n], method, row_scores=rows, input_scores=inputs, seed=seed, **options
                )
            out = here / f"N{n}" / name
            save_merged(merged, str(base), out, loaded[0].target_modules)
            seconds[name] = time.perf_counter() - tick
            cells[name] = judge.measure(out, list(range(n)))
        if route:
            routed, seconds[ROUTED] = routed_model(
                base, subset, experts[:n], concepts, here / f"N{n}" / ROUTED, cache, seed
            )
            shares, drift, routing = judge.measure_routed(routed, list(range(n)))
            cells[ROUTED] = shares, drift
        state["cells"][str(n)] = {
            **done,
            **{name: {"shares": s, "drift": d} for name, (s, d) in cells.items()},
        }
        if route:
            state["cells"][str(n)][ROUTED]["routing"] = routing
        state["seconds"][f"N{n}"] = seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=1))
        print(f"seed {seed} N={n} done in {time.perf_counter() - start:.0f} s", flush=True)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (0 for one value), NaNs (nothing to keep) left out."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def retained(
    shares: list[float], base: list[float], single: list[float], min_gain: float
) -> tuple[float, int]:
    """Mean of (share - base) / (single - base) over concepts whose single gain is at least ``min_gain``."""
    kept = [(s - b) / (e - b) for s, b, e in zip(shares, base, single, strict=False) if e - b >= min_gain]
    return (statistics.fmean(kept) if kept else float("nan")), len(shares) - len(kept)


def placement_dir(root: Path, placement: str, retain: dict | None = None) -> Path:
    """The folder of one placement's seeds (the release's placement at the top, as before placements existed),
    and of experts trained with the output-preserving term under it (``retain-<weight>-<prompts>-<mode>``)."""
    folder = root if placement == "all" else root / placement
    if retain and retain["retain_weight"] > 0:
        folder /= "retain-{retain_weight:g}-{retain_prompts}-{retain_mode}".format(**retain)
    return folder


def report(root: Path, min_gain: float) -> None:
    """Aggregate every ``seed-*/results.json`` under ``root`` into results.json, results.md and retained_gain.png."""
    seeds = {
        int(p.parent.name.split("-")[1]): json.loads(p.read_text())
        for p in sorted(root.glob("seed-*/results.json"))
    }
    seeds = {s: state for s, state in seeds.items() if state["cells"]}
    if not seeds:
        raise SystemExit(f"no finished cells under {root}")
    ns = sorted({int(n) for state in seeds.values() for n in state["cells"]})
    present = {name for state in seeds.values() for cell in state["cells"].values() for name in cell}
    names = ["single", *(name for name in [*ALL_SINGLE, *(m[0] for m in MERGES), ROUTED] if name in present)]
    table: dict[str, dict[str, dict]] = {name: {} for name in names}
    for n in ns:
        done = {s: st for s, st in seeds.items() if str(n) in st["cells"]}
        for name in names:
            gains, pooled, drifts, ratios, raw, left_out = [], [], [], [], [], []
            for state in done.values():
                base, single = state["base"][:n], state["single"][:n]
                if name != "single" and name not in state["cells"][str(n)]:
                    continue
                if name == "single":
                    shares, drift = single, statistics.fmean(state["single_drift"][:n])
                else:
                    cell = state["cells"][str(n)][name]
                    shares, drift = cell["shares"], cell["drift"]
                gain, excluded = retained(shares, base, single, min_gain)
                gains.append(gain)
                pooled.append((sum(shares) - sum(base)) / (sum(single) - sum(base)))
                drifts.append(drift)
                ratios.append(drift / statistics.fmean(state["single_drift"][:n]))
                raw.append(statistics.fmean(shares) - statistics.fmean(base))
                left_out.append(excluded)
            table[name][str(n)] = {
                "retained_gain": interval(gains),
                "pooled_retained_gain": interval(pooled),
                "drift": interval(drifts),
                "drift_ratio": interval(ratios),
                "safe_share_gain": interval(raw),
                "seeds": sorted(done),
                "concepts_left_out": left_out,
            }
    seconds = {s: st["seconds"] for s, st in seeds.items()}
    (root / "results.json").write_text(json.dumps({"ns": ns, "table": table, "seconds": seconds}, indent=1))
    lines = []
    for key, title in TABLES.items():
        lines += [f"**{title}**", "", "| method | " + " | ".join(f"N={n}" for n in ns) + " |"]
        lines.append("|---|" + "---|" * len(ns))
        for name in names:
            cells = [table[name][str(n)][key] for n in ns]
            lines.append(f"| {name} | " + " | ".join(f"{m:.2f} ± {h:.2f}" for m, h in cells) + " |")
        lines.append("")
    lines += goals(table, ns, names)
    if ROUTED in names:
        lines += routed_goals(table, ns, seeds)
    lines += ["**Wall seconds** (mean over seeds; seeds ran side by side, which inflates all alike)", ""]
    lines += ["| cost | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for label, cost in COSTS.items():
        row = []
        for n in ns:
            # 0 s: the LoRA was already there when a run resumed, so its time was not measured.
            measured = []
            for state in seeds.values():
                try:
                    measured.append(cost(state["seconds"], n))
                except KeyError:  # that N not run, or that row left out of the run
                    continue
            measured = [value for value in measured if value > 0]
            mean = statistics.fmean(measured) if measured else None
            row.append("n/a" if mean is None else f"{mean:.0f}" if mean >= 10 else f"{mean:.1f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    seeds_line = ", ".join(f"N={n}: {len(table['single'][str(n)]['seeds'])}" for n in ns)
    left = ", ".join(f"N={n}: {table['single'][str(n)]['concepts_left_out']}" for n in ns)
    lines += [
        "",
        "Cells: mean over seeds ± 95% Student-t half-width. Retained gain: 1 = the single experts' gain, "
        "0 = the base; per concept then averaged, or pooled (sum of the N gains over the sum of the single "
        "experts' gains, which small single gains cannot blow up). Drift: mean latent distance of "
        f"neutral-caption samples to the base's, same seeds. Seeds per N: {seeds_line}. "
        f"Concepts left out of the per-concept average, per seed (single gain < {min_gain}): {left}.",
    ]
    (root / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(root / "retained_gain.png", ns, table, names)


def goals(table: dict, ns: list[int], names: list[str]) -> list[str]:
    """Per goal N, the merge with the highest mean retained gain, overall and among those whose drift ratio
    is at most ``DRIFT_BOUND`` (the N = 7 goal's), against the goal, with the shortfall."""
    merges = [name for name in names if name in {m[0] for m in MERGES}]
    lines = ["**Against the goals** (the merge with the highest mean retained gain)", ""]
    lines += [
        "| N | among | merge | retained gain | goal | shortfall | drift ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, (gain_goal, ratio_goal) in GOALS.items():
        if n not in ns:
            continue
        cells = {name: table[name][str(n)] for name in merges}
        bounded = [name for name in merges if cells[name]["drift_ratio"][0] <= DRIFT_BOUND]
        for among, pool in (("all merges", merges), (f"drift ratio <= {DRIFT_BOUND}", bounded)):
            if not pool:
                lines.append(f"| {n} | {among} | none | | | | |")
                continue
            best = max(pool, key=lambda name: cells[name]["retained_gain"][0])
            (gain, half), (ratio, ratio_half) = cells[best]["retained_gain"], cells[best]["drift_ratio"]
            bound = f" (goal <= {ratio_goal})" if ratio_goal else ""
            lines.append(
                f"| {n} | {among} | {best} | {gain:.2f} ± {half:.2f} | >= {gain_goal} | "
                f"{max(0.0, gain_goal - gain):.2f} | {ratio:.2f} ± {ratio_half:.2f}{bound} |"
            )
    return [*lines, ""]


def routed_goals(table: dict, ns: list[int], seeds: dict) -> list[str]:
    """The routed model against issue #38's goals, with the shortfall, and how it routed the judged captions."""
    lines = ["**How the router routed the judged captions** (mean over seeds)", ""]
    lines += [
        "| N | concept captions routed to their own concept alone | neutral captions routed to any |",
        "|---|---|---|",
    ]
    for n in ns:
        routings = [st["cells"][str(n)][ROUTED]["routing"] for st in seeds.values()
                    if ROUTED in st["cells"].get(str(n), {}) and "routing" in st["cells"][str(n)][ROUTED]]  # fmt: skip
        if routings:
            own, neutral = (
                statistics.fmean(r[key] for r in routings) for key in ("own_concept_alone", "neutral_routed")
            )
            lines.append(f"| {n} | {own:.3f} | {neutral:.3f} |")
    lines += ["", "**The routed model against its goals**", ""]
    lines += [
        "| N | retained gain | goal | shortfall | drift ratio | goal | excess |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        (gain, half), (ratio, ratio_half) = (
            table[ROUTED][str(n)]["retained_gain"],
            table[ROUTED][str(n)]["drift_ratio"],
        )
        goal = ROUTED_GOALS.get(n)
        shortfall = f"{max(0.0, goal - gain):.2f}" if goal else ""
        lines.append(
            f"| {n} | {gain:.2f} ± {half:.2f} | {f'>= {goal}' if goal else ''} | {shortfall} | {ratio:.2f} ± "
            f"{ratio_half:.2f} | <= {ROUTED_DRIFT_BOUND} | {max(0.0, ratio - ROUTED_DRIFT_BOUND):.2f} |"
        )
    return [*lines, ""]


def plot(path: Path, ns: list[int], table: dict, names: list[str]) -> None:
    """Retained gain and drift against N, one line per method, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(TABLES), figsize=(22, 4.8))
    colours = plt.get_cmap("tab20").colors
    for position, name in enumerate(names):
        style = "--" if name.startswith("all-single") else ("-" if name.startswith("comerge") else ":")
        for axis, key in zip(axes, TABLES, strict=True):
            means = [table[name][str(n)][key][0] for n in ns]
            errors = [table[name][str(n)][key][1] for n in ns]
            axis.errorbar(
                ns,
                means,
                yerr=errors,
                label=name,
                linestyle=style,
                marker="o",
                capsize=3,
                color=colours[position],
            )
    for axis, label in zip(axes, TABLES.values(), strict=True):
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_xlabel("concepts N")
        axis.set_title(label, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in axes[:2]:
        axis.axhline(1.0, color="grey", linewidth=0.8)
    for axis in axes[2:]:
        axis.set_yscale("log")  # a LoRA that breaks the model drifts 100x more than the rest
    axes[0].legend(fontsize=7, ncol=2)
    title = "Toy world: merged experts vs one LoRA trained on all N concepts (equal compute)"
    if ROUTED in names:
        title += " and the routed model (its drift, 0, is below the log axes)"
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 7, 14, 28])
    parser.add_argument("--steps", type=int, default=KNOWN_ANSWER_STEPS, help="DPO steps per expert")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank of the experts")
    parser.add_argument("--base-steps", type=int, default=2000, help="pretraining steps of the toy base")
    parser.add_argument("--samples", type=int, default=16, help="samples per caption")
    parser.add_argument("--calibration-per-category", type=int, default=4)
    parser.add_argument("--min-gain", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (run one seed per process)")
    parser.add_argument(
        "--placement", choices=sorted(PLACEMENT_NAMES), default="all", help="the experts' adapted layers"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[*(m[0] for m in MERGES), ROUTED],
        help="merge rows (and routed) to compute",
    )
    parser.add_argument(
        "--all-single",
        choices=("both", "rank", "none"),
        default="both",
        help="All-single LoRAs (the costly rows): at the experts' rank and at N x rank, the first, or none",
    )
    parser.add_argument(
        "--retain-weight", type=float, default=0.0, help="the experts' output-preserving term"
    )
    parser.add_argument("--retain-prompts", default="other", help="its retain set (All-single: neutral)")
    parser.add_argument("--retain-mode", choices=("unet", "text"), default="unet")
    parser.add_argument(
        "--tiny", choices=sorted(TOY_BASES), default="sd15", help="the toy base's tiny pipeline"
    )
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--out", default="merge-scaling")
    args = parser.parse_args()
    args.retain = {"retain_weight": args.retain_weight, "retain_prompts": args.retain_prompts,
                   "retain_mode": args.retain_mode}  # fmt: skip
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    start = time.perf_counter()
    concepts = toy_concepts(max(args.ns))
    pretrain = TOY_BASES[args.tiny][1]
    base = pretrain(
        resolve_tiny_model(f"tiny:{args.tiny}", root / "tiny"), root / "base", concepts, steps=args.base_steps
    )
    if not (root / "data").exists():
        write_toy_dataset(root / "data", concepts)
    for n in args.ns:
        if not (root / f"data-{n}").exists():
            write_toy_dataset(root / f"data-{n}", concepts[:n])
    for seed in args.seeds:
        run_seed(args, root, base, concepts, seed)
    print(f"seeds {args.seeds}: {time.perf_counter() - start:.0f} s", flush=True)
    if not args.no_report:
        report(placement_dir(root, args.placement, args.retain), args.min_gain)


if __name__ == "__main__":
    main()
