"""Check a method config before any model is loaded, and turn its delta items into spec dataclasses.

Each `method.deltas` item is `{kind: <registered delta>, name: <optional unique name>, **spec}`; the spec
keys are validated against the delta family's spec dataclass (OmegaConf structured merge: an unknown
key or a wrong type is an error naming the key), then `Delta.supports(spec, anatomy)` gives the reason an
impossible combination cannot run. Every failure is one `PeftrunError` line: key, value, allowed set, fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftrun.backbones.anatomy import Anatomy
from peftrun.errors import PeftrunError, first_line
from peftrun.methods.base import DELTAS, Delta
from peftrun.methods.spec import parse_spec
from peftrun.methods.trainable import TRAIN_RULES

ITEM_KEYS = ("kind", "name")  # keys of a delta item that are not spec fields


@dataclass
class DeltaItem:
    """One parsed delta of a method: its unique name, family class and validated spec."""

    name: str
    cls: type[Delta]
    spec: Any


def method_to_dict(method_cfg: Any) -> dict[str, Any]:
    """The method config as a plain, resolved dict checked against MethodConfig (unknown key / bad type: error).

    Accepts a DictConfig (interpolations such as `${method.rank}` resolve against its root), a MethodConfig
    or a plain dict (missing knobs take MethodConfig's defaults).
    """
    from peftrun.config import MethodConfig

    try:
        if isinstance(method_cfg, DictConfig | ListConfig):
            plain = OmegaConf.to_container(method_cfg, resolve=True)
        elif isinstance(method_cfg, Mapping):
            plain = dict(method_cfg)
        else:
            plain = OmegaConf.to_container(OmegaConf.structured(method_cfg), resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(MethodConfig), plain)
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise PeftrunError(f"method.{key}: {first_line(err)} (see peftrun/config.py MethodConfig)") from err


def parse_deltas(method: dict[str, Any]) -> list[DeltaItem]:
    """Parse a resolved method's `deltas` into DeltaItems (no anatomy checks); names are unique (kind, kind_1...)."""
    raw = method["deltas"]
    if not isinstance(raw, list):
        raise PeftrunError(f"method.deltas={raw!r}: must be a list of {{kind: ..., ...}} items")
    items: list[DeltaItem] = []
    used: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"method.deltas[{index}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise PeftrunError(
                f"{where}={entry!r}: each delta needs a `kind` (known: {', '.join(sorted(DELTAS))})"
            )
        kind = entry["kind"]
        if kind not in DELTAS:
            close = difflib.get_close_matches(str(kind), list(DELTAS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PeftrunError(f"{where}.kind={kind!r}: unknown delta (known: {', '.join(sorted(DELTAS))}){hint}")
        cls = DELTAS[kind]
        spec = parse_spec(cls.spec_class, {k: v for k, v in entry.items() if k not in ITEM_KEYS}, where)
        name = entry.get("name") or kind
        if name in used:
            if entry.get("name"):
                raise PeftrunError(f"{where}.name={name!r}: used twice; give each delta a unique name")
            suffix = 1
            while f"{kind}_{suffix}" in used:
                suffix += 1
            name = f"{kind}_{suffix}"
        if not str(name).isidentifier():
            raise PeftrunError(f"{where}.name={name!r}: must be a Python identifier (letters, digits, _)")
        used.add(name)
        items.append(DeltaItem(name=name, cls=cls, spec=spec))
    return items


def validate_train_rule(method: dict[str, Any]) -> None:
    train = method["train"]
    if train not in TRAIN_RULES:
        raise PeftrunError(f"method.train={train!r}: unknown rule (allowed: {', '.join(TRAIN_RULES)})")
    top_k = method["top_k"]
    if train == "top_k" and (not isinstance(top_k, int) or top_k <= 0):
        raise PeftrunError(f"method.top_k={top_k!r} with method.train=top_k: set method.top_k to a positive layer count")


def validate_method(method_cfg: Any, anatomy: Anatomy) -> list[DeltaItem]:
    """Check the whole method against `anatomy` before loading a model; returns the parsed deltas.

    Raises PeftrunError for: an unknown train rule, an unknown delta kind, an unknown or mistyped spec key,
    and any combination the delta family does not support on this anatomy (its `supports` reason).
    """
    method = method_to_dict(method_cfg)
    validate_train_rule(method)
    if method["train"] == "bias" and not anatomy.biases:
        raise PeftrunError(
            f"method.train=bias (BitFit) trains the backbone's bias terms, but {anatomy.family} has none; "
            "pick another method (e.g. method=lora)"
        )
    items = parse_deltas(method)
    for index, item in enumerate(items):
        reason = item.cls.supports(item.spec, anatomy)
        if reason:
            raise PeftrunError(f"method.deltas[{index}] ({item.cls.kind} on {anatomy.family}): {reason}")
    return items
