"""Using a trained semi-supervised run: its network, scores on validation / test cases, predictions.

``evaluate_run`` scores with sliding-window inference at the source resolution (see its docstring);
``predict_file`` segments one scan and writes a NIfTI label map with the scan's geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medssl.config import load_run_config
from medssl.data.semi import open_case_list, open_semi_data, zoomed
from medssl.data.spec import VolumeDataset, open_volume_dataset
from medssl.engine.evaluate import EvalCase, EvalResult, evaluate_cases
from medssl.engine.inference import resampled_predictor, sliding_window_predictor
from medssl.engine.semi_config import InferenceConfig, SemiTrainConfig
from medssl.errors import MedsslInputError
from medssl.methods import create_method
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint
from medssl.runtime.rundir import RunDir

__all__ = ["RunPredictor", "eval_cases", "evaluate_run", "load_trained_network", "predict_file", "read_run_config",
           "volume_predictor"]


def eval_cases(dataset: VolumeDataset, indices: Sequence[int]) -> list[EvalCase]:
    """The cases ``indices`` of ``dataset`` as :class:`EvalCase` (image, label and geometry)."""
    cases = []
    for i in indices:
        c = dataset.load(i)
        cases.append(EvalCase(case_id=c.case_id, image=c.image, label=c.label, affine=c.affine,
                              spacing=tuple(c.spacing)))
    return cases



def volume_predictor(
    net: torch.nn.Module, inf: InferenceConfig, device: torch.device | str | None
) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(volume (H, W, D)) -> probabilities (n_classes, H, W, D)`` with the sliding window of ``inf``."""
    return sliding_window_predictor(net, patch=inf.patch, stride=inf.stride, n_classes=_n_classes(net),
                                    batch_size=inf.batch_size, precision=inf.precision, device=device)


def _n_classes(net: torch.nn.Module) -> int:
    return int(getattr(net, "n_classes", 2))


def read_run_config(run_dir: str | Path) -> SemiTrainConfig:
    """The resolved :class:`SemiTrainConfig` saved in a run directory."""
    return load_run_config(run_dir, SemiTrainConfig, ("method", "data"), "semi-supervised training run")


def load_trained_network(
    run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, SemiTrainConfig, Path]:
    """The inference network of a trained run (CORN: branch 1) in eval mode.

    Args:
        run_dir: the run directory.
        checkpoint: ``final`` (the published protocol), ``best`` (selected on validation data),
            ``latest`` or an iteration number.

    Returns:
        (network, run config, checkpoint path).
    """
    cfg = read_run_config(run_dir)
    manager = CheckpointManager(RunDir(Path(run_dir)).checkpoints)
    which: int | str = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    path = manager.path_for(which)
    if not path.is_file():
        hint = " (best.pt is written only when the run validates during training: validate_every > 0)" \
            if checkpoint == "best" else ""
        raise MedsslInputError(path, f"checkpoint {checkpoint!r} not found in the run{hint}")
    state = load_checkpoint(path, map_location=device)
    method = create_method(cfg.method, cfg.method_config)
    try:
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise MedsslInputError(path, f"checkpoint does not fit method {cfg.method}: "
                               f"{str(err).splitlines()[0]}") from None
    net = method.segmentation_network().to(device).eval()
    return net, cfg, path


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    cases: str | Path | None = None,
    split: Literal["val", "all"] = "val",
    checkpoint: str = "final",
    out: str | Path | None = None,
    device: str | None = None,
    inference: InferenceConfig | None = None,
    quiet: bool = False,
    reduced_grid: bool = False,
    dataset: VolumeDataset | None = None,
) -> EvalResult:
    """Evaluate a trained run with sliding-window inference.

    By default the run's own validation cases are scored with its final checkpoint (the published
    protocol). ``data`` + ``cases`` score any dataset / case list with the same command (e.g. the
    held-back left-atrium test list).

    A run trained on resampled volumes (``data.zoom`` ≠ 1) predicts on its own grid, and its
    probabilities are resampled back to each case's source grid (:func:`resampled_predictor`):
    Dice / Jaccard / 95HD / ASD are computed there against the source label, and predictions are
    saved with the source shape and affine — the numbers the literature reports. ``reduced_grid``
    scores on the resampled grid instead (labels resampled with nearest neighbour; cheaper, not
    comparable to published numbers).

    Args:
        run_dir: the run directory.
        data: a data spec (default: the run's training data).
        cases: a case-list file (one id per line); default: the run's validation cases.
        split: with ``data`` and no ``cases``: ``val`` uses the run's split rule, ``all`` every case.
        checkpoint: ``final`` | ``best`` (selects on validation data) | ``latest`` | an iteration.
        out: output folder (default ``<run>/eval_<checkpoint>[_<cases stem>]``).
        inference: override the run's sliding-window settings.
        reduced_grid: score on the run's resampled grid instead of the source grid.
        dataset: score every case of this dataset object (source grid) instead of ``data`` / ``cases``.
    """
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, cfg, ckpt_path = load_trained_network(run_dir, checkpoint, dev)
    inf = inference or cfg.inference
    zoom = cfg.data.zoom
    scoring_zoom = zoom if reduced_grid else 1.0  # the grid the cases are loaded (and scored) on
    if dataset is not None:
        indices = list(range(len(dataset)))
    elif cases is not None:
        spec = data or cfg.data.spec
        if spec is None:
            raise MedsslInputError(run_dir, "the run was trained on a dataset object: pass data=SPEC (or "
                                   "dataset=...) to say where the listed cases are")
        dataset = open_case_list(spec, cases, cfg.data.allow_missing)
        indices = list(range(len(dataset)))
    elif data is not None and split == "all":
        dataset = open_volume_dataset(data, cache=False)
        indices = list(range(len(dataset)))
    else:
        data_cfg = cfg.data.model_copy(update={"zoom": 1.0, **({} if data is None else {"spec": data})})
        dataset, splits = open_semi_data(data_cfg, cache=False)
        indices = splits.val
        if not indices:
            raise MedsslInputError(run_dir, "the run has no validation cases; pass --cases FILE (or --data "
                                   "with --split all) to choose what to evaluate")
    dataset = zoomed(dataset, scoring_zoom, cache=False)
    tag = f"eval_{checkpoint}" + (f"_{Path(cases).stem}" if cases is not None else "")
    tag += "_reduced" if reduced_grid and zoom != 1.0 else ""
    out_dir = Path(out) if out is not None else Path(run_dir) / tag
    predictor = volume_predictor(net, inf, dev)
    if not reduced_grid:
        predictor = resampled_predictor(predictor, zoom)
    result = evaluate_cases(predictor, eval_cases(dataset, indices), out_dir=out_dir,
                            largest_component=inf.largest_component, progress=not quiet)
    result.summary["checkpoint"] = str(ckpt_path)
    result.summary["inference"] = inf.model_dump(mode="json")
    result.summary["scoring_grid"] = {"grid": "reduced" if scoring_zoom != 1.0 else "source",
                                      "training_zoom": zoom}
    if "summary_json" in result.files:
        from medssl.runtime.atomic import write_json_atomic

        write_json_atomic(result.files["summary_json"], result.summary)
    return result


