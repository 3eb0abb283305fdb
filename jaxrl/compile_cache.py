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

jaxrl's cache folder is kept by a :class:`BoundedCache` in place of JAX's own file store: it
holds at most ``$JAXRL_CACHE_MAX_SIZE`` bytes (default 2 GiB), dropping the least recently used
programs first; it writes each entry whole or not at all, and deletes an entry that does not
decompress (cut short when an older jaxrl, or JAX's own store, was killed while writing it), so
that such an entry costs one compile and no warning. JAX's own store writes entries in place and
never replaces one that exists: a cut-short entry made it warn on every later run.

Importing this module does not import jax: before jax is imported :func:`enable_compilation_cache`
sets JAX's environment variables (read when jax is imported), afterwards it updates
``jax.config``; it then imports jax to hand it the :class:`BoundedCache`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import secrets
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from jaxrl.config import ConfigError

ENV_DIR = "JAXRL_CACHE_DIR"
ENV_OFF = "JAXRL_NO_COMPILE_CACHE"
ENV_MAX_SIZE = "JAXRL_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 2 * 1024**3  # bytes; a CartPole training program takes about 0.3 MB
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# JAX skips programs that compiled in under a second or that are small; ours are worth caching
# even then (the whole training loop can compile in well under a second on a fast machine).
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}  # -1: no size limit

_events = {"lookups": 0, "hits": 0}
_listening = False
_stores: dict[str, BoundedCache] = {}  # cache dir -> the store JAX gets for it (see _hand_to_jax)
_log = logging.getLogger(__name__)


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


def parse_size(value: int | str, name: str = ENV_MAX_SIZE) -> int:
    """A cache size bound in bytes from ``2G``, ``500M``, ``1.5GiB``, ``64k`` or a number of bytes
    (K, M, G, T are powers of 1024); ``-1`` means no bound. ``name`` is the setting named in the
    error for anything else (zero included: ``JAXRL_NO_COMPILE_CACHE=1`` turns the cache off)."""
    text = str(value).strip()
    if text == "-1":
        return -1
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", text, re.IGNORECASE)
    size = int(float(match[1]) * _UNITS[match[2].lower()]) if match else 0
    if size < 1:
        raise ConfigError(f"{name}={value!r}: expected a cache size such as 2G, 500M or a number of "
                          f"bytes, or -1 for no bound (to turn the cache off, set {ENV_OFF}=1)")
    return size


