"""Radius graphs and the smooth cutoff for the sparse attention path.

Conventions follow torch_geometric: nodes of several graphs are concatenated, ``batch [n]`` (long,
sorted) says which graph each node belongs to, and ``edge_index [2, E]`` holds ``(source j,
target i)`` pairs: node ``i`` attends to its neighbour ``j`` (messages flow ``j -> i``). Every node
has a self-loop, as in the dense path, where ``j == i`` is one of the pairs.

The search only decides which pairs are *candidates*; how much a pair counts is set by the
switching function of its distance (:func:`switching_function`), which goes smoothly to 0 at the
cutoff. So a pair that enters or leaves the list does so with weight 0, and the outputs and their
gradients do not jump (as with the switched cutoffs of molecular-dynamics codes).

Two searches give the same edge set (pairs with ``|x_i - x_j| < cutoff`` in one graph, plus
self-loops), sorted by ``(target, source)``:

- :func:`radius_graph_dense` / ``method="torch"``: plain torch on any device, what the models
  use. Small graphs (``N <= 128``) compare all pairs in memory-bounded blocks; larger ones use a
  vectorized cell list (cells of side ``cutoff``; only the 27 surrounding cells are searched), so
  the work grows with the number of candidate pairs, ``O(E)``, not ``O(N^2)``.
- ``method="vesin"``: the cell-list search of the ``vesin`` library (``O(N)``, CPU, one graph
  at a time), for building graphs on the data side.
"""
from __future__ import annotations

import torch
from torch import Tensor

from invattn.checks import is_number

__all__ = ["switching_function", "radius_graph", "radius_graph_dense", "check_cutoff"]

# Upper bound on the [graphs, rows, columns] distance block built at once by the torch search.
_BLOCK_ELEMENTS = 1 << 22


def check_cutoff(cutoff: float | None, cutoff_inner: float | None) -> tuple[float, float] | None:
    """Validate ``(cutoff, cutoff_inner)``; ``None`` cutoff means all pairs (returns ``None``).

    ``cutoff_inner`` defaults to ``0.75 * cutoff``.

    Raises
    ------
    ValueError
        If ``cutoff`` is not a positive finite number, or ``cutoff_inner`` not in ``[0, cutoff)``.
    """
    if cutoff is None:
        if cutoff_inner is not None:
            raise ValueError("cutoff_inner is set but cutoff is None (the all-pairs path has no cutoff)")
        return None
    if not is_number(cutoff, finite=True) or cutoff <= 0:
        raise ValueError(f"cutoff must be a positive number or None, got {cutoff!r}")
    inner = 0.75 * float(cutoff) if cutoff_inner is None else cutoff_inner
    if not is_number(inner) or not 0 <= inner < cutoff:
        raise ValueError(f"cutoff_inner must be a number in [0, cutoff={cutoff}), got {cutoff_inner!r}")
    return float(cutoff), float(inner)


def switching_function(squared_distance: Tensor, cutoff: float, cutoff_inner: float) -> Tensor:
    """Smooth weight of a pair: 1 below ``cutoff_inner``, 0 from ``cutoff`` on, C2 in between.

    With ``u = (d^2 - r_in^2) / (r_c^2 - r_in^2)`` clamped to ``[0, 1]`` the weight is
    ``1 - 10 u^3 + 15 u^4 - 6 u^5`` (the quintic "smootherstep"), whose first and second
    derivatives vanish at both ends. It is written in ``d^2`` rather than ``d`` so that no square
    root is taken: the self-loop (``d = 0``) has a finite, zero gradient.

    Parameters
    ----------
    squared_distance : Tensor ``[...]``
        ``|x_i - x_j|^2``, in the units of the positions squared.
    cutoff, cutoff_inner : float
        ``r_c > r_in >= 0`` (see :func:`check_cutoff`).

    Returns
    -------
    Tensor ``[...]`` in ``[0, 1]``.

    Examples
    --------
    >>> switching_function(torch.tensor([0.0, 5.0, 9.0]), cutoff=3.0, cutoff_inner=1.0).tolist()
    [1.0, 0.5, 0.0]
    """
    u = ((squared_distance - cutoff_inner ** 2) / (cutoff ** 2 - cutoff_inner ** 2)).clamp(0.0, 1.0)
    return 1.0 - u.pow(3) * (10.0 - 15.0 * u + 6.0 * u.pow(2))


_BRUTE_FORCE_MAX_NODES = 128  # up to this many nodes per graph, all pairs is the fastest search


