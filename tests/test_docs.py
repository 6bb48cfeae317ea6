"""Docs that run: every code block of the README is executed, every console script imports.

Python blocks run in order in one namespace, in a scratch folder holding what they name: a tiny
official-format DUSt3R checkpoint (from the fixtures, under the released file's name) and two
photos. Shell blocks: the install step is what CI itself just ran (checked to be the same command),
the test command must be exactly what `.ci/run` runs, and every other command is executed.
"""

from __future__ import annotations

import importlib
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import fixture_path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def readme_blocks(lang: str) -> list[str]:
    return [code for fence_lang, code in _FENCE.findall(README.read_text()) if fence_lang == lang]


def _commands(block: str) -> list[str]:
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [c.strip() for ln in lines for c in ln.split("&&")]


def _ci_command() -> str:
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    return next(ln for ln in lines if "pytest" in ln)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    shell = [_commands(b) for b in readme_blocks("bash")]
    assert len(shell) >= 2
    main_job, tests = shell[0], shell[1]
    assert main_job[0].startswith("python -m pip install") and len(main_job) >= 2
    assert " && ".join(tests) == _ci_command(), ".ci/run must run exactly the README's test command"


def test_readme_shell_commands_run(tmp_path):
    """Every command of every shell block but the installs (CI just ran them) and the test suite itself."""
    env = {k: v for k, v in os.environ.items() if k != "F3D_FIXTURES"}
    env["F3D_FIXTURES"] = str(tmp_path / "no-fixtures-here")  # the main job must not need ../shared
    ran = 0
    for block in readme_blocks("bash"):
        for cmd in _commands(block):
            if "pip install" in cmd or "pytest" in cmd:
                continue
            argv = shlex.split(cmd)
            if argv[0] == "python":
                argv[0] = sys.executable
            out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"`{cmd}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
            ran += 1
    assert ran >= 1


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A scratch folder with what the README's Python blocks name."""
    ckpt = tmp_path / "checkpoints" / "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth"
    ckpt.parent.mkdir()
    with lzma.open(fixture_path("networks", "dust3r_linear", "checkpoint.pth.xz")) as f, open(ckpt, "wb") as g:
        shutil.copyfileobj(f, g)
    photos = fixture_path("networks", "image_preprocessing", "photos")
    (tmp_path / "photos").mkdir()
    for name in ("Chateau1.png", "Chateau2.png"):
        shutil.copy(photos / name, tmp_path / "photos" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_blocks_run(readme_folder):
    blocks = readme_blocks("python")
    assert blocks
    namespace: dict = {"__name__": "__readme__"}
    for k, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {k}", "exec"), namespace)  # noqa: S102


def test_console_scripts_import_and_answer_help(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert scripts, "the package declares the `f3d` console script"
    for name, target in scripts.items():
        module, func = target.split(":")
        entry = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as e:
            entry(["--help"])
        assert e.value.code == 0, name
        assert "usage" in capsys.readouterr().out.lower()