def enable_compilation_cache(directory: str | Path | None = None, enabled: bool = True,
                             max_size: int | str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache; returns the cache dir in use (None: off).

    The programs go to ``directory/<cpu_tag()>``; ``directory`` defaults to
    :func:`default_cache_dir`. Nothing changes when ``enabled`` is False or
    ``JAXRL_NO_COMPILE_CACHE`` is set to anything but ``""``/``0``, and a cache dir the user
    already gave JAX is kept (and returned), with JAX's own settings. A folder that cannot be
    written turns the cache off with a warning.

    The folder holds at most ``max_size`` bytes (see :func:`parse_size`; ``-1``: no bound),
    else ``$JAXRL_CACHE_MAX_SIZE``, else JAX's ``jax_compilation_cache_max_size`` where the user
    set it, else 2 GiB; the least recently used programs are dropped first (:class:`BoundedCache`).
    A bad size raises :class:`~jaxrl.config.ConfigError` before anything changes.
    """
    if not enabled or os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    users = _users_cache_dir()
    if users:
        return users
    if max_size is not None:
        bound = parse_size(max_size, "max_size")
    else:
        bound = parse_size(os.environ[ENV_MAX_SIZE]) if os.environ.get(ENV_MAX_SIZE) else None
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
    _hand_to_jax(path, bound)
    return path


def _hand_to_jax(path: str, bound: int | None) -> None:
    """Make JAX keep the cache folder ``path`` with a :class:`BoundedCache` (``bound`` None: JAX's
    ``jax_compilation_cache_max_size`` if not -1, else :data:`DEFAULT_MAX_SIZE`).

    JAX builds its store when it first compiles with a cache dir set, by calling
    ``jax._src.compilation_cache.get_file_cache(dir)`` (private, checked for jax 0.9.2);
    wrapping that function leaves any other cache dir to JAX's own store.
    """
    import jax

    try:
        from jax._src import compilation_cache as jax_cache

        jax_get_file_cache = jax_cache.get_file_cache
        verifying_cache = jax_cache.VerificationCache
    except (ImportError, AttributeError):
        warnings.warn(f"jax {jax.__version__} keeps its cache another way: the compilation cache in "
                      f"{path} is not bounded and a damaged entry in it warns at each run", stacklevel=3)
        return
    if bound is None:
        bound = jax.config.jax_compilation_cache_max_size
        bound = DEFAULT_MAX_SIZE if bound == -1 else bound
    if path in _stores:  # enabled again: JAX may already hold this store
        _stores[path].max_size = bound
    else:
        _stores[path] = BoundedCache(path, bound)
    _stores[path].shrink()  # a lower bound than last time holds from now on
    if getattr(jax_get_file_cache, "jaxrl", False):
        return  # already wrapped

    def get_file_cache(cache_dir: str) -> tuple[object, str] | None:
        store = _stores.get(str(cache_dir))
        if store is None:
            return jax_get_file_cache(cache_dir)
        return (verifying_cache(store) if jax.config.jax_compilation_cache_check_contents else store), cache_dir

    get_file_cache.jaxrl = True
    jax_cache.get_file_cache = get_file_cache


class BoundedCache:
    """JAX's persistent cache store for one folder (JAX's ``CacheInterface``: ``get``/``put``),
    holding at most ``max_size`` bytes (-1: no bound).

    An entry is JAX's compressed program in ``<key>-cache``, as JAX's own store writes it, so
    either store reads the other's entries. Unlike JAX's store:

    * a write goes to a ``.partial-*`` file first and is renamed over the entry when complete,
      so no process ever reads a half-written entry; a write killed midway leaves only that
      partial file, which counts towards the bound and, being old, goes first;
    * an entry that does not decompress (cut short: written in place by a process killed
      midway) is deleted when read and reported as missing: JAX compiles the program and
      writes it again, instead of warning at every run;
    * after each write, the least recently used files (by modification time, which a read
      updates) are deleted until the folder holds at most ``max_size`` bytes. A program larger
      than that is not stored (with a warning).

    Several processes may share the folder: each step is one atomic file operation, and a file
    another process deleted meanwhile counts as missing. No lock is needed (JAX's bounded store
    needs the ``filelock`` package); two processes evicting at once may delete a little more
    than needed, which only costs a compile later.
    """

    ENTRY = "-cache"
    PARTIAL = ".partial-"

    def __init__(self, path: str | Path, max_size: int):
        self._path = Path(path)  # the attribute name JAX's stores use
        self.max_size = max_size

    def get(self, key: str) -> bytes | None:
        """The entry stored under ``key``; None if there is none or it is damaged (then deleted)."""
        entry = self._path / f"{key}{self.ENTRY}"
        try:
            data = entry.read_bytes()
        except FileNotFoundError:
            return None
        if not _decompresses(data):
            with contextlib.suppress(OSError):  # else the write after the compile replaces it
                entry.unlink()
            _log.info("compilation cache: %s was cut short (%d bytes); compiling it again", entry, len(data))
            return None
        with contextlib.suppress(OSError):  # e.g. deleted by another process meanwhile
            os.utime(entry)  # recently used: evicted last
        return data

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (replacing what is there), then keep to the size bound."""
        if 0 <= self.max_size < len(value):
            warnings.warn(f"compilation cache: {key} is not stored: its {len(value):,} bytes exceed the "
                          f"cache's bound of {self.max_size:,} bytes ({ENV_MAX_SIZE})", stacklevel=2)
            return
        entry = self._path / f"{key}{self.ENTRY}"
        partial = self._path / f"{self.PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(partial, "xb") as file:
                file.write(value)
            os.replace(partial, entry)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.shrink(keep=entry.name)

    def shrink(self, keep: str = "") -> None:
        """Delete the least recently used entries and partial writes (but not the file named
        ``keep``) until the folder's entries and partial writes take at most ``max_size`` bytes."""
        if self.max_size < 0:
            return
        files = []
        with os.scandir(self._path) as listing:
            for file in listing:
                if file.name.endswith(self.ENTRY) or file.name.startswith(self.PARTIAL):
                    with contextlib.suppress(FileNotFoundError):
                        stat = file.stat()
                        files.append((stat.st_mtime_ns, file.name, stat.st_size))
        total = sum(size for _, _, size in files)
        for _, name, size in sorted(files):
            if total <= self.max_size:
                break
            if name == keep:
                continue
            try:
                (self._path / name).unlink()
            except FileNotFoundError:
                pass  # deleted by another process meanwhile
            except OSError:
                continue  # not ours to delete (a folder shared between users): it stays
            total -= size


def _decompresses(data: bytes) -> bool:
    """Whether ``data`` decompresses as JAX's cache entries do (a cut-short entry does not)."""
    from jax._src import compilation_cache as jax_cache

    try:
        jax_cache.decompress_executable(data)
    except Exception:  # zlib.error, zstd's errors
        return False
    return True


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
