"""Configuration of semi-supervised training (``medssl semi train``) and the result it returns.

Presets live in ``configs/semi/``; the data section is :class:`medssl.data.semi.SemiDataConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.data.semi import SemiDataConfig
from medssl.engine.evaluate import EvalResult
from medssl.engine.loop import LoopResult
from medssl.methods import MethodConfig, available_methods, get_method
from medssl.methods.registry import describe_validation_error

__all__ = ["InferenceConfig", "OptimConfig", "SemiTrainConfig", "SemiTrainResult"]

Triple = tuple[int, int, int]


class OptimConfig(MedsslConfig):
    """SGD with an optional step decay (``lr_step`` iterations, factor ``lr_gamma``)."""

    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_step: int | None = Field(None, ge=1, description="Multiply the lr by lr_gamma every lr_step iterations.")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class InferenceConfig(MedsslConfig):
    """Sliding-window inference (left-atrium protocol: 112x112x80 windows, stride 18/18/4)."""

    patch: Triple = (112, 112, 80)
    stride: Triple = (18, 18, 4)
    batch_size: int | None = Field(None, ge=1, description="Windows per forward pass (None: device default).")
    precision: Literal["32", "bf16"] = "32"
    largest_component: bool = Field(False, description="Keep only the largest connected component "
                                    "(off in the published protocol; reported when on).")


class SemiTrainConfig(MedsslConfig):
    """Everything ``medssl semi train`` needs; presets live in ``configs/semi/``.

    ``method`` names a registered method (:func:`medssl.methods.available_methods`) and is the
    discriminator of ``method_config``: that section is validated by the method's own config class
    (``CornConfig`` for ``corn``, a plugin's class for a plugin), so ``cfg.method_config`` is typed and
    a wrong key fails when the config is loaded. The dispatch goes through the registry rather than a
    static ``Union`` so that methods registered by plugins take part.
    """

    runtime: RuntimeConfig
    data: SemiDataConfig
    method: str = "corn"
    method_config: SerializeAsAny[MethodConfig] = Field(
        default_factory=MethodConfig, validate_default=True,
        description="Method hyperparameters (validated by the method's config class).")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    max_iterations: int = Field(15000, ge=1)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    validate_every: int = Field(0, ge=0, description="Validation Dice every N iterations (0: never).")
    evaluate_after: bool = Field(True, description="Evaluate the final checkpoint on the validation cases.")
    init_encoder: Path | None = Field(None, description="Pretrained 3D V-Net encoder weights (.pt).")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        methods = available_methods()
        if value not in methods:
            raise ValueError(f"expected one of {', '.join(methods)}, got {value!r}")
        return value

    @field_validator("method_config", mode="plain")
    @classmethod
    def _typed_method_config(cls, value: Any, info: ValidationInfo) -> MethodConfig:
        name = info.data.get("method")
        if name is None:  # the method name failed validation: that error is the one to report
            return MethodConfig()
        config_class = get_method(name).config_class
        if type(value) is config_class:  # a subclass (UAMTConfig for mean_teacher) is re-validated
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of {config_class.__name__} keys, got {type(value).__name__}")
        try:
            return config_class.model_validate(value)
        except ValidationError as err:
            raise ValueError(f"{config_class.__name__}: {describe_validation_error(err)}") from None


@dataclass
class SemiTrainResult:
    """A finished training run."""

    run_dir: Path
    loop: LoopResult
    evaluation: EvalResult | None
    global_rank: int = 0
    init_report: dict[str, Any] | None = None
