"""peftrun: a command-line experiment runner for parameter-efficient fine-tuning.

Kept import-light: `peftrun --help` must not import torch or transformers.
"""

__version__ = "0.1.0"
