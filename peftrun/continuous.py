"""Continuous greedy decoding: finished rows leave the batch and waiting prompts join it, for decoder-only and
encoder-decoder models, with the tokens `model.generate` gives each prompt.

The live rows share one KV cache. A group of waiting prompts is prefilled together (decoder-only: the padded
prompts; encoder-decoder: the encoder, then the first decoder step) and merged into the running batch:
- the self-attention cache and its mask are left-padded to a common width (zeros, masked), so every row's next
  token is appended at the same column; decoder-only rows carry their own position ids;
- encoder-decoder: the encoder states, their mask and the cross-attention cache are right-padded to a common
  source length (masked). The decoder's positions must follow each row's own step: T5's relative position bias
  depends only on key-query distances, which left padding keeps; a learned or sinusoidal absolute position table
  (BART's `embed_positions`) is read per row by a forward hook (`_RowPositions`); a decoder with neither is left
  to the per-batch loop (`supports_continuous`).
Columns that are padding in every row are trimmed when rows leave.

Logits rules are per row (`_RowRules`): min_new_tokens, forced EOS at the last step, suppress_tokens, and for
encoder-decoders (whose decoder prompt is the start token alone, so generate's lengths do not depend on the
batch) min_length and forced_bos_token_id too. Padding is masked, so a row's tokens equal generate's in exact
arithmetic; in floating point the batch composition differs, so a near-tie can rarely flip (as peftrun.decode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from peftrun.decode import _accepts_logits_to_keep, _ids


def supports_continuous(model: Any, kind: str) -> bool:
    """Whether the continuous loop can give each row its own decoder positions (module docstring)."""
    if kind != "encoder-decoder":
        return True
    return _position_table(model) is not None or bool(getattr(model.config, "relative_attention_num_buckets", None))


def _position_table(model: Any) -> Any:
    """The decoder's absolute position module (output row p = weight[p + offset]), or None."""
    table = getattr(model.get_decoder(), "embed_positions", None)
    return table if isinstance(getattr(table, "weight", None), torch.Tensor) else None


class _RowRules:
    """generate's logits rules decided from each row's own step (rows of a continuous batch are at different
    steps): EOS at -inf before min_new tokens, forced BOS at the first step, forced EOS at the last, suppressed
    tokens, in generate's processor order."""

    def __init__(self, max_new_tokens: int, eos: list[int], min_new_tokens: int, suppress: list[int],
                 forced_bos: int | None, forced_eos: list[int]) -> None:
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.eos, self.suppress, self.forced_bos, self.forced_eos = eos, suppress, forced_bos, forced_eos

    def apply(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """(b, V) logits of each row's generated token steps[i] (0-based, (b,))."""
        if self.eos and self.min_new_tokens > 0:
            early = steps < self.min_new_tokens
            if bool(early.any()):
                logits = logits.clone()
                logits[early.nonzero(), torch.tensor([self.eos])] = float("-inf")
        forced_rules = ((_ids(self.forced_bos), 0), (self.forced_eos, self.max_new_tokens - 1))
        for forced, at in forced_rules:
            if not forced:
                continue
            rows = steps == at
            if bool(rows.any()):
                logits = logits.clone()
                logits[rows] = float("-inf")
                logits[rows.nonzero(), torch.tensor([forced])] = 0
        if self.suppress:
            logits = logits.clone()
            logits[:, self.suppress] = float("-inf")
        return logits


class _Running:
    """The live rows of a continuous batch (b rows).

    rows: prompt index per row; steps (b,): tokens generated so far; tokens (b, 1): the last token, fed next;
    mask (b, W): 1 on real self-attention cache columns, 0 on left padding; positions (b, 1): the last token's
    position (decoder-only: its position id; encoder-decoder: its decoder step, the start token at 0);
    cache: DynamicCache (decoder-only) or EncoderDecoderCache, self-attention tensors (b, heads, W, head_dim);
    encoder-decoder only: encoded (b, S, d) encoder states, encoder_mask (b, S) (0 on right padding), and the
    cross-attention tensors (b, heads, S, head_dim).
    """

    def __init__(self, rows: list[int], tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any, encoded: torch.Tensor | None = None, encoder_mask: torch.Tensor | None = None) -> None:
        self.rows, self.tokens, self.mask, self.positions, self.cache = rows, tokens, mask, positions, cache
        self.steps = torch.zeros(len(rows), dtype=torch.long, device=tokens.device)
        self.encoded, self.encoder_mask = encoded, encoder_mask

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def self_layers(self) -> list[Any]:
        return list(getattr(self.cache, "self_attention_cache", self.cache).layers)

    @property
    def cross_layers(self) -> list[Any]:
        return list(self.cache.cross_attention_cache.layers) if self.encoded is not None else []

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows `keep` (indices, (k,)), then drop the columns that are padding in every kept row."""
        self.rows = [self.rows[i] for i in keep.tolist()]
        self.steps, self.tokens, self.mask, self.positions = (
            self.steps[keep], self.tokens[keep], self.mask[keep], self.positions[keep])
        self.cache.batch_select_indices(keep)
        if self.encoded is not None:
            self.encoded, self.encoder_mask = self.encoded[keep], self.encoder_mask[keep]
        self._trim()

    def merge(self, other: _Running) -> None:
        """Append other's rows: self-attention left-padded, encoder side right-padded (zeros, masked)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_pad(self.mask, width, 1, left=True), _pad(other.mask, width, 1, left=True)])
        for mine, theirs in zip(self.self_layers, other.self_layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width, 2, left=True), _pad(theirs.keys, width, 2, left=True)])
            mine.values = torch.cat([_pad(mine.values, width, 2, left=True),
                                     _pad(theirs.values, width, 2, left=True)])
        if self.encoded is not None:
            source = max(self.encoder_mask.shape[1], other.encoder_mask.shape[1])
            self.encoder_mask = torch.cat([_pad(self.encoder_mask, source, 1), _pad(other.encoder_mask, source, 1)])
            self.encoded = torch.cat([_pad(self.encoded, source, 1), _pad(other.encoded, source, 1)])
            for mine, theirs in zip(self.cross_layers, other.cross_layers, strict=True):
                mine.keys = torch.cat([_pad(mine.keys, source, 2), _pad(theirs.keys, source, 2)])
                mine.values = torch.cat([_pad(mine.values, source, 2), _pad(theirs.values, source, 2)])
        self.rows = self.rows + other.rows
        self.steps = torch.cat([self.steps, other.steps])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.positions = torch.cat([self.positions, other.positions])

    def _trim(self) -> None:
        if not len(self):
            return
        first = int(self.mask.any(0).long().argmax())
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.self_layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        if self.encoded is not None:
            end = int(self.encoder_mask.any(0).nonzero().max()) + 1
            if end < self.encoder_mask.shape[1]:
                self.encoder_mask, self.encoded = self.encoder_mask[:, :end], self.encoded[:, :end]
                for layer in self.cross_layers:
                    layer.keys, layer.values = layer.keys[..., :end, :], layer.values[..., :end, :]


