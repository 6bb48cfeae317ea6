"""The persistent compilation cache: on by default in a user cache folder (here a temporary XDG_CACHE_HOME, never
the real one), opt-out, a configured folder kept, and a second process with the same shapes compiles nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import f3d_jax
from f3d_jax import compile_cache

REPO = Path(__file__).resolve().parents[2]

# a second process must load this program instead of compiling it; the script prints what it did
_SCRIPT = """
import f3d_jax, jax, jax.numpy as jnp
from f3d_jax.cli.timing import StageClock
from f3d_jax.compile_cache import compile_cache_dir
with StageClock() as clock:
    with clock.stage("run"):
        f = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ x.T) + i, x).sum())
        f(jnp.ones((64, 64))).block_until_ready()
print(compile_cache_dir(), clock.cache_hits, round(clock.total_compile_s, 3))
"""


def _child(env_extra: dict[str, str], tmp_path: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "F3D_NO_COMPILE_CACHE")}
    env.update({"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env_extra})
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_second_process_loads_instead_of_compiling(tmp_path):
    xdg = tmp_path / "xdg"
    first = _child({"XDG_CACHE_HOME": str(xdg)}, tmp_path)
    assert first[0] == str(xdg / "f3d-jax" / "xla") and first[1] == "0" and float(first[2]) > 0
    assert any((xdg / "f3d-jax" / "xla").iterdir())
    second = _child({"XDG_CACHE_HOME": str(xdg)}, tmp_path)
    # what is left is the cache lookup itself (hashing the program), not a compilation
    assert int(second[1]) >= 1 and float(second[2]) < 0.2 * float(first[2]), (first, second)


def test_default_folder_and_switches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == tmp_path / "f3d-jax" / "xla"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert compile_cache.default_cache_dir() == Path.home() / ".cache" / "f3d-jax" / "xla"

    configured = jax.config.jax_compilation_cache_dir  # the test suite's own folder (conftest)
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    assert configured and Path(configured).name == ".jax_cache"
    try:
        # a folder already configured is kept (the user's choice, and the tests' own folder)
        assert compile_cache.enable_compile_cache(tmp_path / "other", replace=False) == Path(configured)
        assert jax.config.jax_compilation_cache_dir == configured
        monkeypatch.setenv("F3D_NO_COMPILE_CACHE", "1")
        assert f3d_jax.enable_compile_cache(tmp_path / "other") is None
        assert jax.config.jax_compilation_cache_dir == configured
        monkeypatch.delenv("F3D_NO_COMPILE_CACHE")
        assert f3d_jax.enable_compile_cache(tmp_path / "other") == tmp_path / "other"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "other")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_S
        f3d_jax.disable_compile_cache()
        assert jax.config.jax_compilation_cache_dir is None and compile_cache.compile_cache_dir() is None
    finally:
        compile_cache.enable_compile_cache(configured, min_compile_time_s=min_time)
    assert jax.config.jax_compilation_cache_dir == configured


@pytest.mark.parametrize("value, off", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_opt_out_values(monkeypatch, value, off):
    monkeypatch.setenv("F3D_NO_COMPILE_CACHE", value)
    assert compile_cache._opted_out() is off
