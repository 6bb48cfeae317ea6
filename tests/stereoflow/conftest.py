"""Stereo/flow fixtures: each case's checkpoint decompressed and loaded once per session."""

from __future__ import annotations

import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import fixture_path

CASES = ("crocostereo", "crocoflow")


@pytest.fixture(scope="session")
def sf_pth(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`sf_pth(case)`: the case's checkpoint.pth, decompressed once."""
    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            dst = tmp_path_factory.mktemp(f"sf_{case}") / "checkpoint.pth"
            with lzma.open(fixture_path("stereoflow", case, "checkpoint.pth.xz")) as f, open(dst, "wb") as g:
                shutil.copyfileobj(f, g, 1 << 20)
            cache[case] = dst
        return cache[case]

    return get


@pytest.fixture(scope="session")
def sf_model(sf_pth) -> Callable[[str], object]:
    import f3d_jax

    cache: dict[str, object] = {}

    def get(case: str):
        if case not in cache:
            cache[case] = f3d_jax.load_model(sf_pth(case))
        return cache[case]

    return get


@pytest.fixture(scope="session")
def sf_npz() -> Callable[[str, str], dict]:
    """`sf_npz(case, 'inputs' | 'outputs' | 'intermediates')` as a dict of arrays."""
    cache: dict[tuple[str, str], dict] = {}

    def get(case: str, name: str) -> dict:
        if (case, name) not in cache:
            with np.load(fixture_path("stereoflow", case, f"{name}.npz")) as z:
                cache[case, name] = {k: z[k] for k in z.files}
        return cache[case, name]

    return get


def nhwc(a: np.ndarray) -> np.ndarray:
    """NCHW (or (T, B, C, h, w)) fixture array -> channels last."""
    return np.moveaxis(a, -3, -1)


def assert_head_close(got, ref, what: str = "") -> None:
    """README tolerance of the DPT head outputs and the tiled results."""
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=3e-5 * max(1.0, float(np.abs(ref).max())),
                               err_msg=what)


def assert_backbone_close(got, ref, what: str = "") -> None:
    """README tolerance of the encoder/decoder intermediates (float32 floor 1.1e-6)."""
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=3e-6 * float(np.abs(ref).max()), err_msg=what)
