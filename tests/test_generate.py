"""Prompt-pair generation and taxonomy expansion around a scripted LLM: retries, seeds, bookkeeping."""

import json

from coprov2.expand import expand_taxonomy
from coprov2.prompts.config import PromptsConfig
from coprov2.prompts.generate import generate_pairs, pair_id
from coprov2.prompts.templates import load_template
from coprov2.prompts.validate import PromptChecker
from coprov2.seeds import derive_seed
from coprov2.taxonomy import Concept, parse_taxonomy
from tests.scripted_llm import ScriptedLLM

TAXONOMY = parse_taxonomy(
    "categories:\n"
    "  violence: {name: Violence, description: physical harm, concepts: [knife, riot]}\n"
    "  hate: {name: Hate, description: hatred, concepts: [mob]}\n"
)
TEMPLATES = {name: load_template(name) for name in ("unsafe_prompts", "safe_twin")}
CHECKER = PromptChecker(count_tokens=lambda text: len(text.split()) + 2, max_tokens=77)
SAMPLING = {"max_tokens": 64, "temperature": 1.0, "top_p": 1.0}


def _unsafe_prompt_in(request) -> str:
    return request.messages[1]["content"].split(":\n", 1)[1].split("\n")[0]


def test_retries_ask_only_for_what_is_missing_and_keep_every_rejection():
    unsafe_answers = {
        0: {"prompts": ["a knife on a table", "a blade on a table"]},  # second lacks the concept
        1: {"prompts": ["a knife in a kitchen"]},
    }
    twin_answers = {
        "a knife on a table": ["a knife on a table", "a spoon on a table"],  # first is identical
        "a knife in a kitchen": ["a spoon in a kitchen"],
    }
    attempts: dict[str, int] = {}

    def answer(request):
        if "prompts" in request.schema["properties"]:
            attempt = 0 if request.seed == derive_seed(7, "unsafe", "violence/knife", 0) else 1
            return json.dumps(unsafe_answers[attempt])
        unsafe = _unsafe_prompt_in(request)
        attempts[unsafe] = attempts.get(unsafe, -1) + 1
        return json.dumps({"safe_prompt": twin_answers[unsafe][attempts[unsafe]]})

    llm = ScriptedLLM(answer)
    config = PromptsConfig(prompts_per_concept=2, max_retries=1)
    knife = Concept("violence", "knife")
    result = generate_pairs([knife], TAXONOMY, llm, CHECKER, TEMPLATES, config, SAMPLING, seed=7)

    assert [(p["unsafe_prompt"], p["safe_prompt"]) for p in result.records] == [
        ("a knife on a table", "a spoon on a table"),
        ("a knife in a kitchen", "a spoon in a kitchen"),
    ]
    assert result.records[0]["id"] == pair_id(knife, "a knife on a table")
    assert [(r["step"], r["reason"], r["attempt"]) for r in result.rejected] == [
        ("unsafe", "concept_missing", 0),
        ("twin", "twin_identical", 0),
    ]
    retry = llm.batches[1][0]
    assert retry.schema["properties"]["prompts"]["minItems"] == 1
    assert retry.seed == derive_seed(7, "unsafe", "violence/knife", 1) != llm.batches[0][0].seed
    assert result.stats["requests"] == {"twin": 3, "unsafe": 2}
    assert result.stats["pairs"] == {"violence": 2}
    assert result.stats["rejected"] == {"twin/twin_identical": 1, "unsafe/concept_missing": 1}


def test_bounded_retries_then_the_concept_is_counted_short():
    llm = ScriptedLLM(lambda request: "I cannot help with that.")
    config = PromptsConfig(prompts_per_concept=3, max_retries=2)
    concepts = [Concept("violence", "riot"), Concept("hate", "mob")]
    result = generate_pairs(concepts, TAXONOMY, llm, CHECKER, TEMPLATES, config, SAMPLING, seed=0)
    assert result.records == []
    assert len(llm.batches) == 3 and all(len(batch) == 2 for batch in llm.batches)
    assert result.stats["rejected"] == {"unsafe/unparseable": 6}
    assert result.stats["concepts_short_of_target"] == {"hate": 1, "violence": 1}


def test_all_concepts_of_a_shard_go_in_one_batch():
    def answer(request):
        if "prompts" in request.schema["properties"]:
            concept = "knife" if "knife" in request.messages[1]["content"] else "riot"
            return json.dumps({"prompts": [f"a {concept} at night"]})
        return json.dumps({"safe_prompt": f"a calm street at night {request.seed}"})

    llm = ScriptedLLM(answer)
    config = PromptsConfig(prompts_per_concept=1, max_retries=0)
    concepts = [Concept("violence", "knife"), Concept("violence", "riot")]
    result = generate_pairs(concepts, TAXONOMY, llm, CHECKER, TEMPLATES, config, SAMPLING, seed=0)
    assert [len(batch) for batch in llm.batches] == [2, 2]
    assert len(result.records) == 2


