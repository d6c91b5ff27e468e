"""Lean beam search for evaluation: transformers' beam search, minus the rows that are done.

The algorithm and every score are `model.generate(num_beams=K, do_sample=False)`'s (transformers 5
`_beam_search`), step for step: log_softmax of the float32 logits, the logits processors (no-repeat n-grams,
then peftrun.decode's length / suppression rules), running score + log-prob over all K x V continuations,
the top max(2, 1 + n_eos) x K of them; candidates that end (EOS, or the last step) and are among the first K
enter the row's K finished hypotheses with score / (generated length ** length_penalty); the K best
unfinished continue; the early-stopping heuristic and `early_stopping` (True / False / "never") decide when a
row can no longer change. What differs is the work around it:

- the prompt (decoder-only) or the first decoder step (encoder-decoder) runs on B rows, not B x K, and the
  cache is then repeated K times (generate expands the inputs first: K times the prefill);
- a batch row whose finished hypotheses can no longer change (the condition under which generate stops
  updating them) leaves the batch: its K rows of the KV cache, mask, positions and encoder states are dropped
  in the same index_select that reorders the beams, so later steps cost only the rows still searching;
- encoder-decoder: the cross-attention cache is identical across a row's beams, so it is not reordered, only
  shrunk when rows leave.

Output per row: the best finished hypothesis' new tokens (through its EOS), as generate's first sequence.
Soft prompts (prompt tuning, P-tuning) work through their forward hooks exactly as under generate.
Numerics: as peftrun.decode (a GEMM over other rows may round differently; a near-tie can rarely flip).
"""

from __future__ import annotations

from typing import Any

import torch

from peftrun.decode import _NEUTRAL, _accepts_logits_to_keep, _ids, _Rules, effective_config, shared_kwargs

# _NEUTRAL fields beam search reads instead of requiring their neutral value.
_BEAM_FIELDS = ("num_beams", "no_repeat_ngram_size")
_FINISHED = -1.0e9  # generate's "not a candidate" score offset


