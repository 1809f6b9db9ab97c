"""Settings of the evaluation commands that their ``--help`` shows: kept free of torch so the parsers stay quick.

Example:
    >>> from vitlab.eval.defaults import DEFAULT_N, SEVERITIES
    >>> DEFAULT_N, SEVERITIES
    (1000, (1, 2, 3, 4, 5))
"""

__all__ = ["DEFAULT_N", "SEVERITIES"]

#: Test images ``vitlab robustness`` / ``diagnose-negatives`` use when ``--n`` is not given (or all, when fewer).
DEFAULT_N = 1000

#: The ImageNet-C corruption severities.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
