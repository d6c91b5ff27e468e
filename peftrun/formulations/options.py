"""The decision rule of rank classification, torch-free so `peftrun-score` can re-decide saved predictions.

scores[normalize][i] is option i's summed / mean log-likelihood; the options' probabilities are the softmax of
those over the options, and contextual calibration (Zhao et al. 2021) divides them by the content-free prompt's:
argmax_i (log p_i - log p_cf,i).
"""

from __future__ import annotations

import math
from typing import Any

NORMALIZATIONS = ("sum", "mean")


def _log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - total for v in values]


def choose(scores: dict[str, list[float]], normalize: str = "sum",
           content_free: dict[str, list[float]] | None = None) -> int:
    """The chosen option: argmax of the `normalize` score, calibrated by the content-free scores when given
    (the first option on ties)."""
    logp = _log_softmax([float(v) for v in scores[normalize]])
    if content_free is not None:
        logp = [a - b for a, b in zip(logp, _log_softmax([float(v) for v in content_free[normalize]]), strict=True)]
    return max(range(len(logp)), key=logp.__getitem__)


def rechoose(row: dict[str, Any], normalize: str = "sum", calibrate: bool = False) -> str:
    """A predictions.jsonl row of a rank run re-decided: the label string of the best option under another
    normalisation or with / without calibration (calibration needs the run's content-free scores)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}; allowed: {', '.join(NORMALIZATIONS)}")
    content_free = row.get("content_free") if calibrate else None
    if calibrate and content_free is None:
        raise ValueError("this row has no content-free scores; rerun with prompt.calibrate=true")
    return row["option_labels"][choose(row["scores"], normalize, content_free)]
