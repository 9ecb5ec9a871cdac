"""Every method's training step on a tiny batch: losses, logs, gradients, state round trip; plus the
registry and CORN / correlation specifics (pool contents, selection size, skipped CCM)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.methods import METHODS, SemiBatch, SemiMethod, create_method
from medssl.methods import corn as corn_module
from medssl.methods.losses import LN2
from medssl.methods.mean_teacher import MeanTeacherMethod
from medssl.methods.ramps import sigmoid_rampup

S = 16  # volume side (divisible by 16)
NET = {"base_width": 4}
# a 0.1 MiB pool keeps ~400 of the ~1100 correct voxels of a slot: the subsampling path is exercised
POOLED = {"network": NET, "n_labeled": 2, "pool_memory_mb": 0.1, "num_filtered": 64, "anchors_per_half": 8}
CONFIGS: dict[str, dict] = {
    "supervised": {"network": NET},
    "mean_teacher": {"network": NET},
    "ua_mt": {"network": NET, "uncertainty_passes": 4},
    "dual_branch": {"network": NET},
    "caml": POOLED,
    "corn": POOLED,
}
BASE_KEYS = {"loss", "loss_sup"}
POOL_KEYS = {"loss_cons", "w_cons", "agree_frac", "anchor_classes", "pool_bytes"}
EXPECTED_KEYS = {
    "supervised": BASE_KEYS | {"loss_ce", "loss_dice"},
    "mean_teacher": BASE_KEYS | {"loss_ce", "loss_dice", "loss_cons", "w_cons"},
    "ua_mt": BASE_KEYS | {"loss_ce", "loss_dice", "loss_cons", "w_cons", "threshold", "certain_frac"},
    "dual_branch": BASE_KEYS | {"loss_cons", "w_cons"},
    "caml": BASE_KEYS | POOL_KEYS | {"loss_corr", "w_corr", "corr_terms"},
    "corn": BASE_KEYS | POOL_KEYS | {"loss_coral", "w_coral", "coral_terms"},
}


#: Each method's total loss from its logged terms and weights (the published compositions).
COMPOSITION = {
    "supervised": lambda g: 0.5 * (g["loss_ce"] + g["loss_dice"]),
    "mean_teacher": lambda g: 0.5 * (g["loss_ce"] + g["loss_dice"]) + g["w_cons"] * g["loss_cons"],
    "ua_mt": lambda g: 0.5 * (g["loss_ce"] + g["loss_dice"]) + g["w_cons"] * g["loss_cons"],
    "dual_branch": lambda g: 0.5 * g["loss_sup"] + g["w_cons"] * g["loss_cons"],
    "caml": lambda g: 0.5 * g["loss_sup"] + g["w_cons"] * g["loss_cons"] + g["w_corr"] * g["loss_corr"],
    "corn": lambda g: 0.5 * g["loss_sup"] + g["w_cons"] * g["loss_cons"] + g["w_coral"] * g["loss_coral"],
}


def make_batch(seed: int) -> SemiBatch:
    """2 labeled + 2 unlabeled volumes; label = a cube in the middle, image = +-1 by label plus noise."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(4, S, S, S, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12] = 1
    image = (2.0 * label - 1.0).unsqueeze(1) + 0.1 * torch.randn(4, 1, S, S, S, generator=g)
    return SemiBatch(image=image, label=label, index=torch.tensor([5, 2, 11, 12]), labeled_bs=2)


def sgd_step(method: SemiMethod, batch: SemiBatch, iteration: int) -> None:
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    method.training_step(batch, iteration).loss.backward()
    opt.step()
    opt.zero_grad()
    method.after_optimizer_step(iteration)


def teacher_params(method: SemiMethod) -> list[nn.Parameter]:
    return list(method.teacher.parameters()) if isinstance(method, MeanTeacherMethod) else []


