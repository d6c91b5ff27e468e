"""Tasks: one module per task family; importing this package registers the built-in tasks (see base.TASKS).

Table-to-text (peftrun.tasks.table_to_text): e2e, dart, webnlg (2017), synthetic (built in, the offline default).
"""

from peftrun.tasks import (  # noqa: F401  (each registers its task)
    dart,
    e2e,
    sequence_labelling,
    spider,
    summarization,
    superglue,
    synthetic,
    webnlg,
)
from peftrun.tasks.base import TASKS, Example, Task, build_task, register_task

__all__ = ["TASKS", "Example", "Task", "build_task", "register_task"]