class RunPredictor:
    """A trained run's network, loaded once, as a function of whole scans: image → probabilities.

    Each scan is z-score normalised over the whole volume like the training data; a run trained on
    resampled volumes (``data.zoom``) predicts on the resampled grid and its probabilities are
    resampled back to the scan's grid (:func:`resampled_predictor`).

    Args:
        run_dir: the run directory.
        checkpoint: ``final`` | ``best`` | ``latest`` | an iteration number.
        device: torch device (default: CUDA when available, else CPU).
    """

    def __init__(self, run_dir: str | Path, checkpoint: str = "final", device: str | None = None) -> None:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network, self.config, self.checkpoint_path = load_trained_network(run_dir, checkpoint, dev)
        self._predict = resampled_predictor(volume_predictor(self.network, self.config.inference, dev),
                                            self.config.data.zoom)

    @property
    def n_classes(self) -> int:
        """Number of classes the network predicts (background included)."""
        return _n_classes(self.network)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities [C, H, W, D] float32 of a scan (H, W, D) on its own grid."""
        arr = np.asarray(image, dtype=np.float32)
        arr = (arr - arr.mean()) / max(float(arr.std()), 1e-8)
        return self._predict(arr)

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Label map (H, W, D) uint8 of a scan (argmax; the run's largest-component setting)."""
        from medssl.engine.inference import probs_to_mask

        return probs_to_mask(self.probabilities(image),
                             largest_component=self.config.inference.largest_component)


def predict_file(
    run_dir: str | Path,
    input_path: str | Path,
    out_path: str | Path,
    checkpoint: str = "final",
    device: str | None = None,
    probabilities: bool = False,
) -> Path:
    """Segment one scan (NIfTI / NRRD / DICOM / HDF5) and write a NIfTI label map with its geometry
    (see :class:`RunPredictor`); ``probabilities`` also writes the foreground probability map."""
    from medssl.data.io import read_image, write_nifti
    from medssl.engine.inference import probs_to_mask

    predictor = RunPredictor(run_dir, checkpoint, device)
    img = read_image(input_path, ndim=3)
    probs = predictor.probabilities(img.array)
    mask = probs_to_mask(probs, largest_component=predictor.config.inference.largest_component)
    out = write_nifti(out_path, mask, img.affine)
    if probabilities:
        write_nifti(Path(str(out_path).replace(".nii", "_prob.nii")), probs[1].astype(np.float32), img.affine)
    return out
