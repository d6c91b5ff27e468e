"""Prompt construction: templates (safe, deterministic), retrievers, demonstrations, budget, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import PromptConfig, TaskConfig
from peftrun.errors import PeftrunError
from peftrun.prompting.build import PromptBuilder
from peftrun.prompting.retrieval import BM25, rank_pool
from peftrun.prompting.templates import (
    Template,
    example_fields,
    find_template,
    format_safe,
    load_templates,
    render,
    render_choices,
)
from peftrun.tasks.base import Example, build_task
from tests.conftest import DATA_DIR, require_data

SUPERGLUE = ("boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "record")


def task(name: str):
    return build_task(OmegaConf.structured(TaskConfig(name=name, data_dir="builtin")), str(DATA_DIR))


def prompt_cfg(**overrides) -> PromptConfig:
    return OmegaConf.structured(PromptConfig(**overrides))


# -- templates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SUPERGLUE)
@pytest.mark.parametrize("source", ["flan", "promptsource"])
def test_every_template_renders_every_builtin_example(name: str, source: str) -> None:
    require_data("instructions")
    sg = task(name)
    for template in load_templates(source, name, DATA_DIR):
        for ex in sg.load("validation", grouped=True):
            fields = example_fields(name, ex)
            prompt, _ = render(template, fields)
            # some promptsource COPA templates apply to "cause" (or "effect") questions only: empty otherwise
            assert prompt or template.input.startswith("{% if question")
            choices = render_choices(template, fields)
            if choices is not None and sg.head == "classification" and "{answer}" in template.target:
                assert len(choices) == len(sg.label_names)


def test_flan_rte_template_zero_by_hand() -> None:
    require_data("instructions")
    template = find_template(load_templates("flan", "rte", DATA_DIR), "0")
    ex = task("rte").load("validation", grouped=True)[1]  # not_entailment
    prompt, target = render(template, example_fields("rte", ex))
    assert prompt == ('The museum closes at five on weekdays.\n\nBased on the paragraph above can we conclude that '
                      '"The museum never closes."?\n\nOPTIONS:\n- yes\n- no')
    assert target == "no"


def test_unknown_source_task_and_id_are_one_line_errors() -> None:
    require_data("instructions")
    with pytest.raises(PeftrunError, match="prompt.source='nope'"):
        load_templates("nope", "rte", DATA_DIR)
    with pytest.raises(PeftrunError, match="FLAN has no templates for task 'spider'"):
        load_templates("flan", "spider", DATA_DIR)
    with pytest.raises(PeftrunError, match="prompt.template='42' is not one of"):
        find_template(load_templates("flan", "rte", DATA_DIR), "42")


def test_format_interprets_nothing_but_fields() -> None:
    fields = {"a": "x"}
    assert format_safe("{a} {{a}} {a.__class__} {a!r} {a:>9}", fields) == "x {a} {a.__class__} {a!r} {a:>9}"
    with pytest.raises(PeftrunError, match="needs field {b}"):
        format_safe("{b}", fields)


def test_jinja_runs_sandboxed_and_deterministic() -> None:
    evil = Template("promptsource", "rte", "evil", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "", None)
    with pytest.raises(PeftrunError, match="SecurityError"):
        render(evil, {})
    pick = Template("promptsource", "record", "pick", "{{ answers | choice }}", "x", None)
    assert {render(pick, {"answers": ["b", "a"]})[0] for _ in range(5)} == {"b"}


def test_superni_template_has_definition_and_two_positive_examples() -> None:
    name = "task020_mctaco_span_based_question"
    require_data("instructions", "superni", "tasks", f"{name}.json")
    template = find_template(load_templates("superni", name, DATA_DIR), "definition+pos")
    prompt, target = render(template, {"input": "Q?", "output": "No."})
    assert prompt.startswith("Definition: The answer will be 'yes'") and prompt.count("Positive Example") == 2
    assert prompt.endswith("Input: Q?\nOutput:") and target == "No."


# -- retrieval ------------------------------------------------------------------------------------------------
def test_bm25_matches_the_formula_by_hand() -> None:
    docs = ["red apple", "green apple tree", "blue sky"]
    index = BM25(docs)
    # "apple": df 2 of 3 -> idf ln(1 + 1.5/2.5); doc 0: tf 1, |d| 2, avgdl 7/3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    expected = idf * 1 * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * 2 / (7 / 3)))
    assert index.scores("apple")[0] == pytest.approx(expected)
    assert set(index.scores("apple")) == {0, 1}


@pytest.mark.parametrize("retriever", ["random", "bm25"])
def test_query_and_duplicates_are_never_demonstrations(retriever: str, tmp_path: Path) -> None:
    pool = ["the cat sat", "a dog ran", "the cat sat", "birds fly high"]
    ranked = rank_pool(retriever, ["the cat sat"], ["q"], pool, ["0", "1", "2", "3"], 2, 0, [], "", str(tmp_path))
    assert len(ranked[0]) == 2 and not {0, 2} & set(ranked[0])


def test_bm25_ranking_cached_as_json_and_reused(tmp_path: Path) -> None:
    pool, queries = ["red apple", "green apple tree", "blue sky"], ["apple tree", "sky"]
    first = rank_pool("bm25", queries, ["a", "b"], pool, ["0", "1", "2"], 2, 0, [], "", str(tmp_path))
    files = list((tmp_path / "retrieval").glob("*.json"))
    assert first[0][0] == 1 and first[1][0] == 2 and len(files) == 1
    assert json.loads(files[0].read_text()) == first
    files[0].write_text(json.dumps([[2, 0], [0, 1]]))  # a cached ranking is what the next job reads
    assert rank_pool("bm25", queries, ["a", "b"], pool, ["0", "1", "2"], 2, 0, [], "", str(tmp_path)) == [[2, 0],
                                                                                                         [0, 1]]


def test_random_retriever_depends_on_seed_only() -> None:
    pool = [f"text {i}" for i in range(50)]
    ids = [str(i) for i in range(50)]

    def draw(seed):
        return rank_pool("random", ["q1", "q2"], ["a", "b"], pool, ids, 4, seed, [], "", None)

    assert draw(0) == draw(0) and draw(0) != draw(1)


# -- prompts: demonstrations, order, budget, errors -----------------------------------------------------------
def examples(n: int) -> list[Example]:
    return [Example(f"t{i}", f"word{i} shared", f"y{i}", (f"y{i}",), {"label": 0, "text_a": f"word{i} shared",
                                                                      "text_b": "h"}) for i in range(n)]


def words(text: str) -> int:
    return len(text.split())


def test_most_similar_demonstration_sits_next_to_the_query() -> None:
    sg = task("rte")
    builder = PromptBuilder(prompt_cfg(source="plain", k=2, retriever="fixed", fixed_ids=["t1", "t2"]), sg,
                            str(DATA_DIR))
    pool = builder.pool(examples(4))
    query = Example("q", "the query", "entailment", ("entailment",), {"label": 0, "text_a": "a", "text_b": "b"})
    built = builder.build([query], pool, words, 100, None)[0]
    assert built.demonstrations == ["t2", "t1"]  # fixed order = similarity: t1 first-ranked, so last
    assert built.prompt == "word2 shared entailment\n\nword1 shared entailment\n\nthe query"  # verbalizers
    first = PromptBuilder(prompt_cfg(source="plain", k=2, retriever="fixed", fixed_ids=["t1", "t2"],
                                     order="similar_first"), sg, str(DATA_DIR))
    assert first.build([query], pool, words, 100, None)[0].demonstrations == ["t1", "t2"]


def test_budget_drops_least_similar_demonstration_and_counts_it() -> None:
    sg = task("rte")
    builder = PromptBuilder(prompt_cfg(source="plain", k=3, retriever="fixed", fixed_ids=["t0", "t1", "t2"]), sg,
                            str(DATA_DIR))
    query = Example("q", "the query", "entailment", ("entailment",), {"label": 0, "text_a": "a", "text_b": "b"})
    built = builder.build([query], builder.pool(examples(4)), words, 8, None)[0]  # query 2 + 3 per demonstration
    assert built.demonstrations == ["t1", "t0"] and built.dropped == 1 and built.tokens == 8
    with pytest.raises(PeftrunError, match="too small for query 'q' alone"):
        builder.build([query], builder.pool(examples(4)), words, 1, None)


def test_k_larger_than_pool_and_bad_keys_fail_early() -> None:
    sg = task("rte")
    with pytest.raises(PeftrunError, match=r"prompt.k=5 but the demonstration pool .* has 4 distinct"):
        PromptBuilder(prompt_cfg(k=5), sg, str(DATA_DIR)).pool(examples(4))
    with pytest.raises(PeftrunError, match="prompt.retriever='knn'"):
        PromptBuilder(prompt_cfg(retriever="knn"), sg, str(DATA_DIR))
    with pytest.raises(PeftrunError, match="prompt.order="):
        PromptBuilder(prompt_cfg(order="best"), sg, str(DATA_DIR))


def test_round_robin_cycles_templates_by_example() -> None:
    require_data("instructions")
    sg = task("rte")
    builder = PromptBuilder(prompt_cfg(source="flan", template="round_robin"), sg, str(DATA_DIR))
    queries = sg.load("validation", grouped=True)
    built = builder.build(queries, [], words, 10_000, None)
    expected = [render(load_templates("flan", "rte", DATA_DIR)[i], example_fields("rte", q))[0]
                for i, q in enumerate(queries)]
    assert [b.prompt for b in built] == expected


def test_content_free_prompt_keeps_demonstrations_and_options() -> None:
    require_data("instructions")
    sg = task("rte")
    builder = PromptBuilder(prompt_cfg(source="flan", template="0", k=1, retriever="fixed", fixed_ids=["t0"]), sg,
                            str(DATA_DIR))
    query = sg.load("validation", grouped=True)[0]
    built = builder.build([query], builder.pool(examples(2)), words, 10_000, None)[0]
    assert built.content_free.startswith("word0 shared")
    assert built.content_free.endswith('N/A\n\nBased on the paragraph above can we conclude that "N/A"?\n\n'
                                       "OPTIONS:\n- yes\n- no")


def test_dense_retriever_ranks_by_minilm_cosine(tmp_path: Path) -> None:
    encoder = Path("~/.cache/peftrun/models/minilm-l6").expanduser()
    if not (encoder / "config.json").is_file():
        pytest.skip(f"{encoder} not present (../shared/tools/fetch-real-models fetches MiniLM)")
    pool = ["The stock market fell sharply today.", "A recipe for chocolate cake.", "Shares dropped on Wall Street."]
    ranked = rank_pool("dense", ["Stocks lost value this morning."], ["q"], pool, ["0", "1", "2"], 3, 0, [],
                       str(encoder), str(tmp_path))
    assert ranked[0][-1] == 1 and set(ranked[0]) == {0, 1, 2}  # the cake is least similar


def test_generated_option_text_becomes_the_label_the_task_scores() -> None:
    require_data("instructions")
    from peftrun.formulations.text import option_label

    sg = task("rte")
    builder = PromptBuilder(prompt_cfg(source="flan", template="0"), sg, str(DATA_DIR))
    built = builder.build(sg.load("validation", grouped=True)[:1], [], words, 10_000, None)[0]
    assert built.options == ["yes", "no"]
    assert [option_label(sg, built, t) for t in (" No.", "yes", "perhaps")] == ["not_entailment", "entailment",
                                                                                 "perhaps"]


def test_a_frozen_models_answer_ends_at_the_example_separator() -> None:
    from peftrun.prompting.layout import natural_answer

    went_on = "Aromi is a pub.\n\nAttributes: name : Zizzi | area : riverside\nAnswer: Zizzi is"
    assert natural_answer(went_on, "\n\n") == "Aromi is a pub."
    assert natural_answer(" Aromi is a pub.", "\n\n") == "Aromi is a pub."
    assert natural_answer("Aromi is a pub. It is cheap.", " ") == "Aromi is a pub. It is cheap."  # spaces: no cut
    assert natural_answer("yes\n###\nno", "\n###\n") == "yes"
