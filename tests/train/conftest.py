"""Shared pieces of the training-loop tests: the tiny CroCo config of experiments/configs/tiny_croco.py (read
as a file: tests never import experiments/), so that every test compiling its step shares one compilation
through the persistent compile cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from f3d_jax.train.config import TrainConfig, load_config

TINY = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "tiny_croco.py"


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    """tiny_croco on one device, no async save (tests read the files right after)."""
    return load_config(TINY).replace(mesh_data=1, mesh_fsdp=1, async_save=False)
