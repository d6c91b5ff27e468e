"""Rank classification: score each answer option by its log-likelihood given the prompt; predict the best.

For an example with context ids c (the prompt) and options o_1..o_n (token ids),
    score_sum(o)  = sum_j log p(o_j | c, o_<j)          score_mean(o) = score_sum(o) / len(o)
The prompt is encoded ONCE per example:
- decoder: one forward over c with the KV cache (`logits_to_keep=1`: the first option token's distribution), the
  cache repeated n times, then one forward over the n right-padded options on top of it;
- encoder-decoder: the encoder runs once over c; its states are repeated for one decoder forward over the n
  options (teacher forcing from decoder_start_token_id).
Methods that rewrite the inputs (soft prompts: prompt tuning, P-tuning) and would see the cached prompt without
their virtual tokens take the reference path instead: one full forward per option (`option_logprobs_reference`,
which the tests compare the cached path with).
Contextual calibration (Zhao et al. 2021): the options' probabilities p (softmax of the chosen score over the
options) are divided by those of a content-free prompt (the same prompt with the query's content "N/A"), i.e.
argmax_i log p_i - log p_cf,i.
"""

from __future__ import annotations

from typing import Any

import torch

from peftrun.formulations.options import choose


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _gather(logp: torch.Tensor, options: list[list[int]]) -> list[list[float]]:
    """logp (n, L, V): logp[i, j] is the distribution of option i's token j."""
    ids = _pad(options, 0).to(logp.device)
    picked = logp.gather(-1, ids[..., None])[..., 0].float().cpu()
    return [picked[i, : len(o)].tolist() for i, o in enumerate(options)]


@torch.inference_mode()
def option_logprobs(model: Any, kind: str, context: list[int], options: list[list[int]], pad_id: int,
                    decoder_start: int | None = None) -> list[list[float]]:
    """Per option, the log-probability of each of its tokens given `context`; the context runs once."""
    device = next(model.parameters()).device
    n = len(options)
    ctx = torch.tensor([context], dtype=torch.long, device=device)
    opts = _pad(options, pad_id).to(device)
    mask = _pad([[1] * len(o) for o in options], 0).to(device)
    if kind == "decoder":
        first = model(input_ids=ctx, use_cache=True, **_keep_last(model))
        cache = first.cache
        cache.batch_repeat_interleave(n)
        attention = torch.cat([torch.ones(n, len(context), dtype=torch.long, device=device), mask], dim=1)
        rest = model(input_ids=opts[:, :-1], attention_mask=attention[:, :-1], cache=cache) \
            if opts.shape[1] > 1 else None
        head = first.logits[:, -1:].float().log_softmax(-1).expand(n, 1, -1)
        logp = head if rest is None else torch.cat([head, rest.logits.float().log_softmax(-1)], dim=1)
        return _gather(logp, options)
    encoder = model.get_encoder()
    states = encoder(input_ids=ctx, attention_mask=torch.ones_like(ctx)).last_hidden_state
    decoder_inputs = _shift_right(opts, mask, decoder_start, pad_id)
    out = model(encoder_outputs=(states.expand(n, -1, -1),), attention_mask=torch.ones(n, len(context),
                dtype=torch.long, device=device), decoder_input_ids=decoder_inputs, decoder_attention_mask=mask)
    return _gather(out.logits.float().log_softmax(-1), options)


@torch.inference_mode()
def option_logprobs_reference(model: Any, kind: str, context: list[int], options: list[list[int]], pad_id: int,
                              decoder_start: int | None = None) -> list[list[float]]:
    """The same as `option_logprobs`, by one full forward pass per option (context + option)."""
    device = next(model.parameters()).device
    out = []
    for option in options:
        if kind == "decoder":
            ids = torch.tensor([context + option], dtype=torch.long, device=device)
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            rows = logp[len(context) - 1 : len(context) - 1 + len(option)]
        else:
            ids = torch.tensor([context], dtype=torch.long, device=device)
            opt = torch.tensor([option], dtype=torch.long, device=device)
            dec = _shift_right(opt, torch.ones_like(opt), decoder_start, pad_id)
            rows = model(input_ids=ids, decoder_input_ids=dec).logits[0].float().log_softmax(-1)
        out.append(rows.gather(-1, torch.tensor(option, device=device)[:, None])[:, 0].cpu().tolist())
    return out


def _shift_right(labels: torch.Tensor, mask: torch.Tensor, start: int | None, pad_id: int) -> torch.Tensor:
    if start is None:
        raise ValueError("an encoder-decoder model needs decoder_start_token_id for rank classification")
    shifted = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
    return shifted.masked_fill(torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1) == 0, pad_id)


def _keep_last(model: Any) -> dict[str, int]:
    from peftrun.decode import _accepts_logits_to_keep

    return {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}


def option_scores(token_logprobs: list[list[float]]) -> dict[str, list[float]]:
    """{"sum": [...], "mean": [...]} per option."""
    sums = [float(sum(t)) for t in token_logprobs]
    return {"sum": sums, "mean": [s / max(len(t), 1) for s, t in zip(sums, token_logprobs, strict=True)]}


