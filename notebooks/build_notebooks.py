"""Rebuild and re-execute every notebook: ``python notebooks/build_notebooks.py``.

The cells live in this script (``solve_gufm``) and in ``build_depth_sweep.py`` so that they are
reviewed as code.  The script builds each notebook, executes it top to bottom in a temporary
folder (the files a notebook writes land there, not here) and stores it **with its outputs and
figures inline**, so they can be read on the page without running anything.
``tests/test_notebooks.py`` checks that the stored notebooks are current, executed and run.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from build_depth_sweep import depth_sweep  # noqa: E402  (a sibling script, not a package)


def solve_gufm() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Solving GUFM instances to a certified global optimum\n\n"
            "A GUFM: features on the LayerNorm sphere (mean 0, norm $\\sqrt d$), a linear "
            "classifier, CE or MSE loss and weight decay. `gufm.solve` reduces N samples to one "
            "feature per class, optimises, and proves optimality with a dual certificate."
        ),
        new_code_cell(
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np\n\n"
            "import gufm\n"
            "from gufm.solvers.closed_form import closed_form_value"
        ),
        new_markdown_cell("## 1. Balanced classes: the simplex ETF and its closed form"),
        new_code_cell(
            "bal = gufm.GUFM(counts=[100] * 5, dim=8, loss='ce', lam_W=5e-3)\n"
            "res = gufm.solve(bal, method='gradient', init='random')\n"
            "print(res)\n"
            "print('closed form :', closed_form_value(bal))\n"
            "assert abs(res.value - closed_form_value(bal)) <= 1e-9 * closed_form_value(bal)\n"
            "H = res.class_features\n"
            "cos = (H.T @ H) / np.outer(np.linalg.norm(H, axis=0), np.linalg.norm(H, axis=0))\n"
            "print(np.round(cos, 4))  # off-diagonal -1/(K-1) = -0.25: a simplex ETF"
        ),
        new_markdown_cell("## 2. Imbalanced classes: certificate and minority geometry"),
        new_code_cell(
            "imb = gufm.GUFM(counts=[500, 200, 100, 50, 10], dim=8, loss='ce', lam_W=5e-3)\n"
            "r = gufm.solve(imb)\n"
            "print(r)\n"
            "c = r.certificate\n"
            "print(f'lambda_min of the dual Schur complement: {c.lambda_min:.2e}')\n"
            "print(f'value {r.value:.10f} >= bound {r.lower_bound:.10f}, certified={r.certified}')\n"
            "Hi = r.class_features\n"
            "cos_i = (Hi.T @ Hi) / np.outer(np.linalg.norm(Hi, axis=0), np.linalg.norm(Hi, axis=0))\n"
            "print(np.round(cos_i, 3))  # minority classes move closer together\n"
            "fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), layout='constrained')\n"
            "for ax, C, t in zip(axes, [cos, cos_i], ['balanced: 5 x 100', 'imbalanced: 500 to 10'],\n"
            "                    strict=True):\n"
            "    im = ax.imshow(C, vmin=-1, vmax=1, cmap='RdBu_r')\n"
            "    ax.set_title(t)\n"
            "    ax.set_xlabel('class j')\n"
            "    ax.set_ylabel('class k')\n"
            "fig.colorbar(im, ax=axes, label='cosine')\n"
            "fig.suptitle('GUFM optimum, CE, d = 8: cosines between the class features cos(h_k, h_j)')\n"
            "plt.show()"
        ),
        new_markdown_cell(
            "## 3. MSE: an orthogonal frame, not a simplex ETF\n\nWith MSE and no bias the class "
            "features are orthogonal when $d-1 \\ge K$."
        ),
        new_code_cell(
            "mse = gufm.solve(gufm.GUFM(counts=[20] * 4, dim=8, loss='mse', lam_W=1e-2), "
            "method='gradient')\n"
            "Hm = mse.class_features\nprint(mse)\nprint(np.round(Hm.T @ Hm / 8, 6))"
        ),
        new_markdown_cell(
            "## 4. K > d - 1: no simplex ETF fits, and the gap is honest\n\n"
            "K = 10 classes with features on the sphere of radius 2 in $\\mathbb{R}^3$ "
            "(d = 3): a simplex ETF needs d >= K - 1 = 9, so the rank constraint of the "
            "relaxation binds. The best point found and the best proven bound differ, and "
            "`gufm` says so instead of claiming optimality."
        ),
        new_code_cell(
            "hard = gufm.GUFM(counts=[5] * 10, dim=3, features='sphere', radius=2.0, loss='ce', "
            "lam_W=0.01)\n"
            "h = gufm.solve(hard)  # auto: gradient + SDP bound\n"
            "print(h)\nprint('tried:', h.info['auto_tried'])\n"
            "assert not h.certified and h.gap > 0.1"
        ),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


#: every notebook: file name -> builder
NOTEBOOKS: dict[str, Callable[[], nbformat.NotebookNode]] = {
    "solve_gufm.ipynb": solve_gufm,
    "depth_sweep.ipynb": depth_sweep,
}


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` (kernel ``python3``) in a temporary folder; return it."""
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": tmp}}).execute()
    return nb


def main() -> None:
    """Build, execute and store every notebook of :data:`NOTEBOOKS`."""
    for name, build in NOTEBOOKS.items():
        nb = execute(build())
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name} (executed)")


if __name__ == "__main__":
    main()
