"""Number formatting, metric tables from JSON / CSV, and the markdown subset rendered to HTML."""

from __future__ import annotations

from pathlib import Path

from medssl.report.markup import markdown_to_html
from medssl.report.summary import Value, format_number
from medssl.report.tables import csv_table, evaluation_table, is_evaluation_summary, json_tables


def test_value_text() -> None:
    assert Value(0.86123, 0.034, 16, 100.0).text() == "86.12 ± 3.40"
    assert Value(9.8489, 2.0).text() == "9.85 ± 2.00"
    assert Value(0.0123, 0.00456).text() == "0.0123 ± 0.0046"
    assert Value(12.0, integer=True).text() == "12" and Value(1872544.0, integer=True).text() == "1,872,544"
    assert Value(12.0).text() == "12.00" and Value(1.0).text() == "1.0000" and Value(0.0).text() == "0.0000"
    assert Value(123.456).text() == "123.5" and Value(2.5e-5).text() == "2.5e-05"
    assert Value(None).text() == "n/a" and Value(float("nan")).text() == "n/a"
    assert format_number(float("inf")) == "∞" and format_number(0.5, 3) == "0.500"


def test_evaluation_summaries_become_one_table() -> None:
    a = {"metrics": {"dice": {"mean": 0.8, "std": 0.1, "n": 4}, "hd95_vox": {"mean": 5.0, "std": 1.0, "n": 4},
                     "extra_score": {"mean": 0.25, "std": 0.0, "n": 4}},
         "units": {"extra_score": "fraction"}, "n_cases": 4, "n_labeled": 4, "n_empty_predictions": 1,
         "empty_prediction_cases": ["c3"], "checkpoint": "/x/checkpoints/final.pt", "std": "ddof=0"}
    b = {"metrics": {"dice": {"mean": 0.7, "std": 0.2, "n": 2}}}
    assert is_evaluation_summary(a) and is_evaluation_summary(b)
    assert not is_evaluation_summary({"metrics": {"dice": 0.5}})
    table = evaluation_table([("eval_final", a), ("eval_best", b)])
    assert table.columns == ["evaluation", "Dice (%)", "95HD (vox)", "extra_score (%)"]
    assert table.rows[0] == ["eval_final", Value(0.8, 0.1, 4, 100.0), Value(5.0, 1.0, 4), Value(0.25, 0.0, 4, 100.0)]
    assert table.rows[1] == ["eval_best", Value(0.7, 0.2, 2, 100.0), "—", "—"]
    assert table.notes[0] == ("eval_final: 4 case(s), 4 with ground truth; empty predictions: 1 (c3); "
                              "checkpoint final.pt")
    assert table.notes[-1] == "mean ± std: ddof=0"


def test_results_sections_that_share_nothing_get_their_own_tables() -> None:
    data = {"train": {"images": 10}, "timing": {"seconds": 2.5}, "note": "x", "flag": True}
    tables, headlines = json_tables("Stats", "stats.json", data)
    assert [t.title for t in tables] == ["Stats: train", "Stats: timing"]
    assert tables[0].rows == [["images", Value(10.0, integer=True)]]
    assert tables[0].notes == ["note: x", "flag: yes"]
    assert headlines == []
    nested = {"metrics": {"best": {"accuracy": 0.9}, "final": {"accuracy": 0.8}}}
    (table,), heads = json_tables("Results", "results.json", nested)
    assert table.columns == ["metric", "best (selected on validation)", "final"]
    assert table.rows == [["accuracy", Value(0.9), Value(0.8)]]
    assert [h.values for h in heads] == [{"accuracy": Value(0.9)}, {"accuracy": Value(0.8)}]


def test_results_with_val_and_test_blocks_become_columns() -> None:
    """The shape fine-tuning runs write: best / final sections holding val and test metric blocks, plus
    facts about the data (splits) that are numbers too but not results."""
    data = {
        "task": "classification", "epochs": 2, "peak_lr": 0.001,
        "splits": {"train": {"n": 10}, "val": {"n": 4}, "test": None},
        "normalization": {"mean": [0.4], "in_chans": 1},
        "best": {"label": "best (selected on validation)", "epoch": 1, "checkpoint": "checkpoints/best.pt",
                 "val": {"accuracy": 0.75, "auroc": 0.8}},
        "final": {"label": "final epoch", "epoch": 2, "val": {"accuracy": 0.5, "auroc": 0.7},
                  "test": {"accuracy": 0.6, "auroc": 0.65, "f1": 0.5}},
    }
    tables, headlines = json_tables("Results", "results.json", data)
    results = tables[0]
    assert results.title == "Results" and not results.collapsed
    assert results.columns == ["metric", "best (selected on validation) · val", "final epoch · val",
                               "final epoch · test"]
    assert results.rows == [
        ["accuracy", Value(0.75), Value(0.5), Value(0.6)],
        ["auroc", Value(0.8), Value(0.7), Value(0.65)],
        ["f1", "—", "—", Value(0.5)],
        ["epoch", Value(1.0, integer=True), Value(2.0, integer=True), Value(2.0, integer=True)],
    ]
    assert [h.source for h in headlines] == ["results.json: " + c for c in results.columns[1:]]
    assert headlines[2].values == {"accuracy": Value(0.6), "auroc": Value(0.65), "f1": Value(0.5)}
    facts = tables[1]
    assert facts.title == "Results: run facts"
    assert facts.rows == [["epochs", Value(2.0, integer=True)], ["peak_lr", Value(0.001)]]
    assert facts.notes == ["task: classification"]
    assert [(t.title, t.collapsed) for t in tables[2:]] == [
        ("Results: splits · train, splits · val", True), ("Results: normalization", True)]


def test_csv_table_keeps_text_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics_per_case.csv"
    path.write_text("case_id,dice,empty_pred\n" + "".join(f"c{i},0.{i},false\n" for i in range(1, 6)))
    table = csv_table("Per-case metrics", "metrics_per_case.csv", path, max_rows=3)
    assert table.columns == ["case_id", "dice", "empty_pred"] and table.collapsed
    assert table.rows == [["c1", Value(0.1), "false"], ["c2", Value(0.2), "false"], ["c3", Value(0.3), "false"]]
    assert csv_table("t", "x.csv", path).rows[4] == ["c5", Value(0.5), "false"]
    assert table.notes == ["first 3 of 5 rows"]


def test_markdown_subset_to_html_is_escaped() -> None:
    text = ("# Title <b>\n\n| | Dice (%) |\n|---|---|\n| mean ± std | 86.1 ± 3.4 |\n\n"
            "- **bold** and `a<b` and *it*\n- two\n\nplain <script>x</script>\nmore\n\n```\n<raw>\n```\n")
    out = markdown_to_html(text, heading_offset=2)
    assert out.splitlines() == [
        "<h3>Title &lt;b&gt;</h3>",
        "<table><thead><tr><th></th><th>Dice (%)</th></tr></thead><tbody><tr><td>mean ± std</td>"
        "<td>86.1 ± 3.4</td></tr></tbody></table>",
        "<ul><li><strong>bold</strong> and <code>a&lt;b</code> and <em>it</em></li><li>two</li></ul>",
        "<p>plain &lt;script&gt;x&lt;/script&gt; more</p>",
        "<pre><code>&lt;raw&gt;</code></pre>",
    ]
