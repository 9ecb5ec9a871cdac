"""``biomedclip-sam`` and ``clipseg`` end to end with tiny random models saved as real model folders
(open_clip config + safetensors, transformers ``save_pretrained``), offline; missing weights; revisions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy import ndimage
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTokenizer,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
    ViTImageProcessor,
)

from medssl.data.io import ImageData
from medssl.errors import MedsslInputError, MissingWeightsError
from medssl.localize import Localizer, RoiCache, available_localizers, create_localizer
from medssl.localize.biomedclip_sam import BiomedClipSamLocalizer
from medssl.localize.clipseg import ClipSegLocalizer
from medssl.localize.postprocess import kmeans_binarize
from medssl.localize.sam import sam_refine_mask
from medssl.localize.weights import local_revision

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                            "timm_proj": "linear", "image_size": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_SAM = {"vision_config": {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 64, "patch_size": 8, "window_size": 4,
                              "global_attn_indexes": [1], "num_pos_feats": 16, "mlp_dim": 64},
            "prompt_encoder_config": {"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
            "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                                    "iou_head_hidden_dim": 32}}
TINY_CLIPSEG = {"text_config": {"vocab_size": 60, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
                                "eos_token_id": 1, "pad_token_id": 1},
                "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                                  "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                "projection_dim": 16, "reduce_dim": 16, "extract_layers": [1, 2], "decoder_num_attention_heads": 2,
                "decoder_intermediate_size": 32}
PROMPT = "A cardiac MRI highlighting the left atrium"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sam_processor() -> SamProcessor:
    return SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                          mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random models written as ordinary model folders: open_clip, SAM, CLIPSeg."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    clip_dir = root / "tiny-biomedclip"
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}))
    save_file(open_clip.CLIP(**TINY_CLIP).state_dict(), str(clip_dir / "open_clip_model.safetensors"))

    torch.manual_seed(0)
    SamModel(SamConfig(**TINY_SAM)).save_pretrained(root / "tiny-sam")
    _sam_processor().save_pretrained(root / "tiny-sam")

    torch.manual_seed(0)
    cs_dir = root / "tiny-clipseg"
    CLIPSegForImageSegmentation(CLIPSegConfig(**TINY_CLIPSEG)).save_pretrained(cs_dir)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (cs_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (cs_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(cs_dir / "vocab.json"), str(cs_dir / "merges.txt"))
    images = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(cs_dir)
    return {"clip": clip_dir, "sam": root / "tiny-sam", "clipseg": cs_dir}


def _image2d() -> ImageData:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(48, 40)).astype(np.float32)
    img[10:22, 6:18] += 3.0
    return ImageData(array=img, affine=np.eye(4), spacing=(0.8, 0.8))


def _expand(box: tuple, ratio: float, shape: tuple) -> tuple:
    out = []
    for (lo, hi), size in zip(box, shape, strict=True):
        c, h = (lo + hi) / 2, ratio * (hi - lo) / 2
        out.append((max(0, math.floor(c - h)), min(size, math.ceil(c + h))))
    return tuple(out)


def _largest(mask: np.ndarray, k: int) -> tuple[np.ndarray, list[tuple]]:
    """The k largest full-connectivity components (ties: first in raster order) and their tight boxes."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = sorted(sorted(range(1, n + 1), key=lambda i: (-sizes[i - 1], i))[:k])
    slices = ndimage.find_objects(labels)
    return np.isin(labels, keep), [tuple((s.start, s.stop) for s in slices[i - 1]) for i in keep]


