"""Datasets: a registry of built-in ones, one file each (`registry`, `mnist.py`, `cifar10.py`,
...), and the loading and checking of a spec's data, built in or your own (`loading`). Light:
importing the package imports no torch."""
