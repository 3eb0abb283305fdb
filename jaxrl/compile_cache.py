"""JAX's persistent compilation cache for the jaxrl commands: a second identical run loads its
compiled programs from disk instead of compiling them again (tracing and lowering still happen).

``jaxrl train``, ``sweep`` and ``bench`` call :func:`enable_compilation_cache` before anything
compiles. The cache lives in ``$JAXRL_CACHE_DIR``, or ``$XDG_CACHE_HOME/jaxrl/jax`` (default
``~/.cache/jaxrl/jax``); ``JAXRL_NO_COMPILE_CACHE=1`` or ``--no-compile-cache`` turn it off. A
cache directory configured through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) is used as it is, thresholds included.

This module does not import jax: before jax is imported it sets JAX's environment variables
(read when jax is imported), afterwards it updates ``jax.config``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_DIR = "JAXRL_CACHE_DIR"
ENV_OFF = "JAXRL_NO_COMPILE_CACHE"
# JAX skips programs that compiled in under a second or that are small; ours are worth caching
# even then (the whole training loop can compile in well under a second on a fast machine).
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}  # -1: no size limit

_events = {"lookups": 0, "hits": 0}
_listening = False


def default_cache_dir() -> Path:
    """``$JAXRL_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxrl/jax`` (``~/.cache/jaxrl/jax``)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrl" / "jax"


def _users_cache_dir() -> str | None:
    """A cache dir the user set through JAX's own env var or config (None if not set)."""
    if "jax" in sys.modules:
        import jax

        return jax.config.jax_compilation_cache_dir
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or None


def enable_compilation_cache(directory: str | Path | None = None, enabled: bool = True) -> str | None:
    """Turn on JAX's persistent compilation cache; returns the cache dir in use (None: off).

    ``directory`` defaults to :func:`default_cache_dir`. Nothing changes when ``enabled`` is
    False or ``JAXRL_NO_COMPILE_CACHE`` is set to anything but ``""``/``0``, and a cache dir
    the user already gave JAX is kept (and returned).
    """
    if not enabled or os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    users = _users_cache_dir()
    if users:
        return users
    path = str(Path(directory).expanduser() if directory is not None else default_cache_dir())
    settings = {"jax_compilation_cache_dir": path, **_THRESHOLDS}
    # Thresholds the user set in the environment win.
    settings = {k: v for k, v in settings.items() if k.upper() not in os.environ}
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # read by jax when it is imported
        os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    return path


def cache_counts() -> tuple[int, int]:
    """``(lookups, hits)`` of the persistent cache so far in this process.

    Counting starts at the first call (a jax.monitoring listener), so call it once before the
    compiles to be counted; the difference of two calls counts what happened in between.
    """
    global _listening
    if not _listening:
        import jax

        def count(event: str, **_: object) -> None:
            if event == "/jax/compilation_cache/compile_requests_use_cache":
                _events["lookups"] += 1
            elif event == "/jax/compilation_cache/cache_hits":
                _events["hits"] += 1

        jax.monitoring.register_event_listener(count)
        _listening = True
    return _events["lookups"], _events["hits"]
