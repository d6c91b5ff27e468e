"""Task metrics, computed locally (no `evaluate.load`, which needs the hub). Pure Python: no torch import."""

from peftrun.metrics.generation import corpus_bleu, generation_scores, reference_streams, webnlg_normalize

__all__ = ["corpus_bleu", "generation_scores", "reference_streams", "webnlg_normalize"]
