"""Atomic saving: `save_model(..., overwrite=True)` interrupted at every filesystem step leaves a
destination that loads to the old or the new params; the next save cleans up; relative paths work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import f3d_jax
import f3d_jax.io.atomic as atomic
import f3d_jax.weights.loading as loading
from f3d_jax.io.atomic import atomic_open, atomic_write_text, backup_path

from .test_config_validation import tiny_model


class Injected(OSError):
    """The fault raised at the chosen step."""


class _Faults:
    """Counts the filesystem steps of a save and raises `Injected` at step `fail_at`.

    `kill`: every later step fails too, so cleanup handlers can change nothing: the directory is
    left as a process killed at that step would leave it.
    """

    def __init__(self, fail_at: int | None, kill: bool):
        self.fail_at, self.kill, self.steps = fail_at, kill, []

    def step(self, name: str) -> None:
        self.steps.append(name)
        n = len(self.steps)
        if self.fail_at is not None and (n == self.fail_at or (self.kill and n > self.fail_at)):
            raise Injected(f"injected fault at step {n} ({name})")

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            self.step(name)
            return fn(*args, **kwargs)

        return wrapped


class _Proxy:
    """A module whose listed functions are replaced; everything else is the real module's."""

    def __init__(self, module, **overrides):
        self._module, self._overrides = module, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._module, name)


_OS_STEPS = ("replace", "rename", "makedirs", "mkdir", "open", "unlink", "remove", "rmdir", "fsync", "fdopen")


def _install(monkeypatch, faults: _Faults) -> None:
    monkeypatch.setattr(atomic, "os", _Proxy(os, **{n: faults.wrap(f"os.{n}", getattr(os, n)) for n in _OS_STEPS}))
    monkeypatch.setattr(atomic, "shutil", _Proxy(shutil, rmtree=faults.wrap("shutil.rmtree", shutil.rmtree)))
    monkeypatch.setattr(loading, "_save_params", faults.wrap("orbax save", loading._save_params))


def _params_of(model) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(model.params)]


def _equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def models():
    return tiny_model(0.0), tiny_model(1000.0), tiny_model(2000.0)


@pytest.fixture(scope="module")
def saved_old(tmp_path_factory, models) -> Path:
    return f3d_jax.save_model(models[0], tmp_path_factory.mktemp("old") / "ckpt")


def test_fault_at_every_step_of_an_overwriting_save(tmp_path, monkeypatch, models, saved_old):
    old, new, newer = models
    want_old, want_new, want_newer = _params_of(old), _params_of(new), _params_of(newer)

    # a clean run counts the steps (and checks the bookkeeping of a successful overwrite)
    clean = tmp_path / "clean"
    shutil.copytree(saved_old, clean / "ckpt")
    faults = _Faults(None, kill=False)
    with monkeypatch.context() as m:
        _install(m, faults)
        f3d_jax.save_model(new, clean / "ckpt", overwrite=True)
    n_steps = len(faults.steps)
    assert {"orbax save", "os.mkdir", "os.open", "os.replace", "shutil.rmtree"} <= set(faults.steps), faults.steps
    assert n_steps >= 8, faults.steps
    assert _equal(_params_of(f3d_jax.load_model(clean / "ckpt")), want_new)
    assert sorted(p.name for p in clean.iterdir()) == ["ckpt"]

    outcomes = set()
    for kill in (False, True):
        for k in range(1, n_steps + 1):
            case = tmp_path / f"{'kill' if kill else 'error'}{k}"
            dst = case / "ckpt"
            shutil.copytree(saved_old, dst)
            faults = _Faults(k, kill)
            with monkeypatch.context() as m:
                _install(m, faults)
                try:
                    f3d_jax.save_model(new, dst, overwrite=True)
                except Injected:
                    pass
            where = f"{'kill' if kill else 'error'} at step {k} ({faults.steps[k - 1]})"
            got = _params_of(f3d_jax.load_model(dst))  # dst, or the backup of an interrupted save
            is_old, is_new = _equal(got, want_old), _equal(got, want_new)
            assert is_old or is_new, where
            outcomes.add("old" if is_old else "new")
            # the next save cleans every leftover and installs its own params
            f3d_jax.save_model(newer, dst, overwrite=True)
            assert sorted(p.name for p in case.iterdir()) == ["ckpt"], where
            if kill:  # (the error runs leave a subset of the kill runs' states)
                assert _equal(_params_of(f3d_jax.load_model(dst)), want_newer), where
    assert outcomes == {"old", "new"}  # faults landed both before and after the switch


def test_loader_reads_the_backup_of_an_interrupted_save(tmp_path, models, saved_old):
    dst = tmp_path / "ckpt"
    shutil.copytree(saved_old, backup_path(dst))  # killed between "dst -> backup" and "new -> dst"
    assert not dst.exists()
    assert _equal(_params_of(f3d_jax.load_model(dst)), _params_of(models[0]))
    with pytest.raises(FileExistsError):  # the backup is the user's checkpoint: restored, not overwritten
        f3d_jax.save_model(models[1], dst)
    assert dst.is_dir() and not backup_path(dst).exists()
    assert _equal(_params_of(f3d_jax.load_model(dst)), _params_of(models[0]))


def test_leftovers_of_interrupted_saves_are_cleaned(tmp_path, models, saved_old):
    dst = tmp_path / "ckpt"
    shutil.copytree(saved_old, dst)
    shutil.copytree(saved_old, backup_path(dst))  # stale: the new one was already in place
    (tmp_path / ".ckpt.f3d-tmp-abc123").mkdir()  # a half-written temporary directory
    (tmp_path / ".ckpt.f3d-tmp-abc123" / "junk").write_bytes(b"x")
    (tmp_path / ".ckpt.f3d-tmp-trash-1").write_bytes(b"x")
    (tmp_path / "other").write_bytes(b"keep")  # not ours: untouched
    f3d_jax.save_model(models[1], dst, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "other"]
    assert _equal(_params_of(f3d_jax.load_model(dst)), _params_of(models[1]))


def test_relative_paths_save_and_load(tmp_path, monkeypatch, models):
    monkeypatch.chdir(tmp_path)
    dst = f3d_jax.save_model(models[0], "out/model")
    assert dst == tmp_path / "out" / "model" and dst.is_absolute()
    umask = os.umask(0o022)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # not the 0o700 of a private temporary dir
    assert _equal(_params_of(f3d_jax.load_model("out/model")), _params_of(models[0]))
    f3d_jax.save_model(models[1], Path("out") / "model", overwrite=True)
    assert _equal(_params_of(f3d_jax.load_model(Path("out/model"))), _params_of(models[1]))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]


def test_atomic_file_writes(tmp_path):
    f = tmp_path / "a.npz"
    with atomic_open(f) as fh:
        np.savez(fh, x=np.arange(3))
    np.testing.assert_array_equal(np.load(f)["x"], np.arange(3))
    umask = os.umask(0o022)
    os.umask(umask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask  # the permissions of any new file, not 0o600
    with pytest.raises(RuntimeError), atomic_open(f) as fh:  # fails mid-write: the old file stays whole
        fh.write(b"partial")
        raise RuntimeError("interrupted")
    np.testing.assert_array_equal(np.load(f)["x"], np.arange(3))
    atomic_write_text(tmp_path / "t.json", '{"a": 1}')
    assert (tmp_path / "t.json").read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "t.json"]  # no temporary left
