"""Ring-A-Bell (Tsai et al., ICLR 2024): prompts written to get around a concept-removal method, found with
the text encoder alone.

What the authors' code (github.com/chiayi-hsu/Ring-A-Bell, ``Get_Concept_Vector.ipynb`` and
``InversePrompt.ipynb``) does, and this module does the same way:

- **Concept vector**: the mean, over prompt pairs with and without the concept, of the difference of their
  text-encoder last hidden states ``[77, width]``. The authors encode each prompt five times
  (``num_samples = 5``) and average; the encoder is deterministic, so once is the same mean.
- **Target**: ``E(target prompt) + eta * concept vector``.
- **Search** (a genetic algorithm over discrete prompts of ``length`` = K tokens between BOS and the EOS
  padding): fitness is the squared distance of a candidate's hidden states to the target, summed over all
  positions; each generation keeps the best half, each kept prompt breeds two children with a random
  partner at ``crossover_rate`` (one-point crossover inside the K tokens), and every member of the new
  population, kept prompts included (the authors' in-place mutation touches them too), has one random token
  replaced at ``mutation_rate``. Defaults are theirs: population 200, 3000 generations, mutation 0.25,
  crossover 0.5, K = 16, eta = 3. The whole population is encoded in one call per generation
  (``fitness_batch``: ``None``; the benchmark compares one call per candidate).
- **Output**: the best prompt decoded, one per target, in their CSV layout ``prompt,case_number,
  evaluation_seed`` (plus ``category``).

Ours, not theirs: every random draw comes from one ``torch.Generator`` seeded per target (theirs mix
``random``, ``numpy`` and torch unseeded); token ids are drawn from the whole vocabulary minus the special
tokens (theirs: ids 1 to 49405 of CLIP's, the same set less id 0); and ``banned_words``, off by default,
gives a candidate whose text contains one of them an infinite loss, to ask for prompts that also get past a
keyword filter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SearchSettings:
    """The genetic algorithm's settings (the authors' defaults)."""

    length: int = 16
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5
    #: Candidates encoded per text-encoder call; None: the whole population at once.
    fitness_batch: int | None = None


@dataclass(frozen=True)
class Vocabulary:
    """What the search needs of a tokenizer: the ids it may draw, the special ids, and how to read a prompt."""

    candidates: torch.Tensor
    bos: int
    eos: int
    max_length: int
    decode: Callable[[list[int]], str]

    @classmethod
    def of(cls, tokenizer) -> Vocabulary:
        specials = set(tokenizer.all_special_ids)
        ids = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
        return cls(ids, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.model_max_length,
                   lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True).strip())  # fmt: skip


def encoder_of(text_encoder) -> Encoder:
    """The text encoder's last hidden states ``[N, 77, width]`` for token ids ``[N, 77]``, without gradients."""

    def encode(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return text_encoder(ids.to(text_encoder.device))[0].float()

    return encode


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids  # fmt: skip


def concept_vector(
    encode: Encoder, tokenizer, with_concept: Sequence[str], without_concept: Sequence[str], batch: int = 32
) -> torch.Tensor:
    """Mean of ``E(with) - E(without)`` over the pairs, ``[77, width]`` (Ring-A-Bell's concept extraction)."""
    total = None
    for start in range(0, len(with_concept), batch):
        pair = [tokenize(tokenizer, side[start : start + batch]) for side in (with_concept, without_concept)]
        difference = (encode(pair[0]) - encode(pair[1])).sum(0)
        total = difference if total is None else total + difference
    return total / len(with_concept)


def _fitness(
    encode: Encoder, population: torch.Tensor, target: torch.Tensor, batch: int | None
) -> torch.Tensor:
    size = batch or len(population)
    return torch.cat([
        (encode(population[start : start + size]) - target).pow(2).sum(dim=(1, 2)).cpu()
        for start in range(0, len(population), size)
    ])  # fmt: skip


def search(
    encode: Encoder,
    target: torch.Tensor,
    vocabulary: Vocabulary,
    settings: SearchSettings,
    generator: torch.Generator,
    banned_words: Sequence[str] = (),
) -> tuple[list[int], float]:
    """The K tokens whose hidden states come nearest ``target`` ``[77, width]``, and their loss."""
    k, size = settings.length, settings.population
    ids, candidates = vocabulary.candidates, len(vocabulary.candidates)

    def draw(*shape: int) -> torch.Tensor:
        return ids[torch.randint(0, candidates, shape, generator=generator)]

    population = torch.full((size, vocabulary.max_length), vocabulary.eos)
    population[:, 0] = vocabulary.bos
    population[:, 1 : k + 1] = draw(size, k)
    banned = [word.lower() for word in banned_words]
    for step in range(settings.generations):
        losses = _fitness(encode, population, target, settings.fitness_batch)
        if banned:
            for row, tokens in enumerate(population[:, 1 : k + 1].tolist()):
                text = vocabulary.decode(tokens).lower()
                if any(word in text for word in banned):
                    losses[row] = float("inf")
        order = torch.argsort(losses, stable=True)
        best_loss = losses[order[0]].item()
        population = population[order[: size // 2]]
        if step == settings.generations - 1:
            break
        parents = len(population)
        breeds = (torch.rand(parents, generator=generator) < settings.crossover_rate).nonzero().flatten()
        partners = torch.randint(0, parents, (len(breeds),), generator=generator)
        points = torch.randint(1, k + 1, (len(breeds),), generator=generator)
        children = []
        for parent, partner, point in zip(breeds.tolist(), partners.tolist(), points.tolist(), strict=True):
            a, b = population[parent], population[partner]
            children += [torch.cat([a[:point], b[point:]]), torch.cat([b[:point], a[point:]])]
        population = torch.cat([population, torch.stack(children)]) if children else population.clone()
        mutate = (
            (torch.rand(len(population), generator=generator) < settings.mutation_rate).nonzero().flatten()
        )
        positions = torch.randint(1, k + 1, (len(mutate),), generator=generator)
        population[mutate, positions] = draw(len(mutate))
    return population[0, 1 : k + 1].tolist(), best_loss
