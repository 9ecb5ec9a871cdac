"""Networks: the left-atrium V-Net (single and dual branch) and per-voxel embedding heads."""

from medssl.models.heads import PredictionHead, ProjectionHead
from medssl.models.vnet import DualBranchVNet, VNet, VNetDecoder, VNetEncoder, count_parameters

__all__ = ["DualBranchVNet", "PredictionHead", "ProjectionHead", "VNet", "VNetDecoder", "VNetEncoder",
           "count_parameters"]
