"""The one place where the package meets version differences of its JAX stack.

Supported: jax 0.10.2 to 0.12.x with a flax that imports with it (flax 0.12.8 up to jax 0.11.0, flax 0.12.9+
from jax 0.11.1 on: flax 0.12.8 fails inside `flax.nnx` on jax >= 0.11.1, `jax.experimental.hijax` having
lost `HiPrimitive`, and flax 0.12.9+ requires jax >= 0.11.1). Pip cannot express that pairing in this
package's metadata, so an environment can still hold a pair that does not import; every module imports
`nnx` from here, and such a pair is then one clear error naming both versions and the fix, instead of an
AttributeError deep inside flax.

Everything here is feature detection (try the import), never a version comparison; versions only go into
the message.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

__all__ = ["nnx"]


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def import_nnx(module: str = "flax.nnx") -> ModuleType:
    """`flax.nnx`, or an ImportError that names the installed flax and jax and the pip command that
    installs a matching flax. `module` is only replaced by tests."""
    try:
        return importlib.import_module(module)
    except (ImportError, AttributeError) as e:  # a flax older than the jax API it calls fails with AttributeError
        flax_v, jax_v = _installed("flax"), _installed("jax")
        raise ImportError(
            f"flax {flax_v} does not import with jax {jax_v} ({type(e).__name__}: {e}). "
            "Install the flax that matches this jax, keeping jax as it is: "
            f"pip install 'flax>=0.12.9,<0.13' 'jax=={jax_v}' (jax 0.11.1 or newer), "
            f"or pip install 'flax==0.12.8' 'jax=={jax_v}' (jax 0.10.2 to 0.11.0)."
        ) from e


nnx = import_nnx()
