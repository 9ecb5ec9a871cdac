"""Reports over a real tiny semi-supervised run: numbers, config, learning curves and figures on the page."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import struct
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from medssl.cli import main
from medssl.config import load_config
from medssl.engine.semi import SemiTrainConfig, train_semi
from medssl.report import build_report
from medssl.runtime.metrics_log import MetricsLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {
    "method": "corn",
    "method_config": {"network": {"base_width": 4}},
    "data": {"labeled": 1, "n_val": 1, "patch": [32, 32, 16], "labeled_bs": 1, "unlabeled_bs": 1},
    "max_iterations": 3,
    "inference": {"patch": [32, 32, 16], "stride": [16, 16, 16]},
    "runtime": {"checkpoint_every": 2, "log_every": 1, "quiet": True, "accelerator": "cpu", "threads": 1},
}


# ------------------------------------------------------------------------------- a tiny HTML tree
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str) -> list[Node]:
        out = [c for c in self.children if c.tag == tag]
        for child in self.children:
            out.extend(child.all(tag))
        return out

    def full_text(self) -> str:
        return self.text + "".join(c.full_text() for c in self.children)


class _TreeBuilder(HTMLParser):
    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Node("#text", {}, text=data))


def parse_html(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def data_uri_bytes(src: str) -> tuple[str, bytes]:
    match = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)", src)
    assert match, src[:60]
    return match.group(1), base64.b64decode(match.group(2), validate=True)


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def semi_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    base = tmp_path_factory.mktemp("semi")
    data = synthesize("atrium3d", base / "atrium3d", n=4, seed=3, shape=(32, 32, 24), quiet=True)
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["spec"] = f"folder:{data}"
    cfg["runtime"].update({"name": "corn_tiny", "runs_root": str(base / "runs")})
    result = train_semi(load_config(SemiTrainConfig, base=cfg), command=["medssl", "semi", "train", "--tiny"])
    assert result.evaluation is not None  # evaluated on its validation case after training
    return result.run_dir


def _classify_run(root: Path) -> Path:
    """A finished-classification-like run directory (results.json with best / final / test)."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("model:\n  backbone: resnet18\nepochs: 2\n", encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps({"command": ["medssl", "finetune", "classify"], "seed": 1}))
    with MetricsLogger(root, enable_tensorboard=False) as log:
        log.log(1, {"loss": 0.9, "lr": 1e-3})
        log.log(2, {"loss": 0.7, "lr": 5e-4})
    results = {"best": {"epoch": 1, "accuracy": 0.75, "auroc": 0.8},
               "final": {"epoch": 2, "accuracy": 0.625, "auroc": 0.85}}
    (root / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------- tests
def _expected_groups(metrics_csv: Path) -> dict[str, list[str]]:
    """The curve groups of a CORN run, by the documented naming rules, from the CSV header."""
    header = next(csv.reader(metrics_csv.open()))[2:]
    groups: dict[str, list[str]] = {}
    for name in header:
        if name.startswith("loss"):
            key = "train-losses"
        elif name.startswith("w_"):
            key = "train-ramps"
        elif name == "lr":
            key = "train-schedule"
        else:
            key = "train-other"
        groups.setdefault(key, []).append(name)
    return groups


def test_html_report_shows_the_runs_numbers_config_curves_and_figures(semi_run: Path, tmp_path: Path) -> None:
    out = build_report([semi_run], tmp_path / "report.html", title="Tiny CORN")
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")
    tree = parse_html(page)
    assert "Tiny CORN" in tree.all("title")[0].full_text()
    assert not re.search(r'(src|href)="(https?:|//)', page)  # self-contained: no external assets

    # Dice / Jaccard / 95HD of the evaluation summary: exact value in data-value, rounded text shown
    summary = json.loads((semi_run / "eval_final" / "summary.json").read_text())
    table = next(t for t in tree.all("table") if t.attrs.get("data-title") == "Segmentation evaluation")
    header = [th.full_text() for th in table.all("th")]
    row = next(tr for tr in table.all("tr") if tr.all("td") and tr.all("td")[0].full_text() == "eval_final")
    cells = dict(zip(header, row.all("td"), strict=True))
    for column, key, scale in (("Dice (%)", "dice", 100), ("Jaccard (%)", "jaccard", 100),
                               ("95HD (vox)", "hd95_vox", 1), ("ASD (mm)", "asd_mm", 1)):
        stat = summary["metrics"][key]
        cell = cells[column]
        assert float(cell.attrs["data-value"]) == stat["mean"]
        assert float(cell.attrs["data-std"]) == stat["std"]
        assert cell.full_text() == f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}"

    # the configuration, verbatim, in a folded block
    blocks = {d.all("summary")[0].full_text(): d for d in tree.all("details")}
    assert blocks["config.yaml"].all("pre")[0].full_text() == (semi_run / "config.yaml").read_text()
    manifest = json.loads((semi_run / "manifest.json").read_text())
    assert json.loads(blocks["manifest.json"].all("pre")[0].full_text()) == manifest
    facts = {dt.full_text(): dd.full_text() for dt, dd in zip(tree.all("dt"), tree.all("dd"), strict=True)}
    assert facts["command"] == "medssl semi train --tiny"
    assert facts["splits"] == "labeled 1, unlabeled 1, val 1"
    assert f"torch {manifest['versions']['torch']}" in facts["versions"]
    assert [s.full_text() for s in tree.all("span") if "kind" in s.attrs.get("class", "")] == ["semi"]

    # one embedded PNG per learning-curve group, captioned with its metrics
    expected = _expected_groups(semi_run / "metrics.csv")
    curves = [f for f in tree.all("figure") if "curve" in f.attrs.get("class", "")]
    assert sorted(f.attrs["data-group"] for f in curves) == sorted(expected)
    for figure in curves:
        img = figure.all("img")[0]
        mime, data = data_uri_bytes(img.attrs["src"])
        width, height = png_size(data)
        assert mime == "image/png" and 400 <= width <= 1600 and 250 <= height <= 1200 and len(data) > 5000
        assert (int(img.attrs["width"]), int(img.attrs["height"])) == (width, height)
        caption = figure.all("figcaption")[0].full_text()
        assert caption.endswith(": " + ", ".join(expected[figure.attrs["data-group"]]))

    # the run's overlay figure, embedded byte for byte, with a caption
    overlays = sorted((semi_run / "eval_final" / "overlays").glob("*.png"))
    assert len(overlays) == 1
    figures = [f for f in tree.all("figure") if "curve" not in f.attrs.get("class", "")]
    assert len(figures) == 1
    _, data = data_uri_bytes(figures[0].all("img")[0].attrs["src"])
    assert data == overlays[0].read_bytes()
    assert overlays[0].stem in figures[0].all("figcaption")[0].full_text()
    # the run's own markdown summary is there, rendered
    assert "Segmentation evaluation" in blocks["eval_final/summary.md"].full_text()


