"""Where a pretrained backbone's weights come from: a GGUF file, a local directory, or a hub id (with revision).

`resolve_source(cfg, paths)` returns the local directory or hub id to `from_pretrained`, tried in this order:
    backbone.gguf_file   a local .gguf file: dequantised once to `backbone.dtype` by transformers (gguf_file=, needs
                         the `gguf` extra) and cached as safetensors under <paths.cache_dir>/gguf/<stem>-<key>/,
                         the key hashing the file's path, size and mtime, the dtype and the transformers version,
                         so the next run loads the cache in seconds
    backbone.local_dir   a save_pretrained directory (e.g. <paths.models_dir>/minilm-l6)
    backbone.source      a local directory, or a hub id (local Hugging Face cache or network, hub.hub_access)
When none is available the run stops before any expensive work with one line naming the three options.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftrun.backbones.hub import hub_access
from peftrun.errors import PeftrunError

if TYPE_CHECKING:
    from peftrun.config import BackboneConfig, PathsConfig

GGUF_RECIPE = 1  # bump when the cached layout changes


def _is_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(path))


def resolve_source(cfg: BackboneConfig, paths: PathsConfig, lm_auto_class: str) -> tuple[str, dict[str, Any]]:
    """(local directory or hub id to load, facts for the run record); see the module docstring."""
    tried = []
    if cfg.gguf_file:
        gguf = Path(os.path.expanduser(cfg.gguf_file))
        if gguf.is_file():
            folder, cached = dequantised(gguf, cfg.dtype, paths.cache_dir, lm_auto_class)
            return str(folder), {"gguf_file": str(gguf), "gguf_cache": str(folder), "gguf_cache_hit": cached}
        tried.append(f"no GGUF file at {gguf}")
    if cfg.local_dir:
        local = os.path.expanduser(cfg.local_dir)
        if os.path.isdir(local):
            return local, {"local_dir": local}
        tried.append(f"no directory {local}")
    if _is_local(cfg.source) or not tried:
        return cfg.source, {}
    fix = ("give a checkpoint: a local directory (backbone.source=/path/to/model), a GGUF file "
           "(backbone.gguf_file=/path/to/model.gguf; the YAMLs look under paths.models_dir, i.e. $PEFTRUN_MODELS_DIR "
           "or ~/.cache/peftrun/models), or a hub id with network access (unset HF_HUB_OFFLINE)")
    hub_access(cfg.source, cfg.revision, f"backbone {cfg.name!r}: {', '.join(tried)}; the hub id", fix)
    return cfg.source, {}


def gguf_cache_dir(gguf: Path, dtype: str, cache_dir: str) -> Path:
    """<cache_dir>/gguf/<stem>-<16 hex>: keyed by the file (path, size, mtime), dtype and transformers version."""
    import transformers

    stat = gguf.stat()
    key = {"file": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": dtype,
           "transformers": transformers.__version__, "recipe": GGUF_RECIPE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "gguf" / f"{gguf.stem}-{digest}"


def dequantised(gguf: Path, dtype: str, cache_dir: str, auto_class: str) -> tuple[Path, bool]:
    """The cached save_pretrained-style directory of `gguf` dequantised to `dtype`; (folder, was it cached).

    transformers refuses save_pretrained on a model loaded from GGUF, so the weights are written with safetensors'
    save_model (tied tensors once) beside config.json and the tokenizer; written to a temporary sibling and
    renamed into place, so concurrent runs never read a half-written cache.
    """
    import torch
    import transformers
    from safetensors.torch import save_model

    final = gguf_cache_dir(gguf, dtype, cache_dir)
    if (final / "model.safetensors").is_file():
        return final, True
    try:
        model = getattr(transformers, auto_class).from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                 dtype=getattr(torch, dtype))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as err:
        raise PeftrunError(f"reading {gguf} needs the gguf package: pip install 'peftrun[gguf]' ({err})") from err
    except (OSError, ValueError, KeyError) as err:
        raise PeftrunError(f"cannot read GGUF file {gguf}: {str(err).splitlines()[0] if str(err) else err!r}") from err
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "peftrun_gguf.json").write_text(json.dumps({"gguf_file": str(gguf), "dtype": dtype}, indent=2) + "\n")
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "model.safetensors").is_file():
            raise
    return final, False
