"""The registered backbone families, one module each (see peftrun/backbones/family.py for what a module declares).

Importing this package registers them all; the registry's functions are re-exported here. A new family is a
new module in this folder, imported below, and its YAMLs under conf/backbone/.
"""

from peftrun.backbones.families import bart, bert, gpt2, llama, t5  # noqa: F401  (registration, in this order)
from peftrun.backbones.family import (
    FAMILIES,
    HEADS,
    LM_KIND,
    Family,
    PositionTable,
    Shape,
    StackShape,
    anatomy_for,
    anatomy_of,
    base_prefix_of,
    check_anatomy,
    family_of_model_type,
    get_family,
    position_table_of,
    register_family,
    style_name_of,
    style_named,
)

__all__ = [
    "FAMILIES", "HEADS", "LM_KIND", "Family", "PositionTable", "Shape", "StackShape", "anatomy_for", "anatomy_of",
    "base_prefix_of", "check_anatomy", "family_of_model_type", "get_family", "position_table_of",
    "register_family", "style_name_of", "style_named",
]
