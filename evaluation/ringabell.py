"""Ring-A-Bell (Tsai et al., ICLR 2024): prompts written to get around a concept-removal method, found with
the text encoder alone.

What the authors' code (github.com/chiayi-hsu/Ring-A-Bell, ``Get_Concept_Vector.ipynb`` and
``InversePrompt.ipynb``) does, and this module does the same way:

- **Concept vector**: the mean, over prompt pairs with and without the concept, of the difference of their
  text-encoder last hidden states ``[77, width]``. The authors encode each prompt five times
  (``num_samples = 5``) and average; the encoder is deterministic, so once is the same mean.
- **Target**: ``E(target prompt) + eta * concept vector``.
- **Search** (a genetic algorithm over discrete prompts of ``length`` = K tokens, for CLIP between BOS and
  the EOS padding): fitness is the squared distance of a candidate's hidden states to the target, summed over all
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

**Where the search runs** (:class:`SearchSpace`, chosen by the base's family, ``evaluation/attack.py``): the
authors attack SD1.4, whose UNet reads CLIP's token states unchanged, so they search CLIP's ids directly
(:func:`token_space`). A rectified-flow transformer reads other embeddings: FLUX's, T5's token states (of CLIP
only a pooled vector); SD3's, both CLIPs' token states side by side joined along the sequence with T5's. There
the vector, the target and every candidate's fitness are the pipeline's own ``encode_prompt`` output, the
``prompt_embeds`` the transformer receives (``[T5 length, 4096]`` for FLUX.1, ``[77 + T5 length, 4096]`` for
SD3.5), and candidates are drawn from the tokenizer that feeds them (T5's; SD3 without T5: CLIP's), decoded
to text and encoded as a prompt (:func:`prompt_space`). The pooled vectors are not in the fitness: the authors'
distance is over token states, and the pooled vector of a different width would need its own weight. What the
CLIP-only attack would measure on these models: a distance in a space the transformer reads only through the
pooled vector (FLUX) or as 77 of its 77 + 256 text tokens (SD3.5), so its prompts target the wrong thing.
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
    """The ids the search may draw (the tokenizer's vocabulary less its special tokens) and how to read a prompt."""

    candidates: torch.Tensor
    decode: Callable[[list[int]], str]

    @classmethod
    def of(cls, tokenizer) -> Vocabulary:
        specials = set(tokenizer.all_special_ids)
        ids = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
        return cls(ids, lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True).strip())


@dataclass(frozen=True)
class SearchSpace:
    """Where the search runs: the embeddings ``[N, L, width]`` a denoiser reads for prompts (``encode_prompts``) and
    for the search's K-token candidates ``[N, K]`` (``encode_tokens``), and the vocabulary candidates come from.
    ``states`` says which embeddings they are, for the attack's record and the report."""

    vocabulary: Vocabulary
    encode_prompts: Callable[[Sequence[str]], torch.Tensor]
    encode_tokens: Callable[[torch.Tensor], torch.Tensor]
    states: str


def encoder_of(text_encoder) -> Encoder:
    """The text encoder's last hidden states ``[N, 77, width]`` for token ids ``[N, 77]``, without gradients."""

    def encode(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return text_encoder(ids.to(text_encoder.device)).last_hidden_state.float()

    return encode


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids  # fmt: skip


def token_space(tokenizer, encode: Encoder, states: str) -> SearchSpace:
    """The authors' space: one text encoder whose token states the denoiser reads unchanged (SD1.x's CLIP). A
    candidate's ids go in as they are, between the start token and the end token's padding."""

    def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
        ids = torch.full((len(tokens), tokenizer.model_max_length), tokenizer.eos_token_id)
        ids[:, 0] = tokenizer.bos_token_id
        ids[:, 1 : tokens.shape[1] + 1] = tokens
        return encode(ids)

    return SearchSpace(Vocabulary.of(tokenizer), lambda prompts: encode(tokenize(tokenizer, prompts)),
                       encode_tokens, states)  # fmt: skip


def prompt_space(
    tokenizer, encode_prompts: Callable[[Sequence[str]], torch.Tensor], states: str
) -> SearchSpace:
    """The space of a pipeline whose denoiser reads what its ``encode_prompt`` joins from several encoders (SD3's
    CLIPs and T5, FLUX's T5): a candidate is drawn from ``tokenizer``'s vocabulary (the one feeding the states the
    denoiser reads), decoded to text and encoded as the pipeline encodes a prompt, so its fitness is that of the
    text the attack writes, as every tokenizer of the pipeline reads it."""
    vocabulary = Vocabulary.of(tokenizer)

    def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
        return encode_prompts([vocabulary.decode(row) for row in tokens.tolist()])

    return SearchSpace(vocabulary, encode_prompts, encode_tokens, states)


def concept_vector(
    space: SearchSpace, with_concept: Sequence[str], without_concept: Sequence[str], batch: int = 32
) -> torch.Tensor:
    """Mean of ``E(with) - E(without)`` over the pairs, ``[L, width]`` (Ring-A-Bell's concept extraction)."""
    total = None
    for start in range(0, len(with_concept), batch):
        pair = [space.encode_prompts(side[start : start + batch]) for side in (with_concept, without_concept)]
        difference = (pair[0] - pair[1]).sum(0)
        total = difference if total is None else total + difference
    return total / len(with_concept)


def _fitness(
    space: SearchSpace, population: torch.Tensor, target: torch.Tensor, batch: int | None
) -> torch.Tensor:
    size = batch or len(population)
    return torch.cat([
        (space.encode_tokens(population[start : start + size]) - target).pow(2).sum(dim=(1, 2)).cpu()
        for start in range(0, len(population), size)
    ])  # fmt: skip


def search(
    space: SearchSpace,
    target: torch.Tensor,
    settings: SearchSettings,
    generator: torch.Generator,
    banned_words: Sequence[str] = (),
) -> tuple[list[int], float]:
    """The K tokens whose embeddings in ``space`` come nearest ``target`` ``[L, width]``, and their loss.

    Crossover points and mutated positions are drawn in ``1..K`` (the authors' token positions after the start
    token) and used one lower, in the candidates' own ``0..K-1``."""
    k, size = settings.length, settings.population
    ids, candidates = space.vocabulary.candidates, len(space.vocabulary.candidates)

    def draw(*shape: int) -> torch.Tensor:
        return ids[torch.randint(0, candidates, shape, generator=generator)]

    population = draw(size, k)
    banned = [word.lower() for word in banned_words]
    for step in range(settings.generations):
        losses = _fitness(space, population, target, settings.fitness_batch)
        if banned:
            for row, tokens in enumerate(population.tolist()):
                text = space.vocabulary.decode(tokens).lower()
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
        cuts = torch.randint(1, k + 1, (len(breeds),), generator=generator) - 1
        children = []
        for parent, partner, cut in zip(breeds.tolist(), partners.tolist(), cuts.tolist(), strict=True):
            a, b = population[parent], population[partner]
            children += [torch.cat([a[:cut], b[cut:]]), torch.cat([b[:cut], a[cut:]])]
        population = torch.cat([population, torch.stack(children)]) if children else population.clone()
        mutate = (
            (torch.rand(len(population), generator=generator) < settings.mutation_rate).nonzero().flatten()
        )
        positions = torch.randint(1, k + 1, (len(mutate),), generator=generator) - 1
        population[mutate, positions] = draw(len(mutate))
    return population[0].tolist(), best_loss
