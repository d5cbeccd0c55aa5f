"""Train / validation / test split of QM9 (DESIGN section 5; as in Cormorant and SE(3)-Transformer).

For the full consistent set of 130,831 molecules: 100,000 train, 13,083 test (10 %), the rest
(17,748) validation.  Smaller inputs get the same proportions.  Membership comes from one
fixed seeded permutation over the *sorted* gdb ids, so it does not depend on file order,
shard size or the number of workers.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SPLIT_CODES", "SPLIT_NAMES", "split_sizes", "assign_splits"]

#: Split name -> code stored in the shards.
SPLIT_CODES: dict[str, int] = {"train": 0, "valid": 1, "test": 2}
#: Code -> split name.
SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")


def split_sizes(n: int, *, n_train_full: int = 100_000, n_reference: int = 130_831,
                test_fraction: float = 0.1) -> dict[str, int]:
    """Sizes of the three splits for ``n`` molecules.

    ``test = floor(test_fraction * n)``, ``train = floor(n * n_train_full / n_reference)``,
    ``valid`` = the rest.

    >>> split_sizes(130_831)
    {'train': 100000, 'valid': 17748, 'test': 13083}
    >>> split_sizes(2000)
    {'train': 1528, 'valid': 272, 'test': 200}
    """
    if n < 0:
        raise ValueError(f"number of molecules must be >= 0, got {n}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"split.test_fraction must be in [0, 1), got {test_fraction}")
    if not 0 < n_train_full <= n_reference:
        raise ValueError(f"need 0 < split.n_train_full <= split.n_reference, got {n_train_full}, {n_reference}")
    n_test = int(np.floor(test_fraction * n + 1e-9))
    n_train = (n * n_train_full) // n_reference  # integer arithmetic: exact 100,000 at full size
    if n_train + n_test > n:
        raise ValueError(f"split sizes train={n_train} + test={n_test} exceed {n} molecules")
    return {"train": n_train, "valid": n - n_train - n_test, "test": n_test}


def assign_splits(gdb_ids, seed: int, **size_kwargs) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) for each id, aligned with ``gdb_ids``.

    The permutation ``np.random.default_rng(seed).permutation(n)`` is applied to the sorted
    ids; its first ``train`` entries are train, the next ``valid`` validation, the rest test.

    Raises ``ValueError`` for duplicate ids.
    """
    ids = np.asarray(gdb_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and np.any(np.diff(ids[order]) == 0):
        raise ValueError("duplicate gdb ids cannot be split")
    sizes = split_sizes(len(ids), **size_kwargs)
    perm = np.random.default_rng(seed).permutation(len(ids))
    codes_sorted = np.empty(len(ids), dtype=np.int8)
    codes_sorted[perm[: sizes["train"]]] = 0
    codes_sorted[perm[sizes["train"]: sizes["train"] + sizes["valid"]]] = 1
    codes_sorted[perm[sizes["train"] + sizes["valid"]:]] = 2
    codes = np.empty(len(ids), dtype=np.int8)
    codes[order] = codes_sorted
    return codes
