"""paper.yaml of the reproductions: every table row and value of the seed reports, and schema validation."""

import copy
from pathlib import Path

import pytest
import yaml

from vis_core.report.paper import PaperFormatError, load_paper, parse_paper

ROOT = Path(__file__).resolve().parents[1]
OVIS = ROOT / "reproductions" / "ovis_2nd" / "paper.yaml"
LONG = ROOT / "reproductions" / "ytvis22_long_1st" / "paper.yaml"

# The tables exactly as printed in shared/seeds/001_f38532c8c0ee7a0a.txt and 000_a457d19c77267321.txt.
OVIS_TABLES = {
    "table1": (["mAP", "AP50", "AP75", "AR1", "AR10"], [
        ("q", ["49.56", "72.45", "54.12", "19.95", "55.93"]),
        ("Ours", ["47.75", "74.27", "49.90", "19.42", "54.87"]),
        ("tiantian.tt", ["47.35", "71.62", "50.49", "19.99", "54.99"]),
        ("weic", ["47.29", "74.23", "49.13", "19.18", "54.57"]),
        ("Yong", ["47.24", "74.10", "49.09", "19.18", "54.50"]),
    ]),
    "table2": (["mAP", "AP50", "AP75"], [
        ("Baseline", ["43.68", "65.19", "47.24"]),
        ("+Quality assessment", ["44.54", "68.38", "46.31"]),
        ("+Boundary branch", ["45.17", "67.55", "48.57"]),
        ("+BatchFormer", ["46.26", "68.88", "49.85"]),
        ("+Multi-scale", ["46.84", "73.64", "48.81"]),
        ("+Model ensemble", ["47.75", "74.27", "49.90"]),
    ]),
}
LONG_TABLES = {
    "table1": (["mAPL", "AP50L", "AP75L", "AR1L", "AR10L"], [
        ("Ours", ["42.9", "60.7", "46.8", "35.0", "51.4"]),
        ("Man", ["40.6", "58.4", "43.4", "34.0", "53.0"]),
        ("sjx", ["40.6", "60.7", "42.2", "32.6", "49.0"]),
        ("ID4", ["40.2", "61.1", "41.7", "32.6", "55.0"]),
        ("SakuraT", ["38.6", "57.8", "39.1", "34.1", "53.7"]),
    ]),
    "table2": (["mAPL", "AP50L", "AP75L"], [
        ("Baseline", ["39.45", "58.76", "42.06"]),
        ("+Quality assessment", ["40.58", "60.68", "42.17"]),
        ("+Boundary branch", ["41.65", "59.90", "44.56"]),
        ("+Model ensemble", ["42.9", "60.7", "46.8"]),
    ]),
}


@pytest.mark.parametrize("path, expected", [(OVIS, OVIS_TABLES), (LONG, LONG_TABLES)])
def test_every_row_and_value_verbatim(path, expected):
    paper = load_paper(path)
    assert [t.id for t in paper.tables] == list(expected)
    for table_id, (columns, rows) in expected.items():
        table = paper.table(table_id)
        assert list(table.columns) == columns
        assert [r.name for r in table.rows] == [name for name, _ in rows]
        for row, (_, printed) in zip(table.rows, rows, strict=True):
            assert list(row.printed) == printed  # the digits as printed, trailing zeros included
            assert list(row.values) == [float(p) for p in printed]


