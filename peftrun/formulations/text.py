"""The text formulation: generate the target (peftrun/data.py layouts, peftrun/generate.py)."""

from __future__ import annotations

import logging
from typing import Any

from peftrun.formulations import Prompting


class TextFormulation:
    """Text-to-text on a decoder or encoder-decoder's LM head; with a prompt config, the prompts of
    peftrun/prompting/ (training: the template only; evaluation: template + demonstrations)."""

    name = "text"
    backbone_head = "lm"
    trains_new_head = False

    def __init__(self, cfg: Any, task: Any, prompting: Prompting | None) -> None:
        self.cfg, self.task, self.prompting = cfg, task, prompting

    def num_labels(self) -> None:
        return None

    def training_data(self, backbone: Any, examples: list[Any], record: dict[str, Any]) -> tuple[Any, Any]:
        """(dataset, collator): source + target token ids, target-only labels."""
        from peftrun.data import PaddingCollator, TokenizedDataset, tokenize_examples

        cfg = self.cfg
        if self.prompting is not None and cfg.method.train_with_demonstrations:  # IPT: demonstrations too
            from peftrun.instruction.ipt import demonstrated_training_examples

            examples = demonstrated_training_examples(cfg, self.prompting, backbone, examples, record)
        elif self.prompting is not None:
            examples = self.prompting.builder.render_training(examples)
        tok = tokenize_examples(examples, backbone.tokenizer, backbone.kind, cfg.task.max_source_length,
                                cfg.task.max_target_length, cfg.paths.cache_dir)
        record["train_data"] = {
            "split": cfg.task.train_split, "examples": len(tok), "truncated_sources": tok.truncated_sources,
            "truncated_targets": tok.truncated_targets,
        }
        collator = PaddingCollator(
            pad_token_id=backbone.tokenizer.pad_token_id, kind=backbone.kind,
            decoder_start_token_id=getattr(backbone.model.config, "decoder_start_token_id", None),
        )
        return TokenizedDataset(tok, backbone.kind), collator

    def trainer(self) -> tuple[type, dict[str, Any]]:
        from peftrun.train import PeftrunTrainer

        return PeftrunTrainer, {}

    def predict(self, backbone: Any, examples: list[Any], split: str, record: dict[str, Any],
                progress: Any) -> tuple[list[str], list[dict[str, Any]] | None]:
        """Generated texts; with a prompt whose template has options, a text naming an option becomes that
        option's label string (what task.score reads)."""
        from peftrun.data import tokenize_examples
        from peftrun.prompting.layout import NATURAL_STOP, natural_answer, prompt_ids, reads_natural_layout

        cfg = self.cfg
        if self.prompting is None and reads_natural_layout(cfg):  # a frozen model, no prompt config: its own text
            cut = cfg.task.max_source_length
            full = [prompt_ids(backbone.tokenizer, backbone.kind, ex.source, True) for ex in examples]
            ids = [f[:cut] for f in full]  # the natural layout's cut (prompt_ids with max_length), tokenised once
            record["data"][split] = {"examples": len(ids), "truncated_sources": sum(len(f) > cut for f in full)}
            with progress(split, len(ids)) as advance:
                texts = _generate(backbone, ids, cfg, advance, record, split)
            return [natural_answer(text, NATURAL_STOP) for text in texts], None
        if self.prompting is None:
            prompts = tokenize_examples(examples, backbone.tokenizer, backbone.kind, cfg.task.max_source_length,
                                        cfg.task.max_target_length, cfg.paths.cache_dir, with_target=False)
            record["data"][split] = {"examples": len(prompts), "truncated_sources": prompts.truncated_sources}
            with progress(split, len(prompts)) as advance:
                return _generate(backbone, prompts.input_ids, cfg, advance, record, split), None
        prompted, ids = build_prompted(cfg, self.prompting, backbone, examples, split, record)
        with progress(split, len(ids)) as advance:
            texts = _generate(backbone, ids, cfg, advance, record, split)
        if self.prompting.natural:
            texts = [natural_answer(text, cfg.prompt.example_separator) for text in texts]
        return [option_label(self.task, p, text) for p, text in zip(prompted, texts, strict=True)], \
            [{"demonstrations": p.demonstrations} for p in prompted]


def _generate(backbone: Any, ids: list[list[int]], cfg: Any, advance: Any, record: dict[str, Any],
              split: str) -> list[str]:
    """Generated texts of prompt ids; token counts and generation time go into the record (peftrun/timing.py)."""
    import time

    from peftrun.generate import decode_texts, generate_ids
    from peftrun.timing import count_generation

    started = time.perf_counter()
    generated = generate_ids(backbone.model, backbone.tokenizer, backbone.kind, ids, cfg.task.generation,
                             on_batch=advance)
    count_generation(record, split, ids, generated, time.perf_counter() - started)
    return decode_texts(backbone.tokenizer, generated)


def build_prompted(cfg: Any, prompting: Prompting, backbone: Any, examples: list[Any], split: str,
                   record: dict[str, Any]) -> tuple[list[Any], list[list[int]]]:
    """Each example's Prompted (peftrun/prompting/build.py) and its context ids; fills record["data"][split]."""
    from peftrun.prompting.build import prompt_summary
    from peftrun.prompting.layout import prompt_ids

    tok, kind, natural, sep = backbone.tokenizer, backbone.kind, prompting.natural, cfg.prompt.answer_separator
    budget = cfg.task.max_source_length
    if cfg.prompt.max_tokens is not None:
        budget = min(budget, cfg.prompt.max_tokens)

    def count(text: str) -> int:
        return len(prompt_ids(tok, kind, text, natural, sep))

    prompted = prompting.builder.build(examples, prompting.pool, count, budget, cfg.paths.cache_dir)
    ids = [prompt_ids(tok, kind, p.prompt, natural, sep) for p in prompted]
    summary = prompt_summary(prompted)
    record["data"][split] = {"examples": len(ids), "truncated_sources": 0, **summary}
    if summary["demonstrations_dropped"]:
        logging.getLogger("peftrun").warning(
            "%s: %d demonstrations dropped to fit the prompt budget of %d tokens (min of prompt.max_tokens and "
            "task.max_source_length); raise task.max_source_length to keep them", split,
            summary["demonstrations_dropped"], budget)
    return prompted, ids


def option_label(task: Any, prompted: Any, text: str) -> str:
    """The label string of the option `text` names (normalised match), else `text` unchanged."""
    from peftrun.heads import label_strings
    from peftrun.tasks.superglue import normalize_label

    if not prompted.options or task.head not in ("classification", "candidates"):
        return text
    names = [normalize_label(o) for o in prompted.options]
    key = normalize_label(text)
    if key not in names:
        return text
    return label_strings(task, [prompted.example], [names.index(key)], task.head)[0]
