"""JAX's persistent compilation cache for the jaxrl commands: a second identical run loads its
compiled programs from disk instead of compiling them again (tracing and lowering still happen).

``jaxrl train``, ``sweep`` and ``bench`` call :func:`enable_compilation_cache` before anything
compiles. The cache lives in ``$JAXRL_CACHE_DIR``, or ``$XDG_CACHE_HOME/jaxrl/jax`` (default
``~/.cache/jaxrl/jax``), in a subfolder per CPU type: XLA compiles CPU code for the host's
instruction set and JAX's cache key does not include it, so a cache shared between machines
(a home folder on a network drive) could otherwise hand one CPU code for another.
``JAXRL_NO_COMPILE_CACHE=1`` or ``--no-compile-cache`` turn it off. A cache directory configured
through JAX itself (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.update(
"jax_compilation_cache_dir", ...)``) is used as it is, thresholds included. On CPU, turning the
cache on also hides XLA's C++ log below FATAL (see :func:`_quiet_cpu_cache_log`).

This module does not import jax: before jax is imported it sets JAX's environment variables
(read when jax is imported), afterwards it updates ``jax.config``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

ENV_DIR = "JAXRL_CACHE_DIR"
ENV_OFF = "JAXRL_NO_COMPILE_CACHE"
# JAX skips programs that compiled in under a second or that are small; ours are worth caching
# even then (the whole training loop can compile in well under a second on a fast machine).
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}  # -1: no size limit

_events = {"lookups": 0, "hits": 0}
_listening = False


def cpu_tag() -> str:
    """A short name of this host's CPU type: architecture + hash of the model name and flags."""
    text = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


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

    The programs go to ``directory/<cpu_tag()>``; ``directory`` defaults to
    :func:`default_cache_dir`. Nothing changes when ``enabled`` is False or
    ``JAXRL_NO_COMPILE_CACHE`` is set to anything but ``""``/``0``, and a cache dir the user
    already gave JAX is kept (and returned). A folder that cannot be written turns the cache
    off with a warning.
    """
    if not enabled or os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    users = _users_cache_dir()
    if users:
        return users
    root = Path(directory).expanduser() if directory is not None else default_cache_dir()
    path = root / cpu_tag()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as err:  # without this, JAX would warn at every compile
        warnings.warn(f"compilation cache off: {err} (set {ENV_DIR} to a writable folder)", stacklevel=2)
        return None
    path = str(path)
    settings = {"jax_compilation_cache_dir": path, **_THRESHOLDS}
    # Thresholds the user set in the environment win.
    settings = {k: v for k, v in settings.items() if k.upper() not in os.environ}
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # read by jax when it is imported
        os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    _quiet_cpu_cache_log()
    return path


def describe(lookups: int, hits: int) -> str:
    """How compile seconds came about, e.g. ``"all 3 programs from the compilation cache"``."""
    if not lookups:
        return ""
    if hits == lookups:
        return f"all {hits} programs from the compilation cache"
    return f"{hits} of {lookups} programs from the compilation cache"


@dataclasses.dataclass
class CacheUse:
    """Persistent-cache lookups and hits while a :func:`counting` block ran."""

    lookups: int = 0
    hits: int = 0

    @property
    def note(self) -> str:
        return describe(self.lookups, self.hits)


@contextlib.contextmanager
def counting() -> Iterator[CacheUse]:
    """Count the programs compiled inside the block that were looked up in, and loaded from,
    the persistent cache; the counts are filled in when the block ends (also on an error)."""
    use = CacheUse()
    lookups, hits = cache_counts()
    try:
        yield use
    finally:
        now_lookups, now_hits = cache_counts()
        use.lookups, use.hits = now_lookups - lookups, now_hits - hits


def cache_counts() -> tuple[int, int]:
    """``(lookups, hits)`` of the persistent cache so far in this process.

    Counting starts at the first call (a jax.monitoring listener), so call it once before the
    compiles to be counted; the difference of two calls counts what happened in between.
    """
    global _listening
    if not _listening:
        import jax

        def count(event: str, **_: object) -> None:
            # JAX records a request for every compile while no cache dir is set, too
            if event == "/jax/compilation_cache/compile_requests_use_cache" and jax.config.jax_compilation_cache_dir:
                _events["lookups"] += 1
            elif event == "/jax/compilation_cache/cache_hits":
                _events["hits"] += 1

        jax.monitoring.register_event_listener(count)
        _listening = True
    return _events["lookups"], _events["hits"]


def _cpu_only() -> bool:
    """Whether JAX can only run on the CPU here: no platform but ``cpu`` asked for, or no
    accelerator plugin installed (decided without starting a JAX backend)."""
    asked = os.environ.get("JAX_PLATFORMS", "")
    if "jax" in sys.modules:
        import jax

        asked = jax.config.jax_platforms or ""
    if asked:
        return {p.strip() for p in asked.split(",") if p.strip()} == {"cpu"}
    return (importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None
            and not any(True for _ in importlib.metadata.entry_points(group="jax_plugins")))


def _quiet_cpu_cache_log() -> None:
    """Show only FATAL lines of XLA's C++ log on CPU, unless the user chose a log level.

    jaxlib 0.9-0.10 log an ERROR (and a WARNING) for every XLA:CPU program loaded from the
    persistent cache, eager ops included, claiming the LLVM tuning flags +prefer-no-gather/
    +prefer-no-scatter are missing host features (openxla/xla#44565), although the program was
    compiled on this very machine (the cache is per CPU type) and loads and runs fine. Errors
    that matter still raise Python exceptions. ``TF_CPP_MIN_LOG_LEVEL=0`` brings the log back.
    """
    # `import jax` itself sets TF_CPP_MIN_LOG_LEVEL=1 when unset: that value is no user's choice.
    jax_default = "1" if "jax" in sys.modules else None
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", jax_default) != jax_default or not _cpu_only():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # read when jaxlib loads
    if "jax" not in sys.modules:
        return
    import jax

    if jax.config.jax_logging_level not in (None, "NOTSET"):
        return
    try:
        from jax._src.lib import utils
    except ImportError:  # private API moved: keep the noise rather than fail
        return
    if hasattr(utils, "absl_set_min_log_level"):
        utils.absl_set_min_log_level(3)
