"""Row surgery of the soft prompts (peftrun/methods/soft_prompt.py): bind a forward's arguments by name, find
each row's real tokens, splice inserted columns into masks, token types and position ids."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from peftrun.errors import PeftrunError


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name (positional ones named through the forward's signature)."""
    if not args:
        return dict(kwargs)
    signature = inspect.signature(module.forward)
    bound = signature.bind_partial(*args, **kwargs).arguments
    call: dict[str, Any] = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise PeftrunError(f"{type(module).__name__} was called with extra positional arguments")
        else:
            call[name] = value
    return call


def _first_real(real: torch.Tensor) -> torch.Tensor:
    """(B,) index of the first real column (0 for a row without padding or without any real token)."""
    return real.bool().int().argmax(dim=1)


def _end_real(real: torch.Tensor) -> torch.Tensor:
    """(B,) one past the last real column."""
    width = real.shape[1]
    flipped = real.bool().flip(1).int().argmax(dim=1)
    return torch.where(real.bool().any(dim=1), width - flipped, torch.zeros_like(flipped))


def _after_separator(ids: torch.Tensor, real: torch.Tensor, eos: set[int], ends: torch.Tensor) -> torch.Tensor:
    """(B,) one past the first real separator (EOS) of each row, or the row's end when it has none."""
    sep = torch.zeros_like(real)
    for token in eos:
        sep |= ids == token
    sep &= real
    return torch.where(sep.any(dim=1), sep.int().argmax(dim=1) + 1, ends)


def _splice_values(x: torch.Tensor, starts: torch.Tensor, mids: torch.Tensor, a: torch.Tensor,
                   b: torch.Tensor) -> torch.Tensor:
    rows = []
    for r in range(x.shape[0]):
        s, m = int(starts[r]), int(mids[r])
        rows.append(torch.cat([x[r, :s], a, x[r, s:m], b, x[r, m:]]))
    return torch.stack(rows)


def _splice_ones(mask: torch.Tensor, starts: torch.Tensor, mids: torch.Tensor, na: int, nb: int) -> torch.Tensor:
    if isinstance(starts, int):
        starts = torch.full((mask.shape[0],), starts, device=mask.device)
    if isinstance(mids, int):
        mids = torch.full((mask.shape[0],), mids, device=mask.device)
    return _splice_values(mask, starts, mids, mask.new_ones(na), mask.new_ones(nb))


def _extend_positions(positions: torch.Tensor, starts: torch.Tensor, mids: torch.Tensor, na: int, nb: int,
                      own: torch.Tensor) -> torch.Tensor:
    """Given positions renumbered over the extended row: token t gets p_t + (items before it); items of a slot
    inserted before column j take the positions just before token j's new one."""
    B, S = positions.shape
    out = positions.new_zeros(B, S + na + nb)
    shifted = positions + (own - torch.arange(S, device=positions.device)[None])
    out.scatter_(1, own, shifted)
    following = torch.cat([positions, positions[:, -1:] + 1], dim=1)  # p_j, with p_S = p_{S-1} + 1
    for r in range(B):
        s, m = int(starts[r]), int(mids[r])
        if na:
            out[r, s:s + na] = following[r, s] + torch.arange(na, device=positions.device)
        if nb:
            out[r, m + na:m + na + nb] = following[r, m] + na + torch.arange(nb, device=positions.device)
    return out
