"""Models: a registry of built-in ones, one file each (`registry`, `seed_cnn.py`), and the
building and checking of a spec's model, built in or your own (`building`). Light: importing the
package imports no torch."""
