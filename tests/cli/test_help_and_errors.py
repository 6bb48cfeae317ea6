"""`f3d` subcommands: every option is documented with its default, and every bad input ends in one line on stderr
and a non-zero exit, with no traceback and nothing left half-written."""

from __future__ import annotations

import dataclasses
import errno
import lzma
import re
import shutil
import typing

import PIL.Image
import numpy as np
import pytest

from conftest import fixture_path
from f3d_jax.cli import run as cli_run
from f3d_jax.cli.main import main
from f3d_jax.cli.options import COMMANDS, FORMATS, AlignOptions
from f3d_jax.io import atomic

_BOX = re.compile(r"[│╭╮╰╯─•]")


def _flags(cls: type, prefix_omitted: bool = True) -> dict[str, object]:
    """`--flag` -> default (or `None`-able required marker) of every field, nested option groups flattened."""
    out: dict[str, object] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            out.update(_flags(type(f.default)))
            continue
        meta = getattr(hints[f.name], "__metadata__", ())
        positional = any("Positional" in repr(m) for m in meta)
        if positional:
            continue
        out[f"--{f.name.replace('_', '-')}"] = f.default
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_option_with_its_default(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(_BOX.sub(" ", capsys.readouterr().out).split())
    assert text.startswith(f"usage: f3d {command}")
    text = text[text.index("show this help message and exit"):]  # the options (the description may name flags)
    flags = _flags(COMMANDS[command])
    # cut the help into one segment per option: each must say its default (or that it is required)
    starts = sorted((m.start(), m.group(0)) for flag in flags
                    for m in [re.search(re.escape(flag) + r"(?=[ ,])", text)] if m)
    assert [s[1] for s in starts] and {s[1] for s in starts} == set(flags), set(flags) - {s[1] for s in starts}
    for (pos, flag), nxt in zip(starts, starts[1:] + [(len(text), "")]):
        segment = text[pos:nxt[0]]
        default = flags[flag]
        if default is dataclasses.MISSING:
            assert "(required)" in segment, segment
        else:
            shown = " ".join(default) if isinstance(default, tuple) else str(default)
            assert f"(default: {shown})" in segment, segment
        # help text besides the flag, its metavar and the default
        words = re.sub(r"\(default: .*?\)|\(required\)|\{.*?\}|--[\w-]+|[A-Z]{3,}", "", segment).split()
        assert len(words) >= 3, f"{flag}: no help text in {segment!r}"


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    assert main(["--version"]) == 0 and "f3d-jax" in capsys.readouterr().out


def test_align_options_mirror_dense_config():
    from f3d_jax.align.config import DenseConfig
    from f3d_jax.align.losses import PRECISIONS, ROBUST
    from f3d_jax.align.parameterisation import PARAMETERISATIONS
    from f3d_jax.align.schedules import SCHEDULES
    from f3d_jax.export import FORMATS as EXPORT_FORMATS

    dense = {f.name: f.default for f in dataclasses.fields(DenseConfig)}
    mine = {f.name: f.default for f in dataclasses.fields(AlignOptions)}
    assert set(mine) - set(dense) == {"init"}
    assert {k: v for k, v in mine.items() if k != "init"} == {k: dense[k] for k in mine if k != "init"}
    hints = typing.get_type_hints(AlignOptions)
    for name, allowed in (("schedule", SCHEDULES), ("robust", ROBUST), ("precision", PRECISIONS),
                          ("param", tuple(PARAMETERISATIONS)), ("storage_dtype", ("float32", "bfloat16"))):
        assert set(typing.get_args(hints[name])) == set(allowed), name
    assert AlignOptions().dense_config() == DenseConfig()
    assert AlignOptions(niter=7, robust="huber").dense_config() == DenseConfig(niter=7, robust="huber")
    assert set(FORMATS) | {"reconstruction"} == set(EXPORT_FORMATS)  # the CLI always writes reconstruction.npz


# ---------------------------------------------------------------------------------------------------------------
# error paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny official-format checkpoint and two photos (the fixtures' Chateau pair)."""
    root = tmp_path_factory.mktemp("cli_inputs")
    ckpt = root / "tiny.pth"
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(ckpt, "wb") as g:
        shutil.copyfileobj(f, g)
    photos = fixture_path("networks", "image_preprocessing", "photos")
    for name in ("Chateau1.png", "Chateau2.png"):
        shutil.copy(photos / name, root / name)
    return root


def _one_line_error(capsys, code_expected: int, rc: int, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == code_expected, err
    assert "Traceback" not in captured.err + captured.out
    lines = err.splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _reconstruct(inputs, out, *extra: str) -> list[str]:
    return ["reconstruct", str(inputs / "Chateau1.png"), str(inputs / "Chateau2.png"), "--model",
            str(inputs / "tiny.pth"), "--out", str(out), "--size", "128", "--niter", "20", "--quiet", *extra]


def test_missing_model(inputs, tmp_path, capsys):
    rc = main(["reconstruct", str(inputs / "Chateau1.png"), str(inputs / "Chateau2.png"), "--model",
               str(tmp_path / "nope.pth"), "--out", str(tmp_path / "out"), "--quiet"])
    _one_line_error(capsys, 2, rc, "f3d reconstruct: error:", "nope.pth", "no such file")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_unreadable_and_missing_images(inputs, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rc = main(["reconstruct", str(inputs / "Chateau1.png"), str(bad), "--model", str(inputs / "tiny.pth"),
               "--out", str(tmp_path / "out")])
    _one_line_error(capsys, 2, rc, str(bad), "not a readable image")
    rc = main(["reconstruct", str(inputs / "Chateau1.png"), str(tmp_path / "gone.jpg"), "--model",
               str(inputs / "tiny.pth"), "--out", str(tmp_path / "out")])
    _one_line_error(capsys, 2, rc, "gone.jpg", "no such file")
    rc = main(["reconstruct", str(inputs / "Chateau1.png"), "--model", str(inputs / "tiny.pth"), "--out",
               str(tmp_path / "out")])
    _one_line_error(capsys, 2, rc, "at least two images")
    # images that load at different sizes cannot be aligned densely: said after loading, before inference
    PIL.Image.fromarray(np.zeros((300, 200, 3), np.uint8)).save(tmp_path / "portrait.png")
    rc = main(_reconstruct(inputs, tmp_path / "out")[:2] + [str(tmp_path / "portrait.png")]
              + _reconstruct(inputs, tmp_path / "out")[3:])
    _one_line_error(capsys, 2, rc, "different sizes", "portrait.png")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(inputs, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(_reconstruct(inputs, blocker / "out"))
    _one_line_error(capsys, 1, rc, "cannot create the output folder", str(blocker / "out"))

    def denied(dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(atomic, "_make_temp_dir", denied)  # what a read-only folder does (tests may run as root)
    rc = main(_reconstruct(inputs, tmp_path / "out"))
    _one_line_error(capsys, 1, rc, "cannot write the output folder", "Permission denied")
    assert not (tmp_path / "out").exists()
    # a folder that is not an f3d result is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    monkeypatch.undo()
    rc = main(_reconstruct(inputs, mine))
    _one_line_error(capsys, 2, rc, "not an f3d result")
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv, needle", [
    (["--niter", "0"], "--niter must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--graph", "swin-x"], "--graph"),
    (["--graph", "retrieval-x"], "--graph"),
    (["--align", "sparse"], "--align sparse needs a MASt3R model"),
    (["--align", "sparse", "--niter1", "0"], "--niter1 must be >= 1"),
    (["--align", "sparse", "--retrieval", "nowhere.pth", "--graph", "retrieval"], "--retrieval nowhere.pth: no such"),
    (["--align", "sparse", "--retrieval", "{tiny}"], "add --graph retrieval"),
])
def test_bad_option_values_are_one_line(inputs, tmp_path, capsys, argv, needle):
    argv = [a.format(tiny=inputs / "tiny.pth") for a in argv]  # an existing file where one is needed
    rc = main(_reconstruct(inputs, tmp_path / "out", *argv))
    _one_line_error(capsys, 2, rc, needle)


@pytest.mark.parametrize("argv", [["--niter", "abc"], ["--format", "obj"], ["--schedule", "exp"]])
def test_unparsable_option_values_exit_2(inputs, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(_reconstruct(inputs, tmp_path / "out", *argv))
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert argv[0] in captured.err and "Traceback" not in captured.err + captured.out


def test_demo_export_and_view_errors(tmp_path, capsys):
    _one_line_error(capsys, 2, main(["demo", "--views", "2", "--out", str(tmp_path / "d")]), "--views must be >= 3")
    _one_line_error(capsys, 2, main(["demo", "--size", "100", "--out", str(tmp_path / "d")]), "multiple of 16")
    _one_line_error(capsys, 2, main(["export", str(tmp_path)]), "no reconstruction.npz")
    (tmp_path / "reconstruction.npz").write_bytes(b"garbage")
    _one_line_error(capsys, 2, main(["export", str(tmp_path)]), "reconstruction.npz", "not a readable")
    _one_line_error(capsys, 2, main(["view", str(tmp_path / "nothing")]), "no reconstruction.npz")


def test_errors_keep_the_traceback_for_bugs(monkeypatch, capsys):
    def boom(error):
        def runner(opts):
            raise error
        return runner

    monkeypatch.setitem(cli_run.RUNNERS, COMMANDS["checkpoints"], boom(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["checkpoints"])
    monkeypatch.setitem(cli_run.RUNNERS, COMMANDS["checkpoints"], boom(ModuleNotFoundError("x", name="f3d_jax.x")))
    with pytest.raises(ModuleNotFoundError):
        main(["checkpoints"])
    # a dependency missing from the environment is the user's to fix: one line naming it
    missing = ModuleNotFoundError("x", name="trimesh.exchange")
    monkeypatch.setitem(cli_run.RUNNERS, COMMANDS["checkpoints"], boom(missing))
    _one_line_error(capsys, 1, main(["checkpoints"]), "pip install trimesh")
    monkeypatch.setenv("F3D_DEBUG", "1")
    with pytest.raises(ModuleNotFoundError):
        main(["checkpoints"])
