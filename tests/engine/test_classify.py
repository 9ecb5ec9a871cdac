"""Classification fine-tuning engine: data splits, images, batches, init loading, optimiser groups, schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from medssl.config import load_config
from medssl.data.classify import (
    ClassificationSplit,
    ClassifyDataConfig,
    ImageCache,
    channel_stats,
    load_image_cache,
    open_classification_data,
    stratified_holdout,
)
from medssl.data.classify_batches import ClassifyAugmentConfig, EpochBatches, build_batch_fn
from medssl.data.io import write_png
from medssl.engine.classify import ClassifyConfig
from medssl.engine.classify_eval import classification_loss, soft_targets
from medssl.engine.classify_optim import layer_decay_param_groups, lr_multiplier
from medssl.errors import MedsslInputError
from medssl.models.classifier import build_classifier
from medssl.models.encoder_io import read_encoder, timm_in_chans

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "finetune"


def _meta(name: str, **kw: object) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kw)


# ------------------------------------------------------------------------------- optimiser groups
def _scale_of(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "expected"), [
    # reference grouping for ResNet-50 [3, 4, 6, 3]: layer2 in chunks of 2, layer3 in chunks of 3, N = 6
    ("resnet50", {"conv1.weight": 0, "bn1.weight": 0, "layer1.2.conv3.weight": 1, "layer2.1.conv1.weight": 2,
                  "layer2.2.conv1.weight": 3, "layer3.2.conv1.weight": 4, "layer3.3.conv1.weight": 5,
                  "layer4.0.conv1.weight": 6, "fc.weight": 7}),
    # ResNet-101 [3, 4, 23, 3]: layer3 in chunks of 3 -> 8 groups, N = 12
    ("resnet101", {"layer2.3.conv1.weight": 3, "layer3.0.conv1.weight": 4, "layer3.22.conv1.weight": 11,
                   "layer4.2.conv1.weight": 12, "fc.weight": 13}),
    # ResNet-18 [2, 2, 2, 2]: halves of layer2 / layer3 (one block each), N = 6
    ("resnet18", {"conv1.weight": 0, "layer1.1.conv1.weight": 1, "layer2.0.conv1.weight": 2,
                  "layer2.1.conv2.weight": 3, "layer3.0.conv1.weight": 4, "layer3.1.conv1.weight": 5,
                  "layer4.1.conv2.weight": 6, "fc.weight": 7}),
])
def test_resnet_layer_decay_groups(name: str, expected: dict[str, int]) -> None:
    model = _meta(name, num_classes=3)
    groups = layer_decay_param_groups(model, lr=0.01, weight_decay=0.02, layer_decay=0.7)
    scales = _scale_of(model, groups)
    n_plus_1 = expected["fc.weight"]
    for param, layer in expected.items():
        scale, wd = scales[param]
        assert scale == pytest.approx(0.7 ** (n_plus_1 - layer)), param
        assert wd == (0.0 if param.startswith("bn") else 0.02), param
    assert scales["fc.bias"] == (1.0, 0.0) and scales["layer4.0.bn1.weight"][1] == 0.0  # no decay on 1-D
    for g in groups:
        assert g["lr"] == pytest.approx(0.01 * g["lr_scale"])
    assert groups[0]["lr_scale"] == 1.0 and groups[-1]["lr_scale"] == pytest.approx(0.7**n_plus_1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_other_backbones_use_timm_grouping() -> None:
    model = _meta("convnext_atto", num_classes=3)
    groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scales = _scale_of(model, groups)
    assert len(scales) == len(list(model.parameters()))
    assert scales["head.fc.weight"] == (1.0, 0.05)
    assert scales["stem.0.weight"][0] < scales["stages.3.blocks.0.conv_dw.weight"][0] < 1.0


def test_lr_schedule_warmup_then_cosine() -> None:
    total, warm = 10, 4
    values = [lr_multiplier(i, total, warm, 0.005, 0.001) for i in range(total)]
    assert values[0] == pytest.approx(0.005)
    assert values[2] == pytest.approx(0.005 + 0.995 * 2 / 4)
    assert values[4] == pytest.approx(1.0)  # peak right after warm-up
    assert values[-1] == pytest.approx(0.001)  # last step at the floor
    r = (7 - 4) / (10 - 1 - 4)
    assert values[7] == pytest.approx(0.001 + 0.999 * (1 + math.cos(math.pi * r)) / 2)
    assert all(a > b for a, b in zip(values[4:], values[5:], strict=False))
    assert lr_multiplier(0, 1, 0, 0.005, 0.001) == pytest.approx(0.001)  # a single step is the last one


def test_fine_tuning_schedule_is_the_pretraining_schedule() -> None:
    from medssl.engine.schedules import lr_factor

    # one formula: identical floats wherever the cosine has a length, warm-up and clamped tail included
    for total, warm in ((10, 4), (7, 0), (3, 5), (50, 12)):
        for i in range(total + 2):
            assert lr_multiplier(i, total, warm, 0.02, 0.003) == lr_factor(i, total, warm, 0.003, 0.02)
    # a cosine without length (total - 1 <= warm-up): fine-tuning ends at its floor, pretraining at the peak
    assert lr_multiplier(4, 5, 4, 0.02, 0.003) == 0.003 and lr_factor(4, 5, 4, 0.003, 0.02) == 1.0


def test_public_names_stay_importable_from_engine_classify() -> None:
    import importlib

    import medssl.engine.classify as facade

    homes = {"medssl.data.classify": ["ClassificationSplit", "ClassificationData", "ClassifyDataConfig", "ImageCache",
                                      "open_classification_data", "stratified_holdout", "load_image_cache"],
             "medssl.data.classify_batches": ["ClassifyAugmentConfig", "EpochBatches", "build_batch_fn"],
             "medssl.models.classifier": ["InitReport", "build_classifier"],
             "medssl.models.encoder_io": ["read_encoder", "check_timm_fit", "timm_in_chans"],
             "medssl.engine.classify_optim": ["ClassifyOptimConfig", "layer_decay_param_groups", "lr_multiplier",
                                              "resnet_layer_ids"],
             "medssl.engine.classify_eval": ["BEST_LABEL", "FINAL_LABEL", "soft_targets", "classification_loss"]}
    for module, names in homes.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(facade, name) is getattr(home, name), name
    rehomed = {name for names in homes.values() for name in names}
    module_of = {name: getattr(getattr(facade, name), "__module__", None) for name in facade.__all__}
    own = {name for name, module in module_of.items() if module == facade.__name__}
    elsewhere = {n for n, m in module_of.items() if m is not None} - rehomed - own  # functions / classes
    assert all(module_of[n].startswith("medssl.") for n in elsewhere), elsewhere
    assert {"train_classifier", "ClassifyConfig", "ClassifyModelConfig"} <= own


# ----------------------------------------------------------------------------------- data splits
def test_stratified_holdout_counts_and_seeds() -> None:
    targets = [0] * 10 + [1] * 5 + [2] * 1
    kept, held = stratified_holdout(targets, 0.2, seed=3)
    assert sorted(kept + held) == list(range(16)) and not set(kept) & set(held)
    y = np.array(targets)
    # floor(0.2 * n + 0.5): 2 of 10, 1 of 5; a single-sample class stays in training
    assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]
    assert stratified_holdout(targets, 0.2, seed=3) == (kept, held)
    draws = {tuple(stratified_holdout(targets, 0.2, seed=s)[1]) for s in range(6)}
    assert len(draws) > 1  # the seed chooses which samples
    # a class with 2 samples keeps one even at a large fraction
    assert np.bincount(np.array([0, 0, 1, 1])[stratified_holdout([0, 0, 1, 1], 0.9, 0)[1]]).tolist() == [1, 1]
    # rounding gives nothing: one sample of the largest class is held out
    assert len(stratified_holdout([0, 0, 0, 1, 1], 0.05, 0)[1]) == 1
    with pytest.raises(MedsslInputError, match="no class has two"):
        stratified_holdout([0, 1, 2], 0.5, 0)


def _image(path: Path, value: int, rgb: bool = False, size: int = 8) -> Path:
    arr = np.full((size, size, 3) if rgb else (size, size), value, dtype=np.uint8)
    arr[0, 0] = 255 - value  # not constant
    return write_png(path, arr)


def test_csv_splits_named_auto_and_unknown(tmp_path: Path) -> None:
    rows = ["image,label,split"]
    for i in range(8):
        _image(tmp_path / f"im{i}.png", 10 * i)
        split = "train" if i < 4 else ("val" if i < 6 else "test")
        rows.append(f"im{i}.png,{'b' if i % 2 else 'a'},{split}")
    (tmp_path / "classes.csv").write_text("\n".join(rows) + "\n")
    spec = f"csv:{tmp_path / 'classes.csv'}"
    data = open_classification_data(ClassifyDataConfig(spec=spec, val_split="val"), seed=0)
    assert data.classes == ["a", "b"]
    assert [p.name for p in data.train.paths] == ["im0.png", "im1.png", "im2.png", "im3.png"]
    assert [p.name for p in data.val.paths] == ["im4.png", "im5.png"] and data.val.targets == [0, 1]
    assert data.test is not None and [p.name for p in data.test.paths] == ["im6.png", "im7.png"]
    described = data.describe()
    assert described["train"]["per_class"] == {"a": 2, "b": 2} and described["val_rule"] == "split 'val'"
    # no val split named: a stratified fraction of train
    data = open_classification_data(ClassifyDataConfig(spec=spec, val_fraction=0.5), seed=0)
    assert len(data.train) == 2 and sorted(data.val.targets) == [0, 1]
    with pytest.raises(MedsslInputError, match="no rows with split 'nope'"):
        open_classification_data(ClassifyDataConfig(spec=spec, val_split="nope"), seed=0)
    # the automatic test split is optional, a named one is not
    (tmp_path / "two.csv").write_text("\n".join(r for r in rows if not r.endswith(",test")) + "\n")
    spec2 = f"csv:{tmp_path / 'two.csv'}"
    assert open_classification_data(ClassifyDataConfig(spec=spec2, val_split="val"), seed=0).test is None
    with pytest.raises(MedsslInputError, match="no rows with split 'test'"):
        open_classification_data(ClassifyDataConfig(spec=spec2, val_split="val", test_split="test"), seed=0)
    with pytest.raises(MedsslInputError, match="expected a data spec"):
        open_classification_data(ClassifyDataConfig(spec="folderx:/nowhere"), seed=0)


def test_imagefolder_split_folders_map_classes_by_name(tmp_path: Path) -> None:
    for split, classes in (("train", ("cat", "dog")), ("test", ("dog",))):
        for c in classes:
            for i in range(3):
                _image(tmp_path / split / c / f"{i}.png", 40 * i)
    data = open_classification_data(ClassifyDataConfig(spec=f"imagefolder:{tmp_path}", val_fraction=0.34), seed=1)
    assert data.classes == ["cat", "dog"]
    assert data.test is not None and data.test.targets == [1, 1, 1]  # 'dog' is class 1 of the training split
    assert sorted(data.val.targets) == [0, 1] and len(data.train) == 4
    _image(tmp_path / "val" / "bird" / "0.png", 5)
    with pytest.raises(MedsslInputError, match="bird"):
        open_classification_data(ClassifyDataConfig(spec=f"imagefolder:{tmp_path}", val_split="val"), seed=1)


# ------------------------------------------------------------------------------- images, batches
def test_image_channels_resize_and_stats(tmp_path: Path) -> None:
    gray = _image(tmp_path / "g.png", 100, size=16)
    rgb_arr = np.zeros((16, 16, 3), np.uint8)
    rgb_arr[..., 0], rgb_arr[..., 1], rgb_arr[..., 2] = 30, 60, 90
    rgb = write_png(tmp_path / "c.png", rgb_arr)
    split = ClassificationSplit("train", [gray, rgb], [0, 1])
    three = load_image_cache(split, in_chans=3, size=8)
    assert three.images.shape == (2, 3, 8, 8)
    assert torch.equal(three.images[0, 0], three.images[0, 2])  # grayscale replicated
    assert three.images[1, :, 3, 3].tolist() == [30.0, 60.0, 90.0]  # constant colour survives the resize
    one = load_image_cache(split, in_chans=1, size=16)
    assert one.images[1, 0, 5, 5].item() == pytest.approx(60.0)  # colour -> channel mean
    expected = F.interpolate(torch.from_numpy(np.asarray(_pixels(gray)))[None, None].float(), size=(8, 8),
                             mode="bilinear", align_corners=False, antialias=True)[0, 0]
    assert torch.allclose(three.images[0, 1], expected)
    mean, std = channel_stats(three.images)
    flat = three.images.double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(mean, flat.mean(1))
    np.testing.assert_allclose(std, flat.std(1))


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.float32)


def test_batches_are_a_pure_function_of_the_iteration(tmp_path: Path) -> None:
    b = EpochBatches(n=10, global_batch=4, seed=7)
    assert b.iterations_per_epoch == 2
    epoch0 = b.indices(0) + b.indices(1)
    assert len(set(epoch0)) == 8 and b.indices(1) == EpochBatches(10, 4, 7).indices(1)
    assert b.indices(2) + b.indices(3) != epoch0  # every epoch reshuffles
    ranks = [EpochBatches(10, 4, 7, rank=r, world_size=2).indices(1) for r in range(2)]
    assert ranks[0] + ranks[1] == b.indices(1)  # ranks split the global batch
    with pytest.raises(MedsslInputError, match="larger than"):
        EpochBatches(n=3, global_batch=4, seed=0)
    with pytest.raises(MedsslInputError, match="divisible"):
        EpochBatches(n=10, global_batch=3, seed=0, world_size=2)

    images = torch.arange(10 * 4 * 4, dtype=torch.float32).reshape(10, 1, 4, 4)
    cache = ImageCache(images=images, targets=torch.arange(10) % 2, paths=[tmp_path] * 10)
    flip = build_batch_fn(cache, b, ClassifyAugmentConfig(hflip=1.0), [2.0], [4.0], torch.device("cpu"))
    x, y = flip(3)
    idx = b.indices(3)
    assert torch.equal(x, (images[idx].flip(-1) - 2.0) / 4.0) and y.tolist() == [i % 2 for i in idx]
    crop = build_batch_fn(cache, b, ClassifyAugmentConfig(hflip=0.5, random_resized_crop=True), [0.0], [1.0],
                          torch.device("cpu"))
    assert torch.equal(crop(5)[0], crop(5)[0]) and crop(5)[0].shape == (4, 1, 4, 4)


# ------------------------------------------------------------------------------------ init files
def test_init_loading_is_strict_except_the_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = timm.create_model("resnet18", num_classes=0, in_chans=1).state_dict()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(encoder, plain)
    torch.save({"encoder": encoder, "epoch": 3}, wrapped)
    for path, layout in ((plain, "state_dict"), (wrapped, "encoder")):
        read = read_encoder(path)
        assert read.layout == layout and read.state.keys() == encoder.keys()
        assert all(torch.equal(read.state[k], v) for k, v in encoder.items())
    state = read_encoder(plain).state
    assert timm_in_chans(state, "resnet18", plain) == 1
    model, (loaded, head, ignored) = build_classifier("resnet18", 5, 1, init=state, init_path=plain)
    assert head == ["fc.bias", "fc.weight"] and ignored == [] and len(loaded) == len(encoder)
    for k, v in encoder.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert model.fc.weight.shape == (5, 512)
    # a head in the file (another number of classes) is ignored, the rest still strict
    with_head = dict(encoder, **{"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2)})
    _, (_, _, ignored) = build_classifier("resnet18", 5, 1, init=with_head, meta=True)
    assert ignored == ["fc.bias", "fc.weight"]
    with pytest.raises(MedsslInputError, match=r"plain.pt: .*shape mismatch.*conv1.weight"):
        build_classifier("resnet18", 5, 3, init=state, init_path=plain, meta=True)
    with pytest.raises(MedsslInputError, match=r"1 missing key"):
        build_classifier("resnet18", 5, 1, init={k: v for k, v in state.items() if k != "bn1.bias"}, meta=True)
    convnext = timm.create_model("convnext_atto", num_classes=0).state_dict()
    with pytest.raises(MedsslInputError, match="no first convolution 'conv1.weight'"):
        timm_in_chans(convnext, "resnet18", "cx.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(MedsslInputError, match="not an encoder state dict"):
        read_encoder(tmp_path / "odd.pt")


# ------------------------------------------------------------------------------- losses, presets
def test_losses_on_soft_targets() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2])
    t = soft_targets(labels, 3, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0].tolist() == pytest.approx([0.1 / 3 + 0.9, 0.1 / 3, 0.1 / 3])
    assert classification_loss(logits, t, "ce").item() == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    expected_bce = -(t * torch.log(torch.sigmoid(logits)) + (1 - t) * torch.log(1 - torch.sigmoid(logits))).mean()
    assert classification_loss(logits, t, "bce").item() == pytest.approx(expected_bce.item())


def test_presets_load_and_the_reference_recipe() -> None:
    names = sorted(p.stem for p in CONFIGS.glob("classify_*.yaml"))
    assert names == ["classify_brain2d_resnet18", "classify_chest2d_resnet18", "classify_reference"]
    for name in names:
        load_config(ClassifyConfig, CONFIGS / f"{name}.yaml", base={"runtime": {"name": "x"}})
    ref = load_config(ClassifyConfig, CONFIGS / "classify_reference.yaml", base={"runtime": {"name": "x"}})
    o = ref.optim
    assert (ref.model.backbone, ref.model.image_size, ref.model.drop_path, ref.epochs) == ("resnet50", 224, 0.05, 300)
    assert (o.name, o.base_lr, o.layer_decay, o.weight_decay, o.warmup_epochs) == ("lamb", 0.002, 0.7, 0.02, 5)
    assert (o.label_smoothing, o.mixup, o.cutmix, o.ema_decay, o.loss) == (0.1, 0.1, 1.0, 0.9999, "bce")
    assert ref.data.batch_size == 2048 and ref.model.replicate3
    cpu = load_config(ClassifyConfig, CONFIGS / "classify_brain2d_resnet18.yaml", base={"runtime": {"name": "x"}})
    assert not cpu.optim.mixing and cpu.optim.ema_decay is None and cpu.model.backbone == "resnet18"
    with pytest.raises(MedsslInputError, match="unknown timm model"):
        load_config(ClassifyConfig, base={"runtime": {"name": "x"}, "data": {"spec": "a.csv"},
                                          "model": {"backbone": "resnet_nope"}})
