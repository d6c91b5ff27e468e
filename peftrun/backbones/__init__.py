"""Backbones: families and their anatomies, tiny offline models, and loading (hub id, local path, random init).

Importing this package is light (no transformers import); `load_backbone` imports transformers when called.
"""

from peftrun.backbones.anatomy import Anatomy, AttentionRoles, StackRoles, get_module
from peftrun.backbones.families import FAMILIES, Family, anatomy_for, anatomy_of, get_family, register_family
from peftrun.backbones.load import Backbone, count_parameters, load_backbone

__all__ = [
    "FAMILIES", "Anatomy", "AttentionRoles", "Backbone", "Family", "StackRoles", "anatomy_for", "anatomy_of",
    "count_parameters", "get_family", "get_module", "load_backbone", "register_family",
]
