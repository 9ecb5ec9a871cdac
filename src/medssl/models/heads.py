"""Per-voxel projection and prediction heads (CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916), as in its reference code).

Both heads act on features flattened to (N, C): one row per voxel. Batch normalisation is over the N
voxels, so in training mode the statistics are those of the voxels passed in.
"""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """Linear(in_dim -> hidden) -> BatchNorm1d(hidden) -> ReLU -> Linear(hidden -> out_dim).

    Maps (N, in_dim) decoder features to (N, out_dim) embeddings (32 in the reference code, 64 in the paper).
    """

    def __init__(self, in_dim: int = 16, hidden: int = 32, out_dim: int = 32) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class PredictionHead(nn.Sequential):
    """Linear(dim -> dim) -> BatchNorm1d(dim) -> ReLU -> Linear(dim -> dim), on (N, dim) embeddings."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


__all__ = ["PredictionHead", "ProjectionHead"]
