"""Training functions take opened data objects instead of spec strings: the object, not the config's
data section, decides what is trained on (checked before any run directory is written)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medssl.config import load_config
from medssl.data.classify import ClassificationData, ClassificationSplit
from medssl.data.io import write_png
from medssl.errors import MedsslInputError


def _fail(*_: object, **__: object) -> None:
    raise AssertionError("the data section was opened although a data object was given")


def test_train_classifier_uses_the_given_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medssl.engine import classify
    from medssl.engine.classify import ClassifyConfig, train_classifier

    image = write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    split = ClassificationSplit("train", [image] * 3, [0, 1, 0])
    data = ClassificationData(["no", "yes"], split, split.subset([0], "val"), None, [tmp_path], "given")
    cfg = load_config(ClassifyConfig, base={"runtime": {"name": "c", "runs_root": str(tmp_path / "runs")},
                                            "data": {"spec": "csv:nowhere.csv", "batch_size": 4},
                                            "model": {"backbone": "resnet18", "image_size": 16}})
    monkeypatch.setattr(classify, "open_classification_data", _fail)
    with pytest.raises(MedsslInputError, match="larger than the 3 training images"):
        train_classifier(cfg, data=data)  # 3 images in the object; the batch of 4 does not fit
    assert not (tmp_path / "runs").exists()


def test_train_detector_uses_the_given_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medssl.data.synthetic import synthesize
    from medssl.engine import detect
    from medssl.engine.detect import DetectConfig, open_detect_data, train_detector

    root = synthesize("brain2d", tmp_path / "brain2d", n=4, seed=2, shape=(48, 48))
    cfg = load_config(DetectConfig, base={"runtime": {"name": "d", "runs_root": str(tmp_path / "runs")},
                                          "data": {"root": str(root), "batch_size": 2},
                                          "model": {"backbone": "resnet18"}})
    full = open_detect_data(cfg.data)
    assert len(full.train.indices) >= 2  # the config's own data would fit a batch of 2
    one = replace(full, train=replace(full.train, indices=full.train.indices[:1]))
    monkeypatch.setattr(detect, "open_detect_data", _fail)
    with pytest.raises(MedsslInputError, match="exceeds the 1 training image"):
        train_detector(cfg, data=one)
    assert not (tmp_path / "runs").exists()
