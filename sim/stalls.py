"""Stall patterns shared by the amaranth.sim and cocotb stream drivers.

A pattern is an endless iterator of booleans, one per clock cycle: ``True``
lets a source offer a new transfer (or a sink accept one) in that cycle,
``False`` holds it back. A source never withdraws ``valid`` once it has raised
it; the pattern only decides when the next item is offered.
"""

import itertools
import random


__all__ = ["STALL_PATTERNS", "stall_pattern"]


#: Names accepted by :func:`stall_pattern`.
STALL_PATTERNS = ("none", "fixed", "random")


def stall_pattern(name, *, seed=0, probability=0.5):
    """Return a pattern iterator.

    ``none``: always ``True``. ``fixed``: ``True, True, True, False`` repeated.
    ``random``: ``True`` with ``probability``, from a generator seeded with
    ``seed`` so that a failing run can be replayed.
    """
    if name == "none":
        return itertools.repeat(True)
    if name == "fixed":
        return itertools.cycle((True, True, True, False))
    if name == "random":
        rng = random.Random(seed)
        return (rng.random() < probability for _ in itertools.count())
    raise ValueError(f"stall pattern must be one of {', '.join(STALL_PATTERNS)}, not {name!r}")
