"""Semi-supervised segmentation methods as small pluggable modules, and their registry.

``create_method(name, config)`` builds one from a plain dict or a config object (validated by the
method's pydantic config); ``available_methods()`` lists them by name, plugins included;
``@register_method("name")`` adds one (see :mod:`medssl.methods.registry`).
"""

from __future__ import annotations

from medssl.methods.base import MethodConfig, NetworkConfig, SemiBatch, SemiMethod, StepOutput

# the built-in methods register themselves on import
from medssl.methods.caml import CamlConfig, CamlMethod  # noqa: E402
from medssl.methods.corn import CornConfig, CornMethod  # noqa: E402
from medssl.methods.dual_branch import DualBranchConfig, DualBranchMethod  # noqa: E402
from medssl.methods.mean_teacher import MeanTeacherConfig, MeanTeacherMethod  # noqa: E402
from medssl.methods.registry import (
    METHODS,
    available_methods,
    create_method,
    get_method,
    load_plugins,
    method_config,
    register_method,
)
from medssl.methods.supervised import SupervisedConfig, SupervisedMethod  # noqa: E402
from medssl.methods.ua_mt import UAMTConfig, UAMTMethod  # noqa: E402

__all__ = ["METHODS", "CamlConfig", "CamlMethod", "CornConfig", "CornMethod", "DualBranchConfig",
           "DualBranchMethod", "MeanTeacherConfig", "MeanTeacherMethod", "MethodConfig", "NetworkConfig",
           "SemiBatch", "SemiMethod", "StepOutput", "SupervisedConfig", "SupervisedMethod", "UAMTConfig",
           "UAMTMethod", "available_methods", "create_method", "get_method", "load_plugins", "method_config",
           "register_method"]
