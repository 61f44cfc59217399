"""Datasets: where the files are found, checked and downloaded (`sources`, the `DATASETS` registry),
how the official formats are read with numpy (`formats`: IDX, CIFAR python pickles), and binary
tasks derived from them, one class against the rest (`binary`: ``fashion-mnist-binary``, ...).

Imports only the vocabulary layer; order inside: formats <- sources <- binary. Importing the package
registers the binary tasks.
"""
from . import binary  # noqa: F401  (registers the <base>-binary datasets)
