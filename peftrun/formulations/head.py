"""The head formulations (classification, candidates, token): peftrun/head_data.py + peftrun/heads.py."""

from __future__ import annotations

from typing import Any

from peftrun.errors import PeftrunError
from peftrun.formulation import BACKBONE_HEAD


class HeadFormulation:
    """A new head on the backbone (encoders: BERT, RoBERTa; any family that has it), trained with every method."""

    trains_new_head = True

    def __init__(self, cfg: Any, task: Any, name: str) -> None:
        self.cfg, self.task, self.name = cfg, task, name
        self.backbone_head = BACKBONE_HEAD[name]

    def num_labels(self) -> int | None:
        """One logit per label; one score per candidate."""
        return 1 if self.name == "candidates" else len(self.task.label_names)

    def training_data(self, backbone: Any, examples: list[Any], record: dict[str, Any]) -> tuple[Any, Any]:
        """Examples without a gold label are left out (ReCoRD queries whose answer is no passage entity) and
        counted."""
        from peftrun.head_data import HeadCollator, HeadDataset, encode_head_examples

        cfg = self.cfg
        data = encode_head_examples(examples, backbone.tokenizer, self.name, cfg.task.max_source_length,
                                    cfg.paths.cache_dir)
        dataset = HeadDataset(data, self.name)
        record["train_data"] = {"split": cfg.task.train_split, "examples": len(dataset),
                                "truncated_sources": data.truncated, "unlabelled": len(data) - len(dataset)}
        if not len(dataset):
            raise PeftrunError(f"task {cfg.task.name!r}: none of the {len(data)} {cfg.task.train_split} examples "
                               "has a gold label for the head; check task.train_split and the data")
        return dataset, HeadCollator(backbone.tokenizer.pad_token_id, self.name)

    def trainer(self) -> tuple[type, dict[str, Any]]:
        from peftrun.heads import HeadTrainer

        return HeadTrainer, {"head": self.name}

    def predict(self, backbone: Any, examples: list[Any], split: str, record: dict[str, Any],
                progress: Any) -> tuple[list[str], None]:
        """Label strings (batches of task.generation.batch_size examples)."""
        from peftrun.head_data import encode_head_examples
        from peftrun.heads import label_strings, predict

        cfg = self.cfg
        data = encode_head_examples(examples, backbone.tokenizer, self.name, cfg.task.max_source_length,
                                    cfg.paths.cache_dir)
        record["data"][split] = {"examples": len(data), "truncated_sources": data.truncated}
        with progress(split, len(data)) as advance:
            predicted = predict(backbone.model, data, self.name, backbone.tokenizer.pad_token_id,
                                cfg.task.generation.batch_size, on_batch=advance)
        return label_strings(self.task, examples, predicted, self.name), None
