"""One encoder I/O module: every format reads the same, medssl exports describe themselves and load into
timm (``checkpoint_path``), the V-Net encoders of a method and the Mask R-CNN ResNet body."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from medssl.errors import MedsslInputError
from medssl.models.encoder_io import (
    META_KEY,
    encoder_metadata,
    encoder_payload,
    load_vnet_encoders,
    read_encoder,
    read_resnet_body_init,
)
from medssl.models.vnet import VNet


def _resnet18(in_chans: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(in_chans)
    return timm.create_model("resnet18", num_classes=0, in_chans=in_chans).state_dict()


def _meta(**extra: object) -> dict:
    return encoder_metadata(architecture="resnet18", in_chans=1, dims=2, target="timm.create_model('resnet18')",
                            source_run=Path("/runs/r"), iteration=7, commit={"commit": "abc", "dirty": False},
                            **extra)


def test_three_layouts_read_to_the_same_tensors(tmp_path: Path) -> None:
    state = _resnet18(1)
    files = {"state_dict": state, "encoder": {"encoder": state, "epoch": 3},
             "medssl": encoder_payload(state, _meta())}
    for layout, content in files.items():
        torch.save(content, tmp_path / f"{layout}.pt")
        read = read_encoder(tmp_path / f"{layout}.pt")
        assert read.layout == layout and read.state.keys() == state.keys()
        assert all(torch.equal(read.state[k], v) for k, v in state.items())
    described = read_encoder(tmp_path / "medssl.pt")
    assert described.in_chans == 1 and described.meta["architecture"] == "resnet18"
    assert described.meta["source_run"] == "/runs/r" and described.meta["commit"] == {"commit": "abc", "dirty": False}
    assert read_encoder(tmp_path / "state_dict.pt").in_chans is None  # a plain file says nothing


def test_a_medssl_export_loads_into_timm_by_checkpoint_path(tmp_path: Path) -> None:
    state = _resnet18(1)
    path = tmp_path / "enc.pt"
    torch.save(encoder_payload(state, _meta()), path)
    model = timm.create_model("resnet18", num_classes=0, in_chans=1, checkpoint_path=str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_the_record_is_plain_data_that_weights_only_loading_accepts(tmp_path: Path) -> None:
    meta = _meta(masking={"kind": "guided", "ratios": (0.6, 0.2)}, where=tmp_path)
    assert meta["masking"]["ratios"] == [0.6, 0.2] and meta["where"] == str(tmp_path)
    torch.save(encoder_payload(_resnet18(1), meta), tmp_path / "e.pt")
    assert torch.load(tmp_path / "e.pt", weights_only=True)[META_KEY] == meta


def test_an_old_export_takes_its_record_from_the_sidecar(tmp_path: Path) -> None:
    torch.save(_resnet18(3), tmp_path / "old.pt")
    (tmp_path / "old.pt.json").write_text(json.dumps({"backbone": "resnet18", "in_chans": 1,
                                                       "input_mode": "replicate3"}))
    assert read_encoder(tmp_path / "old.pt").in_chans == 3  # replicated grayscale: a 3-channel encoder


def test_vnet_encoders_and_the_detection_body_read_medssl_exports(tmp_path: Path) -> None:
    net = VNet(1, 2, base_width=4)
    source = VNet(1, 2, base_width=4).encoder.state_dict()
    path = tmp_path / "vnet.pt"
    torch.save(encoder_payload(source, encoder_metadata(architecture="vnet", in_chans=1, dims=3, target="VNetEncoder")),
               path)
    report = load_vnet_encoders({"encoder": net.encoder}, read_encoder(path))
    assert report == {"path": str(path), "modules": ["encoder"], "tensors": len(source)}
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in source.items())
    with pytest.raises(MedsslInputError, match="no V-Net encoder"):
        load_vnet_encoders({}, read_encoder(path))
    body = tmp_path / "body.pt"
    torch.save(encoder_payload(_resnet18(1), _meta()), body)
    init = read_resnet_body_init(body, "resnet18")
    assert init.in_chans == 1 and init.report["loaded"] == len(_resnet18(1))


def test_a_training_checkpoint_is_not_an_encoder(tmp_path: Path) -> None:
    torch.save({"model": {}, "format": 1}, tmp_path / "ckpt.pt")
    with pytest.raises(MedsslInputError, match="a training checkpoint, not an exported encoder"):
        read_encoder(tmp_path / "ckpt.pt")
