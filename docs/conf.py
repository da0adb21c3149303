"""Sphinx configuration of the gufm documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebooks in ``notebooks/`` are shown as stored (with their outputs); they are never
executed at build time.  They are copied into ``docs/examples/`` (git-ignored) before the build,
because Sphinx only reads files under its source folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(HERE / "_scripts"))

from apigen import write_api  # noqa: E402

import gufm  # noqa: E402

# the API reference: one page per module in docs/generated/ (see _scripts/apigen.py), written
# from nothing at every build so that a module that was moved or removed leaves no stale page
shutil.rmtree(HERE / "generated", ignore_errors=True)
write_api(HERE / "generated")

# ------------------------------------------------------------------ the notebooks, as stored
_NB_SRC = ROOT / "notebooks"
_NB_DST = HERE / "examples"
_NB_DST.mkdir(exist_ok=True)
for _old in _NB_DST.glob("*.ipynb"):
    if not (_NB_SRC / _old.name).exists():
        _old.unlink()
for _nb in sorted(_NB_SRC.glob("*.ipynb")):
    _dst = _NB_DST / _nb.name
    if not _dst.exists() or _dst.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _dst)

# ------------------------------------------------------------------------------ project
project = "gufm"
author = "the gufm authors"
copyright = "2026, the gufm authors"  # noqa: A001
release = gufm.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_scripts", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# ------------------------------------------------------------------------- MyST / myst-nb
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
nb_execution_mode = "off"  # show the stored outputs; never run a notebook while building
nb_merge_streams = True
# progress-bar widgets in stored outputs have no static rendering; their text output is shown
suppress_warnings = ["mystnb.unknown_mime_type"]

# ------------------------------------------------------------------- autodoc / numpydoc
autosummary_generate = False  # the pages are written by _scripts/apigen.py
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections state the types
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# ------------------------------------------------------------------------------- output
html_theme = "furo"
html_title = f"gufm {release}"
html_static_path: list[str] = []