def beam_kwargs(model: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments of `beam_decode` equivalent to `model.generate(**settings)` with num_beams > 1, or None
    when the effective generation config asks for anything else (sampling, groups, several returned
    sequences, an unimplemented processor: then model.generate)."""
    config = effective_config(model, settings)
    if config is None or (config.get("num_beams") or 1) <= 1 or config.get("low_memory"):
        return None
    if any(config.get(name) not in neutral for name, neutral in _NEUTRAL.items() if name not in _BEAM_FIELDS):
        return None
    early_stopping = config.get("early_stopping")
    early_stopping = False if early_stopping is None else early_stopping  # GenerationConfig's default
    if early_stopping not in (True, False, "never"):
        return None
    shared = shared_kwargs(model, config)
    if shared is None:
        return None
    length_penalty = config.get("length_penalty")
    return {**shared, "num_beams": int(config["num_beams"]),
            "length_penalty": 1.0 if length_penalty is None else float(length_penalty),
            "early_stopping": early_stopping, "no_repeat_ngram_size": config.get("no_repeat_ngram_size") or 0}


def ban_repeated_ngrams(history: torch.Tensor, scores: torch.Tensor, size: int) -> torch.Tensor:
    """generate's NoRepeatNGramLogitsProcessor: -inf on every token that would complete an n-gram of `size` that
    already occurs in the row's history (b, T) (decoder-only: padded prompt + generated; encoder-decoder: start
    token + generated)."""
    length = history.shape[-1]
    if size <= 0 or length < size:
        return scores
    prefix = history[:, length + 1 - size:]
    windows = history.unfold(dimension=1, size=size, step=1)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    vocab = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -float("inf"))


class _Hypotheses:
    """Per live batch row (b of them), K finished hypotheses, best first as generate keeps them: scores (b, K),
    finished flags (b, K), new tokens (b, K, max_new) and lengths (b, K)."""

    def __init__(self, rows: int, beams: int, max_new: int, device: Any) -> None:
        self.scores = torch.full((rows, beams), _FINISHED, device=device)
        self.finished = torch.zeros((rows, beams), dtype=torch.bool, device=device)
        self.tokens = torch.zeros((rows, beams, max_new), dtype=torch.long, device=device)
        self.lengths = torch.zeros((rows, beams), dtype=torch.long, device=device)

    def select(self, keep: torch.Tensor) -> None:
        self.scores, self.finished = self.scores[keep], self.finished[keep]
        self.tokens, self.lengths = self.tokens[keep], self.lengths[keep]

    def best(self, row: int) -> list[int]:
        return self.tokens[row, 0, : int(self.lengths[row, 0])].tolist()


@torch.inference_mode()
def beam_decode(
    model: Any,
    kind: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
    decoder_start_token_id: int | None = None,
    min_new_tokens: int | None = None,
    *,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int = 0,
    min_length: int | None = None,
    suppress_tokens: list[int] | None = None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | list[int] | None = None,
) -> list[list[int]]:
    """Beam-search continuations of a batch, one list of new token ids per row (generate's best sequence,
    through its EOS). Inputs as peftrun.decode.greedy_decode's; the other arguments mean what they mean to
    generate. pad_token_id is accepted for parity: nothing is padded."""
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    batch, width = input_ids.shape
    out: list[list[int]] = [[] for _ in range(batch)]
    if batch == 0 or max_new_tokens <= 0:
        return out
    K = num_beams
    device = input_ids.device
    encoder_decoder = kind == "encoder-decoder"
    if encoder_decoder and decoder_start_token_id is None:
        raise ValueError("encoder-decoder decoding needs decoder_start_token_id (the model's or its bos_token_id)")
    eos = _ids(eos_token_id)
    start_length = 1 if encoder_decoder else width
    rules = _Rules(start_length, max_new_tokens, eos, min_new_tokens, min_length, _ids(suppress_tokens),
                   forced_bos_token_id, _ids(forced_eos_token_id))
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    keep_k = max(2, 1 + len(eos)) * K
    top_k_mask = torch.arange(keep_k, device=device) < K

    # prefill on B rows, then every per-row tensor repeated K times (rows b*K .. b*K+K-1 are row b's beams)
    cache_config = model.config.get_text_config(decoder=True)
    call: dict[str, Any] = {"use_cache": True, "return_dict": True}
    if _accepts_logits_to_keep(model):
        call["logits_to_keep"] = 1
    mask = positions = encoded = None
    if encoder_decoder:
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        cache = EncoderDecoderCache(DynamicCache(config=cache_config), DynamicCache(config=cache_config))
        history = torch.full((batch, 1), decoder_start_token_id, dtype=torch.long, device=device)
        output = model(encoder_outputs=encoded, attention_mask=attention_mask, decoder_input_ids=history,
                       cache=cache, **call)
        mask = attention_mask.repeat_interleave(K, dim=0)
        encoded = BaseModelOutput(last_hidden_state=encoded.last_hidden_state.repeat_interleave(K, dim=0))
    else:
        cache = DynamicCache(config=cache_config)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # (B, L)
        # generate drops an all-ones mask (sdpa then runs maskless); keep its choice for the whole batch
        if not bool((attention_mask == 1).all()):
            mask = attention_mask.repeat_interleave(K, dim=0)
        output = model(input_ids=input_ids, attention_mask=None if mask is None else attention_mask,
                       position_ids=positions, cache=cache, **call)
        positions = positions[:, -1:].repeat_interleave(K, dim=0)
        history = input_ids
    call.pop("logits_to_keep", None)
    cache = output.cache
    cache.batch_repeat_interleave(K)
    logits = output.logits[:, -1, :].repeat_interleave(K, dim=0)  # (B*K, V)
    history = history.repeat_interleave(K, dim=0)  # (B*K, T): the n-gram processor's input_ids
    del output

    rows = torch.arange(batch)  # original row of each live row
    running = torch.zeros((batch, K), device=device)
    running[:, 1:] = _FINISHED  # generate's start: only the first beam's continuations are distinct
    tokens = torch.zeros((batch, K, max_new_tokens), dtype=torch.long, device=device)  # running beams' new tokens
    hyps = _Hypotheses(batch, K, max_new_tokens, device)
    searching = torch.ones((batch, 1), dtype=torch.bool, device=device)  # generate's early-stop heuristic
    for step in range(max_new_tokens):
        b = rows.numel()
        log_probs = torch.nn.functional.log_softmax(logits.to(torch.float32), dim=-1)
        log_probs = rules.apply(ban_repeated_ngrams(history, log_probs, no_repeat_ngram_size), step)
        vocab = log_probs.shape[-1]
        scores = (log_probs.view(b, K, vocab) + running[:, :, None]).view(b, K * vocab)
        top_scores, top_index = torch.topk(scores, k=keep_k)  # (b, keep_k)
        source, chosen = top_index // vocab, top_index % vocab
        ends = torch.isin(chosen, eos_ids) if eos else torch.zeros_like(chosen, dtype=torch.bool)
        if step == max_new_tokens - 1:
            ends = torch.ones_like(ends)
        candidates = torch.take_along_dim(tokens, source[:, :, None], dim=1)  # (b, keep_k, max_new)
        candidates[:, :, step] = chosen

        # the K best candidates that did not end continue
        alive_scores = top_scores + ends.to(torch.float32) * _FINISHED
        next_index = torch.topk(alive_scores, k=K)[1]
        running = torch.take_along_dim(alive_scores, next_index, dim=1)
        tokens = torch.take_along_dim(candidates, next_index[:, :, None], dim=1)
        parents = torch.take_along_dim(source, next_index, dim=1)  # (b, K) beam each continues

        # candidates among the first K that ended join the finished hypotheses (generate's masking, in its order)
        just_ended = ends & top_k_mask[None, :]
        ended_scores = top_scores / ((step + 1) ** length_penalty)
        full = hyps.finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        ended_scores = ended_scores + full.to(torch.float32) * _FINISHED
        ended_scores = ended_scores + (~searching).to(torch.float32) * _FINISHED
        ended_scores = ended_scores + (~just_ended) * _FINISHED
        merged_scores = torch.cat((hyps.scores, ended_scores), dim=1)
        best = torch.topk(merged_scores, k=K)[1]
        hyps.scores = torch.take_along_dim(merged_scores, best, dim=1)
        hyps.finished = torch.take_along_dim(torch.cat((hyps.finished, just_ended), dim=1), best, dim=1)
        lengths = torch.cat((hyps.lengths, torch.full_like(ended_scores, step + 1, dtype=torch.long)), dim=1)
        hyps.lengths = torch.take_along_dim(lengths, best, dim=1)
        hyps.tokens = torch.take_along_dim(torch.cat((hyps.tokens, candidates), dim=1), best[:, :, None], dim=1)

        searching = _can_improve(searching, running, hyps, step + 1, max_new_tokens, early_stopping,
                                 length_penalty)
        if step == max_new_tokens - 1:
            break
        done = ~searching[:, 0]
        if early_stopping is True:
            done |= hyps.finished.all(dim=-1)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() < b:
            for row in done.nonzero().squeeze(1).tolist():
                out[int(rows[row])] = hyps.best(row)
            if keep.numel() == 0:
                return out
            rows, running, tokens, parents, searching = (
                rows[keep.cpu()], running[keep], tokens[keep], parents[keep], searching[keep])
            hyps.select(keep)
            kept_beams = (keep[:, None] * K + torch.arange(K, device=device)).view(-1)
            if mask is not None:
                mask = mask[kept_beams]
            if encoder_decoder:
                encoded = BaseModelOutput(last_hidden_state=encoded.last_hidden_state[kept_beams])
                cache.cross_attention_cache.batch_select_indices(kept_beams)
            else:
                positions = positions[kept_beams]
            source_rows = (keep[:, None] * K + parents).view(-1)
        else:
            source_rows = (torch.arange(b, device=device)[:, None] * K + parents).view(-1)
        next_tokens = tokens[:, :, step].reshape(-1, 1)  # (b*K, 1)
        _reorder(cache, source_rows, encoder_decoder)
        history = torch.cat([history[source_rows], next_tokens], dim=1) if no_repeat_ngram_size else history
        if encoder_decoder:
            output = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=next_tokens, cache=cache,
                           **call)
        else:
            positions = positions + 1
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            output = model(input_ids=next_tokens, attention_mask=mask, position_ids=positions, cache=cache, **call)
        cache = output.cache
        logits = output.logits[:, -1, :]
        del output
    for row in range(rows.numel()):
        out[int(rows[row])] = hyps.best(row)
    return out


def _can_improve(searching: torch.Tensor, running: torch.Tensor, hyps: _Hypotheses, generated: int,
                 max_new_tokens: int, early_stopping: bool | str, length_penalty: float) -> torch.Tensor:
    """generate's _check_early_stop_heuristic: (b, 1), False once the best running beam, at its best hypothetical
    length, cannot beat the worst finished hypothesis (only once all K are finished)."""
    length = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else generated
    best_possible = running[:, :1] / (length**length_penalty)
    worst = torch.where(hyps.finished, torch.min(hyps.scores, dim=1, keepdim=True)[0], _FINISHED)
    return searching & torch.any(best_possible > worst, dim=-1, keepdim=True)


def _reorder(cache: Any, source_rows: torch.Tensor, encoder_decoder: bool) -> None:
    """Row i of the self-attention cache becomes row source_rows[i] (beams reordered, done rows dropped). The
    cross-attention cache is the same for all beams of a row: only its dropped rows went (by the caller)."""
    self_cache = cache.self_attention_cache if encoder_decoder else cache
    if source_rows.numel() == self_cache.layers[0].keys.shape[0] and bool(
            (source_rows == torch.arange(source_rows.numel(), device=source_rows.device)).all()):
        return
    self_cache.reorder_cache(source_rows)