def test_registry_and_config_errors() -> None:
    assert set(METHODS) == {"supervised", "mean_teacher", "ua_mt", "dual_branch", "caml", "corn"}
    with pytest.raises(MedsslInputError, match="unknown method 'nope'.*corn.*mean_teacher"):
        create_method("nope")
    with pytest.raises(MedsslInputError, match="bogus"):
        create_method("corn", {"bogus": 1})
    with pytest.raises(MedsslInputError, match="temperature"):
        create_method("dual_branch", {"temperature": -1.0, "network": NET})
    with pytest.raises(MedsslInputError, match="uncertainty_passes"):
        create_method("ua_mt", {"uncertainty_passes": 3, "network": NET})
    with pytest.raises(MedsslInputError, match="cross_loss"):
        create_method("corn", {"cross_loss": "kl", "network": NET})
    cfg = METHODS["corn"].config_class()
    assert cfg.sup_loss == "dice" and cfg.cross_loss == "mse_sharpen" and cfg.embed_dim == 32
    assert cfg.temperature == 0.4 and cfg.cons_weight == 1.0 and cfg.coral_weight == 0.05
    assert cfg.num_filtered == 12800 and cfg.pool_fusion == "replace" and cfg.coral_variant == "vector"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_and_state_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    method = create_method(name, CONFIGS[name]).train()
    batch = make_batch(1)
    out = method.training_step(batch, 0)
    assert out.loss.ndim == 0
    assert set(out.logs) == EXPECTED_KEYS[name]
    logs = {k: float(v) for k, v in out.logs.items()}
    assert float(out.loss.detach()) == pytest.approx(logs["loss"], rel=1e-6)
    assert logs["loss"] == pytest.approx(COMPOSITION[name](logs), rel=1e-5)  # the loss is its logged terms
    out.loss.backward()
    trainable = list(method.trainable_parameters())
    assert trainable and all(p.grad is not None for p in trainable)
    teacher = teacher_params(method)
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    assert {id(p) for p in trainable}.isdisjoint(id(p) for p in teacher)
    seg = method.segmentation_network().eval()
    assert seg(batch.image[:1])[0].shape == (1, 2, S, S, S)
    method.train()
    for p in trainable:
        p.grad = None

    sgd_step(method, batch, 0)
    path = tmp_path / "state.pt"
    torch.save(method.state_dict(), path)
    torch.manual_seed(123)
    restored = create_method(name, CONFIGS[name]).train()
    restored.load_state_dict(torch.load(path, weights_only=True))
    batch2 = make_batch(2)
    rng = torch.get_rng_state()
    out_a = method.training_step(batch2, 1)
    torch.set_rng_state(rng)
    out_b = restored.training_step(batch2, 1)
    assert out_a.logs == out_b.logs
    out_a.loss.backward()
    out_b.loss.backward()
    for pa, pb in zip(method.trainable_parameters(), restored.trainable_parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)


def test_mean_teacher_ema_follows_formula() -> None:
    torch.manual_seed(0)
    method = create_method("mean_teacher", CONFIGS["mean_teacher"])
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_optimizer_step(0)  # alpha 0: the teacher copies the student
    assert all(torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.parameters(),
                                                   strict=True))
    before = [t.clone() for t in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.mul_(3.0)
    method.after_optimizer_step(1)  # alpha 0.5
    for t, b, s in zip(method.teacher.parameters(), before, method.student.parameters(), strict=True):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)


def test_uamt_logs_threshold_and_masked_consistency() -> None:
    torch.manual_seed(0)
    method = create_method("ua_mt", {**CONFIGS["ua_mt"], "max_iterations": 6000})
    rng = torch.get_rng_state()
    out = method.training_step(make_batch(3), 3000)
    assert math.isclose(out.logs["threshold"], (0.75 + 0.25 * sigmoid_rampup(3000, 6000)) * LN2)
    assert math.isclose(out.logs["w_cons"], 0.1 * math.exp(-5 * 0.25))
    torch.set_rng_state(rng)  # the same teacher passes at the full threshold ln 2, the maximum entropy
    full = method.training_step(make_batch(3), 6000)
    assert math.isclose(full.logs["threshold"], LN2) and full.logs["certain_frac"] == 1.0
    assert out.logs["certain_frac"] < 1.0  # a stricter threshold drops the least certain voxels


