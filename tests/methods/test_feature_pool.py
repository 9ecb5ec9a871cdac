"""Feature pool: contents, replace/momentum fusion, anchor sampling, memory bound, state round trip."""

from __future__ import annotations

import io

import pytest
import torch

from medssl.errors import MedsslInputError
from medssl.methods.feature_pool import FeaturePool, sample_without_replacement

D = 4
BIG = 64 * 1024 * 1024


def tagged(n: int, tag: float, start: int = 0) -> torch.Tensor:
    """Rows [tag, i, i, i] so every stored row can be traced back to its update and position."""
    i = torch.arange(start, start + n, dtype=torch.float32)
    return torch.stack([torch.full_like(i, tag), i, i, i], dim=1)


def test_sample_without_replacement_is_distinct_and_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    for n, k in [(10, 10), (1000, 7), (50, 30), (300, 149), (100_000, 2000)]:
        s = sample_without_replacement(n, k, g)
        assert s.numel() == k and torch.unique(s).numel() == k and 0 <= int(s.min()) and int(s.max()) < n
    counts = torch.zeros(10)
    for _ in range(2000):
        counts[sample_without_replacement(10, 2, g)] += 1
    assert torch.allclose(counts / 2000, torch.full((10,), 0.2), atol=0.03)
    with pytest.raises(ValueError):
        sample_without_replacement(3, 4, g)


def test_update_stores_rows_grouped_by_class_and_replaces() -> None:
    pool = FeaturePool(n_slots=2, feat_dim=D, n_classes=2, memory_budget_bytes=BIG, seed=0)
    labels = torch.tensor([1, 0, 1, 1, 0])
    pool.update(7, tagged(5, 1.0), labels)
    feats, lab = pool.slot_contents(7)
    assert lab.tolist() == [0, 0, 1, 1, 1]
    assert feats[:, 1].tolist() == [1, 4, 0, 2, 3]  # stable within class
    stored, full = pool.class_counts(7)
    assert stored.tolist() == full.tolist() == [2, 3]
    pool.update(3, tagged(2, 2.0), torch.tensor([0, 0]))
    assert pool.keys == [3, 7]
    pool.update(7, tagged(3, 5.0), torch.tensor([0, 0, 1]))  # replace
    feats, lab = pool.slot_contents(7)
    assert feats[:, 0].tolist() == [5.0, 5.0, 5.0] and lab.tolist() == [0, 0, 1]
    with pytest.raises(MedsslInputError, match="2 slots"):
        pool.update(9, tagged(1, 0.0), torch.tensor([0]))
    keyed = FeaturePool(n_slots=[4, 8], feat_dim=D, n_classes=2, memory_budget_bytes=BIG, seed=0)
    keyed.update(8, tagged(2, 0.0), torch.tensor([0, 1]))
    assert keyed.n_slots == 2 and keyed.keys == [8]
    with pytest.raises(MedsslInputError, match=r"not one of the labeled volumes \[4, 8\]"):
        keyed.update(5, tagged(2, 0.0), torch.tensor([0, 1]))


def test_anchor_sampling_two_halves_and_class_threshold() -> None:
    pool = FeaturePool(n_slots=2, feat_dim=D, n_classes=3, memory_budget_bytes=BIG, seed=1)
    # class 0: 300 rows over two slots; class 1: exactly 256; class 2: 255 (no anchors)
    pool.update(0, tagged(200 + 100 + 255, 0.0),
                torch.cat([torch.zeros(200), torch.ones(100), torch.full((255,), 2)]).long())
    pool.update(1, tagged(100 + 156, 1.0), torch.cat([torch.zeros(100), torch.ones(156)]).long())
    anchors = pool.sample_anchors()
    assert set(anchors) == {0, 1}
    for c in (0, 1):
        a = anchors[c]
        assert a.shape == (256, D)
        for half in (a[:128], a[128:]):
            assert torch.unique(half, dim=0).shape[0] == 128  # without replacement inside a half
    # class 1 has exactly 256 rows: each half is a subset of them, and the halves may overlap
    rows1 = {tuple(r) for r in torch.cat([pool.slot_contents(0)[0][200:300], pool.slot_contents(1)[0][100:]]).tolist()}
    assert {tuple(r) for r in anchors[1].tolist()} <= rows1
    pool.update(1, tagged(100, 1.0), torch.zeros(100).long())  # class 1 drops to 100 rows
    assert set(pool.sample_anchors()) == {0}


