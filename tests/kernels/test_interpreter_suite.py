"""Runs the kernel tests under Triton's interpreter in a subprocess, so every CPU CI run tests the kernels.

``TRITON_INTERPRET`` must be set before triton is first imported and applies to the whole process,
so it cannot be switched on for some tests of this process only (and must not leak into others). Only
the ``interp`` tests run there: the rest of tests/kernels already ran in this process.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_cases import HAS_TRITON, INTERPRETED

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.skipif(INTERPRETED, reason="this process already runs the interpreter: the kernel tests ran directly")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'batude[gpu]' or triton)")
def test_kernel_tests_pass_under_the_triton_interpreter():
    files = sorted(str(p) for p in HERE.glob("test_*.py") if p.name != Path(__file__).name)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "interp and not gpu", *files],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 60, tail  # the interpreter tests really ran
    assert "needs TRITON_INTERPRET=1" not in proc.stdout, tail
