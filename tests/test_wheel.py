"""The wheel: ``python -m build`` makes one that installs into a fresh virtual environment
without the checkout (the CUDA sources inside it) and runs the README's quickstart there."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.test_docs import code_blocks

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.resources, pathlib, sys
import qkernels
where = pathlib.Path(qkernels.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, where
sources = sorted(p.name for p in importlib.resources.files("qkernels.cuda").iterdir()
                 if p.name.endswith((".cu", ".cuh")))
assert {"flow.cu", "hamming.cu", "pq.cu", "table.cu"} <= set(sources), sources
print("installed at", where.parent)
"""


@pytest.mark.slow
@pytest.mark.packaging
def test_the_wheel_installs_into_a_fresh_environment_and_runs_the_quickstart(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                            "--outdir", str(dist), str(ROOT)], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(dist.glob("qkernels-*.whl"))
    assert len(wheels) == 1, wheels

    # a fresh environment; its dependencies (numpy, numba, torch, ...) are read from this
    # one's site-packages through a .pth line, which does not run this checkout's editable
    # finder: only the wheel can provide qkernels there
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
            if Path(p).is_dir()]
    (purelib / "dependencies.pth").write_text("\n".join(ours) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                                "--no-index", "--target", str(purelib), str(wheels[0])],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    quickstart = "".join(code for _, language, code in code_blocks(ROOT / "README.md")
                         if language == "python")
    work = tmp_path / "work"  # not the checkout: `import qkernels` must find the wheel
    work.mkdir()
    (work / "quickstart.py").write_text(CHECK + quickstart)
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    done = subprocess.run([str(python), "quickstart.py"], cwd=work, capture_output=True,
                          text=True, timeout=900, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"installed at {purelib.resolve()}" in done.stdout
