"""The interface every semi-supervised method implements, and the configuration shared by all methods.

A method owns its networks (and EMA teachers, heads, feature pools) and turns one batch into one loss.
The training engine owns the optimiser, the data and the loop::

    method = create_method("corn", {...})
    optimizer = SGD(method.trainable_parameters(), ...)
    for iteration in range(start, max_iterations):      # 0 for the first optimiser step
        out = method.training_step(batch_fn(iteration), iteration)
        out.loss.backward(); optimizer.step(); optimizer.zero_grad()
        method.after_optimizer_step(iteration)

Everything a method needs to resume exactly is in ``method.state_dict()`` (networks, teachers, feature
pool and its random generator); that state holds only tensors, lists, dicts and ints, so it survives
``torch.save`` + ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from medssl.config import MedsslConfig
from medssl.errors import MedsslInputError
from medssl.models.vnet import DualBranchVNet, Normalization, VNet
from medssl.tensors import eval_mode


class MethodConfig(MedsslConfig):
    """Base of every method configuration (unknown keys are rejected, assignments validated)."""


class NetworkConfig(MethodConfig):
    """The V-Net every method trains (the left-atrium V-Net of UA-MT, Yu et al., MICCAI 2019, arXiv:1907.07034, used by CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916))."""

    in_channels: int = Field(1, ge=1)
    n_classes: int = Field(2, ge=2)
    base_width: int = Field(16, ge=1, description="channels of the first V-Net block (16 published)")
    normalization: Normalization = "batchnorm"
    has_dropout: bool = True


def make_vnet(cfg: NetworkConfig) -> VNet:
    """A single-branch V-Net (transposed-convolution upsampling) built from ``cfg``."""
    return VNet(cfg.in_channels, cfg.n_classes, cfg.base_width, cfg.normalization, cfg.has_dropout, "transposed")


def make_dual_vnet(cfg: NetworkConfig) -> DualBranchVNet:
    """A two-branch V-Net built from ``cfg``."""
    return DualBranchVNet(cfg.in_channels, cfg.n_classes, cfg.base_width, cfg.normalization, cfg.has_dropout)


@dataclass
class SemiBatch:
    """One training batch.

    Attributes:
        image: (B, in_channels, H, W, D) float; the first ``labeled_bs`` rows are labeled.
        label: (B, H, W, D) long class indices; rows ``>= labeled_bs`` are ignored.
        index: (B,) dataset indices; those of the labeled rows key the feature-pool slots.
        labeled_bs: number of labeled rows at the front of the batch.
    """

    image: Tensor
    label: Tensor
    index: Tensor
    labeled_bs: int


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: scalar tensor to backpropagate.
        logs: every loss term and ramp weight as plain floats (e.g. ``loss_sup``, ``loss_cons``, ``w_cons``).
    """

    loss: Tensor
    logs: dict[str, float]


class SemiMethod(nn.Module):
    """A semi-supervised segmentation method as one small module.

    Subclasses are registered with ``@register_method("name")``, set ``config_class`` (and capabilities
    such as ``needs_unlabeled``) and implement :meth:`training_step` and :meth:`segmentation_network`. ``iteration`` arguments count optimiser steps from 0 (the first step
    is iteration 0); methods convert to their reference code's counter where that differs.
    """

    #: registry name, set by :func:`medssl.methods.register_method`.
    name: ClassVar[str]
    #: the pydantic schema of the method's ``method_config`` section.
    config_class: ClassVar[type[MethodConfig]]
    #: whether batches carry unlabeled rows (``False``: the engine samples labeled volumes only).
    needs_unlabeled: ClassVar[bool] = True

    @classmethod
    def settings_from_run(cls, config: MethodConfig, *, n_labeled: int, max_iterations: int) -> MethodConfig:
        """``config`` with the settings that follow from the run filled where the user left them unset.

        The default fills the config fields named ``n_labeled`` (feature-pool slots = labeled volumes)
        and ``max_iterations`` (schedules over the whole run, e.g. UA-MT's uncertainty ramp).
        """
        run = {"n_labeled": n_labeled, "max_iterations": max_iterations}
        fill = {k: v for k, v in run.items() if k in type(config).model_fields and k not in config.model_fields_set}
        if not fill:
            return config
        return type(config).model_validate({**config.model_dump(exclude_unset=True), **fill})

    def training_step(self, batch: SemiBatch, iteration: int) -> StepOutput:
        """Compute the loss of ``batch`` at optimiser step ``iteration`` (0-based)."""
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Called after the optimiser step of ``iteration`` (EMA teacher updates etc.)."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates (EMA teachers excluded)."""
        return (p for p in self.parameters() if p.requires_grad)

    def encoders_to_initialise(self) -> dict[str, nn.Module]:
        """The V-Net encoders a pretrained encoder file initialises (``--init-encoder``), by module name.

        Default: every submodule whose name ends in ``encoder``, EMA teachers excluded (they copy the
        student).
        """
        return {name: module for name, module in self.named_modules()
                if name.endswith("encoder") and "teacher" not in name}

    def segmentation_network(self) -> nn.Module:
        """The network used at inference: ``logits = net(x)[0]``, (B, n_classes, H, W, D)."""
        raise NotImplementedError


def check_batch(batch: SemiBatch, need_unlabeled: bool) -> None:
    """Raise :class:`MedsslInputError` when ``batch`` does not fit a method's needs."""
    b = batch.image.shape[0]
    if not 0 < batch.labeled_bs <= b:
        raise MedsslInputError("batch", f"labeled_bs={batch.labeled_bs} must be in 1..{b} (batch size)")
    if need_unlabeled and batch.labeled_bs >= b:
        raise MedsslInputError("batch", f"this method needs unlabeled rows; batch size {b} has "
                               f"labeled_bs={batch.labeled_bs}")
    if batch.label.shape[0] != b or batch.label.shape[1:] != batch.image.shape[2:]:
        raise MedsslInputError("batch", f"label shape {tuple(batch.label.shape)} does not match image "
                               f"shape {tuple(batch.image.shape)}")


def touch_parameters(*modules: nn.Module) -> Tensor:
    """A zero scalar connected to every trainable parameter of ``modules``.

    Added to a loss whose optional term was skipped so that every trainable parameter still takes part in
    the backward pass (distributed data parallel then needs no unused-parameter search).
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return sum((p.sum() * 0.0 for p in params[1:]), params[0].sum() * 0.0)


SupLoss = Literal["dice", "ce"]
CrossLoss = Literal["mse_sharpen", "cps"]

__all__ = ["CrossLoss", "MethodConfig", "NetworkConfig", "SemiBatch", "SemiMethod", "StepOutput", "SupLoss",
           "check_batch", "eval_mode", "make_dual_vnet", "make_vnet", "touch_parameters"]
