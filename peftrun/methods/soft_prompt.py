"""Input soft prompts: prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021).

Virtual tokens are rows inserted into the input embeddings of the stack that reads the input:

    decoder-only (GPT-2)  the base model; a template slot "after {x}" sits after the prompt's separator
                          (peftrun.data's layout: source + EOS + target + EOS), so the last virtual token
                          predicts the first target token, in training and in generation alike
    encoder (BERT)        the base model; "after {x}" = after the last real token
    encoder-decoder       the encoder; the decoder's cross-attention mask gets the same columns

Each row becomes [pads][start items][x][after-x items][rest][pads]: items go around the real tokens, never
into the padding, so a left-padded batch keeps its padding on the left. The attention mask gets 1 for every
virtual token. Given position ids are renumbered consecutively over the extended row (absent ones are left to
the model, which then counts the virtual tokens first, as peft). For decoder-only and encoder models the
virtual positions are removed from the base model's output (`last_hidden_state`), so heads and the runner's
target-only loss see hidden states of the caller's sequence length: token t of the caller keeps its own
hidden state (encoder), or for a decoder the state that predicts token t+1 (the position just before it in
the extended row). With a KV cache, later generation steps find the virtual tokens in the cache: only the
mask (and given position ids) are extended, so generation with and without cache gives the same tokens.

Prompt tuning: `length` virtual tokens before the input, a free parameter (length, d) initialised
  random  U(-0.5, 0.5) (Lester et al.)
  vocab   embeddings of token ids drawn uniformly from the first `sample_from` ids (Lester et al. sample the
          5,000 most common tokens; null = the whole vocabulary, as peft)
  text    embeddings of `text`'s tokens (e.g. the class labels), the rest filled as `vocab` (Lester et al.)
P-tuning: a template such as "[P][P] {x} [P] {y}", [P] = a pseudo token; any other text is an anchor (real
  tokens, frozen embeddings). Pseudo-token embeddings come from a prompt encoder over a learned (n, d) table:
  lstm  2-layer bidirectional LSTM (hidden mid_dim per direction, default d/2) + MLP (2h -> 2h -> relu -> d):
        the paper's encoder and peft's layout;  mlp  d -> h -> relu -> h -> relu -> d (peft's);  none  the table.
  Only the encoder's output embeddings (n, d) are saved; loading gives a plain parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError
from peftrun.methods.base import Delta, register_delta
from peftrun.methods.peft_format import PROMPT_KEY
from peftrun.methods.soft_prompt_rows import (
    _after_separator,
    _bind,
    _end_real,
    _extend_positions,
    _first_real,
    _splice_ones,
    _splice_values,
)
from peftrun.methods.soft_prompt_spec import PSEUDO_TOKEN, PromptTuningSpec, PTuningSpec

PROMPT_INITS = ("random", "vocab", "text")
ENCODERS = ("lstm", "mlp", "none")
_TOKEN = re.compile(r"\[P\]|\{x\}|\{y\}")


@dataclass(frozen=True)
class Layout:
    """Where the inserted items go. An item is an int: >= 0 a pseudo token (row of the prompt), < 0 an anchor
    (-1 - index into `anchors`, token ids)."""

    start: tuple[int, ...]
    after_x: tuple[int, ...]
    anchors: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return len(self.start) + len(self.after_x)


def parse_template(template: str) -> tuple[list[str | int], list[str | int]]:
    """Split a template into (items before {x}, items between {x} and {y}); an item is a pseudo-token index
    (int, in order of appearance) or anchor text (str). Nothing may follow {y}."""
    before: list[str | int] = []
    after: list[str | int] = []
    current = before
    seen_x = seen_y = False
    pseudo = 0
    position = 0
    for match in list(_TOKEN.finditer(template)) + [None]:
        end = match.start() if match is not None else len(template)
        text = template[position:end].strip()
        if text:
            if seen_y:
                raise PeftrunError(f"template {template!r}: text after {{y}}; the target must end the template")
            current.append(text)
        if match is None:
            break
        position = match.end()
        token = match.group()
        if token == "[P]":
            if seen_y:
                raise PeftrunError(f"template {template!r}: [P] after {{y}}; the target must end the template")
            current.append(pseudo)
            pseudo += 1
        elif token == "{x}":
            if seen_x:
                raise PeftrunError(f"template {template!r}: {{x}} twice")
            seen_x, current = True, after
        else:
            if not seen_x or seen_y:
                raise PeftrunError(f"template {template!r}: {{y}} must come once, after {{x}}")
            seen_y = True
    if not seen_x:
        raise PeftrunError(f"template {template!r} has no {{x}} (the input); e.g. '[P][P] {{x}} [P] {{y}}'")
    if pseudo == 0:
        raise PeftrunError(f"template {template!r} has no [P] pseudo token")
    return before, after


class SoftPrompt(Delta):
    """Shared machinery: insert `self.layout`'s items into the input embeddings (see module docstring)."""

    def __init__(self, spec: Any, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.layout = Layout((), ())
        self.tokenizer: Any = None
        self._handles: list[Any] = []
        self._maps: torch.Tensor | None = None  # (B, S) rows of the extended output each caller position reads
        self._backbone: dict[str, nn.Module] = {}  # the word embeddings (a plain dict: not a submodule of the delta)
        self._eos: set[int] = set()

    def virtual_embeddings(self) -> torch.Tensor:
        """(n_pseudo, d) embeddings of the pseudo tokens."""
        raise NotImplementedError

    def build(self, model: nn.Module, embeddings: nn.Module) -> None:
        """Create parameters and `self.layout` for `model` (called by attach)."""
        raise NotImplementedError

    def _token_ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise PeftrunError(
                f"{self.kind}: text {text!r} must be tokenized, but the delta has no tokenizer; "
                "call set_tokenizer(backbone.tokenizer) before attaching it"
            )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise PeftrunError(f"{self.kind}: text {text!r} gives no tokens")
        return list(ids)

    # --- attach / detach ------------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        if self.anatomy.is_encoder_decoder:
            reader = model.get_encoder()
            decoder = model.get_decoder()
            self._handles.append(decoder.register_forward_pre_hook(self._cross_mask, with_kwargs=True))
        else:
            reader = model.base_model
            self._handles.append(reader.register_forward_hook(self._strip))
        self._backbone["words"] = reader.get_input_embeddings()
        eos = model.config.eos_token_id
        self._eos = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        self.build(model, self._backbone["words"])
        self._handles.append(reader.register_forward_pre_hook(self._insert, with_kwargs=True))

    def detach(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._maps = None

    # --- hooks ----------------------------------------------------------------------------------------------

    def _items(self, items: tuple[int, ...], pseudo: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(len(items), d) embeddings of one slot."""
        if not items:
            return like.new_zeros(0, like.shape[-1])
        rows = []
        for item in items:
            if item >= 0:
                rows.append(pseudo[item])
            else:
                token = torch.tensor([self.layout.anchors[-1 - item]], device=like.device)
                rows.append(self._backbone["words"](token)[0])
        return torch.stack(rows).to(like.dtype)

    def _insert(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        call = _bind(module, args, kwargs)
        n = self.layout.size
        mask = call.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise PeftrunError(f"{self.kind} needs a 2D attention_mask (batch, seq), got shape {tuple(mask.shape)}")
        cache = call.get("cache", call.get("past_key_values"))
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            # a generation step: the virtual tokens are in the cache already
            self._maps = None
            if mask is not None:
                first = _first_real(mask)
                call["attention_mask"] = _splice_ones(mask, first, first, 0, n)
            if call.get("position_ids") is not None:
                call["position_ids"] = call["position_ids"] + n
            return (), call
        ids = call.get("input_ids")
        embeds = call.get("inputs_embeds")
        if embeds is None:
            if ids is None:
                raise PeftrunError(f"{self.kind}: the model was called without input_ids or inputs_embeds")
            embeds = self._backbone["words"](ids)
        B, S = embeds.shape[:2]
        real = mask.bool() if mask is not None else torch.ones(B, S, dtype=torch.bool, device=embeds.device)
        starts, ends = _first_real(real), _end_real(real)
        mids = ends
        if self.anatomy.kind == "decoder" and ids is not None and self._eos:
            mids = _after_separator(ids, real, self._eos, ends)
        pseudo = self.virtual_embeddings()
        slot_a = self._items(self.layout.start, pseudo, embeds)
        slot_b = self._items(self.layout.after_x, pseudo, embeds)
        na, nb = slot_a.shape[0], slot_b.shape[0]
        rows = []
        for r in range(B):
            s, m = int(starts[r]), int(mids[r])
            rows.append(torch.cat([embeds[r, :s], slot_a, embeds[r, s:m], slot_b, embeds[r, m:]]))
        call["inputs_embeds"] = torch.stack(rows)
        call["input_ids"] = None
        if mask is not None:
            call["attention_mask"] = _splice_ones(mask, starts, mids, na, nb)
        if call.get("token_type_ids") is not None:
            types = call["token_type_ids"]
            call["token_type_ids"] = _splice_values(types, starts, mids, types.new_zeros(na), types.new_zeros(nb))
        cols = torch.arange(S, device=embeds.device)[None]
        own = cols + na * (cols >= starts[:, None]) + nb * (cols >= mids[:, None])  # (B, S)
        if call.get("position_ids") is not None:
            call["position_ids"] = _extend_positions(call["position_ids"].expand(B, -1), starts, mids, na, nb, own)
        if self.anatomy.kind == "decoder":
            following = torch.cat([own[:, 1:], torch.full_like(own[:, :1], S + n)], dim=1)
            self._maps = following - 1
        else:
            self._maps = own
        return (), call

    def _strip(self, _module: nn.Module, _args: tuple, output: Any) -> Any:
        if self._maps is None:
            return output
        maps, self._maps = self._maps, None
        hidden = output[0]
        index = maps.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        stripped = torch.gather(hidden, 1, index)
        if isinstance(output, tuple):
            return (stripped,) + tuple(output[1:])
        output.last_hidden_state = stripped
        return output

    def _cross_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = _bind(module, args, kwargs)
        mask = call.get("encoder_attention_mask")
        states = call.get("encoder_hidden_states")
        n = self.layout.size
        if mask is None or states is None or mask.dim() != 2 or mask.shape[1] != states.shape[1] - n:
            return None
        real = mask.bool()
        call["encoder_attention_mask"] = _splice_ones(mask, _first_real(real), _end_real(real), len(self.layout.start),
                                                      len(self.layout.after_x))
        return (), call

    # --- save / load ----------------------------------------------------------------------------------------

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """{"prompt": (n_pseudo, d)}: the pseudo-token embeddings the model reads (never a prompt encoder)."""
        with torch.no_grad():
            return {"prompt": self.virtual_embeddings().detach().clone()}

    def load_saved_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.virtual_embeddings()
        if set(state) != {"prompt"} or tuple(state["prompt"].shape) != tuple(current.shape):
            raise PeftrunError(
                f"{self.kind} checkpoint has {({k: tuple(v.shape) for k, v in state.items()})}, expected "
                f"{{'prompt': {tuple(current.shape)}}}; load it with the backbone and method it was saved from"
            )
        self._load_prompt(state["prompt"].to(device=current.device, dtype=current.dtype))

    def _load_prompt(self, prompt: torch.Tensor) -> None:
        raise NotImplementedError

    # --- peft layout ----------------------------------------------------------------------------------------
    # peft prepends its virtual tokens to the input embeddings (the encoder's, for an encoder-decoder), reads
    # `prompt_embeddings` (n x submodules, d) as they are in inference mode (rows [:n]; an encoder-decoder's second
    # half feeds no forward of peft's prompt tuning / P-tuning, so it is written as a copy), and numbers positions
    # over the extended row as peftrun does when none are given. Same outputs for rows without left padding
    # (peft puts the virtual tokens before the padding, peftrun after it).

    def _peft_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_peft(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        n = self.layout.size
        if self.layout.after_x or self.layout.anchors:
            raise PeftrunError(f"{self.kind}: peft's layout puts every virtual token before the input; this "
                               "template has anchors or pseudo tokens after {x}; use save() instead")
        prompt = self.saved_state_dict()["prompt"]
        submodules = 2 if self.anatomy.is_encoder_decoder else 1
        config = {"num_virtual_tokens": n, "token_dim": int(prompt.shape[1]),
                  "num_transformer_submodules": submodules, **self._peft_fields()}
        return config, {PROMPT_KEY: torch.cat([prompt] * submodules)}

    @classmethod
    def _item_from_peft(cls, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_peft(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], model: nn.Module,
                  anatomy: Anatomy) -> tuple[dict[str, Any], Any]:
        n = int(config["num_virtual_tokens"])
        table = tensors.pop(PROMPT_KEY, None)
        if table is None or table.dim() != 2 or table.shape[0] < n:
            raise PeftrunError(f"{cls.kind}: expected prompt_embeddings with at least {n} rows, "
                               f"got {None if table is None else tuple(table.shape)}")
        return cls._item_from_peft(config), lambda _delta: {"prompt": table[:n]}


# --------------------------------------------------------------------------------------------- prompt tuning


@register_delta("prompt_tuning")
class PromptTuning(SoftPrompt):
    spec_class = PromptTuningSpec

    def __init__(self, spec: PromptTuningSpec, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.prompt: nn.Parameter | None = None

    @classmethod
    def supports(cls, spec: PromptTuningSpec, anatomy: Anatomy) -> str | None:
        if spec.length <= 0:
            return f"length={spec.length}; the number of virtual tokens must be positive (e.g. length=100)"
        if spec.init not in PROMPT_INITS:
            return f"init={spec.init!r}; allowed: {', '.join(PROMPT_INITS)}"
        if spec.init == "text" and not spec.text:
            return "init=text needs the text to embed; set text (e.g. the class labels)"
        if spec.sample_from is not None and spec.sample_from <= 0:
            return f"sample_from={spec.sample_from}; must be positive or null (whole vocabulary)"
        return None

    def build(self, model: nn.Module, embeddings: nn.Module) -> None:
        n = self.spec.length
        self.layout = Layout(tuple(range(n)), ())
        if self.prompt is not None:
            return
        weight = embeddings.weight
        vocab = weight.shape[0]
        limit = min(vocab, self.spec.sample_from or vocab)
        ids = torch.randint(0, limit, (n,), device=weight.device)
        if self.spec.init == "text":
            text = torch.tensor(self._token_ids(self.spec.text)[:n], device=weight.device)
            ids[: len(text)] = text
        if self.spec.init == "random":
            values = torch.empty(n, weight.shape[1], device=weight.device, dtype=weight.dtype).uniform_(-0.5, 0.5)
        else:
            with torch.no_grad():
                values = embeddings(ids).detach().clone()
        self.prompt = nn.Parameter(values)

    def virtual_embeddings(self) -> torch.Tensor:
        return self.prompt

    def _peft_fields(self) -> dict[str, Any]:
        return {"prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None}

    @classmethod
    def _item_from_peft(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "prompt_tuning", "length": int(config["num_virtual_tokens"]), "init": "random"}

    def _load_prompt(self, prompt: torch.Tensor) -> None:
        with torch.no_grad():
            self.prompt.copy_(prompt)


# --------------------------------------------------------------------------------------------- P-tuning


class PromptEncoder(nn.Module):
    """(n, d) table -> encoder -> (n, d) pseudo-token embeddings (peft's module names: embedding, lstm_head,
    mlp_head)."""

    def __init__(self, n: int, d: int, kind: str, hidden: int, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        self.embedding = nn.Embedding(n, d)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(d, hidden, num_layers=2, dropout=dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d))
        elif kind == "mlp":
            self.mlp_head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, d))

    def forward(self) -> torch.Tensor:
        table = self.embedding.weight
        if self.kind == "lstm":
            return self.mlp_head(self.lstm_head(table[None])[0])[0]
        if self.kind == "mlp":
            return self.mlp_head(table)
        return table


@register_delta("ptuning")
class PTuning(SoftPrompt):
    spec_class = PTuningSpec

    def __init__(self, spec: PTuningSpec, anatomy: Anatomy) -> None:
        super().__init__(spec, anatomy)
        self.encoder: PromptEncoder | None = None
        self.prompt: nn.Parameter | None = None  # set when a checkpoint is loaded (no encoder then)

    @classmethod
    def supports(cls, spec: PTuningSpec, anatomy: Anatomy) -> str | None:
        if spec.encoder not in ENCODERS:
            return f"encoder={spec.encoder!r}; allowed: {', '.join(ENCODERS)}"
        if spec.mid_dim is not None and spec.mid_dim <= 0:
            return f"mid_dim={spec.mid_dim}; must be positive or null (the paper's default)"
        if not 0.0 <= spec.dropout < 1.0:
            return f"dropout={spec.dropout}; must be in [0, 1)"
        try:
            parse_template(spec.template)
        except PeftrunError as err:
            return str(err)
        return None

    def build(self, model: nn.Module, embeddings: nn.Module) -> None:
        before, after = parse_template(self.spec.template)
        anchors: list[int] = []

        def items(parts: list[str | int]) -> tuple[int, ...]:
            out: list[int] = []
            for part in parts:
                if isinstance(part, int):
                    out.append(part)
                else:
                    for token in self._token_ids(part):
                        anchors.append(token)
                        out.append(-len(anchors))
            return tuple(out)

        self.layout = Layout(items(before), items(after), tuple(anchors))
        if self.encoder is not None or self.prompt is not None:
            return
        n = sum(1 for part in before + after if isinstance(part, int))
        d = embeddings.weight.shape[1]
        hidden = self.spec.mid_dim or (d // 2 if self.spec.encoder == "lstm" else d)
        like = embeddings.weight
        self.encoder = PromptEncoder(n, d, self.spec.encoder, hidden, self.spec.dropout).to(like.device, like.dtype)

    def virtual_embeddings(self) -> torch.Tensor:
        return self.prompt if self.prompt is not None else self.encoder()

    def _peft_fields(self) -> dict[str, Any]:
        """peft's P-tuning fields. The saved tensor is the encoder's output, which peft reads as it is in
        inference mode (PeftModel.from_pretrained); peft's own saves hold the same. encoder=none has no peft
        name: MLP is written (it only matters when peft trains on, re-encoding the table)."""
        d = int(self.virtual_embeddings().shape[1])
        hidden = self.spec.mid_dim or (d // 2 if self.spec.encoder == "lstm" else d)
        return {"encoder_reparameterization_type": "LSTM" if self.spec.encoder == "lstm" else "MLP",
                "encoder_hidden_size": hidden, "encoder_num_layers": 2, "encoder_dropout": self.spec.dropout}

    @classmethod
    def _item_from_peft(cls, config: dict[str, Any]) -> dict[str, Any]:
        kind = str(config.get("encoder_reparameterization_type") or "MLP").lower()
        return {"kind": "ptuning", "template": PSEUDO_TOKEN * int(config["num_virtual_tokens"]) + " {x}",
                "encoder": kind if kind in ENCODERS else "mlp", "mid_dim": config.get("encoder_hidden_size")}

    def _load_prompt(self, prompt: torch.Tensor) -> None:
        self.encoder = None
        self.prompt = nn.Parameter(prompt.clone())
