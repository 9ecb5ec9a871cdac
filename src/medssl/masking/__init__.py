"""Patch masks for masked image modeling, 2D and 3D through one code path.

* :func:`roi_patch_labels`: ROI map (B, *spatial) -> ROI patch labels (B, *grid).
* :func:`random_mask`: SparK's uniform random mask.
* :func:`guided_mask`: region-guided mask (ROI masked at ``r_roi``, background at ``r_bg``).
* :func:`mask_ratios`, :func:`expected_overall_ratio`: numbers to log.
* :func:`upsample_mask`: patch mask -> (B, 1, *spatial) pixel/voxel mask.

All masks are visibility masks: True = visible, False = masked.
"""

from medssl.masking.guided import COUNT_RULES, expected_overall_ratio, guided_mask, mask_ratios
from medssl.masking.patches import RULES, parse_rule, patch_grid, roi_patch_labels, upsample_mask
from medssl.masking.random_mask import keep_count, random_mask, select_uniform, stochastic_keep_counts

__all__ = ["COUNT_RULES", "RULES", "expected_overall_ratio", "guided_mask", "keep_count", "mask_ratios",
           "parse_rule", "patch_grid", "random_mask", "roi_patch_labels", "select_uniform",
           "stochastic_keep_counts", "upsample_mask"]
