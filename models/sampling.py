"""The sampling option of the invariant families: every index set, or ``k`` of them at random.

A map over ``T`` vectors in ``d`` dimensions has ``C(T, d)`` subdeterminants and ``C(T, d - 1)``
cross products; the paper ("Scalability") keeps a random subset of ``k`` of each to bound the
cost.  The option is written ``"all"`` or an integer ``k >= 1`` in configs and sweeps; a model
parses it once into a :class:`Sampling` (:meth:`Sampling.parse`), checks it against its largest
map, and hands the same value down to every map, where
:func:`~models.invariants.choose_combinations` draws the index buffers.  A map with at most
``k`` sets keeps them all (the queries see ``T`` vectors, keys and values ``T + 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

from invattn.checks import is_int

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How many index sets a map keeps: all of them (``count=None``), or ``count`` drawn at random.

    Examples
    --------
    >>> Sampling.parse("all"), Sampling.parse(4), str(Sampling.parse("8"))
    (Sampling(count=None), Sampling(count=4), '8')
    >>> Sampling(4).size(10), Sampling(4).size(3), Sampling().size(10)
    (4, 3, 10)
    """

    count: int | None = None

    @classmethod
    def parse(cls, value, what: str = "sampling") -> "Sampling":
        """A :class:`Sampling` from its config form: ``"all"`` (any case), an integer ``>= 1``
        (also as digits in a string, as a command line or YAML may give it), or a Sampling.

        Raises
        ------
        ValueError
            ``"<what> must be 'all' or a positive integer, got <value>"``.
        """
        if isinstance(value, Sampling):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "all":
                return cls()
            value = int(text) if text.isdigit() else value
        if not is_int(value) or value < 1:
            raise ValueError(f"{what} must be 'all' or a positive integer, got {value!r}")
        return cls(int(value))

    @property
    def config(self) -> int | str:
        """The config form: ``"all"`` or the count."""
        return "all" if self.count is None else self.count

    def size(self, total: int) -> int:
        """How many of ``total`` index sets a map keeps: all, or ``min(count, total)``."""
        return total if self.count is None else min(self.count, total)

    def check(self, total: int, what: str) -> "Sampling":
        """This value, if a map with ``total`` index sets can draw it (``count <= total``).

        Raises
        ------
        ValueError
            ``"<what>=<count> is out of range: choose 1..<total> ... or 'all'"``.
        """
        if self.count is not None and self.count > total:
            raise ValueError(f"{what}={self.count} is out of range: choose 1..{total} "
                             f"(there are {total} to sample from) or 'all'")
        return self

    def __str__(self) -> str:
        return str(self.config)
