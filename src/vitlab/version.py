"""vitlab's version (the one ``pyproject.toml`` declares), in a module that imports nothing, so every layer can read
it (``vitlab.checkpoint`` records it in the files it writes).

Example:
    >>> from vitlab.version import __version__
    >>> __version__.count(".")
    2
"""

__version__ = "0.1.0"
