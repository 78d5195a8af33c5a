"""JOINT's parametric head and its training (FORMULAS.md 4).

- :mod:`skknn.heads._head`: the torch head (input standardisation + Linear/MLP),
  its initialisation, growth for new classes, restore and inference.
- :mod:`skknn.heads._training`: the kNN-weighted loss, the schedule, the head's
  SGD epochs and one-pass updates.
- :mod:`skknn.heads._loop`: the one training loop both JOINT estimators run, with
  its callbacks (early stopping, divergence, a per-epoch hook).
- :mod:`skknn.heads._lbfgs`: a linear head fitted by sklearn's L-BFGS.
- :mod:`skknn.heads._new_classes`: a new class's row imprinted from few samples.

Torch code only; the estimators (``skknn/joint.py``, ``skknn/finetune.py``)
validate, encode labels and resolve the device.
"""
