"""Two-stream (labeled + unlabeled) batch sampling as a pure function of the iteration.

Semi-supervised training draws every batch from two index streams: ``labeled_bs`` labeled indices
first, then ``unlabeled_bs`` unlabeled ones. Here each batch is computed from
(seed, iteration, rank) alone, so a resumed run draws exactly the batches an uninterrupted run
would have drawn, with no sampler or loader state to checkpoint.

Streams (with ``W = world_size`` ranks):

* Labeled: the labeled indices are reshuffled once per *pass*. A pass lasts
  ``steps_per_pass = len(labeled) // (labeled_bs * W)`` iterations; at step ``s`` of pass ``p`` the
  global labeled batch is ``perm_p[s*labeled_bs*W : (s+1)*labeled_bs*W]`` and rank ``r`` takes the
  ``r``-th block of ``labeled_bs`` of it. Within a pass every labeled index is used at most once over
  all ranks (exactly once when ``len(labeled)`` is a multiple of ``labeled_bs * W``; otherwise the
  remainder of that pass's permutation is left out, a different remainder each pass).
* Unlabeled: an endless stream formed by concatenating fresh permutations of the unlabeled indices.
  Iteration ``t`` consumes the global positions ``[t*unlabeled_bs*W, (t+1)*unlabeled_bs*W)`` of the
  stream and rank ``r`` takes the ``r``-th block of ``unlabeled_bs``. Consecutive positions
  ``[k*N_u, (k+1)*N_u)`` hold every unlabeled index exactly once, shared disjointly across ranks; a
  batch that straddles two permutations may repeat an index.

Permutation ``p`` of a stream comes from ``SeedSequence([seed, stream, p])`` (stream 0 = labeled,
1 = unlabeled), the same on every rank, so ranks agree without communication.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from medssl.errors import MedsslInputError

_LABELED, _UNLABELED, _SAMPLE = 0, 1, 2


def sample_seed(seed: int, iteration: int, position: int, rank: int = 0) -> int:
    """The augmentation seed of the sample at ``position`` in the batch of ``iteration`` on ``rank``.

    A pure function (uint32 range), so augmentations are reproducible from the iteration number.
    """
    ss = np.random.SeedSequence([int(seed), _SAMPLE, int(iteration), int(rank), int(position)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class TwoStreamBatchSampler:
    """Batches of ``labeled_bs`` labeled indices followed by ``unlabeled_bs`` unlabeled indices.

    Args:
        labeled: dataset indices of labeled samples.
        unlabeled: dataset indices of unlabeled samples.
        labeled_bs: labeled samples per batch and rank.
        unlabeled_bs: unlabeled samples per batch and rank (0: supervised batches).
        seed: base seed (>= 0).
        rank: this process's rank in [0, world_size).
        world_size: number of data-parallel processes.
        start_iteration: first iteration yielded by ``iter()`` (set it to resume).
        num_iterations: iteration at which ``iter()`` stops (exclusive); None: endless.

    ``batch(t)`` is a pure function of (seed, t, rank) for fixed index lists and batch sizes; the
    sampler can also be passed to a torch ``DataLoader`` as ``batch_sampler``.
    """

    def __init__(
        self,
        labeled: Sequence[int],
        unlabeled: Sequence[int],
        labeled_bs: int,
        unlabeled_bs: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
        num_iterations: int | None = None,
    ) -> None:
        self.labeled = np.asarray(list(labeled), dtype=np.int64)
        self.unlabeled = np.asarray(list(unlabeled), dtype=np.int64)
        self.labeled_bs, self.unlabeled_bs = int(labeled_bs), int(unlabeled_bs)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.start_iteration = int(start_iteration)
        self.num_iterations = None if num_iterations is None else int(num_iterations)
        if self.seed < 0:
            raise MedsslInputError("seed", f"must be >= 0, got {seed}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise MedsslInputError("rank", f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if self.labeled_bs < 0 or self.unlabeled_bs < 0 or self.labeled_bs + self.unlabeled_bs == 0:
            raise MedsslInputError("batch_size", f"need labeled_bs, unlabeled_bs >= 0 and a non-empty batch, "
                                   f"got {labeled_bs} + {unlabeled_bs}")
        if self.labeled_bs * self.world_size > len(self.labeled):
            raise MedsslInputError("labeled_bs", f"{self.labeled_bs} x {self.world_size} rank(s) exceeds the "
                                   f"{len(self.labeled)} labeled sample(s)")
        if self.unlabeled_bs > 0 and len(self.unlabeled) == 0:
            raise MedsslInputError("unlabeled_bs", f"is {self.unlabeled_bs} but there are no unlabeled samples")
        overlap = np.intersect1d(self.labeled, self.unlabeled)
        if overlap.size:
            raise MedsslInputError("unlabeled", f"{overlap.size} index(es) are both labeled and unlabeled, "
                                   f"e.g. {overlap[:5].tolist()}")
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    @property
    def steps_per_pass(self) -> int:
        """Iterations per pass over the labeled set (0 when batches hold no labeled samples)."""
        return len(self.labeled) // (self.labeled_bs * self.world_size) if self.labeled_bs else 0

    def _perm(self, stream: int, p: int) -> np.ndarray:
        key = (stream, p)
        perm = self._perms.get(key)
        if perm is None:
            base = self.labeled if stream == _LABELED else self.unlabeled
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream, p]))
            perm = base[rng.permutation(len(base))]
            if len(self._perms) >= 8:  # a small memo; results never depend on it
                self._perms.clear()
            self._perms[key] = perm
        return perm

    def labeled_part(self, iteration: int) -> list[int]:
        """The ``labeled_bs`` labeled indices of ``iteration`` on this rank."""
        if self.labeled_bs == 0:
            return []
        p, s = divmod(int(iteration), self.steps_per_pass)
        start = (s * self.world_size + self.rank) * self.labeled_bs
        return self._perm(_LABELED, p)[start : start + self.labeled_bs].tolist()

    def unlabeled_part(self, iteration: int) -> list[int]:
        """The ``unlabeled_bs`` unlabeled indices of ``iteration`` on this rank."""
        n = len(self.unlabeled)
        first = (int(iteration) * self.world_size + self.rank) * self.unlabeled_bs
        out = []
        for k in range(first, first + self.unlabeled_bs):
            p, offset = divmod(k, n)
            out.append(int(self._perm(_UNLABELED, p)[offset]))
        return out

    def batch(self, iteration: int) -> list[int]:
        """Dataset indices of the batch of ``iteration`` on this rank: labeled first, then unlabeled."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        return self.labeled_part(iteration) + self.unlabeled_part(iteration)

    def batch_with_seeds(self, iteration: int) -> list[tuple[int, int]]:
        """``(index, augmentation seed)`` pairs of ``batch(iteration)`` (see :func:`sample_seed`)."""
        return [(idx, sample_seed(self.seed, iteration, pos, self.rank))
                for pos, idx in enumerate(self.batch(iteration))]

    def iter_from(self, start: int, stop: int | None = None) -> Iterator[list[int]]:
        """Batches of iterations ``start, start + 1, ...`` up to ``stop`` (exclusive; None: endless)."""
        t = int(start)
        while stop is None or t < stop:
            yield self.batch(t)
            t += 1

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_from(self.start_iteration, self.num_iterations)

    def __len__(self) -> int:
        if self.num_iterations is None:
            raise TypeError("an endless TwoStreamBatchSampler has no length; set num_iterations")
        return max(self.num_iterations - self.start_iteration, 0)
