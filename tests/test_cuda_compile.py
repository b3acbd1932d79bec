"""Every RawKernel source compiles under nvcc for the GPUs we support (Ampere, Hopper).

The kernels are compiled at run time by NVRTC through cupy; nvcc here catches syntax and type
errors on machines without a GPU. Skipped where nvcc is not on the PATH.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "qkernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_with_nvcc(source, arch, tmp_path):
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", "--cubin",
         "-o", str(tmp_path / "out.cubin"), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
