"""Dynamic feature pool: labeled anchor features for the CORAL / correlation consistency
(the Dynamic Feature Pool of CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916)).

One slot per labeled training volume, keyed by its dataset index. Each update stores the projected
features of the voxels both branches got right in that volume, grouped by class. Anchors are drawn per
class from all slots together: for every class with at least ``2 * anchors_per_half`` features, two
halves of ``anchors_per_half`` rows, each uniform without replacement (the halves may overlap).

Bounded memory and the sampling distribution
--------------------------------------------
The reference keeps every correct voxel (up to ~10^6 x 32 floats per volume) on the CPU. Here the slots
live on the training device and each slot holds at most ``slot_capacity`` rows, an equal share of
``memory_budget_bytes``. A slot that would exceed its share keeps a class-stratified uniform random
subset: class ``c`` keeps ``max(1, floor(capacity * n_c / n))`` of its ``n_c`` rows, chosen uniformly
without replacement. The slot also remembers the full per-class counts ``n_c``.

Anchors are then drawn exactly as the reference would draw them from the full pool: first uniform
without replacement over the *full* (virtual) concatenation of all slots, which fixes how many anchors
come from each slot (the same multivariate hypergeometric law as the reference); then, inside a slot
that was subsampled, that many distinct rows uniformly from the stored subset. A uniform k-subset of a
uniform m-subset of n rows is a uniform k-subset of the n rows, so each draw has the reference's
distribution. The class threshold also uses the full counts. When nothing was subsampled (budget large
enough) the draws are identical in law and in mechanics. What differs: consecutive iterations reuse the
same stored subset until the slot is next replaced, so draws of different iterations are more
correlated than in the reference.

Fusion: ``"replace"`` (default) overwrites a slot at each update, which is what the reference effectively
does (its 0.9/0.1 blend only fires when the old and new arrays have equal shapes). ``"momentum"`` keeps a
per-class mixture instead: the new block keeps ``round(momentum * m)`` randomly chosen old rows and fills
the rest with new rows, so the stored distribution is a 0.9 / 0.1 mixture of old and new.

All random draws use the pool's own CPU ``torch.Generator`` (or one passed in), whose state is part of
the pool's state dict, so resumed runs draw the same anchors.

No host synchronisation: the per-class row counts are Python integers (the caller hands them over with
the features, see :meth:`FeaturePool.update_grouped`), every random draw is made on the CPU generator
and only its indices travel to the features' device, and anchor rows are gathered with fixed-size
masked operations. Nothing in an update or a draw converts a device tensor to a Python number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from medssl.errors import MedsslInputError

Fusion = Literal["replace", "momentum"]
#: ``rows_of(index)``: the (k, d) features of rows ``index`` (CPU int64, (k,)) of a block grouped by class.
RowSource = Callable[[Tensor], Tensor]
FEATURE_DTYPE = torch.float32


def sample_without_replacement(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct integers drawn uniformly from ``range(n)``, in draw order (CPU int64, shape (k,)).

    Uses ``O(k log k)`` work for ``k << n`` (sequential rejection of repeats, vectorised) and a random
    permutation otherwise; both are exact.
    """
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct values from {n}")
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    if 2 * k >= n:
        return torch.randperm(n, generator=generator)[:k]
    draws = torch.empty(0, dtype=torch.long)
    distinct = 0
    while True:
        extra = (k - distinct) + k // 4 + 16
        draws = torch.cat([draws, torch.randint(n, (extra,), generator=generator)])
        values, perm = torch.sort(draws, stable=True)
        first = torch.ones_like(values, dtype=torch.bool)
        first[1:] = values[1:] != values[:-1]
        positions = torch.sort(perm[first]).values  # first occurrence of each value, in draw order
        distinct = positions.numel()
        if distinct >= k:
            return draws[positions[:k]]


