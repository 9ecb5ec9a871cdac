"""medssl: learning from medical scans when labels are scarce.

Two methods end to end, with their baselines:

* Mask What Matters: text-guided masked image modeling (SparK-style sparse CNN encoders).
* CORN: semi-supervised 3D segmentation with CORAL covariance consistency and a dynamic feature pool.
"""

__version__ = "0.1.0"
