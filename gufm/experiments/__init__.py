"""Experiments: depth sweeps (:mod:`~gufm.experiments.sweep`), their report
(:mod:`~gufm.experiments.report`) and the demo (:mod:`~gufm.experiments.demo`)."""
