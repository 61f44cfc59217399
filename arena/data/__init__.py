"""Datasets: where the files are found, checked and downloaded (`sources`, the `DATASETS` registry)
and how the official formats are read with numpy (`formats`: IDX, CIFAR python pickles).

Imports only the vocabulary layer; order inside: formats <- sources.
"""