def _pad(tensor: torch.Tensor, width: int, dim: int, left: bool = False) -> torch.Tensor:
    """Zero-pad `tensor` to `width` along `dim` (on the left or the right)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    zeros = tensor.new_zeros(shape)
    return torch.cat([zeros, tensor] if left else [tensor, zeros], dim=dim)


class _RowPositions:
    """While active, the decoder's absolute position table returns row i's embedding of position
    `state.positions[i]` instead of the batch-wide cache length (continuous rows are at different steps)."""

    def __init__(self, model: Any) -> None:
        self.table = _position_table(model)
        self.positions: torch.Tensor | None = None
        self.handle = self.table.register_forward_hook(self._rows) if self.table is not None else None

    def _rows(self, module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            return output
        index = self.positions + getattr(module, "offset", 0)  # (b, 1)
        return module.weight[index].to(output.dtype)  # (b, 1, d)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _prefill(model: Any, kind: str, prompts: list[list[int]], rows: list[int], pad_token_id: int, start: int | None,
             device: Any) -> tuple[_Running, torch.Tensor]:
    """Run the prompts of `rows` through the model together: their running state and the (n, V) logits of
    their first new token."""
    from transformers import DynamicCache, EncoderDecoderCache

    from peftrun.data import pad_left, pad_right

    config = model.config.get_text_config(decoder=True)
    call: dict[str, Any] = {"use_cache": True, "return_dict": True}
    if _accepts_logits_to_keep(model):
        call["logits_to_keep"] = 1
    if kind == "encoder-decoder":
        ids, encoder_mask = pad_right([prompts[i] for i in rows], pad_token_id)
        ids, encoder_mask = ids.to(device), encoder_mask.to(device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=encoder_mask, return_dict=True)
        tokens = torch.full((len(rows), 1), start, dtype=torch.long, device=device)
        cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        output = model(encoder_outputs=encoded, attention_mask=encoder_mask, decoder_input_ids=tokens, cache=cache,
                       **call)
        state = _Running(list(rows), tokens, torch.ones_like(tokens), torch.zeros_like(tokens), output.cache,
                         encoded.last_hidden_state, encoder_mask)
        return state, output.logits[:, -1, :]
    ids, mask = pad_left([prompts[i] for i in rows], pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (n, L)
    output = model(input_ids=ids, position_ids=positions, cache=DynamicCache(config=config),
                   attention_mask=None if bool(mask.all()) else mask, **call)  # as generate: no padding, no mask
    return _Running(list(rows), ids[:, -1:], mask, positions[:, -1:], output.cache), output.logits[:, -1, :]


def _decode_step(model: Any, state: _Running, positions: _RowPositions | None) -> torch.Tensor:
    """Feed every live row its last token: the (b, V) logits of its next token; the cache grows by one column."""
    from transformers.modeling_outputs import BaseModelOutput

    state.mask = torch.cat([state.mask, state.mask.new_ones(len(state), 1)], dim=1)
    state.positions = state.positions + 1
    mask = None if bool(state.mask.all()) else state.mask
    if state.encoded is None:
        output = model(input_ids=state.tokens, position_ids=state.positions, cache=state.cache, use_cache=True,
                       return_dict=True, attention_mask=mask)
    else:
        if positions is not None:
            positions.positions = state.positions
        output = model(encoder_outputs=BaseModelOutput(last_hidden_state=state.encoded),
                       attention_mask=state.encoder_mask, decoder_input_ids=state.tokens, decoder_attention_mask=mask,
                       cache=state.cache, use_cache=True, return_dict=True)
        if positions is not None:
            positions.positions = None
    state.cache = output.cache
    return output.logits[:, -1, :]


def _choose(state: _Running, logits: torch.Tensor, rules: _RowRules, eos_ids: torch.Tensor,
            out: list[list[int]]) -> torch.Tensor:
    """Pick each row's greedy token, record it, advance the steps: the (k,) indices of the rows still running."""
    chosen = rules.apply(logits, state.steps).argmax(dim=-1)  # (b,)
    for row, token in zip(state.rows, chosen.tolist(), strict=True):
        out[row].append(token)
    state.tokens, state.steps = chosen[:, None], state.steps + 1
    done = state.steps >= rules.max_new_tokens
    if eos_ids.numel():
        done |= torch.isin(chosen, eos_ids)
    return (~done).nonzero().squeeze(1)


