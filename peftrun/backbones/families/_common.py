"""Helpers shared by family modules."""

from __future__ import annotations

from peftrun.backbones.anatomy import AttentionRoles


def attention(kind: str, module: str, q: str, k: str, v: str, o: str) -> AttentionRoles:
    """An attention whose four projections are children of `module` (BART, T5, Llama)."""
    return AttentionRoles(kind=kind, module=module, q=f"{module}.{q}", k=f"{module}.{k}", v=f"{module}.{v}",
                          o=f"{module}.{o}")
