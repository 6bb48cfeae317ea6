"""Test configuration: 8 virtual CPU devices, persistent compile cache, fixture lookup.

`F3D_FIXTURES` points at the shared golden data (default `../shared/fixtures` relative to the
repository root). Locally a missing fixture skips the test; under `CI=true` it fails it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

# Must happen before any JAX op: sharding tests run on 8 virtual CPU devices, never skip.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO_ROOT = Path(__file__).resolve().parent.parent
_cache = REPO_ROOT / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402

FIXTURES = Path(os.environ.get("F3D_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")).resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def fixture_path(*parts: str) -> Path:
    """Path of a shared fixture; skips locally / fails under CI=true when it is missing."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        msg = f"missing fixture {p} (set F3D_FIXTURES)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return fixture_path()
