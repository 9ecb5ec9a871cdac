"""The nnU-Net v2 / Decathlon raw layout (``nnunet:<folder>``), built from the embedded atrium3d data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medssl.cli import main
from medssl.data.nnunet import read_nnunet_layout
from medssl.data.pretrain import list_pretrain_images
from medssl.data.spec import detect_layout, open_volume_dataset
from medssl.localize.run import list_images

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "left_atrium": 1},
                "numTraining": 5, "file_ending": ".nii.gz"}
N_LABELLED = 3


@pytest.fixture(scope="module")
def atrium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    return synthesize("atrium3d", tmp_path_factory.mktemp("src") / "atrium3d", n=7, seed=3, shape=(40, 40, 24),
                      quiet=True)


def _ids(atrium: Path, split: str) -> list[str]:
    return (atrium / f"{split}.list").read_text().split()


def build_nnunet(atrium: Path, root: Path, *, decathlon: bool = False) -> Path:
    """imagesTr/ = the training-list cases (the first N_LABELLED with labelsTr/), imagesTs/ = the test cases."""
    suffix = "" if decathlon else "_0000"
    for split, folder in (("train", "imagesTr"), ("test", "imagesTs")):
        (root / folder).mkdir(parents=True)
        for case in _ids(atrium, split):
            shutil.copy2(atrium / "images" / f"{case}.nii.gz", root / folder / f"{case}{suffix}.nii.gz")
    (root / "labelsTr").mkdir()
    for case in _ids(atrium, "train")[:N_LABELLED]:
        shutil.copy2(atrium / "labels" / f"{case}.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    meta = ({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"}} if decathlon
            else DATASET_JSON)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture()
def raw(atrium: Path, tmp_path: Path) -> Path:
    return build_nnunet(atrium, tmp_path / "Dataset002_Heart")


def test_cases_are_labelled_from_labelstr_and_the_rest_unlabeled(atrium: Path, raw: Path, tmp_path: Path) -> None:
    train, test = _ids(atrium, "train"), _ids(atrium, "test")
    layout = read_nnunet_layout(raw)
    assert [c.case_id for c in layout.cases] == sorted(train[:N_LABELLED]) + sorted(train[N_LABELLED:]) + sorted(test)
    assert [c.label is not None for c in layout.cases] == [True] * N_LABELLED + [False] * (len(train) + len(test) - N_LABELLED)
    assert layout.labels == {"background": 0, "left_atrium": 1} and layout.file_ending == ".nii.gz"
    assert layout.cases[0].image == raw / "imagesTr" / f"{layout.cases[0].case_id}_0000.nii.gz"
    assert detect_layout(raw) == "nnunet"
    dataset = open_volume_dataset(f"nnunet:{raw}")
    case = dataset.load(0)
    assert case.label is not None and case.label.shape == case.image.shape == (40, 40, 24)
    assert dataset.load(len(dataset) - 1).label is None
    # the Decathlon's own naming: modality, labels index -> name, no channel suffix, no file_ending
    msd = read_nnunet_layout(build_nnunet(atrium, tmp_path / "Task02_Heart", decathlon=True))
    assert [c.case_id for c in msd.cases] == [c.case_id for c in layout.cases]
    assert msd.labels == {"background": 0, "left atrium": 1}
    # pretraining and localization see every image (imagesTr, then imagesTs); pretraining can keep imagesTr
    everything = [c.image for c in layout.cases]
    assert list_pretrain_images(f"nnunet:{raw}") == everything == list_images([Path(f"nnunet:{raw}")])
    assert list_pretrain_images(f"nnunet:{raw}", "train") == everything[: len(train)]


def test_semi_train_and_inspect(atrium: Path, raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["semi", "train", "--method", "corn", "--data", f"nnunet:{raw}", "--labeled", "2", "--iterations", "2",
          "--runs-root", str(tmp_path / "runs"), "--name", "nn", "--quiet", "--accelerator", "cpu",
          "--set", "method_config.network.base_width=4", "--set", "data.n_val=1", "--set", "data.patch=[32,32,16]",
          "--set", "data.labeled_bs=1", "--set", "data.unlabeled_bs=1", "--set", "inference.patch=[32,32,16]"])
    manifest = json.loads((tmp_path / "runs" / "nn" / "manifest.json").read_text())
    labelled = sorted(_ids(atrium, "train")[:N_LABELLED])
    unlabeled = sorted(_ids(atrium, "train")[N_LABELLED:]) + sorted(_ids(atrium, "test"))
    assert manifest["extra"]["splits"] == {"labeled": labelled[:2], "unlabeled": unlabeled, "val": labelled[2:]}
    assert (tmp_path / "runs" / "nn" / "checkpoints" / "final.pt").is_file()
    assert "| dice" in capsys.readouterr().out.lower()  # evaluated on the labelled validation case

    main(["data", "inspect", f"nnunet:{raw}"])  # returns (exit 0) only without problems
    out = capsys.readouterr().out
    n = len(_ids(atrium, "train")) + len(_ids(atrium, "test"))
    assert f"cases:        {n} ({N_LABELLED} with a label)" in out and "problems:     none" in out
    assert "nnU-Net raw (dataset.json: .nii.gz, labels 0 background, 1 left_atrium" in out


def _edit_json(raw: Path, **changes: object) -> None:
    meta = {**DATASET_JSON, **changes}
    (raw / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


BROKEN = {
    "missing dataset.json": (lambda raw: (raw / "dataset.json").unlink(), "dataset.json", "missing dataset.json"),
    "invalid JSON": (lambda raw: (raw / "dataset.json").write_text("{channel_names: MRI"), "dataset.json",
                     "not valid JSON"),
    "no labels": (lambda raw: _edit_json(raw, labels=None), "dataset.json", "needs 'labels'"),
    "no file ending": (lambda raw: _edit_json(raw, file_ending=None), "dataset.json", "needs 'file_ending'"),
    "two channels": (lambda raw: _edit_json(raw, channel_names={"0": "T2", "1": "ADC"}), "dataset.json",
                     "2 channels (T2, ADC); medssl trains single-channel models"),
    "a second channel file": (lambda raw: shutil.copy2(next((raw / "imagesTr").iterdir()),
                                                       raw / "imagesTr" / "extra_0001.nii.gz"),
                              "imagesTr/extra_0001.nii.gz", "channel 1 image"),
    "wrong file ending": (lambda raw: (raw / "imagesTs" / "other_0000.nii").write_bytes(b"x"),
                          "imagesTs/other_0000.nii", "expected a file ending in '.nii.gz'"),
    "label without image": (lambda raw: shutil.copy2(next((raw / "labelsTr").iterdir()),
                                                     raw / "labelsTr" / "ghost.nii.gz"),
                            "labelsTr/ghost.nii.gz", "label without an image"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_invalid_datasets_exit_2_naming_the_file(broken: str, raw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damage, file, problem = BROKEN[broken]
    damage(raw)
    for args in (["data", "inspect", f"nnunet:{raw}"],
                 ["semi", "train", "--data", f"nnunet:{raw}", "--labeled", "1", "--runs-root", str(raw.parent / "runs"),
                  "--name", "x", "--iterations", "1", "--quiet"]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"medssl: error: {raw / file}: ") and problem in err[0], err[0]
    assert not (raw.parent / "runs").exists()
