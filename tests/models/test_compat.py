"""f3d_jax.nn.compat: a flax that does not import with the installed jax is one clear error."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from f3d_jax.nn import compat


def test_nnx_is_flax_nnx():
    import flax.nnx

    assert compat.nnx is flax.nnx


def _fake_flax(tmp_path, monkeypatch, body: str) -> str:
    """A package `fakeflax_compat` whose `nnx` module runs `body` at import (what flax 0.12.8 does on jax 0.11.1+)."""
    pkg = tmp_path / "fakeflax_compat"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nnx.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakeflax_compat", raising=False)
    monkeypatch.delitem(sys.modules, "fakeflax_compat.nnx", raising=False)
    return "fakeflax_compat.nnx"


@pytest.mark.parametrize("body, cause", [
    # the real failure of flax 0.12.8 under jax >= 0.11.1
    ("raise AttributeError(\"module 'jax.experimental.hijax' has no attribute 'HiPrimitive'\")", "AttributeError"),
    ("from jax.experimental import no_such_module_f3d", "ImportError"),
])
def test_mismatched_flax_names_both_versions_and_the_fix(tmp_path, monkeypatch, body, cause):
    module = _fake_flax(tmp_path, monkeypatch, body)
    with pytest.raises(ImportError) as e:
        compat.import_nnx(module)
    msg = str(e.value)
    assert f"flax {metadata.version('flax')} does not import with jax {metadata.version('jax')}" in msg
    assert f"({cause}:" in msg
    # the fix keeps the installed jax pinned, so pip cannot replace it
    assert f"pip install 'flax>=0.12.9,<0.13' 'jax=={metadata.version('jax')}'" in msg
    assert f"pip install 'flax==0.12.8' 'jax=={metadata.version('jax')}'" in msg


def test_a_working_module_is_returned(tmp_path, monkeypatch):
    module = _fake_flax(tmp_path, monkeypatch, "MARK = 7\n")
    assert compat.import_nnx(module).MARK == 7
