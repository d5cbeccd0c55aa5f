"""SE(3)- and E(3)-equivariant self-attention from invariant features (Chen & Villar, 2022).

Other groups through the same code: E(d)/SE(d) in any dimension and the Lorentz groups
(:mod:`models.groups`, ``group="E2"``, ``"SE4"``, ``"SO+(1,3)"``, ..).

Public API
----------
- :class:`NBodyModel`, :class:`QM9Model`: the task models (paper section 3); ``build_model(task,
  **config)`` rebuilds either from plain keyword arguments (``model.config``). :class:`EGNN`: the
  N-body baseline (``EGNN(**model.config)`` rebuilds it).
- Building blocks: :class:`Features` / :class:`FeatureShape` (vectors ``[.., T, 3]`` + scalars
  ``[.., L]``), :class:`EquivariantMap` (Phi, eq. 4-8), :class:`EquivariantAttention`
  (eq. 1-3, 9-12), :class:`GatedNonlinearity`, :class:`EquivariantTransformer` (the stack).
- Invariants: :func:`gram_upper`, :func:`subdeterminants`, :func:`cross_products`;
  :class:`Sampling` (``"all"`` or ``k`` of them, paper "Scalability"), parsed once per model.
- Sparse path (``cutoff=``): :class:`SparseEquivariantAttention` (edge lists, torch_geometric
  ``Data``/``Batch`` via ``forward_data``), :class:`SparseEquivariantTransformer`,
  :func:`radius_graph`, :func:`switching_function`.
"""
from invattn.models.attention import EquivariantAttention, masked_softmax
from invattn.models.backbone import EquivariantTransformer
from invattn.models.egnn import EGNN
from invattn.models.equivariant_map import CoefficientMLP, EquivariantMap
from invattn.models.groups import GROUP_NAMES, Group, parse_group
from invattn.models.features import Features, FeatureShape
from invattn.models.graph import radius_graph, switching_function
from invattn.models.invariants import choose_combinations, cross_products, gram_upper, subdeterminants
from invattn.models.nbody import NBodyModel
from invattn.models.neighbour_invariants import NeighbourInvariants, PairInputs
from invattn.models.nonlinearity import GatedNonlinearity, NormNonlinearity
from invattn.models.qm9 import QM9Model
from invattn.models.registry import MODELS, build_model
from invattn.models.sampling import Sampling
from invattn.models.sparse_attention import SparseEquivariantAttention
from invattn.models.sparse_backbone import SparseEquivariantTransformer

__all__ = [
    "NBodyModel", "QM9Model", "EGNN", "build_model", "MODELS",
    "Features", "FeatureShape", "EquivariantMap", "CoefficientMLP", "EquivariantAttention",
    "EquivariantTransformer", "NeighbourInvariants", "PairInputs", "GatedNonlinearity",
    "NormNonlinearity",
    "masked_softmax", "parse_group", "Group", "GROUP_NAMES",
    "gram_upper", "subdeterminants", "cross_products", "choose_combinations", "Sampling",
    "SparseEquivariantAttention", "SparseEquivariantTransformer", "radius_graph", "switching_function",
]
