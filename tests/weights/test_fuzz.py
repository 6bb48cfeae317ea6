"""Fuzzing the checkpoint readers: hundreds of mutated files, each loads or raises CheckpointError.

The loop runs in subprocesses (`fuzz_readers.py`) with a capped address space and per-case alarms,
so a segfault, a hang or a runaway allocation fails this test instead of killing pytest. Two seeds
run side by side (CI has 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# 400 cases per seed draw every mutation family of both formats (asserted below)
CASES_PER_SEED = 400


def test_fuzz_pth_and_safetensors(tmp_path, pth_file, hf_folder):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for seed in (0, 1):
        work = tmp_path / f"seed{seed}"
        work.mkdir()
        cmd = [sys.executable, str(Path(__file__).with_name("fuzz_readers.py")),
               "--pth", str(pth_file("croco_v1")), "--safetensors", str(hf_folder("dust3r_linear") / "model.safetensors"),
               "--cases", str(CASES_PER_SEED), "--seed", str(seed), "--workdir", str(work), "--mem-mb", "1536"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"fuzz process died (rc {p.returncode}: a crash?):\n{err[-3000:]}"
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(s["cases"] for s in summaries)
    print(f"fuzz: {total} cases,", [{k: s[k] for k in ("loaded", "refused", "seconds", "slowest_case_s", "maxrss_mb")}
                                     for s in summaries])
    for s in summaries:
        assert s["n_failures"] == 0, json.dumps(s["failures"], indent=1)[:5000]
        assert s["cases"] == s["loaded"] + s["refused"] == CASES_PER_SEED
        # Both outcomes happen (the mutations are neither all harmless nor all fatal), every family ran.
        assert s["loaded"] > 20 and s["refused"] > CASES_PER_SEED // 2
        assert {k.split(":")[1] for k in s["kinds"]} >= {"flip", "truncate", "sizes", "rezip-mutated", "swap",
                                                        "recompressed", "bomb", "duplicate", "header-length",
                                                        "header-json"}
        assert s["slowest_case_s"] < 10 and s["maxrss_mb"] < 1536
    assert total == 2 * CASES_PER_SEED
