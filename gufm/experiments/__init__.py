"""Experiments: depth sweeps and the demo.

* :mod:`~gufm.experiments.spec`: one run (:class:`~gufm.experiments.spec.RunSpec`), validation,
  :func:`~gufm.experiments.spec.expand_grid`;
* :mod:`~gufm.experiments.presets`: named sweeps (the paper's figures, ``quick``);
* :mod:`~gufm.experiments.table`: the atomic, resumable run table;
* :mod:`~gufm.experiments.executors`: this process, local processes or Dask;
* :mod:`~gufm.experiments.sweep`: :func:`~gufm.experiments.sweep.run_sweep`;
* :mod:`~gufm.experiments.figures` and :mod:`~gufm.experiments.report`: one plotting style,
  the figures and ``summary.md``;
* :mod:`~gufm.experiments.demo`: ``gufm demo`` (a small sweep and its report);
* :mod:`~gufm.experiments.testing`: a test double with known slopes.
"""
