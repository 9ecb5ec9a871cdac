from collections import Counter

import pytest
import torch

from medssl.data.samplers import TwoStreamBatchSampler, sample_seed
from medssl.errors import MedsslInputError

LABELED = list(range(8))
UNLABELED = list(range(100, 124))


def make(**kw):
    args = dict(labeled=LABELED, unlabeled=UNLABELED, labeled_bs=2, unlabeled_bs=3, seed=7)
    args.update(kw)
    return TwoStreamBatchSampler(**args)


def test_composition_labeled_first():
    s = make()
    for t in range(40):
        b = s.batch(t)
        assert len(b) == 5
        assert all(i in LABELED for i in b[:2])
        assert all(i in UNLABELED for i in b[2:])


def test_every_labeled_index_once_per_pass():
    s = make()
    assert s.steps_per_pass == 4
    orders = []
    for p in range(5):
        seen = [i for t in range(4 * p, 4 * p + 4) for i in s.batch(t)[:2]]
        assert sorted(seen) == LABELED
        orders.append(seen)
    # reshuffled between passes
    assert len({tuple(o) for o in orders}) > 1


def test_remainder_is_dropped_per_pass():
    s = make(labeled=list(range(7)), labeled_bs=2)
    assert s.steps_per_pass == 3
    for p in range(6):
        seen = [i for t in range(3 * p, 3 * p + 3) for i in s.batch(t)[:2]]
        assert len(seen) == 6 and len(set(seen)) == 6


def test_purity_and_fresh_instances():
    a, b = make(), make()
    order = [a.batch(t) for t in (5, 0, 31, 5, 2)]
    assert order[0] == order[3]
    assert [b.batch(t) for t in (5, 0, 31, 5, 2)] == order
    # iterating from a start iteration (a resumed run) gives the same batches
    resumed = list(make(start_iteration=20, num_iterations=30))
    assert resumed == [a.batch(t) for t in range(20, 30)]
    assert len(make(start_iteration=20, num_iterations=30)) == 10
    # another seed gives another stream
    assert [make(seed=8).batch(t) for t in range(10)] != [a.batch(t) for t in range(10)]


def test_unlabeled_coverage():
    s = make()
    # 24 unlabeled, 3 per batch: iterations 8k..8k+7 read stream positions 24k..24k+23 = one permutation
    for k in range(3):
        seen = [i for t in range(8 * k, 8 * k + 8) for i in s.batch(t)[2:]]
        assert sorted(seen) == UNLABELED
    firsts = [tuple(i for t in range(8 * k, 8 * k + 8) for i in s.batch(t)[2:]) for k in range(3)]
    assert len(set(firsts)) == 3


def test_two_ranks_disjoint_shares():
    r0, r1 = make(rank=0, world_size=2), make(rank=1, world_size=2)
    assert r0.steps_per_pass == 2
    for p in range(4):
        lab0 = [i for t in (2 * p, 2 * p + 1) for i in r0.batch(t)[:2]]
        lab1 = [i for t in (2 * p, 2 * p + 1) for i in r1.batch(t)[:2]]
        assert not set(lab0) & set(lab1)
        assert sorted(lab0 + lab1) == LABELED
    # unlabeled: 2 ranks x 3 per iteration -> one permutation every 4 iterations, split disjointly
    for k in range(3):
        u0 = [i for t in range(4 * k, 4 * k + 4) for i in r0.batch(t)[2:]]
        u1 = [i for t in range(4 * k, 4 * k + 4) for i in r1.batch(t)[2:]]
        assert not set(u0) & set(u1)
        assert sorted(u0 + u1) == UNLABELED
    # a single-rank run with the global batch sees the same labeled pass as both ranks together
    assert r0.batch(0)[:2] + r1.batch(0)[:2] == make(labeled_bs=4).batch(0)[:4]


def test_unlabeled_stream_straddles_permutations():
    s = make(unlabeled=list(range(100, 105)), unlabeled_bs=2)
    stream = [i for t in range(10) for i in s.batch(t)[2:]]
    for k in range(4):
        assert sorted(stream[5 * k : 5 * k + 5]) == list(range(100, 105))


def test_torch_batch_sampler():
    data = torch.arange(200) * 10
    s = make(num_iterations=6)
    loader = torch.utils.data.DataLoader(data, batch_sampler=s)
    got = [b.tolist() for b in loader]
    assert got == [[i * 10 for i in s.batch(t)] for t in range(6)]


def test_sample_seed_pure_and_distinct():
    assert sample_seed(1, 5, 2, 0) == sample_seed(1, 5, 2, 0)
    seeds = {sample_seed(1, t, pos, r) for t in range(20) for pos in range(4) for r in range(2)}
    assert len(seeds) == 160
    assert all(0 <= x < 2**32 for x in seeds)
    pairs = make().batch_with_seeds(3)
    assert [i for i, _ in pairs] == make().batch(3)
    assert [sd for _, sd in pairs] == [sample_seed(7, 3, pos, 0) for pos in range(5)]


def test_supervised_only_and_errors():
    s = make(unlabeled=[], unlabeled_bs=0)
    assert Counter(len(s.batch(t)) for t in range(5)) == Counter({2: 5})
    with pytest.raises(MedsslInputError, match="labeled_bs"):
        make(labeled_bs=5, world_size=2)
    with pytest.raises(MedsslInputError, match="both labeled and unlabeled"):
        make(unlabeled=[3, 100])
    with pytest.raises(MedsslInputError, match="rank"):
        make(rank=2, world_size=2)
    with pytest.raises(MedsslInputError, match="unlabeled_bs"):
        make(unlabeled=[])
