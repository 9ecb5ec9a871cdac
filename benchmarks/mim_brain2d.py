"""Transfer benchmark of Mask What Matters on the embedded ``brain2d`` images (brain MRI-like slices).

Prompt: "A brain MRI showing a suspicious irregular mass suggestive of a tumour" (``structures`` backend:
the tumour's boxes, 1.5 % of the pixels on average; the 25 % of slices without a tumour get an empty ROI and
are masked uniformly at the background ratio). Arms: ``scratch``, ``random_0.6``, ``random_0.7`` (SparK),
``guided_0.8_0.4``, ``guided_0.7_0.3``, ``guided_0.6_0.2`` (text-guided, ROI / background ratios); seeds
1337, 1338, 1339. Each (arm, seed) writes ``benchmarks/results/mim_brain2d/<arm>_s<seed>.json``; the tables
are ``benchmarks/results/mim_brain2d.{md,json,png}``.

Protocol (``_mim.FULL``, chosen so that the 18 points take about an hour with ``--jobs 2`` on two free
cores, one torch thread per point): 160 images synthesized at 128×128 (128 training-list + 32 test).

* Pretraining at **96×96**, the smallest size whose 3×3 patch grid still separates the arms' ratios (at
  64×64 a 2×2 grid makes 60 % and 40 % masks both hide 2 of 4 patches): SparK ResNet-18 on the 128
  training-list images, batch 8, 16 epochs (256 iterations). Patches are ROI by the ``any`` rule: with the
  reference's top-left rule only 1.1 % of the patches (13 of 128 images) would be ROI at this grid, and
  the guided arms would be uniform masks at the background ratio; ``any`` labels 21 %.
* Classification (4 classes) at 96×96: 24 epochs of the ``classify_brain2d_resnet18`` recipe on 80 % of the
  training list (20 % stratified validation), the final epoch scored on the 32 test images.
* Detection: Mask R-CNN ResNet-18-FPN (``detect_brain2d_r18``, one class) at the images' own 128×128 for 6
  epochs (192 iterations), the final model scored on the 32 test images.

Measured: one pretrained point took 507 s of one thread (pretraining 259 s, classification 91 s,
detection 157 s) on the shared 2-core development machine under a load of about 4; a scratch point skips
the pretraining. The grid is 15 pretrained + 3 scratch points: about 2¼ hours of one-thread work there,
about 70 minutes with ``--jobs 2``, less on two free cores.

Full grid: ``.venv/bin/python benchmarks/mim_brain2d.py`` (``--jobs 2`` by default; runs only the missing
points). Table only: ``--table-only``. Smoke run: ``--quick`` (one random / guided pair, one seed, 1 epoch of
each stage on 20 images at 64×64, under ``benchmarks/results/raw/quick/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _mim  # noqa: E402

if __name__ == "__main__":
    sys.exit(_mim.main(_mim.BRAIN2D))
