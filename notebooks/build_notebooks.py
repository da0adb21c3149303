"""Regenerate the notebooks from this script (``python notebooks/build_notebooks.py``).

Keeping the cells here makes them reviewable as code; the tests execute the .ipynb files.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def solve_gufm() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Solving GUFM instances to a certified global optimum\n\n"
            "A GUFM: features on the LayerNorm sphere (mean 0, norm $\\sqrt d$), a linear "
            "classifier, CE or MSE loss and weight decay. `gufm.solve` reduces N samples to one "
            "feature per class, optimises, and proves optimality with a dual certificate."
        ),
        new_code_cell(
            "import numpy as np\nimport matplotlib\nmatplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\nimport gufm\n"
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
            "fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))\n"
            "for ax, C, t in zip(axes, [cos, cos_i], ['balanced', 'imbalanced']):\n"
            "    im = ax.imshow(C, vmin=-1, vmax=1, cmap='RdBu_r'); ax.set_title(f'{t}: cos(h_k, h_j)')\n"
            "fig.colorbar(im, ax=axes); fig.savefig('collapsed_geometry.png', dpi=80)\n"
            "print(np.round(cos_i, 3))  # minority classes move closer together"
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
            "K = 10 classes with features on a circle's sphere in $R^3$: the rank constraint of "
            "the relaxation binds. The best point found and the best proven bound differ, and "
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


if __name__ == "__main__":
    nbformat.write(solve_gufm(), HERE / "solve_gufm.ipynb")
    extra = HERE / "build_depth_sweep.py"
    if extra.exists():
        import runpy

        runpy.run_path(str(extra), run_name="__main__")