class FeaturePool(nn.Module):
    """Per-labeled-volume store of correctly predicted voxel features.

    Args:
        n_slots: number of labeled volumes (slots), whose keys (dataset indices) are taken in order of
            first update; or the exact dataset indices of the labeled volumes.
        feat_dim: feature size d.
        n_classes: number of classes C.
        memory_budget_bytes: bound on :meth:`memory_bytes` (features plus per-slot count tables).
        device: where stored features live initially; the pool follows the device of incoming features.
        fusion: ``"replace"`` (reference behaviour) or ``"momentum"`` (see module docstring).
        momentum: share of old rows kept per class by ``"momentum"`` fusion.
        anchors_per_half: rows per half when sampling anchors (128: two halves make 256 anchors).
        seed: seed of the pool's generator (default: ``torch.initial_seed()``).
    """

    def __init__(self, n_slots: int | Sequence[int], feat_dim: int, n_classes: int, memory_budget_bytes: int,
                 device: torch.device | str = "cpu", fusion: Fusion = "replace", momentum: float = 0.9,
                 anchors_per_half: int = 128, seed: int | None = None) -> None:
        super().__init__()
        if fusion not in ("replace", "momentum"):
            raise MedsslInputError("feature pool", f"unknown fusion {fusion!r}; expected replace or momentum")
        self.slot_keys: frozenset[int] | None = None
        if not isinstance(n_slots, int):
            self.slot_keys = frozenset(int(k) for k in n_slots)
            n_slots = len(self.slot_keys)
        self.n_slots = int(n_slots)
        self.feat_dim = int(feat_dim)
        self.n_classes = int(n_classes)
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.fusion: Fusion = fusion
        self.momentum = float(momentum)
        self.anchors_per_half = int(anchors_per_half)
        self.device = torch.device(device)
        row_bytes = self.feat_dim * torch.empty(0, dtype=FEATURE_DTYPE).element_size()
        share = self.memory_budget_bytes // max(self.n_slots, 1) - self._table_bytes()
        # stratified allocation may round each class up by one row: keep C rows of slack
        self.slot_capacity = share // row_bytes - self.n_classes
        if self.n_slots < 1 or self.slot_capacity < self.n_classes:
            raise MedsslInputError("feature pool", f"a memory budget of {self.memory_budget_bytes} bytes cannot "
                                   f"hold {self.n_classes} rows of {self.feat_dim} floats in each of "
                                   f"{self.n_slots} slots")
        self.generator = torch.Generator()
        self.generator.manual_seed(torch.initial_seed() if seed is None else int(seed))
        self._feats: dict[int, Tensor] = {}      # key -> (m, d), rows grouped by class
        self._stored: dict[int, list[int]] = {}  # key -> C stored rows per class
        self._full: dict[int, list[int]] = {}    # key -> C rows per class before subsampling

    # ----------------------------------------------------------------------------------- inspection
    def _table_bytes(self) -> int:
        return 2 * self.n_classes * 8

    @property
    def keys(self) -> list[int]:
        """Dataset indices of the filled slots, ascending."""
        return sorted(self._feats)

    def memory_bytes(self) -> int:
        """Bytes held: stored features plus the two (C,) int64 count tables of each filled slot."""
        feats = sum(f.numel() * f.element_size() for f in self._feats.values())
        return feats + len(self._feats) * self._table_bytes()

    def class_counts(self, key: int) -> tuple[Tensor, Tensor]:
        """``(stored, full)`` per-class row counts (C,) of slot ``key`` (CPU int64)."""
        return torch.tensor(self._stored[int(key)]), torch.tensor(self._full[int(key)])

    def slot_contents(self, key: int) -> tuple[Tensor, Tensor]:
        """Stored ``(features (m, d), labels (m,))`` of slot ``key``, grouped by class."""
        key = int(key)
        labels = torch.repeat_interleave(torch.arange(self.n_classes), torch.tensor(self._stored[key]))
        return self._feats[key], labels.to(self._feats[key].device)

    # ----------------------------------------------------------------------------------- update
    def _allocation(self, counts: list[int]) -> list[int]:
        """Rows kept per class for a slot with ``counts`` rows per class: all, or a stratified share."""
        total = sum(counts)
        if total <= self.slot_capacity:
            return list(counts)
        return [min(max(n * self.slot_capacity // total, 1), n) if n > 0 else 0 for n in counts]

    def _follow_device(self, device: torch.device) -> None:
        if device != self.device:
            self._feats = {k: f.to(device) for k, f in self._feats.items()}
            self.device = device

    def _check_key(self, key: int) -> None:
        if self.slot_keys is not None and key not in self.slot_keys:
            raise MedsslInputError("feature pool", f"dataset index {key} is not one of the labeled volumes "
                                   f"{sorted(self.slot_keys)}")
        if key not in self._feats and len(self._feats) >= self.n_slots:
            raise MedsslInputError("feature pool", f"dataset index {key} would be labeled volume number "
                                   f"{len(self._feats) + 1}, but the pool has {self.n_slots} slots "
                                   "(set n_labeled to the number of labeled volumes)")

    def update(self, key: int, feats: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Replace (or, with momentum fusion, blend) slot ``key`` with ``feats`` (n, d) of class ``labels`` (n,).

        Convenience form of :meth:`update_grouped` that groups the rows itself (one host read of the
        class counts).

        Raises:
            MedsslInputError: when more distinct keys arrive than ``n_slots``, or a key outside the
                configured slot keys.
        """
        if feats.ndim != 2 or feats.shape[1] != self.feat_dim or labels.numel() != feats.shape[0]:
            raise ValueError(f"expected ({labels.numel()}, {self.feat_dim}) features, got {tuple(feats.shape)}")
        labels = labels.reshape(-1).to(device=feats.device, dtype=torch.long)
        counts = torch.bincount(labels, minlength=self.n_classes).tolist()
        if len(counts) > self.n_classes:
            raise ValueError(f"labels must be in 0..{self.n_classes - 1}")
        grouped = feats[torch.argsort(labels, stable=True)]
        self.update_grouped(key, lambda rows: grouped[rows.to(grouped.device)], counts, generator)

    def update_grouped(self, key: int, rows_of: RowSource, counts: Sequence[int],
                       generator: torch.Generator | None = None) -> None:
        """Replace (or blend) slot ``key`` with rows grouped by class, computing only the rows it keeps.

        Args:
            key: dataset index of the labeled volume.
            rows_of: ``rows_of(index)`` returns the (k, d) features of the rows ``index`` (CPU int64, (k,))
                of the grouped block (the ``counts[0]`` rows of class 0 first, then class 1, ...); it is
                called once per update with the rows the slot keeps, so features of rows a subsampled
                slot drops are never computed.
            counts: C Python integers, the rows per class.
            generator: CPU generator for the subsampling draws (default: the pool's).
        """
        g = self.generator if generator is None else generator
        key = int(key)
        self._check_key(key)
        counts = [int(n) for n in counts]
        if len(counts) != self.n_classes:
            raise ValueError(f"expected {self.n_classes} class counts, got {counts}")
        offsets = _offsets(counts)
        alloc = self._allocation(counts)
        if self.fusion == "momentum" and key in self._feats:
            block, stored = self._blend(key, rows_of, counts, offsets, alloc, g)
        else:
            picks = [offsets[c] + _pick(counts[c], alloc[c], g) for c in range(self.n_classes)]
            block, stored = self._rows(rows_of, torch.cat(picks)), alloc
        self._follow_device(block.device)
        self._feats[key] = block
        self._stored[key] = stored
        self._full[key] = counts

    def _rows(self, rows_of: RowSource, index: Tensor) -> Tensor:
        feats = rows_of(index).detach().to(FEATURE_DTYPE)
        if feats.shape != (index.numel(), self.feat_dim):
            raise ValueError(f"expected ({index.numel()}, {self.feat_dim}) features, got {tuple(feats.shape)}")
        return feats

    def _blend(self, key: int, rows_of: RowSource, counts: list[int], offsets: list[int], alloc: list[int],
               g: torch.Generator) -> tuple[Tensor, list[int]]:
        old, old_stored = self._feats[key], self._stored[key]
        old_offsets = _offsets(old_stored)
        old_parts: list[Tensor] = []
        new_parts: list[Tensor] = []
        stored = [0] * self.n_classes
        for c in range(self.n_classes):
            m = alloc[c]
            if m == 0:
                continue
            n_old = min(old_stored[c], round(self.momentum * m))
            n_new = min(counts[c], m - n_old)
            old_parts.append(old_offsets[c] + _pick(old_stored[c], n_old, g))
            new_parts.append(offsets[c] + _pick(counts[c], n_new, g))
            stored[c] = n_old + n_new
        if not old_parts:
            return old.new_zeros((0, self.feat_dim)), stored
        new = self._rows(rows_of, torch.cat(new_parts)).to(old.device)
        old_rows = old[torch.cat(old_parts).to(old.device)]
        # class by class: that class's old rows, then its new rows
        sizes = [(o.numel(), n.numel()) for o, n in zip(old_parts, new_parts, strict=True)]
        old_split = torch.split(old_rows, [a for a, _ in sizes])
        new_split = torch.split(new, [b for _, b in sizes])
        block = torch.cat([t for pair in zip(old_split, new_split, strict=True) for t in pair])
        return block, stored

    # ----------------------------------------------------------------------------------- sampling
    def sample_anchors(self, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None,
                       keys: Sequence[int] | None = None) -> dict[int, Tensor]:
        """Anchors per class: ``class -> (2 * anchors_per_half, d)`` for every class with at least
        ``2 * anchors_per_half`` features in the whole pool (full counts); other classes are absent.

        Which classes qualify is decided from the host-side counts; the rows are drawn on the CPU
        generator and gathered on the pool's device with fixed-size masked operations. ``keys`` limits
        the draw to those slots (e.g. the labeled volumes of the current batch: no memory across
        iterations, the "no DFP" ablation).
        """
        g = self.generator if generator is None else generator
        keys = self.keys if keys is None else [k for k in self.keys if k in set(keys)]
        anchors: dict[int, Tensor] = {}
        for c in range(self.n_classes):
            if sum(self._full[k][c] for k in keys) < 2 * self.anchors_per_half:
                continue
            parts = [self._draw(c, keys, g) for _ in range(2)]
            anchors[c] = torch.cat(parts) if device is None else torch.cat(parts).to(device)
        return anchors

    def _draw(self, c: int, keys: list[int], g: torch.Generator) -> Tensor:
        """``anchors_per_half`` rows (half, d) of class ``c``, uniform without replacement over the full pool."""
        half = self.anchors_per_half
        full = torch.tensor([self._full[k][c] for k in keys])
        cum = torch.cumsum(full, 0)
        virtual = sample_without_replacement(int(sum(self._full[k][c] for k in keys)), half, g)
        slot = torch.searchsorted(cum, virtual, right=True)
        local = virtual - (cum[slot] - full[slot])
        out = torch.zeros((half, self.feat_dim), dtype=FEATURE_DTYPE, device=self.device)
        for s, key in enumerate(keys):
            m, n = self._stored[key][c], self._full[key][c]
            if m == 0:
                continue
            sel = slot == s
            rows = local
            if m < n:  # subsampled slot: distinct rows of the stored uniform subset, in draw order
                rank = (torch.cumsum(sel, 0) - 1).clamp(min=0)
                rows = _distinct_draws(m, half, g)[rank]
            start = _offsets(self._stored[key])[c]
            rows = (start + rows.clamp(max=m - 1)).to(self.device)
            out = torch.where(sel.to(self.device)[:, None], self._feats[key][rows], out)
        return out

    # ----------------------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        keys = self.keys
        return {
            "format": 1,
            "geometry": [self.n_slots, self.feat_dim, self.n_classes, self.memory_budget_bytes],
            "keys": keys,
            "feats": [self._feats[k] for k in keys],
            "stored": [torch.tensor(self._stored[k]) for k in keys],
            "full": [torch.tensor(self._full[k]) for k in keys],
            "generator": self.generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        geometry = [self.n_slots, self.feat_dim, self.n_classes, self.memory_budget_bytes]
        if list(state["geometry"]) != geometry:
            raise MedsslInputError("checkpoint", f"feature pool geometry {list(state['geometry'])} "
                                   f"(slots, dim, classes, bytes) does not match the configured {geometry}")
        keys = [int(k) for k in state["keys"]]
        feats = list(state["feats"])
        if feats:
            self.device = feats[0].device
        self._feats = {k: f.to(self.device, FEATURE_DTYPE) for k, f in zip(keys, feats, strict=True)}
        self._stored = {k: [int(v) for v in t.tolist()] for k, t in zip(keys, state["stored"], strict=True)}
        self._full = {k: [int(v) for v in t.tolist()] for k, t in zip(keys, state["full"], strict=True)}
        self.generator.set_state(state["generator"].cpu())


def _offsets(counts: Sequence[int]) -> list[int]:
    """Start of each class's block in rows grouped by class: exclusive prefix sums of ``counts``."""
    out, total = [], 0
    for n in counts:
        out.append(total)
        total += n
    return out


def _pick(n: int, m: int, g: torch.Generator) -> Tensor:
    """Indices (CPU int64, (m,)) of ``m`` of ``n`` rows: all in order, or a sorted uniform subset."""
    if m >= n:
        return torch.arange(n)
    return torch.sort(torch.randperm(n, generator=g)[:m]).values


def _distinct_draws(m: int, k: int, g: torch.Generator) -> Tensor:
    """``k`` draws (CPU int64) from ``range(m)``: distinct while ``k <= m``; beyond that the first ``m``
    are a permutation and the rest uniform with replacement."""
    if k <= m:
        return sample_without_replacement(m, k, g)
    return torch.cat([torch.randperm(m, generator=g), torch.randint(m, (k - m,), generator=g)])


__all__ = ["FEATURE_DTYPE", "FeaturePool", "Fusion", "RowSource", "sample_without_replacement"]
