"""The presets ship inside the package: listed with their first comment line, resolved by name, loadable."""

from __future__ import annotations

from pathlib import Path

import pytest

import medssl
from medssl.cli import main
from medssl.cli._training import preset_path as cli_preset_path
from medssl.config import load_config
from medssl.errors import MedsslInputError
from medssl.presets import PRESET_GROUPS, find_preset, list_presets, preset_path

PACKAGE_CONFIGS = Path(medssl.__file__).parent / "configs"


def _schema(group: str, name: str) -> type:
    from medssl.engine.classify import ClassifyConfig
    from medssl.engine.detect import DetectConfig
    from medssl.engine.pretrain import PretrainConfig
    from medssl.engine.semi import SemiTrainConfig

    if group == "semi":
        return SemiTrainConfig
    if group == "pretrain":
        return PretrainConfig
    return DetectConfig if name.startswith("detect_") else ClassifyConfig


def test_every_packaged_yaml_is_listed_and_loads_with_its_schema() -> None:
    for group in PRESET_GROUPS:
        files = sorted(p.stem for p in (PACKAGE_CONFIGS / group).glob("*.yaml"))
        listed = list_presets(group)
        assert [p.name for p in listed] == files and files
        for preset in listed:
            assert preset.description and not preset.description.startswith("#")
            load_config(_schema(group, preset.name), preset_path(preset.name, group),
                        base={"runtime": {"name": "x"}})
    names = {p.name for p in list_presets("semi")}
    assert {f"{prefix}_{m}" for prefix in ("atrium3d", "la") for m in
            ("supervised", "mean_teacher", "ua_mt", "dual_branch", "caml", "corn")} == names


def test_description_is_the_first_comment_line() -> None:
    corn = find_preset("atrium3d_corn", "semi")
    assert corn is not None
    assert corn.description == "CPU preset for method 'corn' on the embedded atrium3d data (minutes on 2 cores)."
    assert corn.text.splitlines()[0] == f"# {corn.description}"


def test_names_resolve_with_or_without_suffix_and_unknowns_are_none() -> None:
    path = preset_path("atrium3d_corn", "semi")
    assert path == PACKAGE_CONFIGS / "semi" / "atrium3d_corn.yaml" and path.is_file()
    assert preset_path("atrium3d_corn.yaml", "semi") == path
    assert preset_path("atrium3d_corn", "pretrain") is None  # presets belong to one group
    assert find_preset("nope", "finetune") is None
    with pytest.raises(ValueError, match="unknown preset group"):
        list_presets("configs")


def test_config_option_takes_a_file_or_a_preset_name(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("method: corn\n")
    assert cli_preset_path(own, "semi") == own
    assert cli_preset_path(Path("la_corn"), "semi") == PACKAGE_CONFIGS / "semi" / "la_corn.yaml"
    with pytest.raises(MedsslInputError, match="nor a semi preset of that name"):
        cli_preset_path(Path("atrium3d_vnet_guided"), "semi")
    with pytest.raises(MedsslInputError):
        cli_preset_path(Path("semi/atrium3d_corn"), "semi")  # a path that does not exist is not a name


def test_presets_command_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    main(["presets", "pretrain"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_presets("pretrain"))
    assert ("pretrain/atrium3d_vnet_guided  CPU preset: Mask What Matters in 3D on the embedded atrium3d volumes "
            "(a few minutes on 2 cores).") in lines
    main(["presets"])
    assert len(capsys.readouterr().out.splitlines()) == sum(len(list_presets(g)) for g in PRESET_GROUPS)
    with pytest.raises(SystemExit) as stop:
        main(["presets", "detect"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == ["medssl: error: detect: unknown preset group; expected one of "
                                            "semi, pretrain, finetune"]
