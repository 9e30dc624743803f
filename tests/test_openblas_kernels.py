"""The verdicts of the tests whose numbers come out of BLAS hold under every OpenBLAS kernel a CI machine may
pick: each kernel sums in its own order, so a bound tighter than rounding can change passes on one CPU and fails
on another. Each kernel the CPU can run gets the whole of those test files in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
# the files whose verdicts depend on floating point: the engine, recordings, unit ranking, evaluation
BLAS_TESTS = ["test_engine.py", "test_analysis_record.py", "test_analysis_features.py", "test_eval_cadence.py"]
# OpenBLAS kernels a CI machine may pick, and the CPU flags each one needs
OPENBLAS_KERNELS = {
    "Haswell": {"avx2", "fma"},
    "SkylakeX": {"avx512f", "avx512bw", "avx512dq", "avx512vl"},
    "Zen": {"avx2", "fma"},
    "Sandybridge": {"avx"},
}
# OpenBLAS runs Zen with its Haswell kernels and reports so
REPORTED = {"Zen": "Haswell"}
PROBE = (
    "import numpy, threadpoolctl; print(*[i.get('architecture') for i in threadpoolctl.threadpool_info() "
    "if i['internal_api'] == 'openblas'])"
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kernel", OPENBLAS_KERNELS)
def test_blas_dependent_tests_pass_under_each_openblas_kernel(kernel):
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if "openblas" not in blas:
        pytest.skip(f"NumPy uses {blas}, not OpenBLAS: OPENBLAS_CORETYPE picks nothing")
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to tell which OpenBLAS kernels this CPU can run")
    missing = OPENBLAS_KERNELS[kernel] - set(cpuinfo.read_text().split())
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(sorted(missing))}, which OpenBLAS's {kernel} kernel needs")
    env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": "1"}
    picked = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert picked.stdout.split() == [REPORTED.get(kernel, kernel)], picked.stdout + picked.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            *(str(TESTS / name) for name in BLAS_TESTS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0 and " passed" in out.stdout and "failed" not in out.stdout, (
        out.stdout[-3000:] + out.stderr[-2000:]
    )
