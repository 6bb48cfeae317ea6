"""The `f3d` command line: conversion round trip, listing, and one-line errors on bad input."""

from __future__ import annotations

import lzma
import shutil

import jax
import numpy as np

from conftest import fixture_path
from f3d_jax.cli.main import main
from f3d_jax.weights.loading import load_model


def test_convert_round_trip(tmp_path, capsys):
    pth = tmp_path / "checkpoint.pth"
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(pth, "wb") as g:
        shutil.copyfileobj(f, g)
    assert main(["convert", str(pth), str(tmp_path / "orbax")]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b = load_model(pth), load_model(tmp_path / "orbax")
    assert a.config == b.config
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # an existing destination needs --overwrite: one line, exit 2
    assert main(["convert", str(pth), str(tmp_path / "orbax")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(pth), str(tmp_path / "orbax"), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert jax.tree.leaves(load_model(tmp_path / "orbax").params)[0].dtype == jax.numpy.bfloat16


def test_convert_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_checkpoints_lists_the_releases(capsys):
    assert main(["checkpoints", "--family", "mast3r"]) == 0
    rows = [r.split("\t") for r in capsys.readouterr().out.strip().splitlines()]
    assert ["MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", "mast3r",
            "naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", "CC BY-NC-SA 4.0"] in rows
