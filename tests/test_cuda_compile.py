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

from qkernels import _gpu

CUDA_DIR = Path(__file__).resolve().parents[1] / "qkernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_there_are_sources():
    assert {s.name for s in SOURCES} == {"flow.cu", "hamming.cu", "pq.cu", "table.cu"}
    assert {s.stem for s in SOURCES} == set(_gpu.LIMITS)  # every source has its limits


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_with_nvcc(source, arch, tmp_path):
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-Werror", "all-warnings", *_gpu.compile_options(source.stem),
         "--cubin", "-o", str(tmp_path / "out.cubin"), str(source)],
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
    options = [f"--gpu-architecture={arch}".encode(),
               *(o.encode() for o in _gpu.compile_options(source.stem))]
    status = NVRTC.nvrtcCompileProgram(program, len(options),
                                       (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(program, log)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode(errors="replace")


def _launches():
    """(source, function) of every ``_gpu.launch`` call in the package, read from the code:
    the function's name is a literal, or a variable assigned literals in the same function."""
    import ast

    root = CUDA_DIR.parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            assigned = {}
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    assigned[node.targets[0].id] = [
                        c.value for c in ast.walk(node.value)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            for node in ast.walk(function):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "launch"
                        and getattr(node.func.value, "id", None) == "_gpu"):
                    source, name = node.args[0].value, node.args[1]
                    names = [name.value] if isinstance(name, ast.Constant) else assigned[name.id]
                    for n in names:
                        yield f"{path.relative_to(root)}:{node.lineno}", source, n


def test_every_launch_names_a_kernel_of_its_source():
    """Kernels and files are renamed together: each launch's source exists and defines the
    kernel (checked on the text, no GPU or compiler needed), and every kernel is launched."""
    import re

    launches = list(_launches())
    assert len(launches) >= 6
    defined = {s.stem: set(re.findall(r'extern "C" __global__ void (\w+)\(', s.read_text()))
               for s in SOURCES}
    for where, source, function in launches:
        assert function in defined.get(source, ()), f"{where}: {source}.cu has no {function}"
    assert {(s, f) for _, s, f in launches} == {(s, f) for s, fs in defined.items() for f in fs}
