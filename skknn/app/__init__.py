"""The ``skknn`` command and what it shows.

- :mod:`skknn.app.cli`: argument parsing, ``evaluate``, ``explain`` (the
  documented path :mod:`skknn.cli` and the console script name it).
- :mod:`skknn.app._demo`: ``skknn demo``.
- :mod:`skknn.app._gallery`: PNG figures (neighbour galleries, curves).
- :mod:`skknn.app._report`: plain-text tables.
- :mod:`skknn.app._mnist`: MNIST through the pretrained encoder, shared by the
  demo and :mod:`skknn.datasets`.
"""
