"""Sphinx configuration of the qkernels documentation (``make docs``).

Sphinx with numpydoc renders the numpy-style docstrings as numpy, scipy, cupy and numba do;
MyST lets the guides and the pages that the benchmarks write be Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qkernels  # noqa: E402

project = "qkernels"
author = "qkernels maintainers"
copyright = "2026, qkernels maintainers"
release = version = qkernels.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# numpydoc: the docstrings are the reference; every parameter, return value and section
# is checked (warnings are errors in `make docs`)
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"GL08", "SS01", "PR01", "PR02", "PR03", "PR07", "PR10", "RT01",
                              "RT03"}
numpydoc_validation_exclude = {r"\.extra_repr$", r"\.__init__$"}
autodoc_default_options = {"members": True, "member-order": "bysource",
                           "exclude-members": "extra_repr"}
autodoc_typehints = "none"  # the numpydoc sections carry the types

html_theme = "pydata_sphinx_theme"
html_title = f"qkernels {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path: list[str] = []