def test_memory_bound_and_stratified_subsampling() -> None:
    budget = 3 * 4096
    pool = FeaturePool(n_slots=3, feat_dim=D, n_classes=2, memory_budget_bytes=budget, seed=2)
    cap = pool.slot_capacity
    assert 0 < cap < 1000
    for key in range(3):
        labels = torch.cat([torch.zeros(9000), torch.ones(1000)]).long()
        pool.update(key, tagged(10_000, float(key)), labels)
        stored, full = pool.class_counts(key)
        assert full.tolist() == [9000, 1000]
        assert int(stored.sum()) <= cap + 2
        assert stored.tolist() == [cap * 9000 // 10_000, cap * 1000 // 10_000]
        feats, lab = pool.slot_contents(key)
        # every kept row is a real row of its class, kept once
        assert torch.unique(feats[:, 1]).numel() == feats.shape[0]
        assert bool(((feats[:, 1] < 9000) == (lab == 0)).all())
    assert pool.memory_bytes() <= budget
    tiny = FeaturePool(n_slots=1, feat_dim=D, n_classes=2, memory_budget_bytes=10 ** 9, seed=0)
    tiny.update(0, tagged(5, 0.0), torch.tensor([0, 0, 0, 0, 1]))
    assert tiny.memory_bytes() == 5 * D * 4 + 2 * 2 * 8
    with pytest.raises(MedsslInputError, match="memory budget"):
        FeaturePool(n_slots=4, feat_dim=D, n_classes=2, memory_budget_bytes=100)


def test_subsampled_pool_keeps_the_reference_slot_shares() -> None:
    # slot 0 holds 1000 class-0 rows, slot 1 holds 3000; both are cut to the same capacity, but the
    # reference draws uniformly over all 4000 rows, so 3/4 of the anchors must still come from slot 1
    pool = FeaturePool(n_slots=2, feat_dim=D, n_classes=1, memory_budget_bytes=2 * 4096, seed=3)
    pool.update(0, tagged(1000, 0.0), torch.zeros(1000).long())
    pool.update(1, tagged(3000, 1.0), torch.zeros(3000).long())
    assert pool.class_counts(0)[0].item() == pool.class_counts(1)[0].item() < 1000
    share = torch.stack([pool.sample_anchors()[0][:, 0] for _ in range(100)]).mean().item()
    assert abs(share - 0.75) < 0.02


def test_momentum_fusion_mixes_old_and_new() -> None:
    pool = FeaturePool(n_slots=1, feat_dim=D, n_classes=2, memory_budget_bytes=BIG, fusion="momentum",
                       momentum=0.9, seed=4)
    pool.update(0, tagged(100, 1.0), torch.zeros(100).long())
    pool.update(0, tagged(100, -1.0), torch.cat([torch.zeros(50), torch.ones(50)]).long())
    feats, lab = pool.slot_contents(0)
    old = feats[:, 0] == 1.0
    assert int((old & (lab == 0)).sum()) == 45  # round(0.9 * 50) old rows of class 0
    assert int((~old & (lab == 0)).sum()) == 5
    assert int((lab == 1).sum()) == 50 and bool((feats[lab == 1, 0] == -1.0).all())  # no old class-1 rows


def test_state_round_trip_gives_identical_draws() -> None:
    pool = FeaturePool(n_slots=2, feat_dim=D, n_classes=2, memory_budget_bytes=2 * 8192, seed=5)
    pool.update(4, tagged(3000, 0.0), (torch.arange(3000) % 3 == 0).long())
    pool.update(9, tagged(600, 1.0), torch.zeros(600).long())
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    other = FeaturePool(n_slots=2, feat_dim=D, n_classes=2, memory_budget_bytes=2 * 8192, seed=99)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.keys == [4, 9] and other.memory_bytes() == pool.memory_bytes()
    a, b = pool.sample_anchors(), other.sample_anchors()
    assert a.keys() == b.keys() and all(torch.equal(a[c], b[c]) for c in a)
    labels = (torch.arange(700) % 2).long()
    pool.update(4, tagged(700, 3.0), labels)
    other.update(4, tagged(700, 3.0), labels)
    assert torch.equal(pool.slot_contents(4)[0], other.slot_contents(4)[0])
    wrong = FeaturePool(n_slots=3, feat_dim=D, n_classes=2, memory_budget_bytes=2 * 8192)
    with pytest.raises(MedsslInputError, match="geometry"):
        wrong.load_state_dict(pool.state_dict())


def test_anchors_from_given_slots_only() -> None:
    """``keys`` limits the draw to those slots (the 'without DFP' ablation: this batch's volumes only),
    and the class threshold then counts only their rows."""
    pool = FeaturePool(n_slots=[3, 7], feat_dim=D, n_classes=2, memory_budget_bytes=BIG, seed=4)
    pool.update(3, tagged(300, 3.0), torch.zeros(300).long())
    pool.update(7, tagged(400, 7.0), torch.cat([torch.zeros(300), torch.ones(100)]).long())
    only7 = pool.sample_anchors(keys=[7])
    assert set(only7) == {0}  # class 1 has 100 < 256 rows in slot 7
    assert torch.all(only7[0][:, 0] == 7.0)  # every anchor comes from slot 7
    both = pool.sample_anchors()
    assert set(torch.unique(both[0][:, 0]).tolist()) == {3.0, 7.0}
    assert set(pool.sample_anchors(keys=[5])) == set()  # a slot the pool does not hold gives nothing


def test_corn_batch_anchor_source_draws_from_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from medssl.methods import create_method
    from medssl.methods.base import SemiBatch

    torch.manual_seed(0)
    method = create_method("corn", {"network": {"base_width": 4}, "n_labeled": 4, "anchor_source": "batch",
                                    "anchors_per_half": 2})
    seen: list[object] = []
    original = method.pool.sample_anchors

    def spy(*args: object, **kwargs: object) -> dict[int, torch.Tensor]:
        seen.append(kwargs.get("keys"))
        return original(*args, **kwargs)

    monkeypatch.setattr(method.pool, "sample_anchors", spy)
    image = torch.randn(4, 1, 16, 16, 16)
    label = torch.zeros(4, 16, 16, 16, dtype=torch.long)
    label[:2, 4:12, 4:12, 4:12] = 1
    method.training_step(SemiBatch(image=image, label=label, index=torch.tensor([2, 0, 5, 6]), labeled_bs=2), 0)
    assert seen == [[2, 0]]