def _cell_list_pairs(x: Tensor, graph: Tensor, cutoff: float) -> tuple[Tensor, Tensor] | None:
    """Radius search by cell lists: ``(source, target)`` of the pairs closer than
    ``cutoff`` within one graph, plus self-loops, sorted by target then source.

    Nodes are binned into cubic cells of side slightly above ``cutoff`` (per graph, from its
    lowest corner), so every neighbour lies in one of the 27 cells around a node's own (``3^d``
    in ``d`` dimensions); those
    cells' nodes are the candidates, tested with the same formula as the brute-force search.
    Returns ``None`` if the cell grid is too large to index with int64 (a fallback is used).
    """
    n, d = x.shape
    side = float(cutoff) * (1.0 + 1e-6)  # margin: rounding never puts neighbours 2 cells apart
    n_graphs = int(graph.max()) + 1
    low = x.new_full((n_graphs, d), torch.inf).scatter_reduce(0, graph[:, None].expand(-1, d), x, "amin")
    cell = torch.floor((x - low.index_select(0, graph)) / side).long()  # [n, d], >= 0
    dims = cell.max(0).values + 1
    if float(n_graphs) * float(dims.prod()) * 2.0 > 2.0 ** 62:
        return None
    sizes_of = [int(v) for v in dims]

    def key(g: Tensor, c: Tensor) -> Tensor:  # row-major index of (graph, cell) in any dimension
        out = g
        for axis, size in enumerate(sizes_of):
            out = out * size + c[..., axis]
        return out

    keys = key(graph, cell)
    order = torch.argsort(keys)
    cells, counts = torch.unique_consecutive(keys[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    steps = torch.tensor([-1, 0, 1], device=x.device)
    offsets = torch.cartesian_prod(*[steps] * d).reshape(-1, d)  # [3^d, d]: 27 cells in 3D
    around = cell[:, None, :] + offsets[None]  # [n, 3^d, d]
    inside = ((around >= 0) & (around < dims)).all(-1)
    wanted = key(graph[:, None], around)
    slot = torch.searchsorted(cells, wanted).clamp(max=cells.shape[0] - 1)
    found = inside & (cells[slot] == wanted)
    target_rows = torch.arange(n, device=x.device)[:, None].expand(n, offsets.shape[0])[found]
    slot = slot[found]
    sizes = counts[slot]
    target = torch.repeat_interleave(target_rows, sizes)
    first = torch.repeat_interleave(starts[slot], sizes)
    within = torch.arange(target.shape[0], device=x.device) - torch.repeat_interleave(
        torch.cumsum(sizes, 0) - sizes, sizes)
    source = order[first + within]
    keep = ((x[target] - x[source]).pow(2).sum(-1) < float(cutoff) ** 2) | (source == target)
    source, target = source[keep], target[keep]
    order = torch.argsort(target * n + source)
    return source[order], target[order]


def _brute_force_pairs(positions: Tensor, mask: Tensor, cutoff: float) -> Tensor:
    """``(b, j, i)`` of all close pairs and self-loops of a padded batch, in blocks of targets."""
    b, n = mask.shape
    rows = max(1, min(n, _BLOCK_ELEMENTS // max(1, b * n)))
    cutoff_sq = float(cutoff) ** 2
    found = []
    for start in range(0, n, rows):  # a loop over memory blocks of targets i, not over edges
        stop = min(n, start + rows)
        diff = positions.unsqueeze(1) - positions[:, start:stop].unsqueeze(2)  # [B, R, N_j, d]
        near = diff.pow(2).sum(-1) < cutoff_sq
        near &= mask[:, start:stop, None] & mask[:, None, :]
        block = torch.arange(stop - start, device=mask.device)
        near[:, block, block + start] = mask[:, start:stop]  # self-loops, whatever the cutoff
        g, i, j = near.nonzero(as_tuple=True)
        found.append(torch.stack([g, j, i + start]))
    return torch.cat(found, dim=1) if found else mask.new_zeros(3, 0, dtype=torch.long)


@torch.no_grad()
def radius_graph_dense(positions: Tensor, mask: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Radius graph of a padded batch, in plain torch on the positions' device.

    Parameters
    ----------
    positions : Tensor ``[B, N, d]`` (``d = 3`` usually; any ``d >= 1``)
    mask : Tensor ``[B, N]`` bool
        Real nodes; padded ones get no edges and no index.
    cutoff : float
        Pairs with ``|x_i - x_j| < cutoff`` are edges; every real node also gets a self-loop.

    Returns
    -------
    edge_index : Tensor ``[2, E]`` long
        ``(source j, target i)`` over the real nodes numbered in row-major order of ``mask``
        (the order of ``positions[mask]``), sorted by graph, target, source.
    edge_graph : Tensor ``[3, E]`` long
        The same edges as ``(b, j, i)`` indices into the padded layout.

    Notes
    -----
    Graphs of at most 128 nodes: all pairs, in blocks. Larger: a cell list (linear in the
    number of candidate pairs). Both give the same edges in the same order.
    """
    b, n = mask.shape
    flat = torch.cumsum(mask.reshape(-1).long(), 0).reshape(b, n) - 1  # padded -> index of real node
    pairs = None
    if n > _BRUTE_FORCE_MAX_NODES and bool(mask.any()):
        graph, local = mask.nonzero(as_tuple=True)  # row-major: the order of positions[mask]
        pairs = _cell_list_pairs(positions[mask], graph, cutoff)
        if pairs is not None:
            source, target = pairs
            edge_graph = torch.stack([graph[target], local[source], local[target]])
    if pairs is None:
        edge_graph = _brute_force_pairs(positions, mask, cutoff)
    edge_index = torch.stack([flat[edge_graph[0], edge_graph[1]], flat[edge_graph[0], edge_graph[2]]])
    return edge_index, edge_graph


def _to_padded(positions: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """``[n, d]`` positions grouped by a sorted ``batch`` -> padded ``[B, N_max, d]`` and mask."""
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.shape[0], device=batch.device) - starts[batch]
    padded = positions.new_zeros(counts.shape[0], int(counts.max()), positions.shape[-1])
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=positions.device)
    padded[batch, local] = positions
    mask[batch, local] = True
    return padded, mask


def _vesin_graph(positions: Tensor, cutoff: float, batch: Tensor) -> Tensor:
    import numpy as np
    from vesin import NeighborList

    search = NeighborList(cutoff=float(cutoff), full_list=True)
    points = positions.detach().to("cpu", torch.float64).numpy()
    ids = batch.cpu().numpy()
    bounds = np.searchsorted(ids, np.arange(int(ids[-1]) + 2)) if ids.size else np.zeros(1, int)
    sources, targets = [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):  # one vesin call per graph
        i, j = search.compute(points=points[start:stop], box=np.zeros((3, 3)), periodic=False,
                              quantities="ij")
        loops = np.arange(stop - start)
        sources.append(np.concatenate([np.asarray(j, dtype=np.int64), loops]) + start)
        targets.append(np.concatenate([np.asarray(i, dtype=np.int64), loops]) + start)
    source = torch.from_numpy(np.concatenate(sources)) if sources else torch.zeros(0, dtype=torch.long)
    target = torch.from_numpy(np.concatenate(targets)) if targets else torch.zeros(0, dtype=torch.long)
    n = positions.shape[0]
    order = torch.argsort(target * max(n, 1) + source)
    return torch.stack([source[order], target[order]]).to(positions.device)


def radius_graph(positions: Tensor, cutoff: float, batch: Tensor | None = None,
                 method: str = "auto", dim: int = 3) -> Tensor:
    """``edge_index [2, E]`` (source j, target i) of the pairs closer than ``cutoff``, with self-loops.

    Parameters
    ----------
    positions : Tensor ``[n, dim]``
    cutoff : float
        In the units of ``positions``; a pair at exactly ``cutoff`` is not an edge.
    batch : Tensor ``[n]`` long, optional
        Graph of each node (sorted, as in torch_geometric); ``None`` = one graph.
    method : {"auto", "torch", "vesin"}
        ``"vesin"``: vesin's cell list (CPU, ``O(n)``); ``"torch"``: blockwise distances on any
        device; ``"auto"``: vesin for CPU tensors when it is installed, torch otherwise.
    dim : int
        Dimension of the points (3; 2 for 2D data: then the torch method, vesin is 3D only).

    Returns
    -------
    Tensor ``[2, E]`` long on ``positions``' device, sorted by target then source; both methods
    return the same edges.

    Raises
    ------
    ValueError
        On a bad shape, an unsorted ``batch``, a non-positive cutoff or an unknown method.
    """
    if positions.dim() != 2 or positions.shape[-1] != dim:
        raise ValueError(f"positions has shape {list(positions.shape)}, expected [n, {dim}]")
    check_cutoff(cutoff, None)
    if batch is None:
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    if batch.shape != positions.shape[:1]:
        raise ValueError(f"batch has shape {list(batch.shape)}, expected [{positions.shape[0]}]")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of one graph contiguous), as in torch_geometric")
    if method not in ("auto", "torch", "vesin"):
        raise ValueError(f"method must be 'auto', 'torch' or 'vesin', got {method!r}")
    if method == "vesin" and positions.shape[-1] != 3:
        raise ValueError(f"method='vesin' searches 3D points; these are {positions.shape[-1]}D (use 'torch')")
    if method == "auto":
        try:
            import vesin  # noqa: F401
            method = "vesin" if positions.device.type == "cpu" and positions.shape[-1] == 3 else "torch"
        except ImportError:
            method = "torch"
    if positions.shape[0] == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=positions.device)
    if method == "vesin":
        return _vesin_graph(positions, cutoff, batch)
    padded, mask = _to_padded(positions.detach(), batch)
    return radius_graph_dense(padded, mask, cutoff)[0]