def test_markdown_report_links_its_images(semi_run: Path, tmp_path: Path) -> None:
    out = build_report([semi_run], tmp_path / "report.md")
    text = out.read_text(encoding="utf-8")
    summary = json.loads((semi_run / "eval_final" / "summary.json").read_text())
    dice = summary["metrics"]["dice"]
    assert f"| eval_final | {dice['mean'] * 100:.2f} ± {dice['std'] * 100:.2f} |" in text
    assert (semi_run / "config.yaml").read_text().rstrip() in text
    links = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+)\)", text)
    assert len(links) == len(_expected_groups(semi_run / "metrics.csv")) + 1
    files = sorted(p.name for p in (tmp_path / "report_files").iterdir())
    assert files == sorted(Path(link).name for link in links)
    for link in links:
        width, height = png_size((tmp_path / link).read_bytes())
        assert width >= 300 and height >= 200
    overlay = next((semi_run / "eval_final" / "overlays").glob("*.png"))
    assert any((tmp_path / link).read_bytes() == overlay.read_bytes() for link in links)
    # a second report replaces the image folder; nothing temporary is left beside it
    build_report([semi_run], tmp_path / "report.md", smoothing=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "report_files"]


def _rows(table: Node) -> list[dict[str, Node]]:
    header = [th.full_text() for th in table.all("thead")[0].all("th")]
    return [dict(zip(header, tr.all("td"), strict=True)) for tr in table.all("tbody")[0].all("tr")]


def test_several_runs_get_a_comparison_table(semi_run: Path, tmp_path: Path) -> None:
    other = _classify_run(tmp_path / "runs" / "clf")
    empty = tmp_path / "runs" / "bare"
    (empty / "checkpoints").mkdir(parents=True)  # a run that has not logged anything yet
    out = build_report([semi_run, other, empty], tmp_path / "both.html")
    tree = parse_html(out.read_text(encoding="utf-8"))
    section = next(s for s in tree.all("section") if s.attrs.get("id") == "comparison")
    tables = {t.attrs["data-title"]: _rows(t) for t in section.all("table")}
    assert list(tables) == ["Semi-supervised segmentation", "Classification", "Runs without metrics"]
    (seg,) = tables["Semi-supervised segmentation"]
    dice = json.loads((semi_run / "eval_final" / "summary.json").read_text())["metrics"]["dice"]
    assert (seg["run"].full_text(), seg["evaluation"].full_text()) == ("corn_tiny", "eval_final")
    assert float(seg["Dice (%)"].attrs["data-value"]) == dice["mean"]
    assert seg["Dice (%)"].full_text() == f"{dice['mean'] * 100:.2f} ± {dice['std'] * 100:.2f}"
    clf = {r["evaluation"].full_text(): r for r in tables["Classification"]}
    assert list(clf) == ["results.json: best (selected on validation)", "results.json: final"]
    assert float(clf["results.json: final"]["accuracy"].attrs["data-value"]) == 0.625
    assert float(clf["results.json: best (selected on validation)"]["auroc"].attrs["data-value"]) == 0.8
    assert [(r["run"].full_text(), r["kind"].full_text()) for r in tables["Runs without metrics"]] == [
        ("bare", "unknown")]
    # the page order: comparison first, then one section per run
    ids = [s.attrs.get("id") for s in tree.all("section")]
    assert ids == ["comparison", "run1-corn_tiny", "run2-clf", "run3-bare"]


def test_cli_missing_or_foreign_run_exits_2_and_writes_nothing(semi_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "report.html"
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("hello")
    for bad in (tmp_path / "missing_run", tmp_path / "not_a_run"):
        with pytest.raises(SystemExit) as stop:
            main(["report", str(semi_run), str(bad), "--out", str(out)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.parent.exists()
    with pytest.raises(SystemExit) as stop:  # a format it cannot tell
        main(["report", str(semi_run), "--out", str(tmp_path / "report.pdf")])
    assert stop.value.code == 2 and "report.pdf" in capsys.readouterr().err
    assert not (tmp_path / "report.pdf").exists()

    main(["report", str(semi_run), "--out", str(out), "--title", "From the CLI", "--smooth", "0.6"])
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert "<h1>From the CLI</h1>" in out.read_text(encoding="utf-8")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    assert html.escape(str(semi_run.resolve())) in out.read_text(encoding="utf-8")