def test_exact_numbers_and_structure():
    ovis, long = load_paper(OVIS), load_paper(LONG)
    t2 = ovis.table("table2")
    batchformer = next(r for r in t2.rows if r.name == "+BatchFormer")
    assert batchformer.values[t2.columns.index("mAP")] == 46.26 and batchformer.variant == "batchformer"
    man = next(r for r in long.table("table1").rows if r.name == "Man")
    assert man.values[long.table("table1").columns.index("AR10L")] == 53.0
    assert ovis.table("table1").ours_row.name == "Ours" and ovis.final_variant == "ensemble"
    assert ovis.variants == ["baseline", "quality", "boundary", "batchformer", "multiscale", "ensemble"]
    assert long.variants == ["baseline", "quality", "boundary", "ensemble"]
    assert ovis.table("table1").metric_keys == ("AP", "AP50", "AP75", "AR1", "AR10")
    assert long.table("table2").metric_keys == ("AP", "AP50", "AP75")
    assert (ovis.dataset, ovis.split) == ("OVIS 2022", "test")
    assert long.dataset == "YouTube-VIS 2022 long videos"
    assert ovis.seed_file == "001_f38532c8c0ee7a0a.txt" and long.seed_file == "000_a457d19c77267321.txt"


def test_recipe_facts():
    for paper in (load_paper(OVIS), load_paper(LONG)):
        r = paper.recipe
        assert r["backbone"] == "Swin-L" and r["optimizer"] == "AdamW" and r["lr"] == 1e-4
        assert r["batch_size"] == 8 and r["test_short_side"] == 720
        assert r["train_short_sides"] == [320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640]
        assert r["idol"]["stage1_iters"] == 175000 and r["idol"]["stage2_iters"] == 40000
        assert "8x A100" in r["gpus"]
    ovis = load_paper(OVIS).recipe
    assert ovis["test_multiscale_short_sides"] == [720, 1080]
    assert ovis["minvis"]["stage1_epochs"] == 50 and ovis["minvis"]["stage1_batch_size"] == 16
    assert ovis["minvis"]["stage2_iters"] == 20000 and ovis["minvis"]["stage2_batch_size"] == 8
    assert "test_multiscale_short_sides" not in load_paper(LONG).recipe


def _doc():
    with open(OVIS, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _breaks(mutate, match):
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(PaperFormatError, match=match):
        parse_paper(doc, "x/paper.yaml")


def test_validation_errors_name_file_table_row_field():
    def short_row(d):
        d["tables"][1]["rows"][3]["values"] = [46.26, 68.88]

    _breaks(short_row, r"x/paper\.yaml: table 1 \(id 'table2'\), row 3 \('\+BatchFormer'\): field 'values': "
                       r"2 values for 3 columns")

    def percent_as_fraction(d):
        d["tables"][0]["rows"][0]["values"][4] = 559.3

    _breaks(percent_as_fraction, r"table 0 \(id 'table1'\), row 0 \('q'\): field 'values\[4\]'")

    def two_ours(d):
        d["tables"][0]["rows"][2]["ours"] = True

    _breaks(two_ours, r"table 0 \(id 'table1'\): a leaderboard needs exactly one row with 'ours: true', "
                      r"found 2")

    def typo(d):
        d["tables"][1]["rows"][0]["varaint"] = "baseline"

    _breaks(typo, r"row 0 \('Baseline'\): unknown field 'varaint'")

    def bad_kind(d):
        d["tables"][1]["kind"] = "ablations"

    _breaks(bad_kind, r"table 1 \(id 'table2'\): field 'kind'")

    def dup_row(d):
        d["tables"][1]["rows"][1]["name"] = "Baseline"

    _breaks(dup_row, r"row 1 \('Baseline'\): field 'name': duplicate")

    def keys_mismatch(d):
        d["tables"][0]["metric_keys"] = ["AP", "AP50"]

    _breaks(keys_mismatch, r"table 0 \(id 'table1'\): field 'metric_keys': 2 keys for 5 columns")

    def no_backbone(d):
        del d["recipe"]["backbone"]

    _breaks(no_backbone, r"recipe: missing field 'backbone'")

    def no_dataset(d):
        del d["report"]["dataset"]

    _breaks(no_dataset, r"report: missing field 'dataset'")


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(PaperFormatError, match="no such file"):
        load_paper(tmp_path / "paper.yaml")
    (tmp_path / "paper.yaml").write_text("report: [unclosed\n")
    with pytest.raises(PaperFormatError, match="paper.yaml: malformed YAML"):
        load_paper(tmp_path / "paper.yaml")
