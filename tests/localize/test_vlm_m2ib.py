"""M2IB saliency on a tiny random open_clip model whose image tower is a timm ViT (timm ``test_vit``)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from medssl.errors import MedsslInputError
from medssl.localize.m2ib import (
    bottleneck_sample,
    capacity_saliency,
    kl_capacity,
    m2ib_saliency,
    m2ib_train,
)

#: open_clip model config: timm ``test_vit`` (patch 16, width 64, 6 blocks, CLS token) on 64 × 64 input
#: → a 4 × 4 patch grid + CLS = 17 tokens; open_clip's own text transformer (1 layer, width 32).
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                            "timm_proj": "linear", "image_size": 64},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
PROMPT = "a chest CT scan highlighting both lungs"


@pytest.fixture(scope="module")
def clip() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=16)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_kl_capacity_and_sample_match_the_direct_formulas() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    alpha = torch.rand(5, 3, generator=g, dtype=torch.float64) * 9 - 3  # [-3, 6]
    noise = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    xn, an, en = x.numpy(), alpha.numpy(), noise.numpy()
    lam = 1.0 / (1.0 + np.exp(-an))
    mu, var = lam * xn, (1.0 - lam) ** 2
    expected = -0.5 * (1.0 + np.log(var) - mu**2 - var)
    np.testing.assert_allclose(kl_capacity(x, alpha).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bottleneck_sample(x, alpha, noise).numpy(), lam * xn + (1 - lam) * en,
                               rtol=1e-5, atol=1e-6)
    # λ → 1 stays finite (no log(0)) and passes x through
    big = torch.full((5, 3), 40.0, dtype=torch.float64)
    assert torch.isfinite(kl_capacity(x, big)).all()
    np.testing.assert_allclose(bottleneck_sample(x, big, noise).numpy(), xn, rtol=1e-6)


def test_saliency_shape_range_and_seeded_determinism(clip, image) -> None:
    model, tok = clip
    a = m2ib_saliency(model, tok, image, PROMPT, layer=3, generator=_seeded(0), out_size=(40, 50))
    b = m2ib_saliency(model, tok, image, PROMPT, layer=3, generator=_seeded(0), out_size=(40, 50))
    c = m2ib_saliency(model, tok, image, PROMPT, layer=3, generator=_seeded(7), out_size=(40, 50))
    default = m2ib_saliency(model, tok, image, PROMPT, layer=3)  # no generator: seeded with 0, model input size
    assert a.shape == (40, 50) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() - a.min() > 0.5
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4  # the noise matters
    assert default.shape == (64, 64) and default.min() == 0.0 and default.max() == 1.0
    text = model.encode_text(tok([PROMPT])).detach()  # text features given directly = tokenizer path
    np.testing.assert_allclose(m2ib_saliency(model, text, image, PROMPT, layer=3, generator=_seeded(0),
                                             out_size=(40, 50)), a, atol=1e-6)
    with torch.inference_mode():  # a caller's inference mode does not stop the bottleneck's optimisation
        inside = m2ib_saliency(model, tok, image.clone(), PROMPT, layer=3, generator=_seeded(0), out_size=(40, 50))
    np.testing.assert_array_equal(inside, a)


def test_only_alpha_is_optimised_and_the_model_is_left_as_it_was(clip, image) -> None:
    model, tok = clip
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = list(model.visual.trunk.blocks)
    trace = m2ib_train(model, tok, image, PROMPT, layer=2, generator=_seeded(0))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert list(model.visual.trunk.blocks) == blocks and model.training
    model.eval()
    assert trace.alpha.shape == (17, 64)  # shaped like the block's tokens (N, C)
    assert not torch.allclose(trace.alpha, torch.full_like(trace.alpha, 5.0))  # α was optimised
    assert len(trace.losses) == 10 and trace.losses[-1] < trace.losses[0]
    assert trace.grid == (4, 4) and trace.num_prefix_tokens == 1


def test_bottleneck_layer_is_honoured(clip, image) -> None:
    model, tok = clip
    early = m2ib_saliency(model, tok, image, PROMPT, layer=1, generator=_seeded(0))
    late = m2ib_saliency(model, tok, image, PROMPT, layer=4, generator=_seeded(0))
    assert np.abs(early - late).max() > 0.05
    with pytest.raises(MedsslInputError, match=r"layer: must lie in 0\.\.5 for this model's 6 ViT blocks"):
        m2ib_train(model, tok, image, PROMPT, layer=6)


def test_first_step_equals_the_whole_tower_on_the_repeated_image(clip, image) -> None:
    """Independent forward: hook on block ``layer`` of the full tower, batch = the image repeated 10×."""
    model, tok = clip
    layer, beta, batch = 3, 2.0, 10
    trace = m2ib_train(model, tok, image, PROMPT, layer=layer, beta=beta, steps=1, batch=batch, generator=_seeded(5))

    noise = torch.randn((batch, 17, 64), generator=_seeded(5))
    alpha = torch.full((17, 64), 5.0)
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, out):
        seen["x"] = out
        lam = torch.sigmoid(alpha)
        seen["kl"] = -0.5 * (1 + torch.log((1 - lam) ** 2) - (lam * out) ** 2 - (1 - lam) ** 2)
        return lam * out + (1 - lam) * noise

    handle = model.visual.trunk.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            emb = model.encode_image(image[None].repeat(batch, 1, 1, 1))
            text = model.encode_text(tok([PROMPT]))
    finally:
        handle.remove()
    cos = F.cosine_similarity(emb, text.expand_as(emb), dim=-1)
    expected_loss = beta * seen["kl"].mean() - cos.mean()
    assert trace.losses[0] == pytest.approx(float(expected_loss), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(trace.capacity, seen["kl"].mean(0), rtol=1e-4, atol=1e-5)

    # saliency: channels summed, CLS dropped, 4 x 4 grid (row-major patches), bilinear to 64, min-max
    grid = seen["kl"].mean(0).sum(-1)[1:].reshape(1, 1, 4, 4)
    up = F.interpolate(grid, size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    expected = ((up - up.min()) / (up.max() - up.min())).numpy()
    np.testing.assert_allclose(capacity_saliency(trace), expected, atol=1e-4)
