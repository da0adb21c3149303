"""Deep networks: the paper's architectures (:mod:`~gufm.deep.nets`), data sets
(:mod:`~gufm.deep.data`), training (:mod:`~gufm.deep.training`), the reduction check
(:mod:`~gufm.deep.reduction`) and the train-and-compare pipeline (:mod:`~gufm.deep.pipeline`)."""
