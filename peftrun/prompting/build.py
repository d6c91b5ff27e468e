"""Prompt construction for a run: template + instruction + k demonstrations + the query, under a token budget.

    prompt = [instruction] + demonstrations (each: its prompt + answer_separator + its target) + the query's prompt,
             joined by example_separator; the model reads the answer after answer_separator.
- template: prompt.template names one (or round_robin: query i and its demonstrations get template
  (i + seed) mod n); plain = the task's own source and target (with prompt.options_inline, an OPTIONS block).
- demonstrations come from task.train_split (its first prompt.pool examples), deduplicated by source text; the
  query and its exact duplicates are never its own demonstration (peftrun/prompting/retrieval.py);
- order: similar_last (most similar next to the query), similar_first, random (seeded by prompt.seed and query id);
- budget: min(prompt.max_tokens, task.max_source_length) tokens for the prompt; over it, the least similar
  demonstration is dropped (and counted) until it fits; a query that does not fit alone is an error.
- content-free prompt (contextual calibration, Zhao et al. 2021): the same prompt and demonstrations with every
  content field of the query replaced by "N/A".
Training examples get the template only (no demonstrations).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from peftrun.errors import PeftrunError
from peftrun.formulations.options import NORMALIZATIONS
from peftrun.prompting.retrieval import RETRIEVERS, rank_pool
from peftrun.prompting.templates import (
    PLAIN,
    Template,
    example_fields,
    find_template,
    load_templates,
    options_block,
    render,
    render_choices,
)
from peftrun.tasks.base import Example

ORDERS = ("similar_last", "similar_first", "random")
ROUND_ROBIN = "round_robin"
CONTENT_FREE = "N/A"
# fields that carry the label space, not the query's content: kept in the content-free prompt
_LABEL_SPACE = {"options", "options_", "options_str", "answer", "label", "entities", "choice1", "choice2", "target",
                "output", "answers", "human_reference", "summary", "highlights"}


@dataclass(frozen=True)
class Prompted:
    """One query under the prompt config.

    prompt: the text before the answer; target: the query's rendered answer; options: the answer options under
    the template (rank classification scores these), None for tasks without options; content_free: the same
    prompt with the query's content replaced by "N/A"; demonstrations: the ids of the train examples it shows,
    in prompt order; dropped: demonstrations removed for the token budget; tokens: the prompt's tokens.
    """

    example: Example
    prompt: str
    target: str
    options: list[str] | None
    content_free: str
    demonstrations: list[str]
    dropped: int
    tokens: int


class PromptBuilder:
    """Validated prompt settings for one task (cheap: template files only, no tokenizer, no model)."""

    def __init__(self, cfg: Any, task: Any, data_dir: str) -> None:
        self.cfg, self.task = cfg, task
        if cfg.order not in ORDERS:
            raise PeftrunError(f"prompt.order={cfg.order!r}; known: {', '.join(ORDERS)}")
        if cfg.retriever not in RETRIEVERS:
            raise PeftrunError(f"prompt.retriever={cfg.retriever!r}; known: {', '.join(RETRIEVERS)}")
        if cfg.normalize not in NORMALIZATIONS:
            raise PeftrunError(f"prompt.normalize={cfg.normalize!r}; known: {', '.join(NORMALIZATIONS)}")
        if cfg.k < 0:
            raise PeftrunError(f"prompt.k={cfg.k}; give a number of demonstrations >= 0")
        if cfg.max_tokens is not None and cfg.max_tokens <= 0:
            raise PeftrunError(f"prompt.max_tokens={cfg.max_tokens}; give a positive token budget, or null")
        if cfg.retriever == "fixed" and cfg.k > len(cfg.fixed_ids):
            raise PeftrunError(f"prompt.k={cfg.k} but prompt.fixed_ids lists {len(cfg.fixed_ids)} ids; list at least "
                               "k train example ids, or lower prompt.k")
        templates = load_templates(cfg.source, task.name, data_dir)
        if cfg.source == PLAIN or cfg.template == ROUND_ROBIN:
            self.templates = templates
        else:
            self.templates = [find_template(templates, str(cfg.template))]

    # -- demonstrations pool ------------------------------------------------------------------------------------
    def pool(self, train: list[Example]) -> list[Example]:
        """The demonstration pool: the first prompt.pool train examples, one per distinct source; checks k."""
        limit = self.cfg.pool
        rows = train if limit is None else train[:limit]
        seen: set[str] = set()
        pool = []
        for ex in rows:
            if ex.source not in seen:
                seen.add(ex.source)
                pool.append(ex)
        if self.cfg.k > len(pool) - 1 and self.cfg.k > 0:
            raise PeftrunError(f"prompt.k={self.cfg.k} but the demonstration pool ({self.task.cfg.train_split}, "
                               f"pool={limit}) has {len(pool)} distinct examples (the query's duplicate never "
                               f"counts); lower prompt.k to at most {max(len(pool) - 1, 0)} or enlarge prompt.pool")
        return pool

    def template_for(self, index: int, fields: dict[str, Any]) -> Template:
        """Example `index`'s template: the one named, or round robin from (index + seed) mod n, skipping templates
        that render nothing for this example (promptsource's COPA templates for cause or effect questions only)."""
        n = len(self.templates)
        if n == 1:
            return self.templates[0]
        for step in range(n):
            template = self.templates[(index + self.cfg.seed + step) % n]
            if render(template, fields)[0].strip():
                return template
        return self.templates[(index + self.cfg.seed) % n]  # none applies: query_text names the problem

    # -- rendering ----------------------------------------------------------------------------------------------
    def options(self, template: Template, fields: dict[str, Any]) -> list[str] | None:
        """The answer options under `template`: plain uses the task's own targets (verbalizers / candidates)."""
        if template.source == PLAIN:
            if getattr(self.task, "head", None) == "classification" and self.task.label_names:
                return list(getattr(self.task, "verbalizers", self.task.label_names))
            return list(fields["options"]) if fields.get("options") else None
        return render_choices(template, fields)

    def query_text(self, template: Template, fields: dict[str, Any]) -> tuple[str, str, list[str] | None]:
        """(prompt, target, options) of one example under `template`, options inline for plain if asked."""
        prompt, target = render(template, fields)
        if not prompt.strip():
            raise PeftrunError(f"{template.source} template {template.id!r} renders nothing for this {self.task.name} "
                               "example (it applies to some examples only, e.g. COPA's cause or effect questions); "
                               "choose another prompt.template")
        options = self.options(template, fields)
        if template.source == PLAIN and self.cfg.options_inline and options:
            prompt = f"{prompt}\n{options_block(options)}"
        if options and template.source == PLAIN:
            label = fields.get("label", -1)
            if isinstance(label, int) and 0 <= label < len(options):
                target = options[label]
        return prompt, target, options

    def render_training(self, examples: list[Example]) -> list[Example]:
        """Training examples under the template (no demonstrations): source = prompt, target = rendered target."""
        out = []
        for i, ex in enumerate(examples):
            fields = example_fields(self.task.name, ex)
            prompt, target, _ = self.query_text(self.template_for(i, fields), fields)
            out.append(replace(ex, source=prompt, target=target))
        return out

    def precheck(self, queries: list[Example], budget: int) -> None:
        """Fail before any model loads when a query alone cannot fit the budget: every whitespace-separated word is
        at least one token for the BPE, WordPiece and SentencePiece tokenizers here, so words are a lower bound
        (`build` checks the exact token count)."""
        for i, query in enumerate(queries):
            fields = example_fields(self.task.name, query)
            prompt = self.query_text(self.template_for(i, fields), fields)[0]
            text = self.cfg.example_separator.join(([self.cfg.instruction] if self.cfg.instruction else []) + [prompt])
            if len(text.split()) > budget:
                raise PeftrunError(f"the prompt budget ({budget} tokens: prompt.max_tokens / task.max_source_length) "
                                   f"is too small for query {query.id!r} alone (at least {len(text.split())} tokens "
                                   "with the template and instruction); raise prompt.max_tokens and "
                                   "task.max_source_length")

    def build(self, queries: list[Example], pool: list[Example], count_tokens: Callable[[str], int], budget: int,
              cache_dir: str | None) -> list[Prompted]:
        """Each query's prompt (see module docstring)."""
        cfg = self.cfg
        # promptsource templates may not apply to every demonstration: rank spares (2k) to fill k
        fetch = cfg.k if cfg.source != "promptsource" or cfg.retriever == "fixed" else 2 * cfg.k
        ranked = [[] for _ in queries] if cfg.k == 0 else rank_pool(
            cfg.retriever, [q.source for q in queries], [q.id for q in queries], [p.source for p in pool],
            [p.id for p in pool], fetch, cfg.seed, list(cfg.fixed_ids), cfg.encoder, cache_dir)
        out = []
        for i, (query, chosen) in enumerate(zip(queries, ranked, strict=True)):
            fields = example_fields(self.task.name, query)
            template = self.template_for(i, fields)
            prompt, target, options = self.query_text(template, fields)
            free = {k: (CONTENT_FREE if isinstance(v, str) and k not in _LABEL_SPACE else v) for k, v in fields.items()}
            free_prompt = render(template, free)[0].strip() and self.query_text(template, free)[0] or CONTENT_FREE
            shots = []  # most similar first
            for j in chosen:
                demo_fields = example_fields(self.task.name, pool[j])
                if len(shots) == cfg.k or not render(template, demo_fields)[0].strip():
                    continue  # enough, or this template does not apply to that example
                demo_prompt, demo_target, _ = self.query_text(template, demo_fields)
                shots.append((pool[j].id, demo_prompt + cfg.answer_separator + demo_target))
            kept, text, tokens = self._fit(shots, prompt, query, count_tokens, budget)
            free_text = self._assemble(kept, free_prompt, query)
            shown = [sid for sid, _ in self._ordered(kept, query)]
            out.append(Prompted(query, text, target, options, free_text, shown,
                                len(shots) - len(kept), tokens))
        return out

    def _ordered(self, kept: list[tuple[str, str]], query: Example) -> list[tuple[str, str]]:
        """Demonstrations (most similar first) in prompt order."""
        cfg = self.cfg
        shots = list(reversed(kept)) if cfg.order == "similar_last" else list(kept)
        if cfg.order == "random":
            random.Random(f"{cfg.seed}:{query.id}:order").shuffle(shots)
        return shots

    def _assemble(self, kept: list[tuple[str, str]], prompt: str, query: Example) -> str:
        shots = self._ordered(kept, query)
        parts = ([self.cfg.instruction] if self.cfg.instruction else []) + [text for _, text in shots] + [prompt]
        return self.cfg.example_separator.join(parts)

    def _fit(self, shots: list[tuple[str, str]], prompt: str, query: Example, count_tokens: Callable[[str], int],
             budget: int) -> tuple[list[tuple[str, str]], str, int]:
        kept = list(shots)
        while True:
            text = self._assemble(kept, prompt, query)
            tokens = count_tokens(text)
            if tokens <= budget:
                return kept, text, tokens
            if not kept:
                raise PeftrunError(f"the prompt budget ({budget} tokens: prompt.max_tokens / task.max_source_length) "
                                   f"is too small for query {query.id!r} alone ({tokens} tokens with the template and "
                                   "instruction); raise prompt.max_tokens and task.max_source_length")
            kept.pop()  # the least similar demonstration


def prompt_summary(prompted: list[Prompted]) -> dict[str, Any]:
    """What the record says about the prompts of one split."""
    n = max(len(prompted), 1)
    return {"mean_prompt_tokens": round(sum(p.tokens for p in prompted) / n, 2),
            "demonstrations_dropped": sum(p.dropped for p in prompted),
            "mean_demonstrations": round(sum(len(p.demonstrations) for p in prompted) / n, 3)}
