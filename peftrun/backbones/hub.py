"""Can a hub id be loaded here, and how? Decided in about a second, before any expensive work.

`hub_access(repo_id, revision)` returns "cache" (load with local_files_only=True) or "network", or
raises one PeftrunError line when the id is neither in the local Hugging Face cache nor reachable.
The cache location and offline switch are read from the environment at call time (HF_HUB_CACHE,
HF_HOME, XDG_CACHE_HOME; HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), not from huggingface_hub's
import-time constants, so what a test or a user sets just before loading is what counts.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from peftrun.errors import PeftrunError

CONNECT_TIMEOUT_S = 2.5  # seconds for DNS + connect + TLS + one HEAD response
REMEMBER_S = 60.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_REACHABLE: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, reason or None)


def hf_hub_cache() -> str:
    """The Hugging Face hub cache directory, as huggingface_hub would compute it from the current environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(os.path.expanduser(xdg), "huggingface", "hub")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if the hub endpoint (HF_ENDPOINT, default https://huggingface.co) answers an HTTP HEAD request
    within `timeout` seconds, else the reason. A bare TCP connect is not enough (sandboxes and proxies accept
    connections they cannot serve), so the TLS certificate is verified and a response is required. Runs in a
    daemon thread so a slow DNS lookup cannot block longer; the answer is remembered for a minute."""
    import http.client

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    secure = url.scheme != "http"
    port = url.port or (443 if secure else 80)
    remembered = _REACHABLE.get((host, port))
    if remembered is not None and time.monotonic() - remembered[0] < REMEMBER_S:
        return remembered[1]
    outcome: list[str | None] = []

    def ask() -> None:
        connection_class = http.client.HTTPSConnection if secure else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=timeout)
        try:
            connection.request("HEAD", "/api/models")
            connection.getresponse()
            outcome.append(None)
        except (OSError, http.client.HTTPException) as err:
            detail = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
            outcome.append(f"{host}:{port}: {detail}")
        finally:
            connection.close()

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    reason = outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"
    _REACHABLE[(host, port)] = (time.monotonic(), reason)
    return reason


def cached_path(repo_id: str, revision: str | None, filename: str = "config.json") -> str | None:
    """Local path of `filename` of `repo_id` at `revision` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache(), revision=revision)
    except ValueError:  # a string that is not a valid repo id
        return None
    return found if isinstance(found, str) else None


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit hash of the cached snapshot of `repo_id` at `revision` (for the run record), or None."""
    found = cached_path(repo_id, revision)
    parts = Path(found).parts if found else ()
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def in_hf_cache(repo_id: str, revision: str | None, filename: str = "config.json") -> bool:
    """`filename` of `repo_id` at `revision` is in the local Hugging Face cache."""
    return cached_path(repo_id, revision, filename) is not None


def hub_access(repo_id: str, revision: str | None, what: str, fix: str) -> str:
    """"cache" or "network" for loading `repo_id`; PeftrunError (`what`: ... ; `fix`) when neither works."""
    cached = in_hf_cache(repo_id, revision)
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else hub_reachable()
    if reason is None:
        return "network"
    if cached:
        return "cache"
    at = f"@{revision}" if revision else ""
    raise PeftrunError(
        f"{what}: {repo_id!r}{at} is not in the local Hugging Face cache ({hf_hub_cache()}) and the hub is "
        f"unreachable ({reason}); {fix}"
    )