class ForcedPredictions(nn.Module):
    """Wraps a dual-branch V-Net and adds +-50 to the logits by the sign of the image, so both branches
    predict the label; branch 2 is flipped where ``flip`` (H, W, D) is true."""

    def __init__(self, inner: nn.Module, flip: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("flip", flip)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        l1, l2, e1, e2 = self.inner(x)
        s = torch.sign(x)
        s2 = torch.where(self.flip, -s, s)
        return l1 + 50 * torch.cat([-s, s], 1), l2 + 50 * torch.cat([-s2, s2], 1), e1, e2


def forced(name: str, **overrides) -> tuple[SemiMethod, Tensor]:
    torch.manual_seed(0)
    cfg = {**POOLED, "network": {**NET, "has_dropout": False}, "anchors_per_half": 128, "pool_memory_mb": 1.0,
           **overrides}
    method = create_method(name, cfg).train()
    flip = torch.zeros(S, S, S, dtype=torch.bool)
    flip[:S // 2] = True  # branch 2 is wrong (and disagrees with branch 1) in the first half
    method.net = ForcedPredictions(method.net, flip)
    return method, flip


def test_corn_pool_holds_only_voxels_both_branches_got_right(monkeypatch) -> None:
    method, flip = forced("corn")
    ks: list[int] = []
    real_select = corn_module.select_per_class

    def spy(pseudo, conf, n_classes, k, both_ends=True):
        ks.append(k)
        return real_select(pseudo, conf, n_classes, k, both_ends)

    monkeypatch.setattr(corn_module, "select_per_class", spy)
    # the pool update runs before the step's training-mode pass changes the heads' running statistics
    heads = (copy.deepcopy(method.projection1).eval(), copy.deepcopy(method.projection2).eval())
    batch = make_batch(4)
    out = method.training_step(batch, 0)
    assert ks == [POOLED["num_filtered"] // 4]
    pool = method.pool
    assert pool.keys == [2, 5]  # one slot per labeled dataset index
    inner = method.net.inner
    with torch.no_grad():
        _, _, e1, e2 = inner(batch.image)  # no dropout: the same embeddings as in the step
        for row, key in enumerate([5, 2]):
            correct = ~flip
            labels = batch.label[row][correct]
            stored, full = pool.class_counts(key)
            assert full.tolist() == torch.bincount(labels, minlength=2).tolist() == [4096 // 2 - 256, 256]
            feats, lab = pool.slot_contents(key)
            rows1 = e1[row].movedim(0, -1)[correct]
            rows2 = e2[row].movedim(0, -1)[correct]
            expected = (heads[0](rows1) + heads[1](rows2)) / 2
            order = torch.argsort(labels, stable=True)
            assert torch.equal(lab, labels[order])
            assert torch.allclose(feats, expected[order], atol=1e-5)
            assert not feats.requires_grad
    # batch norm of the projection heads ran in training mode once (the unlabeled pass) and never
    # for the pool update (eval mode)
    assert int(method.projection1[1].num_batches_tracked) == 1
    assert out.logs["coral_terms"] == 4.0 and out.logs["anchor_classes"] == 2.0
    assert out.logs["agree_frac"] == 0.5 and out.logs["loss_coral"] > 0.0
    out.loss.backward()
    for head in (method.projection1, method.projection2, method.prediction1, method.prediction2):
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in head.parameters())


def test_corn_skips_ccm_without_anchors() -> None:
    method, _ = forced("corn", anchors_per_half=10 ** 6)
    out = method.training_step(make_batch(5), 0)
    assert out.logs["anchor_classes"] == 0.0 and out.logs["coral_terms"] == 0.0
    assert out.logs["loss_coral"] == 0.0
    assert float(out.loss.detach()) == pytest.approx(COMPOSITION["dual_branch"](out.logs), rel=1e-6)
    out.loss.backward()
    head_grads = [p.grad for p in method.prediction1.parameters()]
    assert all(g is not None and bool((g == 0).all()) for g in head_grads)


def test_corn_paper_variants_and_chunked_experiment_run() -> None:
    method, _ = forced("corn", sup_loss="ce", cross_loss="cps", coral_variant="chunked", chunk_size=16,
                       pool_fusion="momentum", embed_dim=8)
    out = method.training_step(make_batch(6), 0)
    assert out.logs["coral_terms"] > 0 and out.logs["loss_coral"] > 0
    assert float(out.loss.detach()) == pytest.approx(COMPOSITION["corn"](out.logs), rel=1e-5)
    out = method.training_step(make_batch(7), 1)  # second update blends into existing slots
    assert float(out.loss.detach()) == pytest.approx(COMPOSITION["corn"](out.logs), rel=1e-5)
    assert out.logs["pool_bytes"] > 0


def test_caml_correlation_rows() -> None:
    method, _ = forced("caml")
    out = method.training_step(make_batch(8), 0)
    # top num_filtered agreeing voxels of each of the two pseudo-classes
    assert out.logs["corr_terms"] == 2.0 * POOLED["num_filtered"]
    assert out.logs["loss_corr"] > 0.0
