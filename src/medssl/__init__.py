"""medssl: learning from medical scans when labels are scarce.

Two methods end to end, with their baselines:

* Mask What Matters: text-guided masked image modeling (SparK-style sparse CNN encoders).
* CORN: semi-supervised 3D segmentation with CORAL covariance consistency and a dynamic feature pool.

The documented entry points are attributes of this package, imported on first use (``import medssl``
loads neither torch nor any backend)::

    import medssl

    method = medssl.create_method("corn", {"network": {"base_width": 8}})     # any registered method
    loss_fn = medssl.CoralConsistencyLoss(n_classes=2)                       # CORN's CCM as a loss
    visible = medssl.guided_mask(medssl.roi_patch_labels(roi, patch=16), r_roi=0.8, r_bg=0.4)
    cfg = medssl.load_config(medssl.SemiTrainConfig, "configs/semi/atrium3d_corn.yaml", ...)
    run = medssl.train_semi(cfg, dataset=my_volumes)                         # typed config + dataset object

Groups: methods (:mod:`medssl.methods`), masks (:mod:`medssl.masking`), localization and the ROI cache
(:mod:`medssl.localize`), encoder files (:mod:`medssl.models.encoder_io`), training / evaluation
(:mod:`medssl.engine`), data (:mod:`medssl.data`), configuration (:mod:`medssl.config`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it (resolved lazily by :func:`__getattr__`).
_EXPORTS: dict[str, str] = {
    # semi-supervised methods
    "MethodConfig": "medssl.methods",
    "SemiBatch": "medssl.methods",
    "SemiMethod": "medssl.methods",
    "StepOutput": "medssl.methods",
    "available_methods": "medssl.methods",
    "create_method": "medssl.methods",
    "register_method": "medssl.methods",
    "CoralConsistencyLoss": "medssl.methods.coral_loss",
    "FeaturePool": "medssl.methods.feature_pool",
    # masks from ROI maps
    "guided_mask": "medssl.masking",
    "mask_ratios": "medssl.masking",
    "random_mask": "medssl.masking",
    "roi_patch_labels": "medssl.masking",
    # localization and the ROI cache
    "LocalizationResult": "medssl.localize",
    "LocalizeRunConfig": "medssl.localize",
    "RoiCache": "medssl.localize",
    "create_localizer": "medssl.localize",
    "run_localization": "medssl.localize",
    # configuration
    "RuntimeConfig": "medssl.config",
    "load_config": "medssl.config",
    # data
    "open_volume_dataset": "medssl.data.spec",
    "read_image": "medssl.data.io",
    "synthesize": "medssl.data.synthetic",
    # training and evaluation (typed configs; train_semi / evaluate_run also take dataset objects)
    "SemiTrainConfig": "medssl.engine.semi",
    "evaluate_run": "medssl.engine.semi",
    "predict_file": "medssl.engine.semi",
    "train_semi": "medssl.engine.semi",
    "PretrainConfig": "medssl.engine.pretrain",
    "train_pretrain": "medssl.engine.pretrain",
    "export_encoder": "medssl.engine.pretrain_export",
    "read_encoder": "medssl.models.encoder_io",
    "ClassifyConfig": "medssl.engine.classify",
    "train_classifier": "medssl.engine.classify",
    "DetectConfig": "medssl.engine.detect",
    "train_detector": "medssl.engine.detect",
    "build_report": "medssl.report",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first access and cache the attribute here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