# ------------------------------------------------------------------------------------- missing weights
def test_missing_weights_are_one_line_errors_naming_the_model(tmp_path: Path, folders: dict[str, Path]) -> None:
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # nothing may be downloaded in tests
    empty_cache = str(tmp_path / "hf-cache")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(folders["clip"] / "open_clip_config.json", config_only)
    cases = [
        (lambda: ClipSegLocalizer(model="medssl-test/not-cached", cache_dir=empty_cache),
         "medssl-test/not-cached", "CLIPSeg weights not found", "huggingface-cli download medssl-test/not-cached"),
        (lambda: BiomedClipSamLocalizer(model="hf-hub:medssl-test/no-clip", refine=False, cache_dir=empty_cache),
         "hf-hub:medssl-test/no-clip", "BiomedCLIP weights not found", "huggingface-cli download medssl-test/no-clip"),
        (lambda: create_localizer("clipseg", cache_dir=empty_cache), "CIDAS/clipseg-rd64-refined",
         "CLIPSeg weights not found", "huggingface-cli download CIDAS/clipseg-rd64-refined"),
        (lambda: create_localizer("biomedclip-sam", cache_dir=empty_cache),
         "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "BiomedCLIP weights not found",
         "huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
        (lambda: BiomedClipSamLocalizer(model=str(folders["clip"]), sam_model=str(tmp_path / "no-sam")),
         str(tmp_path / "no-sam"), "SAM weights not found (no such directory)", "sam_model=DIR"),
        (lambda: ClipSegLocalizer(model=str(tmp_path)), str(tmp_path), "CLIPSeg weights not found", "model=DIR"),
        (lambda: BiomedClipSamLocalizer(model=str(config_only), refine=False), str(config_only),
         "BiomedCLIP weights not found", "model=DIR"),  # a config without weights is no model
    ]
    for build, source, what, how in cases:
        with pytest.raises(MissingWeightsError) as info:
            build()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{source}: {what}")
        assert how in message and "on a machine with internet" in message
        assert isinstance(info.value, MedsslInputError) and info.value.source == source


# ----------------------------------------------------------------------------------------- revisions
def test_hub_snapshot_in_the_cache_loads_offline_with_its_commit(tmp_path: Path, folders: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    for repo, folder in (("tiny-clipseg", folders["clipseg"]), ("tiny-clip", folders["clip"])):
        repo_dir = cache / f"models--medssl-test--{repo}"
        shutil.copytree(folder, repo_dir / "snapshots" / COMMIT)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(COMMIT)
    clipseg = ClipSegLocalizer(model="medssl-test/tiny-clipseg", cache_dir=str(cache))
    assert clipseg.model_id == "medssl-test/tiny-clipseg" and clipseg.model_revision == COMMIT
    clip = BiomedClipSamLocalizer(model="hf-hub:medssl-test/tiny-clip", refine=False, layer=3, cache_dir=str(cache))
    assert clip.model_id == "medssl-test/tiny-clip" and clip.model_revision == COMMIT


def test_local_folder_revision_follows_configs_and_weight_files(tmp_path: Path, folders: dict[str, Path]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folders["clipseg"], copy)
    loc = ClipSegLocalizer(model=str(copy))
    assert loc.model_id == str(copy.resolve()) and loc.model_revision == local_revision(folders["clipseg"])
    assert loc.model_revision.startswith("local-sha256:")
    config = json.loads((copy / "config.json").read_text())
    config["reduce_dim"] = 16  # same value, new JSON text: a different file content
    (copy / "config.json").write_text(json.dumps(config, indent=1))
    assert local_revision(copy) != loc.model_revision
    (copy / "extra.safetensors").write_bytes(b"0" * 10)
    changed = local_revision(copy)
    (copy / "extra.safetensors").write_bytes(b"0" * 11)
    assert local_revision(copy) != changed


# ------------------------------------------------------------------------------------ biomedclip-sam
def test_biomedclip_sam_2d_end_to_end(folders: dict[str, Path]) -> None:
    loc = create_localizer("biomedclip-sam", model=str(folders["clip"]), sam_model=str(folders["sam"]), layer=3,
                           binarize="threshold", threshold=0.5, components=2, expand_ratio=1.5)
    assert isinstance(loc, BiomedClipSamLocalizer) and isinstance(loc, Localizer)
    image = _image2d()
    result = loc.localize(image, PROMPT)
    sal = result.saliency
    assert sal.shape == (48, 40) and sal.dtype == np.float32 and 0.0 <= sal.min() and sal.max() <= 1.0
    coarse, prompt_boxes = _largest(sal > 0.5, 2)
    np.testing.assert_array_equal(result.coarse_mask, coarse)
    assert [tuple(map(tuple, b)) for b in result.provenance["sam_prompt_boxes"]] == prompt_boxes

    # SAM called directly on the same RGB image with [x0, y0, x1, y1] boxes written out here
    sam, processor = SamModel.from_pretrained(folders["sam"]).eval(), SamProcessor.from_pretrained(folders["sam"])
    lo, hi = np.percentile(image.array, [0.5, 99.5])
    gray = np.round(np.clip((image.array - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    xyxy = [[c0, r0, c1, r1] for (r0, r1), (c0, c1) in prompt_boxes]
    inputs = processor(images=rgb, input_boxes=[xyxy], return_tensors="pt")
    with torch.no_grad():
        out = sam(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False)
    logits = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"],
                                          binarize=False)[0][:, 0]
    refined, tight = _largest((torch.sigmoid(logits).max(0).values > 0.5).numpy(), 2)
    assert refined.any()
    np.testing.assert_array_equal(result.refined_mask, refined)
    again_refined, again_prompts = sam_refine_mask(loc.sam, rgb, result.coarse_mask, components=2)
    np.testing.assert_array_equal(again_refined, refined)
    assert again_prompts == prompt_boxes
    assert result.boxes == [_expand(b, 1.5, (48, 40)) for b in tight]
    expected_roi = np.zeros((48, 40), bool)
    for box in result.boxes:
        expected_roi[box[0][0]:box[0][1], box[1][0]:box[1][1]] = True
    np.testing.assert_array_equal(result.roi, expected_roi)

    prov = result.provenance
    assert prov["backend"] == "biomedclip-sam" and prov["empty_at"] is None and prov["n_components"] == len(tight)
    assert prov["model_id"] == f"{folders['clip'].resolve()} + {folders['sam'].resolve()}"
    assert prov["params"]["layer"] == 3 and prov["params"]["components"] == 2 and prov["params"]["refine"] is True
    assert prov["models"]["sam"]["revision"] == local_revision(folders["sam"])
    again = loc.localize(image, PROMPT)
    np.testing.assert_array_equal(again.saliency, sal)
    np.testing.assert_array_equal(again.roi, result.roi)


def test_biomedclip_sam_volume_goes_slice_by_slice(folders: dict[str, Path]) -> None:
    loc = BiomedClipSamLocalizer(model=str(folders["clip"]), sam_model=str(folders["sam"]), layer=2,
                                 slice_stride=2, components=1, expand_ratio=1.2)
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(32, 28, 4)).astype(np.float32)
    vol[6:16, 5:14, 1:4] += 3.0
    result = loc.localize(ImageData(array=vol, affine=np.eye(4), spacing=(1.0, 1.0, 2.5)), PROMPT)
    assert result.roi.shape == result.saliency.shape == result.refined_mask.shape == (32, 28, 4)
    # slices 0 and 2 are run; 1 copies 0 and 3 copies 2
    np.testing.assert_array_equal(result.saliency[..., 1], result.saliency[..., 0])
    np.testing.assert_array_equal(result.refined_mask[..., 3], result.refined_mask[..., 2])
    assert result.provenance["slices_run"] == 2 and result.provenance["mask_used"] == "refined_mask"
    assert result.provenance["params"]["slice_stride"] == 2 and result.provenance["backend"] == "biomedclip-sam"
    _, tight = _largest(result.refined_mask, 1)
    assert len(tight) == 1 and result.boxes == [_expand(tight[0], 1.2, (32, 28, 4))]
    expected_roi = np.zeros(vol.shape, bool)
    expected_roi[tuple(slice(lo, hi) for lo, hi in result.boxes[0])] = True
    np.testing.assert_array_equal(result.roi, expected_roi)


def test_sam_finding_nothing_gives_an_empty_roi(folders: dict[str, Path]) -> None:
    sam = SamModel.from_pretrained(folders["sam"]).eval()
    with torch.no_grad():  # zero mask hypernetworks: every mask logit is 0, probability 0.5, not > 0.5
        for p in sam.mask_decoder.output_hypernetworks_mlps.parameters():
            p.zero_()
    torch.manual_seed(0)
    clip = open_clip.CLIP(**TINY_CLIP)
    preprocess = open_clip.image_transform(64, is_train=False)
    loc = BiomedClipSamLocalizer.from_modules(clip, open_clip.tokenizer.SimpleTokenizer(context_length=16), preprocess,
                                              sam, _sam_processor(), model_id="tiny", sam_model_id="tiny-sam", layer=3)
    result = loc.localize(_image2d(), PROMPT)
    assert result.coarse_mask.any() and not result.refined_mask.any()
    assert not result.roi.any() and result.boxes == [] and result.provenance["empty_at"] == "refined_mask"
    assert loc.model_id == "tiny + tiny-sam" and loc.model_revision.startswith("weights-sha256:")
    with pytest.raises(MedsslInputError, match="layer: must lie in 0..5"):
        BiomedClipSamLocalizer.from_modules(clip, open_clip.tokenizer.SimpleTokenizer(context_length=16), preprocess,
                                            refine=False).localize(_image2d(), PROMPT)  # default layer 9


# ---------------------------------------------------------------------------------------------- clipseg
def test_clipseg_end_to_end_with_and_without_sam(folders: dict[str, Path], tmp_path: Path) -> None:
    loc = create_localizer("clipseg", model=str(folders["clipseg"]), components=1)
    assert isinstance(loc, ClipSegLocalizer) and loc.sam is None
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, size=(36, 44, 3), dtype=np.uint8)
    image = ImageData(array=rgb, affine=np.eye(4), spacing=(1.0, 1.0), meta={"channels_last": True})
    result = loc.localize(image, PROMPT)

    model = CLIPSegForImageSegmentation.from_pretrained(folders["clipseg"]).eval()
    processor = CLIPSegProcessor.from_pretrained(folders["clipseg"])
    with torch.no_grad():
        logits = model(**processor(text=[PROMPT], images=[rgb], padding=True, truncation=True, max_length=16,
                                   return_tensors="pt")).logits
    expected = F.interpolate(torch.sigmoid(logits.reshape(1, 1, 32, 32)), size=(36, 44), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(result.saliency, expected, atol=1e-6)
    coarse, tight = _largest(kmeans_binarize(expected), 1)
    np.testing.assert_array_equal(result.coarse_mask, coarse)
    assert result.refined_mask is None and result.boxes == tight and result.provenance["sam_prompt_boxes"] == []
    assert result.provenance["backend"] == "clipseg" and result.provenance["params"]["refine"] is False

    with_sam = ClipSegLocalizer(model=str(folders["clipseg"]), sam_model=str(folders["sam"]), refine=True,
                                sam_boxes="union", components=1)
    refined = with_sam.localize(image, PROMPT)
    np.testing.assert_array_equal(refined.coarse_mask, coarse)
    assert refined.refined_mask is not None and refined.provenance["sam_prompt_boxes"] == [list(map(list, tight[0]))]
    assert with_sam.model_id.endswith(f" + {folders['sam'].resolve()}")

    cache = RoiCache(tmp_path / "cache")  # parameters and provenance make a valid cache entry
    key = cache.put(image, PROMPT, loc, result)
    sidecar = json.loads((tmp_path / "cache" / "entries" / f"{key}.json").read_text())
    assert sidecar["key_parts"]["params"] == json.loads(json.dumps(loc.params()))
    assert sidecar["key_parts"]["model_revision"] == local_revision(folders["clipseg"])
    assert key != cache.key(image, PROMPT, with_sam) and key == cache.key(image, PROMPT, loc)


def test_registry_and_parameter_errors(folders: dict[str, Path]) -> None:
    assert {"biomedclip-sam", "clipseg"} <= set(available_localizers())
    with pytest.raises(MedsslInputError, match="components: must be >= 1"):
        create_localizer("clipseg", model=str(folders["clipseg"]), components=0)
    with pytest.raises(MedsslInputError, match="binarize"):
        create_localizer("biomedclip-sam", model=str(folders["clip"]), refine=False, binarize="otsu")
    with pytest.raises(MedsslInputError, match="bad backend parameters"):
        create_localizer("clipseg", model=str(folders["clipseg"]), nope=1)
    loc = create_localizer("clipseg", model=str(folders["clipseg"]), device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(loc.clipseg.model.parameters()).device.type == expected
    with pytest.raises(MedsslInputError, match="prompt: is empty"):
        loc.localize(_image2d(), " ")
