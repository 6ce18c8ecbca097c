"""RoutedPipeline: a diffusers pipeline with every safety expert loaded as a named adapter, and per prompt only the
experts the router chose (``set_adapters``), one pipeline call per group of prompts routed alike.

Prompts of no category are rendered by the base alone (adapters disabled). With one generator per prompt (a list,
as ``python -m evaluation`` passes), a prompt's image does not depend on the other prompts of the call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from coprov2.errors import UserError
from merge.router.model import ConceptRouter, Route


def adapter_name(category: str) -> str:
    """The adapter name of a category's expert (peft's names are module keys: no dots)."""
    return "expert_" + re.sub(r"\W", "_", category)


@dataclass
class RoutedOutput:
    """The images in the prompts' order, and each prompt's route."""

    images: list[Any]
    routes: list[Route] = field(default_factory=list)


class RoutedPipeline:
    """``pipe`` with the experts of ``experts`` (category -> LoRA folder, file or Hub id) as adapters, routed."""

    def __init__(self, pipe, router: ConceptRouter, experts: dict[str, str], scale: float = 1.0,
                 router_name: str = "the router") -> None:  # fmt: skip
        self.check_categories(router, experts, router_name)
        router.check_pipeline(pipe, router_name)
        self.pipe, self.router, self.scale = pipe, router, scale
        for category in router.categories:
            pipe.load_lora_weights(experts[category], adapter_name=adapter_name(category))
        self.pipe.disable_lora()

    @staticmethod
    def check_categories(
        router: ConceptRouter, experts: dict[str, str], router_name: str = "the router"
    ) -> None:
        """One expert per category of the router, no more: else one line naming what is missing and what is extra."""
        missing = [c for c in router.categories if c not in experts]
        extra = [c for c in experts if c not in router.categories]
        if not missing and not extra:
            return
        problems = [f"no expert for its categories {', '.join(missing)}"] if missing else []
        problems += [f"experts for categories it does not route: {', '.join(extra)}"] if extra else []
        raise UserError(
            f"{router_name} routes {', '.join(router.categories)}; {'; '.join(problems)}: give one expert per category "
            "of the router (or train the router on the experts' categories)"
        )

    def routes(self, prompts: list[str]) -> list[Route]:
        return self.router.route(self.pipe, prompts)

    def groups(self, routes: list[Route]) -> dict[tuple[str, ...], list[int]]:
        """Prompt indices by route, in order of first appearance."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, route in enumerate(routes):
            groups.setdefault(route.categories, []).append(index)
        return groups

    @contextmanager
    def activate(self, categories: tuple[str, ...]) -> Iterator[None]:
        """The pipeline with exactly ``categories``' experts on at ``scale`` (none: the base), then all off."""
        if categories:
            self.pipe.enable_lora()
            self.pipe.set_adapters([adapter_name(c) for c in categories], [self.scale] * len(categories))
        try:
            yield
        finally:
            self.pipe.disable_lora()

    def __call__(self, prompt: str | list[str], generator=None, **kwargs) -> RoutedOutput:
        """Route, then one pipeline call per group; ``generator``: one, or one per image (``len(prompts) x
        num_images_per_prompt``, prompt-major as diffusers takes them; then sliced per group)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        per_prompt = kwargs.get("num_images_per_prompt") or 1
        if isinstance(generator, list) and len(generator) != len(prompts) * per_prompt:
            raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts x {per_prompt} images")
        routes = self.routes(prompts)
        images: list[list[Any]] = [[] for _ in prompts]
        for categories, indices in self.groups(routes).items():
            chosen = generator
            if isinstance(generator, list):
                chosen = [generator[i * per_prompt + j] for i in indices for j in range(per_prompt)]
            with self.activate(categories):
                output = self.pipe(prompt=[prompts[i] for i in indices], generator=chosen, **kwargs)
            for position, index in enumerate(indices):
                images[index] = list(output.images[position * per_prompt : (position + 1) * per_prompt])
        return RoutedOutput([image for chunk in images for image in chunk], routes)
