"""E(n)-equivariant graph network for N-body dynamics (Satorras, Hoogeboom & Welling 2021, eq. 3-7).

A baseline for the attention models: same inputs and outputs as
:class:`~models.nbody.NBodyModel`, written from the EGNN paper's equations (its N-body variant
with the velocity update, "EGNN-vel"). For every layer ``l`` and body ``i``, over all other real
bodies ``j != i``:

    m_ij      = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)                       (eq. 3)
    v_i^{l+1} = phi_v(h_i) v_i^init + C sum_j (x_i - x_j) phi_x(m_ij)      (eq. 7)
    x_i^{l+1} = x_i^l + v_i^{l+1}                                          (eq. 7)
    h_i^{l+1} = h_i + phi_h(h_i, sum_j m_ij)                               (eq. 5-6, residual)

with ``C = 1 / (number of other bodies)``, ``h^0 = Linear(|v_i|)`` and ``a_ij = q_i q_j`` as
in the paper's N-body experiment. Every ``phi`` is ``Linear -> SiLU -> Linear`` (``phi_e`` and
``phi_h`` end in SiLU / nothing as in the paper's code). With 4 layers and 64 features this has
133,764 parameters (the paper: 134K).

The batch is dense (``[B, N]`` with a padding mask) like the attention models, so the two are
timed on the same inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from invattn.checks import check_int
from invattn.models.inputs import check_shape, prepare_mask
from invattn.models.registry import constructor_config

__all__ = ["EGNNLayer", "EGNN"]


def _mlp(n_in: int, hidden: int, n_out: int, *, final_act: bool = False, bias: bool = True) -> nn.Sequential:
    layers = [nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out, bias=bias)]
    if final_act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """One equivariant graph convolution with the velocity update (EGNN eq. 3-7).

    Parameters
    ----------
    hidden : int
        Node feature width ``h``.
    edge_dim : int
        Edge attributes ``a_ij`` per pair.

    Shapes
    ------
    ``forward(h [B, N, H], x [B, N, 3], v_init [B, N, 3], edge_attr [B, N, N, E],
    pair_mask [B, N, N] bool (True for real j != i)) -> (h, x, v)``; ``x`` and ``v`` in the
    input's length units.
    """

    def __init__(self, hidden: int, edge_dim: int):
        super().__init__()
        self.edge = _mlp(2 * hidden + 1 + edge_dim, hidden, hidden, final_act=True)  # phi_e
        self.node = _mlp(2 * hidden, hidden, hidden)  # phi_h
        self.coord = _mlp(hidden, hidden, 1, bias=False)  # phi_x
        self.velocity = _mlp(hidden, hidden, 1)  # phi_v
        # Small initial coordinate updates, as in the paper's code: keeps early training stable.
        nn.init.xavier_uniform_(self.coord[-1].weight, gain=0.001)

    def forward(self, h: Tensor, x: Tensor, v_init: Tensor, edge_attr: Tensor,
                pair_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # [b, i, j] = x_i - x_j
        dist2 = diff.pow(2).sum(-1, keepdim=True)
        # phi_e's first layer is linear: split it into the h_i, h_j and pair columns so the
        # node parts are computed once per node, not once per pair (same function).
        first, width = self.edge[0], h.shape[-1]
        w_i, w_j, w_pair = first.weight.split([width, width, first.in_features - 2 * width], 1)
        pre = (nn.functional.linear(h, w_i, first.bias).unsqueeze(2)
               + nn.functional.linear(h, w_j).unsqueeze(1)
               + nn.functional.linear(torch.cat([dist2, edge_attr], -1), w_pair))
        m = self.edge[1:](pre)  # rest of phi_e, [B, N, N, H]
        weight = pair_mask.unsqueeze(-1).to(x.dtype)
        m = m * weight
        count = pair_mask.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)  # C = 1 / count
        shift = (diff * (self.coord(m) * weight)).sum(2) / count
        v = self.velocity(h) * v_init + shift
        x = x + v
        h = h + self.node(torch.cat([h, m.sum(2)], -1))
        return h, x, v


class EGNN(nn.Module):
    """EGNN for charged N-body dynamics: predicts displacement and velocity change per body.

    Parameters
    ----------
    n_layers : int
        Graph convolutions (paper: 4).
    hidden : int
        Feature width (paper: 64).

    The outputs are ``x^L - x^0`` and ``v^L - v^0`` (the last layer's velocity of eq. 7 minus the
    input velocity), matching :class:`~models.nbody.NBodyModel`'s targets. Equivariant to
    rotations, reflections, translations (positions enter only as differences and are returned
    as displacements) and permutations of the bodies.

    Shapes
    ------
    ``forward(positions [B, N, 3], velocities [B, N, 3], charges [B, N], mask [B, N] bool | None)
    -> (delta_positions [B, N, 3], delta_velocities [B, N, 3])``; zero for padded bodies. Any
    dimension ``d`` in place of 3 (2D data: the NRI setting).

    Raises
    ------
    ValueError
        On mismatched shapes, or non-positive sizes at construction.

    Examples
    --------
    >>> model = EGNN()
    >>> sum(p.numel() for p in model.parameters())
    133764
    >>> dx, dv = model(torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.ones(2, 5))
    >>> dx.shape, dv.shape
    (torch.Size([2, 5, 3]), torch.Size([2, 5, 3]))
    """

    def __init__(self, n_layers: int = 4, hidden: int = 64):
        super().__init__()
        for name, value in (("n_layers", n_layers), ("hidden", hidden)):
            check_int(name, value, 1)
        self.config = constructor_config(EGNN, locals())
        self.embedding = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, edge_dim=1) for _ in range(n_layers))

    def forward(self, positions: Tensor, velocities: Tensor, charges: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_shape("positions", positions, (None, None, None))  # any dimension d (E(n))
        b, n, d = positions.shape
        check_shape("velocities", velocities, (b, n, d))
        check_shape("charges", charges, (b, n))
        mask = prepare_mask(mask, positions)
        x0 = torch.where(mask[..., None], positions, 0.0)
        v0 = torch.where(mask[..., None], velocities, 0.0)
        q = torch.where(mask, charges.to(positions.dtype), 0.0)
        eye = torch.eye(n, dtype=torch.bool, device=positions.device)
        pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye
        edge_attr = (q.unsqueeze(2) * q.unsqueeze(1)).unsqueeze(-1)
        h = self.embedding(v0.pow(2).sum(-1, keepdim=True).sqrt())
        x, v = x0, v0
        for layer in self.layers:
            h, x, v = layer(h, x, v0, edge_attr, pair_mask)
        keep = mask[..., None]
        return torch.where(keep, x - x0, 0.0), torch.where(keep, v - v0, 0.0)
