"""The documentation cannot drift from the code: every public name has a numpydoc docstring
that documents every parameter, return value and raised error; every Examples section runs
as a doctest; every code block of the README and of the guides runs."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
numpydoc_validate = pytest.importorskip("numpydoc.validate")

import qkernels as qk  # noqa: E402

# the checks of numpydoc.validate that fail the docs (docs/conf.py asks Sphinx for the same)
CHECKS = {"GL08", "SS01", "PR01", "PR02", "PR03", "PR07", "PR10", "RT01", "RT03"}
SKIPPED_MEMBERS = {"extra_repr"}  # torch's hook for repr(module), not an API


def _public_modules():
    import qkernels.distributed
    import qkernels.losses
    import qkernels.metrics

    return [(qk, "qkernels"), (qkernels.losses, "qkernels.losses"),
            (qkernels.metrics, "qkernels.metrics"),
            (qkernels.distributed, "qkernels.distributed"), (qk.config, "qkernels.config")]


def public_objects() -> list[str]:
    """Dotted names of every public function, class, method and property."""
    names = []
    for module, dotted in _public_modules():
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or name.startswith("__"):
                continue
            names.append(f"{dotted}.{name}")
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if member.startswith("_") or member in SKIPPED_MEMBERS:
                        continue
                    if isinstance(value, (property, classmethod, staticmethod)) or callable(value):
                        names.append(f"{dotted}.{name}.{member}")
    return names


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
        return obj
    raise ImportError(dotted)


NAMES = public_objects()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_and_return_is_documented(name):
    errors = [f"{code}: {message}" for code, message in numpydoc_validate.validate(name)["errors"]
              if code in CHECKS]
    assert not errors, "\n".join(errors)


def _takes_arguments(obj) -> bool:
    if isinstance(obj, property):
        return False
    function = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    if inspect.isclass(function):
        function = function.__init__
    try:
        parameters = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return False
    return bool([p for p in parameters if p not in ("self", "cls")])


@pytest.mark.parametrize("name", NAMES)
def test_every_call_that_takes_arguments_documents_its_errors(name):
    from numpydoc.docscrape import NumpyDocString

    obj = _resolve(name)
    if inspect.isclass(obj) and issubclass(obj, tuple):
        pytest.skip("a named tuple: a record of results")
    if not _takes_arguments(obj):
        pytest.skip("takes no arguments")
    function = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    doc = NumpyDocString(inspect.getdoc(function) or "")
    assert doc["Raises"], f"{name} has no Raises section"


def _modules():
    import qkernels

    for info in pkgutil.walk_packages(qkernels.__path__, "qkernels."):
        yield importlib.import_module(info.name)


def test_every_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    attempted = 0
    for module in _modules():
        for test in finder.find(module, module.__name__):
            result = runner.run(test, out=lambda text: None)
            assert not result.failed, f"{test.name}: a doctest failed (run python -m doctest)"
            attempted += result.attempted
    assert attempted >= 40, attempted


# ------------------------------------------------------------------ code blocks of the pages

GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
GENERATED = {"performance.md", "quality.md"}  # written by the benchmarks: tables only
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name not in GENERATED), *GUIDES]
NEEDS_GPU = "# needs a GPU"


def code_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block of a Markdown page."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = re.match(r"^(`{3,})\s*([\w{}-]*)", line)
        if fence and language is None:
            language, start, lines = fence.group(2) or "text", number + 1, []
        elif line.startswith("```") and language is not None:
            blocks.append((start, language, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def _gpu() -> bool:
    from tests.conftest import GPU

    return GPU


def _shell(line: str, cwd: Path) -> bool:
    """Run one command of a shell block with this interpreter: ``torchrun`` and ``python`` of a
    file the page wrote, and ``python -m qkernels``."""
    words = line.split()
    if words[0] == "torchrun" and (cwd / words[-1]).is_file():
        command = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    elif words[:3] == ["python", "-m", "qkernels"] or (
            words[0] == "python" and len(words) > 1 and (cwd / words[1]).is_file()):
        command = [sys.executable, *words[1:]]
    else:  # make, pip, the training commands (minutes each): shown, not run here
        return False
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return True


@pytest.mark.filterwarnings("error:.* is deprecated")  # the pages show today's API
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_code_block_runs(page, tmp_path, monkeypatch):
    """The page's Python blocks run in order in one namespace, in an empty folder; a block
    whose first line is ``# file: NAME`` is written to that file instead, for a shell block of
    the page to run (``torchrun ... NAME``)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    ran = skipped = 0
    for line, language, code in code_blocks(page):
        first = code.split("\n", 1)[0]
        if language == "python":
            if first.startswith(NEEDS_GPU) and not _gpu():
                skipped += 1
                continue
            named = re.match(r"# file: (\S+)", first)
            if named:
                (tmp_path / named.group(1)).write_text(code)
                continue
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            ran += 1
        elif language in ("bash", "console", "sh"):
            for command in code.splitlines():
                if command.strip() and not command.startswith("#"):
                    ran += _shell(command.split("#")[0].strip(), tmp_path)
    if skipped and not ran:
        pytest.skip(f"its {skipped} blocks need a GPU")
    python = [c for _, language, c in code_blocks(page) if language == "python"]
    assert ran or not python, "no block ran"