class RankFormulation:
    """Rank classification over a task's options (SuperGLUE verbalizers, COPA choices, ReCoRD entities, a
    template's answer choices); trains like the text formulation (target-only LM loss), so any method can be
    evaluated by it. Options and prompts: the prompt config's (peftrun/prompting/), else the task's own source,
    verbalizers and candidates in the trained layout."""

    name = "rank"
    backbone_head = "lm"
    trains_new_head = False

    def __init__(self, cfg: Any, task: Any, prompting: Any) -> None:
        self.cfg, self.task, self.prompting = cfg, task, prompting
        prompt = cfg.prompt
        self.normalize = prompt.normalize if prompt is not None else "sum"
        self.calibrate = bool(prompt.calibrate) if prompt is not None else False

    def num_labels(self) -> None:
        return None

    def training_data(self, backbone: Any, examples: list[Any], record: dict[str, Any]) -> tuple[Any, Any]:
        from peftrun.formulations.text import TextFormulation

        return TextFormulation(self.cfg, self.task, self.prompting).training_data(backbone, examples, record)

    def trainer(self) -> tuple[type, dict[str, Any]]:
        from peftrun.train import PeftrunTrainer

        return PeftrunTrainer, {}

    def _task_options(self, example: Any) -> list[str]:
        entities = (example.meta or {}).get("entities")
        return list(entities) if entities else list(getattr(self.task, "verbalizers", None) or self.task.label_names)

    def predict(self, backbone: Any, examples: list[Any], split: str, record: dict[str, Any],
                progress: Any) -> tuple[list[str], list[dict[str, Any]]]:
        """Per example: the chosen option's label string; extras: options, their scores (sum / mean log-likelihood),
        content-free scores when calibrating, and the demonstrations shown."""
        from peftrun.errors import PeftrunError
        from peftrun.formulations.text import build_prompted
        from peftrun.generate import _has_input_side_delta
        from peftrun.heads import label_strings
        from peftrun.prompting.layout import answer_ids, prompt_ids, reads_natural_layout

        cfg, tok, kind, model = self.cfg, backbone.tokenizer, backbone.kind, backbone.model
        natural = self.prompting.natural if self.prompting is not None else reads_natural_layout(cfg)
        sep = cfg.prompt.answer_separator if cfg.prompt is not None else " "
        target_cut = None if natural else cfg.task.max_target_length
        if self.prompting is not None:
            prompted, contexts = build_prompted(cfg, self.prompting, backbone, examples, split, record)
            options = [p.options for p in prompted]
            free = [prompt_ids(tok, kind, p.content_free, natural, sep) for p in prompted] if self.calibrate else None
        else:
            prompted = None
            contexts = [prompt_ids(tok, kind, ex.source, natural, sep, cfg.task.max_source_length) for ex in examples]
            truncated = sum(len(prompt_ids(tok, kind, ex.source, natural, sep)) > cfg.task.max_source_length
                            for ex in examples)  # uncut length, in the layout the contexts use
            record["data"][split] = {"examples": len(examples), "truncated_sources": truncated}
            options = [self._task_options(ex) for ex in examples]
            free = None
        labels = len(self.task.label_names) if self.task.head == "classification" else None
        for ex, opts in zip(examples, options, strict=True):
            if not opts or (labels is not None and len(opts) != labels):
                raise PeftrunError(f"task.formulation=rank: example {ex.id!r} of {self.task.name} has "
                                   f"{len(opts or [])} answer options, the task {labels or 'some'} labels; choose a "
                                   "template with one answer choice per label")
        score = option_logprobs_reference if _has_input_side_delta(model) else option_logprobs
        start = getattr(model.config, "decoder_start_token_id", None)
        model.eval()
        chosen, extras = [], []
        with progress(split, len(examples)) as advance:
            for i, opts in enumerate(options):
                ids = [answer_ids(tok, kind, o, natural, sep, target_cut) for o in opts]
                scores = option_scores(score(model, kind, contexts[i], ids, tok.pad_token_id, start))
                extra: dict[str, Any] = {"options": list(opts), "scores": scores, "normalize": self.normalize}
                calibration = None
                if free is not None:
                    calibration = option_scores(score(model, kind, free[i], ids, tok.pad_token_id, start))
                    extra["content_free"] = calibration
                if prompted is not None:
                    extra["demonstrations"] = prompted[i].demonstrations
                chosen.append(choose(scores, self.normalize, calibration))
                extras.append(extra)
                advance(1)
        head = self.task.head if self.task.head in ("classification", "candidates") else "classification"
        for ex, opts, extra in zip(examples, options, extras, strict=True):
            # what task.score reads for each option: re-choosing from the scores needs no task knowledge
            extra["option_labels"] = label_strings(self.task, [ex] * len(opts), list(range(len(opts))), head)
        return label_strings(self.task, examples, chosen, head), extras