def test_expansion_dedups_across_categories_and_rejects_bad_concepts():
    base = parse_taxonomy(
        "categories:\n  hate: {description: d, concepts: [a]}\n  violence: {description: d, concepts: [b]}\n"
    )
    script = {
        ("hate", 2): ["B", "c"],  # 'b' already belongs to violence
        ("violence", 2): ["../x", "D"],  # path-like
        ("hate", 1): ["e"],
        ("violence", 1): ["f"],
    }

    def answer(request):
        category = "hate" if "Harm category: hate" in request.messages[1]["content"] else "violence"
        n = request.schema["properties"]["concepts"]["minItems"]
        return json.dumps({"concepts": script[(category, n)]})

    llm = ScriptedLLM(answer)
    grown, result = expand_taxonomy(
        base,
        llm,
        load_template("expand_concepts"),
        target=3,
        batch=2,
        max_stalls=2,
        sampling=SAMPLING,
        seed=0,
    )
    assert [c.concepts for c in grown.categories] == [("a", "c", "e"), ("b", "d", "f")]
    assert [(r["category"], r["reason"], r["text"]) for r in result.rejected] == [
        ("hate", "duplicate", "B"),
        ("violence", "invalid_concept", "../x"),
    ]
    assert result.stats["requests"] == {"expand": 4}
    assert result.stats["categories_short_of_target"] == {}


def test_expansion_gives_up_on_a_stalled_category():
    base = parse_taxonomy("categories:\n  hate: {description: d, concepts: [a]}\n")
    llm = ScriptedLLM(lambda request: '{"concepts": ["a"]}')
    grown, result = expand_taxonomy(
        base,
        llm,
        load_template("expand_concepts"),
        target=5,
        batch=1,
        max_stalls=3,
        sampling=SAMPLING,
        seed=0,
    )
    assert grown.categories[0].concepts == ("a",)
    assert len(llm.batches) == 3
    assert result.stats["categories_short_of_target"] == {"hate": 1}


def test_expansion_reaches_the_papers_723_concepts():
    """The shipped taxonomy grown to 104 concepts per category: 728 >= 723, all unique, all normalized."""

    def answer(request):
        n = request.schema["properties"]["concepts"]["minItems"]
        # a noisy LLM: case and spacing variants, and a repeat of an existing seed concept
        items = [f"Concept  {request.seed} {i}" for i in range(n)]
        if n > 1:
            items[0] = "  Swastika "
        return json.dumps({"concepts": items})

    from coprov2.taxonomy import load_taxonomy

    llm = ScriptedLLM(answer)
    grown, result = expand_taxonomy(
        load_taxonomy(),
        llm,
        load_template("expand_concepts"),
        104,
        25,
        max_stalls=2,
        sampling=SAMPLING,
        seed=0,
    )
    concepts = grown.concepts()
    assert len(concepts) == 7 * 104 >= 723
    assert len({c.name for c in concepts}) == len(concepts)
    assert all(c.name == " ".join(c.name.lower().split()) for c in concepts)
    assert result.stats["rejected"]["expand/duplicate"] >= len(llm.batches)


def test_an_answer_cut_at_max_tokens_is_rejected_as_truncated_and_retried():
    """A cut list can still parse (one item short); it is ``truncated``, counted, and asked again."""
    from coprov2.llm import LLMAnswer

    class CutOnce(ScriptedLLM):
        def generate(self, requests):
            answers = super().generate(requests)
            if len(self.batches) == 1:
                return [LLMAnswer(a.text, "length") for a in answers]
            return answers

    def answer(request):
        if "prompts" in request.schema["properties"]:
            return json.dumps({"prompts": ["a knife on a table"]})
        return json.dumps({"safe_prompt": "a spoon on a table"})

    config = PromptsConfig(prompts_per_concept=1, max_retries=1)
    result = generate_pairs(
        [Concept("violence", "knife")],
        TAXONOMY,
        CutOnce(answer),
        CHECKER,
        TEMPLATES,
        config,
        SAMPLING,
        seed=0,
    )
    assert [r["reason"] for r in result.rejected] == ["truncated"]
    assert result.stats["rejected"] == {"unsafe/truncated": 1}
    assert [p["safe_prompt"] for p in result.records] == ["a spoon on a table"]
