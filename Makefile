# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
# `make docs` builds the documentation site (warnings are errors); `make test` runs it too.
# `make check-wheel` builds the wheel and runs the quickstart from a fresh environment, and
# `make test-slow` runs the long tests that `make test` leaves out (CI runs both after it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; installed only when the virtual environment has no torch at all, so a
# CUDA torch (a venv made with --system-site-packages, say) is never replaced.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.qkernels-installed

.PHONY: test test-slow lint docs demo compare bench quality quality-quick clean check-wheel

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[test,train,bench,docs]"
	touch $@

lint: $(STAMP)
	$(PY) -m ruff check .

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# hypothesis' example budget: `ci` (40 a property) keeps `make test` inside 15 minutes on 2 cores;
# `make test HYPOTHESIS_PROFILE=dev` (100) or `thorough` (2000) explores more
HYPOTHESIS_PROFILE ?= ci
# pytest-xdist workers, each taking whole files (module fixtures run once); most of a cold run is
# Numba compiling, one core a process. `make test WORKERS=0` runs in this process.
WORKERS ?= 2
PYTEST := HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(PY) -m pytest -n $(WORKERS) --dist loadfile

test: lint docs
	$(PYTEST) -m "not packaging and not slow"

# the long checks that `make test` leaves out (tests marked slow: the demo's claim on digits,
# the CUDA kernels under ThreadSanitizer); CI runs them after `make test`
test-slow: $(STAMP)
	$(PYTEST) -m "slow and not packaging"

check-wheel: $(STAMP)
	$(PY) -m pytest -m packaging tests/test_wheel.py

demo: $(STAMP)
	$(PY) -m training dht --out runs/demo

# Speed: ours against the peers in one process, as ratios (benchmarks/compare.py), and asv.
compare: $(STAMP)
	$(PY) benchmarks/compare.py all --markdown docs/performance.md

# Quality: each method against its baseline on Fashion-MNIST, the glyph set and 100 synthetic
# classes, 3 seeds (resumable; needs Debian's dataset-fashion-mnist and font packages: see
# docs/quality.md). `make quality-quick`: the whole table on one seed, a first look.
quality: $(STAMP)
	$(PY) -m training.benchmark --out runs/quality --markdown docs/quality.md

quality-quick: $(STAMP)
	$(PY) -m training.benchmark --quick

bench: $(STAMP)
	$(VENV)/bin/asv machine --yes >/dev/null
	$(VENV)/bin/asv run --quick --show-stderr --environment existing:$(abspath $(PY))

clean:
	rm -rf $(VENV) .asv .pytest_cache .ruff_cache build *.egg-info docs/_build
	find . -name __pycache__ -prune -exec rm -rf {} +
