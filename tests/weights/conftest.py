"""Shared fixtures for the weight-reader tests: fixture checkpoints decompressed once per session."""

from __future__ import annotations

import json
import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import fixture_path

MODEL_CASES = ("croco_v1", "croco_v2", "dust3r_linear", "dust3r_dpt", "mast3r")
HF_CASES = ("dust3r_linear", "dust3r_dpt", "mast3r")


def _unxz(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(src) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)
    return dst


@pytest.fixture(scope="session")
def case_meta() -> Callable[[str], dict]:
    def get(case: str) -> dict:
        return json.loads(fixture_path("networks", case, "meta.json").read_text())

    return get


@pytest.fixture(scope="session")
def pth_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`pth_file(case)`: the case's checkpoint.pth, decompressed (once) into a temp folder."""
    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            src = fixture_path("networks", case, "checkpoint.pth.xz")
            cache[case] = _unxz(src, tmp_path_factory.mktemp(f"pth_{case}") / "checkpoint.pth")
        return cache[case]

    return get


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`hf_folder(case)`: the case's HF folder (config.json, README.md, model.safetensors)."""
    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            src = fixture_path("networks", case, "hf")
            dst = tmp_path_factory.mktemp(f"hf_{case}")
            for name in ("config.json", "README.md"):
                shutil.copyfile(src / name, dst / name)
            _unxz(src / "model.safetensors.xz", dst / "model.safetensors")
            cache[case] = dst
        return cache[case]

    return get
