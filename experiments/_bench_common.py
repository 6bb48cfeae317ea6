"""Helpers shared by the benchmarks: machine description, peak memory, random weights, reference env.

Importable without jax (the reference side runs in the official repos' torch virtualenv).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = "; GPU " + out.stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{gpu}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss
    across fork + exec, so a worker started from a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarize(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def reference_python() -> tuple[str, Path] | None:
    """(python executable, root) of the official reference env when `F3D_REFERENCE_ROOT` is set and usable."""
    root = os.environ.get("F3D_REFERENCE_ROOT")
    if not root:
        return None
    root_p = Path(root)
    py = root_p / "venv" / "bin" / "python"
    exe = str(py) if py.exists() else sys.executable
    probe = subprocess.run([exe, "-c", "import torch"], capture_output=True)
    return (exe, root_p) if probe.returncode == 0 else None


def add_reference_paths(root: Path) -> None:
    sys.path[:0] = [str(root / "mast3r"), str(root / "dust3r"), str(root / "croco")]


def run_worker(argv: list[str], python: str | None = None, env: dict | None = None) -> dict[str, Any]:
    """Run a benchmark worker in a fresh process (clean peak RSS); it prints one JSON line last."""
    cmd = [python or sys.executable, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
