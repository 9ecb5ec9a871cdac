"""Semi-supervised segmentation methods as small pluggable modules, and their registry.

``create_method(name, config)`` builds one from a plain dict (validated by the method's pydantic
config); ``METHODS`` lists them by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from medssl.errors import MedsslInputError
from medssl.methods.base import MethodConfig, NetworkConfig, SemiBatch, SemiMethod, StepOutput
from medssl.methods.caml import CamlConfig, CamlMethod
from medssl.methods.corn import CornConfig, CornMethod
from medssl.methods.dual_branch import DualBranchConfig, DualBranchMethod
from medssl.methods.mean_teacher import MeanTeacherConfig, MeanTeacherMethod
from medssl.methods.supervised import SupervisedConfig, SupervisedMethod
from medssl.methods.ua_mt import UAMTConfig, UAMTMethod

METHODS: dict[str, type[SemiMethod]] = {
    cls.name: cls
    for cls in (SupervisedMethod, MeanTeacherMethod, UAMTMethod, DualBranchMethod, CamlMethod, CornMethod)
}


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def method_config(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> MethodConfig:
    """Validate ``config`` (a dict, a config object or ``None`` for the defaults) for method ``name``.

    Raises:
        MedsslInputError: unknown method name (the message lists the valid ones) or invalid values.
    """
    if name not in METHODS:
        raise MedsslInputError("method", f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name].config_class
    if isinstance(config, cls):
        return config
    data = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise MedsslInputError(f"method {name} config", _describe(err)) from None


def create_method(name: str, config: Mapping[str, Any] | BaseModel | None = None) -> SemiMethod:
    """Build the method registered as ``name`` with ``config`` (see :func:`method_config`)."""
    cfg = method_config(name, config)
    return METHODS[name](cfg)


__all__ = ["METHODS", "CamlConfig", "CamlMethod", "CornConfig", "CornMethod", "DualBranchConfig",
           "DualBranchMethod", "MeanTeacherConfig", "MeanTeacherMethod", "MethodConfig", "NetworkConfig",
           "SemiBatch", "SemiMethod", "StepOutput", "SupervisedConfig", "SupervisedMethod", "UAMTConfig",
           "UAMTMethod", "create_method", "method_config"]
