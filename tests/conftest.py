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
# subprocesses (the README's `f3d demo`, ...) use the same folder: never the user's own cache (f3d_jax keeps a
# configured folder instead of its default one, see f3d_jax.compile_cache)
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import json  # noqa: E402
import lzma  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(os.environ.get("F3D_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")).resolve()
# every released network checkpoint (the names of ../shared/fixtures/networks/manifests, retrieval excluded)
RELEASED_NETWORKS = (
    "CroCo",
    "CroCo_V2_ViTBase_SmallDecoder",
    "CroCo_V2_ViTBase_BaseDecoder",
    "CroCo_V2_ViTLarge_BaseDecoder",
    "DUSt3R_ViTLarge_BaseDecoder_224_linear",
    "DUSt3R_ViTLarge_BaseDecoder_512_linear",
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
)
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


# -- network fixtures decompressed once per session (weight files are xz-compressed) ----------

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
