"""Transfer benchmark of Mask What Matters on the embedded ``chest2d`` images (chest X-ray-like).

Prompt: "A chest X-ray highlighting both left and right lungs" (``structures`` backend: one box per lung,
36 % of the pixels on average). Arms: ``scratch``, ``random_0.6``, ``random_0.7`` (SparK),
``guided_0.8_0.4``, ``guided_0.7_0.3``, ``guided_0.6_0.2`` (text-guided, ROI / background ratios); seeds
1337, 1338, 1339. Each (arm, seed) writes ``benchmarks/results/mim_chest2d/<arm>_s<seed>.json``; the tables
are ``benchmarks/results/mim_chest2d.{md,json,png}``.

Protocol (``_mim.FULL``, the same as ``mim_brain2d.py``): 160 images synthesized at 128×128 (128
training-list + 32 test).

* Pretraining at **96×96** (3×3 patch grid): SparK ResNet-18 on the 128 training-list images, batch 8,
  16 epochs (256 iterations). Patches are ROI by the reference's top-left rule (43 % of the patches; the
  ``any`` rule would label all of them).
* Classification (3 classes: normal, pneumonia_like, nodule) at 96×96: 24 epochs of the
  ``classify_chest2d_resnet18`` recipe on 80 % of the training list (20 % stratified validation), the final
  epoch scored on the 32 test images.
* Detection of the opacities: Mask R-CNN ResNet-18-FPN (the small ``detect_brain2d_r18`` preset: anchors
  8-128 px, one class) at the images' own 128×128 for 6 epochs, the final model scored on the 32 test images.

The sizes are those of ``mim_brain2d.py``, where one pretrained point was measured at about 8½ minutes of
one thread on the shared development machine (about an hour for the grid with ``--jobs 2`` on two free
cores).

Full grid: ``.venv/bin/python benchmarks/mim_chest2d.py`` (``--jobs 2`` by default; runs only the missing
points). Table only: ``--table-only``. Smoke run: ``--quick`` (one random / guided pair, one seed, 1 epoch of
each stage on 20 images at 64×64, under ``benchmarks/results/raw/quick/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _mim  # noqa: E402

if __name__ == "__main__":
    sys.exit(_mim.main(_mim.CHEST2D))
