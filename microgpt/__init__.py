"""microgpt: a large-language-model engine from scratch.

Public names are imported lazily where they live; see README.md for the map of the package.
"""
__version__ = "0.1.0"
