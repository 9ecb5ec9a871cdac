"""``medssl finetune detect``: placeholder until Mask R-CNN fine-tuning lands."""

from __future__ import annotations
