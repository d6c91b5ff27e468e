"""Tasks: one module per task family; importing this package registers every built-in task (see base.TASKS).

table-to-text (table_to_text.py): e2e, dart, webnlg (2017), synthetic (built in, the offline default);
summarization: xsum, cnn_dm; superglue: boolq, cb, rte, copa, wic, wsc, multirc, record;
sequence_labelling: conll2003; spider: spider; mixture: several of these together.
"""

from peftrun.tasks import (  # noqa: F401  (each module registers its tasks)
    dart,
    e2e,
    mixture,
    sequence_labelling,
    spider,
    summarization,
    superglue,
    synthetic,
    webnlg,
)
from peftrun.tasks.base import TASKS, Example, Task, build_task, register_task

__all__ = ["TASKS", "Example", "Task", "build_task", "register_task"]
