"""Every RawKernel source compiles for the GPUs we support (Ampere, Hopper), twice: with nvcc
(when it is on the PATH) and with NVRTC, the run-time compiler cupy uses, loaded from the
nvidia-cuda-nvrtc wheel of the test extra. Neither needs a GPU."""

import ctypes
import glob
import shutil
import site
import subprocess
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "qkernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_there_are_sources():
    assert {s.name for s in SOURCES} >= {"flow.cu", "hamming.cu", "pq_scan.cu",
                                        "table_probe.cu"}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_with_nvcc(source, arch, tmp_path):
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings", f"-I{CUDA_DIR}", "--cubin",
         "-o", str(tmp_path / "out.cubin"), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _nvrtc():
    for root in site.getsitepackages():
        found = sorted(glob.glob(f"{root}/nvidia/**/libnvrtc.so*", recursive=True))
        if found:
            return ctypes.CDLL(found[0])
    return None


NVRTC = _nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="NVRTC (the nvidia-cuda-nvrtc wheel) is not installed")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_with_nvrtc(source, arch):
    program = ctypes.c_void_p()
    text = source.read_text().encode()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), text, source.name.encode(), 0, None,
                                    None) == 0
    options = [b"-std=c++17", f"--gpu-architecture={arch}".encode(), f"-I{CUDA_DIR}".encode()]
    status = NVRTC.nvrtcCompileProgram(program, len(options),
                                       (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(program, log)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode(errors="replace")
