"""QM9 model: one (normalized) molecular property per molecule (paper section 3, Table 2).

Atoms are nodes with no input vectors and the scalars one-hot(H, C, N, O, F) + Z / 9; every pair
of atoms is an edge with the scalars one-hot(bond type: none, single, double, triple, aromatic).
Positions are centred per molecule (in their own precision) before the cast to the model's dtype.
Geometry enters only through ``x_i - x_j`` inside the attention layers. After the attention
stack, a node-wise Phi maps each atom's features to invariant scalars (for SE(3) these include
subdeterminants, so mirror images can differ), which are pooled (sum or mean) and passed
through a small MLP.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.models.backbone import EquivariantTransformer, validate_sampling, validate_sizes
from invattn.models.equivariant_map import EquivariantMap
from invattn.models.groups import parse_group
from invattn.models.features import Features, FeatureShape
from invattn.models.graph import check_cutoff, radius_graph_dense
from invattn.models.inputs import centre_positions, check_shape, prepare_mask
from invattn.models.registry import constructor_config, register_model
from invattn.models.sparse_attention import edge_geometry
from invattn.models.sparse_backbone import SparseEquivariantTransformer

__all__ = ["QM9Model", "ELEMENTS", "N_BOND_TYPES"]

ELEMENTS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}  # atomic number -> symbol, one-hot order
N_BOND_TYPES = 5  # 0 not bonded, 1 single, 2 double, 3 triple, 4 aromatic
POOLINGS = ("sum", "mean")


@register_model("qm9")
class QM9Model(nn.Module):
    """Equivariant attention network regressing one QM9 property (paper section 3, Table 2).

    Parameters
    ----------
    group : {"SE3", "E3"}
        ``"SE3"`` tells a molecule from its mirror image; ``"E3"`` cannot (by construction).
    n_layers : int
        Attention layers (paper: 7).
    vectors, scalars : int
        Hidden vector / scalar channels per atom.
    heads : int
        Attention heads (paper: 8); divides ``vectors``, ``scalars``, ``query_vectors``,
        ``query_scalars``.
    query_vectors, query_scalars : int
        Query/key channels.
    mlp_hidden : int
        Width of every Phi's MLP ``g``.
    readout : int
        Invariant scalars per atom before pooling, and width of the final MLP.
    pooling : {"sum", "mean"}
        Sum (paper; extensive properties) or mean (intensive ones such as HOMO/LUMO/gap) over atoms.
    subdeterminants, cross_products : "all" or int (or a :class:`~models.sampling.Sampling`)
        Sampling of triples / cross products per Phi (see :class:`~models.nbody.NBodyModel`).
    sampling_seed : int
        Seed of the sampled subsets (buffers; restored from checkpoints).
    cutoff : float or None
        ``None`` (default): all atom pairs attend (dense). A number (angstrom): attention over
        the radius graph, with switched weights that vanish smoothly at the cutoff (see
        :class:`~models.nbody.NBodyModel`); bond types are read for the pairs in the graph only.
    cutoff_inner : float or None
        Start of the switching, in ``[0, cutoff)``; ``None`` = ``0.75 * cutoff``.

    Shapes
    ------
    ``forward(atomic_numbers [B, N] long, positions [B, N, 3] (angstrom), bond_types [B, N, N] long,
    mask [B, N] bool | None) -> [B]`` (the normalized target). Padded atoms are ignored whatever
    their entries.

    Raises
    ------
    ValueError
        From ``forward``: an atomic number other than H, C, N, O, F on a real atom, a bond type
        outside 0..4 between real atoms, or mismatched shapes.

    Examples
    --------
    >>> model = QM9Model(group="E3", n_layers=2)
    >>> z = torch.tensor([[8, 1, 1, 0]])  # water plus one padded atom
    >>> x = torch.tensor([[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0], [0.0, 0.0, 0.0]]])
    >>> bonds = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> model(z, x, bonds, z > 0).shape
    torch.Size([1])
    """

    def __init__(self, group: str = "SE3", n_layers: int = 7, vectors: int = 8, scalars: int = 64,
                 heads: int = 8, query_vectors: int = 8, query_scalars: int = 64, mlp_hidden: int = 64,
                 readout: int = 64, pooling: str = "sum", subdeterminants: int | str = "all",
                 cross_products: int | str = "all", sampling_seed: int = 0, cutoff: float | None = None,
                 cutoff_inner: float | None = None):
        super().__init__()
        self.config = constructor_config(QM9Model, locals())
        self.group = parse_group(group)
        if self.group not in ("SE3", "E3"):  # molecules live in 3D Euclidean space
            raise ValueError(f"QM9Model's group must be SE3 or E3 (molecules are 3D), got {group!r}")
        self.cutoff = check_cutoff(cutoff, cutoff_inner)  # None or (cutoff, inner)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        validate_sizes(n_layers=n_layers, vectors=vectors, scalars=scalars, heads=heads,
                       query_vectors=query_vectors, query_scalars=query_scalars,
                       mlp_hidden=mlp_hidden, readout=readout)
        subdeterminants, cross_products = validate_sampling(subdeterminants, cross_products, vectors)
        generator = torch.Generator().manual_seed(int(sampling_seed))
        hidden = FeatureShape(vectors, scalars)
        table = torch.full((max(ELEMENTS) + 1,), -1, dtype=torch.long)
        for index, z in enumerate(ELEMENTS):
            table[z] = index
        self.register_buffer("element_index", table, persistent=False)
        stack = EquivariantTransformer if self.cutoff is None else SparseEquivariantTransformer
        self.backbone = stack(
            in_shape=FeatureShape(0, len(ELEMENTS) + 1), hidden_shape=hidden, edge_dim=N_BOND_TYPES,
            n_layers=n_layers, heads=heads, query_shape=FeatureShape(query_vectors, query_scalars),
            mlp_hidden=mlp_hidden, group=self.group, subdeterminants=subdeterminants,
            cross_products=cross_products, generator=generator)
        self.readout = EquivariantMap(hidden, FeatureShape(0, readout), mlp_hidden, self.group,
                                      subdeterminants, cross_products, generator)
        self.head = nn.Sequential(nn.Linear(readout, readout), nn.ReLU(), nn.Linear(readout, 1))

    def node_scalars(self, atomic_numbers: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """One-hot(H, C, N, O, F) and ``Z / 9`` per atom, ``[B, N, 6]``; zeros for padded atoms.

        Raises
        ------
        ValueError
            If a real atom is not H, C, N, O or F.
        """
        z = torch.where(mask, atomic_numbers, 1)  # padded atoms: any valid placeholder
        in_table = (z >= 0) & (z < self.element_index.shape[0])
        index = self.element_index[z.clamp(0, self.element_index.shape[0] - 1)]
        bad = ~in_table | (index < 0)
        if bool(bad.any()):
            found = sorted(set(atomic_numbers[bad].tolist()))
            raise ValueError(f"atomic_numbers contain {found}; QM9Model supports "
                             f"{sorted(ELEMENTS)} ({', '.join(ELEMENTS.values())})")
        one_hot = nn.functional.one_hot(index, len(ELEMENTS)).to(dtype)
        scalars = torch.cat([one_hot, (z.to(dtype) / 9.0).unsqueeze(-1)], dim=-1)
        return torch.where(mask.unsqueeze(-1), scalars, 0.0)

    def edge_scalars(self, bond_types: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """One-hot bond type per atom pair, ``[B, N, N, 5]``; pairs with a padded atom get 0.

        Raises
        ------
        ValueError
            If a bond type between real atoms is outside 0..4.
        """
        pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1)
        bonds = torch.where(pair_mask, bond_types, 0)
        if bool(((bonds < 0) | (bonds >= N_BOND_TYPES)).any()):
            found = sorted(set(bonds[(bonds < 0) | (bonds >= N_BOND_TYPES)].tolist()))
            raise ValueError(f"bond_types contain {found}; expected 0 (none), 1 single, 2 double, "
                             f"3 triple, 4 aromatic")
        one_hot = nn.functional.one_hot(bonds, N_BOND_TYPES).to(dtype)
        return torch.where(pair_mask.unsqueeze(-1), one_hot, 0.0)

    def forward(self, atomic_numbers: Tensor, positions: Tensor, bond_types: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """Predict the normalized property, ``[B]``."""
        check_shape("positions", positions, (None, None, 3))
        b, n = positions.shape[:2]
        check_shape("atomic_numbers", atomic_numbers, (b, n))
        check_shape("bond_types", bond_types, (b, n, n))
        mask = prepare_mask(mask, positions)
        dtype = next(self.parameters()).dtype
        positions = centre_positions(positions, mask, dtype)  # centred before any float32 cast
        scalars = self.node_scalars(atomic_numbers, mask, dtype)
        edges = self.edge_scalars(bond_types, mask, dtype)  # validates every real pair
        if self.cutoff is None:
            relative = positions.unsqueeze(1) - positions.unsqueeze(2)  # [b, j, i] = x_i - x_j
            hidden = self.backbone(Features(positions.new_zeros(b, n, 0, 3), scalars), relative, edges, mask)
            per_atom = self.readout(hidden).scalars  # invariant, [B, N, readout]
            per_atom = torch.where(mask.unsqueeze(-1), per_atom, 0.0)
        else:  # radius graph over the real atoms, padded back after the stack
            cutoff, inner = self.cutoff
            edge_index, (g, j, i) = radius_graph_dense(positions, mask, cutoff)
            x = positions[mask]
            relative, weights = edge_geometry(x, edge_index, cutoff, inner)  # x_i - x_j, switching
            nodes = Features(positions.new_zeros(x.shape[0], 0, 3), scalars[mask])
            hidden = self.backbone(nodes, edge_index, relative, edges[g, j, i], weights)
            per_atom = self.readout(hidden).scalars  # [n_real, readout]; bf16 under autocast
            per_atom = per_atom.new_zeros(b, n, per_atom.shape[-1]).index_put((mask,), per_atom)
        pooled = per_atom.sum(1)
        if self.pooling == "mean":
            pooled = pooled / mask.sum(1, keepdim=True).clamp(min=1).to(dtype)
        return self.head(pooled).squeeze(-1)
