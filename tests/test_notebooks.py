"""The Colab notebooks run: each `colab/*.ipynb` is executed top to bottom in a fresh kernel (nbclient) on the
tiny fixture checkpoint and fixture photos (`F3D_NOTEBOOK_TEST=1`), and each is in sync with its jupytext
`.py` source (the file people edit and review).

The notebooks hold their own checks (asserts on what they compute); here: no cell fails, the expected outputs
and files are there, the install cell is guarded so that it does nothing outside Colab, and the committed
notebooks carry no outputs.
"""

from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import fixture_path
from tests.sfm.tiny import write_tiny_mast3r

REPO = Path(__file__).resolve().parent.parent
COLAB = REPO / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
PHOTOS = ("Chateau1.png", "Chateau2.png", "exif_orientation6.jpg")  # 224 px: the notebooks run at size 224


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_has_its_jupytext_pair_in_sync():
    sources = sorted(p.stem for p in COLAB.glob("*.py"))
    assert NOTEBOOKS and sources == [Path(n).stem for n in NOTEBOOKS], "each colab/X.ipynb pairs with colab/X.py"
    for name in NOTEBOOKS:
        nb = nbformat.read(COLAB / name, as_version=4)
        py = jupytext.read(COLAB / name.replace(".ipynb", ".py"))
        assert _cells(nb) == _cells(py), f"{name} and its .py differ: run `jupytext --sync colab/{name}`"
        assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", name
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells
                   if c.cell_type == "code"), f"{name}: commit it without outputs"
        first_code = next(c.source for c in nb.cells if c.cell_type == "code")
        assert 'if "google.colab" in sys.modules:' in first_code and "-c" in first_code, \
            f"{name}: the first code cell installs f3d-jax on Colab only, with jax pinned as a constraint"


@pytest.fixture(scope="module")
def notebook_inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("notebook_inputs")
    ckpt = root / "tiny_dust3r.pth"
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(ckpt, "wb") as g:
        shutil.copyfileobj(f, g)
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(fixture_path("networks", "image_preprocessing", "photos", name), photos / name)
    mast3r = write_tiny_mast3r(fixture_path("networks", "mast3r", "hf"), root / "tiny_mast3r")
    return {"F3D_NOTEBOOK_TEST": "1", "F3D_NOTEBOOK_CHECKPOINT": str(ckpt), "F3D_NOTEBOOK_IMAGES": str(photos),
            "F3D_NOTEBOOK_MAST3R": str(mast3r)}


# notebooks that run on the suite's 8 virtual CPU devices, so that their programs are those tests/sfm compiled
# (same model, photos, sizes and batches: read from the shared compilation cache instead of compiled again)
MESH_OF_THE_SUITE = ("04_sfm_to_colmap.ipynb", "05_matching.ipynb")

# what each notebook must have shown or written (besides running without error and its own asserts)
EXPECTED = {
    "01_pair_to_pointmaps.ipynb": dict(text=("pred1 pts3d (2, 224, 224, 3)", "confidence"), image=True, files=()),
    "02_multiview_to_exports.ipynb": dict(text=("final loss",), image=True, files=("out/reconstruction.npz",)),
    "03_convert_to_orbax.ipynb": dict(text=("params identical: ", "outputs identical"), image=False,
                                      files=("converted/dust3r_orbax", "converted/dust3r_orbax_bf16")),
    # the MASt3R notebooks run at 64 px on the tiny MASt3R (shapes of tests/sfm: compiled code shared)
    "04_sfm_to_colmap.ipynb": dict(text=("graph complete", "COLMAP points from", "pycolmap: 3 registered images",
                                         "{'encoder_passes': 1, 'chunks': 1, 'pairs_decoded': 6"),
                                   image=True, files=("out/colmap/sparse/0/points3D.bin", "out/reconstruction.npz")),
    "05_matching.ipynb": dict(text=("matches between Chateau1.png and Chateau2.png", "original photos"), image=True,
                              files=()),
    # fine-tunes the tiny DUSt3R fixture checkpoint for 3 updates on 64x48 synthetic pairs (grain pipeline)
    "06_finetune.ipynb": dict(text=("pretrained ", "loaded 133 arrays, missing 0", "steps 0 -> 3, final loss",
                                    "params reloaded identical"),
                              image=True, files=("finetune_run/metrics.jsonl", "finetune_run/checkpoints/3",
                                                 "finetuned_model")),
}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, notebook_inputs, tmp_path, monkeypatch):
    for key, value in notebook_inputs.items():
        monkeypatch.setenv(key, value)
    # the kernel imports this checkout's package, on the CPU, sharing the suite's compilation cache (the three
    # notebooks run the same tiny model on the same shapes: the first compiles, the others read the cache)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    if name in MESH_OF_THE_SUITE:
        monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "8")
    nb = nbformat.read(COLAB / name, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    text += "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    expected = EXPECTED[name]
    for snippet in expected["text"]:
        assert snippet in text, f"{name}: no {snippet!r} in its output:\n{text[-3000:]}"
    if expected["image"]:
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no image shown"
    for rel in expected["files"]:
        assert (tmp_path / rel).exists(), f"{name}: did not write {rel}"