@torch.inference_mode()
def continuous_greedy_decode(
    model: Any,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    min_new_tokens: int | None = None,
    *,
    kind: str = "decoder",
    decoder_start_token_id: int | None = None,
    min_length: int | None = None,
    forced_bos_token_id: int | None = None,
    suppress_tokens: list[int] | None = None,
    forced_eos_token_id: int | list[int] | None = None,
    refill_at: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations of every prompt (ids through the first EOS), keeping the batch full: finished rows
    leave, and once `refill_at` slots are free (default batch_size // 4, at least 1) the next waiting prompts are
    prefilled together and merged into the running batch, so decode steps run on ~batch_size rows until the
    queue is empty.

    prompts: token ids, unpadded, taken in the given order (peftrun.data's layout for `kind`). min_length and
    forced_bos_token_id depend on generate's padded batch width for decoder-only models and are refused there
    (use peftrun.decode.greedy_decode); for encoder-decoders they are per row. on_done(n) is called as n prompts
    finish.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; continuous decoding needs at least 1")
    encoder_decoder = kind == "encoder-decoder"
    if not encoder_decoder and (forced_bos_token_id is not None or (min_length and min_new_tokens is None)):
        raise ValueError("decoder-only min_length / forced_bos_token_id depend on the padded batch: use greedy_decode")
    if encoder_decoder and decoder_start_token_id is None:
        raise ValueError("encoder-decoder decoding needs decoder_start_token_id (the model's or its bos_token_id)")
    if not supports_continuous(model, kind):
        raise ValueError(f"{type(model).__name__}: no per-row decoder positions; use greedy_decode")
    out: list[list[int]] = [[] for _ in prompts]
    if not prompts or max_new_tokens <= 0:
        return out
    device = next(model.parameters()).device
    eos = _ids(eos_token_id)
    # generate: min_new_tokens, when given, sets min_length = decoder prompt length (1 here) + min_new_tokens
    min_new = min_new_tokens if min_new_tokens is not None else max(0, (min_length or 0) - 1)
    rules = _RowRules(max_new_tokens, eos, min_new, _ids(suppress_tokens),
                      forced_bos_token_id if encoder_decoder else None, _ids(forced_eos_token_id))
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    refill_at = max(1, batch_size // 4) if refill_at is None else max(1, refill_at)
    positions = _RowPositions(model) if encoder_decoder else None
    waiting = list(range(len(prompts)))[::-1]  # popped from the end: prompts in the given order
    state: _Running | None = None
    try:
        while waiting or state is not None:
            free = batch_size - (len(state) if state is not None else 0)
            if waiting and (state is None or free >= refill_at):
                rows = [waiting.pop() for _ in range(min(free, len(waiting)))]
                fresh, logits = _prefill(model, kind, prompts, rows, pad_token_id, decoder_start_token_id, device)
                _finish(fresh, _choose(fresh, logits, rules, eos_ids, out), on_done)
                if len(fresh):
                    if state is None:
                        state = fresh
                    else:
                        state.merge(fresh)
                continue
            assert state is not None  # the branch above ran unless rows are live
            _finish(state, _choose(state, _decode_step(model, state, positions), rules, eos_ids, out), on_done)
            if not len(state):
                state = None
    finally:
        if positions is not None:
            positions.remove()
    return out


def _finish(state: _Running, keep: torch.Tensor, on_done: Callable[[int], None] | None) -> None:
    """Drop the rows not in `keep` from the state, reporting how many finished."""
    finished = len(state) - keep.numel()
    if finished:
        state.select(keep)
        if on_done is not None:
            on_done(finished)
