"""Compilation is paid once: JAX's persistent compilation cache in a user cache folder.

A first run compiles the alignment loop and the network steps for its image sizes (seconds each on a CPU); with
the cache, any later process with the same shapes, backend and jax version loads the compiled code from disk.

On by default, for `f3d` and for the Python API: importing `f3d_jax` points JAX at
`default_cache_dir()` (`$XDG_CACHE_HOME/f3d-jax/xla`, else `~/.cache/f3d-jax/xla`) unless

- the environment sets `F3D_NO_COMPILE_CACHE=1` (opt out), or
- a cache folder is already configured (`JAX_COMPILATION_CACHE_DIR`, or `jax.config` before `f3d_jax` is
  imported): a user's own setting is never replaced.

If jax is not imported yet this only sets environment variables that jax reads when it is imported
(`JAX_COMPILATION_CACHE_DIR`, `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`; child processes inherit them), so
`import f3d_jax` stays cheap. `disable_compile_cache()` turns it off in a running process,
`enable_compile_cache(path)` points it elsewhere. The folder grows with every new shape and jax version (JAX's
default: no size limit); deleting it is always safe.

This module imports only the standard library at import time (jax inside the functions).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["OPT_OUT_ENV", "MIN_COMPILE_TIME_S", "compile_cache_dir", "default_cache_dir", "disable_compile_cache",
           "enable_compile_cache"]

OPT_OUT_ENV = "F3D_NO_COMPILE_CACHE"
# Every compiled program is written (JAX's default skips those under 1 s): `f3d demo` then writes ~30 entries
# (~0.3 MB), and a second run compiles nothing, where a 0.2 s threshold still left ~2 s of small compilations.
MIN_COMPILE_TIME_S = 0.0
_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/f3d-jax/xla` (a relative or empty XDG_CACHE_HOME is ignored, per the XDG spec), else
    `~/.cache/f3d-jax/xla`."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "f3d-jax" / "xla"


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def compile_cache_dir() -> str | None:
    """The persistent cache folder JAX uses (or will use once imported), or None when the cache is off."""
    jax = sys.modules.get("jax")
    if jax is not None:
        return jax.config.jax_compilation_cache_dir or None
    return os.environ.get(_DIR_ENV) or None


def enable_compile_cache(path: str | os.PathLike | None = None, *, min_compile_time_s: float = MIN_COMPILE_TIME_S,
                         replace: bool = True) -> Path | None:
    """Turns JAX's persistent compilation cache on, in `path` (default `default_cache_dir()`).

    Args:
      path: the cache folder (created by JAX on first use).
      min_compile_time_s: programs compiled faster than this are not written.
      replace: False keeps a folder that is already configured (and then returns it).
    Returns:
      The folder in use, or None when `F3D_NO_COMPILE_CACHE` opts out (then nothing is changed).
    """
    if _opted_out():
        return None
    current = compile_cache_dir()
    if current and not replace:
        return Path(current)
    folder = Path(path) if path is not None else default_cache_dir()
    folder = Path(os.path.abspath(folder))
    jax = sys.modules.get("jax")
    if jax is None:  # read by jax when it is imported
        os.environ[_DIR_ENV] = str(folder)
        os.environ[_MIN_TIME_ENV] = str(float(min_compile_time_s))
        return folder
    from jax.experimental.compilation_cache import compilation_cache

    if current != str(folder):
        compilation_cache.reset_cache()  # JAX initialises its cache object once: forget the old folder
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return folder


def disable_compile_cache() -> None:
    """Turns the persistent compilation cache off in this process (and for jax imported later)."""
    os.environ.pop(_DIR_ENV, None)
    jax = sys.modules.get("jax")
    if jax is not None:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


def enable_by_default() -> None:
    """What `import f3d_jax` runs: `enable_compile_cache(replace=False)`; never raises (a cache is an
    optimisation: an odd environment must not break the import)."""
    try:
        enable_compile_cache(replace=False)
    except Exception:  # noqa: BLE001
        pass
