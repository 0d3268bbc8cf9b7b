"""`sdd import` (issue 30, class 4): a percentage given as a fraction is refused naming its column (or read
with an explicit `--scale`), and a file that cannot be read as one table is a message naming the file and
the line or cell, never a traceback. Nothing is written when an import is refused."""

import json
import re
import zipfile
from pathlib import Path

import openpyxl
import pytest

from harness.importer import ImportError_, plan_import
from harness.registry import load_registry
from tests import worlds
from tests.test_import import mmseg_0x, mmseg_1x

FRACTIONS = [0.39, 0.40, 0.42, 0.37, 0.35]  # the mIoU: 39 ... 35 %, a drop of 4 points
EPOCHS = [10, 20, 30, 40, 50]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """A suite with every kind of percentage: mIoU (linear), AP (maskrcnn) and top-1 (knn)."""
    return worlds.registry_with_suite(
        tmp_path,
        monkeypatch,
        "imp",
        "name: imp\ntitle: imported\nmethods: [dino, mocov3]\ngrid:\n"
        "  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}\n"
        "  - {protocol: linear, datasets: [voc12_aug], epochs: [10, 20, 30, 40, 50]}\n"
        "  - {protocol: maskrcnn, datasets: [coco_instances], epochs: [50]}\n"
        "  - {protocol: knn, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}\n",
    )


def sdd_import(bench, path, *args):
    from harness.cli import main

    return main(["--registry", str(bench), "import", str(path), "--suite", "imp", *args])


def refused(bench, tmp_path, capsys, path, *args) -> str:
    """The import of `path` fails with a message (no traceback), and nothing is written."""
    assert sdd_import(bench, path, *args) == 1
    err = capsys.readouterr().err
    assert "nothing was imported" in err and "Traceback" not in err
    assert not (tmp_path / "results" / "imp" / "imported").exists()
    assert not list((tmp_path / "results").rglob("*.json"))
    return err


def plan(bench, tmp_path, path, **kw):
    return plan_import(load_registry(bench), "imp", path, tmp_path / "results", **kw)


def miou_csv(path: Path, values) -> Path:
    path.write_text(
        "method,epoch,dataset,mIoU\n" + "".join(f"dino,{e},voc12_aug,{v}\n" for e, v in zip(EPOCHS, values))
    )
    return path


# --------------------------------------------------------------------------------------------- percentages


def test_miou_given_as_fractions_is_refused_naming_the_column(bench, tmp_path, capsys):
    f = miou_csv(tmp_path / "miou.csv", FRACTIONS)
    err = refused(bench, tmp_path, capsys, f)
    assert f"{f}: column 'mIoU' holds mIoU, a percentage (0-100), but every value is <= 1" in err
    assert "rows 2, 3, 4, 5, 6: 0.39, 0.4, 0.42, 0.37, 0.35" in err and "--scale 100" in err
    # the fix: --scale 100 reads them as the percentages they are, and the record's source keeps the factor
    p = plan(bench, tmp_path, f, scale=100)
    got = {it.epoch: it.metrics["mIoU"] for it in p.items}
    assert got == {e: pytest.approx(v * 100) for e, v in zip(EPOCHS, FRACTIONS)}
    assert all(it.origins["mIoU"]["scale"] == 100 and it.origins["mIoU"]["column"] == "mIoU" for it in p.items)
    # --scale 1: they are percentages (a collapsed run's), taken as they are
    assert {it.epoch: it.metrics["mIoU"] for it in plan(bench, tmp_path, f, scale=1).items}[10] == 0.39
    # percentages are untouched: no scale in their source
    p = plan(bench, tmp_path, miou_csv(tmp_path / "pct.csv", [39.0, 40.0, 42.0, 37.0, 35.0]))
    assert {it.metrics["mIoU"] for it in p.items} == {39.0, 40.0, 42.0, 37.0, 35.0}
    assert not any("scale" in it.origins["mIoU"] for it in p.items)
    # a percentage read with --scale 100 is outside the domain, and the message says where it came from
    with pytest.raises(ImportError_, match=r"mIoU = 3900.0 is outside its domain.*read as the file's 39 x 100"):
        plan(bench, tmp_path, tmp_path / "pct.csv", scale=100)


def test_fractions_mixed_into_a_percentage_column_are_refused(bench, tmp_path, capsys):
    f = miou_csv(tmp_path / "mixed.csv", [39.0, 40.0, 0.42, 37.0, 0.35])
    err = refused(bench, tmp_path, capsys, f)
    assert "column 'mIoU' holds mIoU, a percentage (0-100): rows 4, 6 hold values <= 1 (0.42, 0.35)" in err
    assert "among percentages (row 2: 39)" in err
    # zeros are the same number in both units: a column of zeros is not refused
    assert len(plan(bench, tmp_path, miou_csv(tmp_path / "zero.csv", [0, 0, 0, 0, 0])).items) == 5


def test_top1_accuracy_given_as_fractions_in_a_long_table_is_refused(bench, tmp_path, capsys):
    f = tmp_path / "knn.csv"
    f.write_text(
        "method,epoch,dataset,metric,value\n" + "".join(f"dino,{e},imagenet,top1,0.7{e // 10}\n" for e in EPOCHS)
    )
    err = refused(bench, tmp_path, capsys, f)
    assert f"{f}: column 'value' (top1) holds top1, a percentage (0-100), but every value is <= 1" in err
    assert "0.71, 0.72" in err
    p = plan(bench, tmp_path, f, scale=100)
    assert sorted(it.metrics["top1"] for it in p.items) == pytest.approx([71.0, 72.0, 73.0, 74.0, 75.0])
    assert {it.protocol for it in p.items} == {"knn"}


def test_an_xlsx_of_fractions_is_refused_as_a_csv_is(bench, tmp_path, capsys):
    wb = openpyxl.Workbook()
    wb.active.append(["method", "epoch", "dataset", "mIoU"])
    for e, v in zip(EPOCHS, FRACTIONS):
        wb.active.append(["dino", e, "voc12_aug", v])
    wb.save(tmp_path / "miou.xlsx")
    err = refused(bench, tmp_path, capsys, tmp_path / "miou.xlsx")  # a table, not the official DSE sheet
    assert "column 'mIoU' holds mIoU, a percentage (0-100), but every value is <= 1" in err


def test_an_mmseg_1x_log_of_fractions_is_refused_and_a_0x_log_is_read_as_its_format_says(bench, tmp_path, capsys):
    args = ["--method", "dino", "--epoch", "10", "--dataset", "voc12_aug"]
    run = tmp_path / "seg1x"
    d = run / "20250101_000000" / "vis_data"
    d.mkdir(parents=True)
    (d / "scalars.json").write_text(json.dumps({"aAcc": 0.8, "mIoU": 0.39, "mAcc": 0.5, "step": 40000}) + "\n")
    err = refused(bench, tmp_path, capsys, run, *args)
    assert "scalars.json:1: every percentage of this evaluation is <= 1 (mIoU 0.39, aAcc 0.8, mAcc 0.5)" in err
    assert "mmseg 1.x writes percentages" in err and "--scale 100" in err
    reg_kw = dict(method="dino", epoch=10, dataset="voc12_aug")
    (it,) = plan(bench, tmp_path, run, scale=100, **reg_kw).items
    assert it.metrics["mIoU"] == pytest.approx(39.0) and it.origins["mIoU"]["scale"] == 100
    # a collapsed run's mIoU below 1 % with its pixel accuracy in percent is a percentage: accepted as is
    (it,) = plan(bench, tmp_path, mmseg_1x(tmp_path / "low", 0.6), **reg_kw).items
    assert it.metrics["mIoU"] == 0.6 and it.metrics["aAcc"] == 80.0 and "scale" not in it.origins["mIoU"]
    # 0.x logs hold fractions: read x 100 (per-class IoU too), and the source says so
    (it,) = plan(bench, tmp_path, mmseg_0x(tmp_path / "old", 0.39), **reg_kw).items
    assert it.metrics["mIoU"] == pytest.approx(39.0) and it.metrics["IoU"]["aeroplane"] == pytest.approx(39.0)
    assert it.metrics["IoU"]["person"] == pytest.approx(90.0) and it.origins["IoU"]["scale"] == 100


def test_a_detectron2_evaluation_of_fractions_is_refused(bench, tmp_path, capsys):
    run = tmp_path / "d2"
    run.mkdir()
    entry = {"iteration": 89999, "bbox/AP": 0.405, "bbox/AP50": 0.61, "segm/AP": 0.362, "segm/AP50": 0.58}
    (run / "metrics.json").write_text(json.dumps(entry) + "\n")
    args = ["--method", "dino", "--epoch", "50", "--dataset", "coco_instances"]
    err = refused(bench, tmp_path, capsys, run, *args)
    assert "metrics.json:1: every percentage of this evaluation is <= 1" in err and "detectron2" in err
    (it,) = plan(bench, tmp_path, run, scale=100, method="dino", epoch=50, dataset="coco_instances").items
    assert it.metrics["segm_AP"] == pytest.approx(36.2) and it.metrics["bbox_AP50"] == pytest.approx(61.0)
    # a weak run's small-object AP below 1 beside APs in percent is not a fraction
    entry = {"iteration": 89999, "bbox/AP": 12.0, "bbox/APs": 0.4, "segm/AP": 10.0, "segm/APs": 0.3}
    (run / "metrics.json").write_text(json.dumps(entry) + "\n")
    assert sdd_import(bench, run, *args, "--dry-run") == 0


def test_scale_is_refused_where_it_means_nothing(bench, tmp_path):
    f = tmp_path / "dse.csv"
    f.write_text("method,epoch,dse,w2\ndino,10,1.0,0.5\n")
    with pytest.raises(ImportError_, match=r"dse\.csv: --scale applies to percentages .* gives none \(dse, w2\)"):
        plan(bench, tmp_path, f, scale=100)
    with pytest.raises(ImportError_, match=r"--scale 7: expected 100 .* or 1"):
        plan(bench, tmp_path, miou_csv(tmp_path / "m.csv", FRACTIONS), scale=7)
    sheet = tmp_path / "official.csv"
    sheet.write_text("epoch,Layer 11 DSE Metric\n10,1.5\n")
    with pytest.raises(ImportError_, match="a spreadsheet file gives DSE values"):
        plan(bench, tmp_path, sheet, method="dino", scale=100)


# --------------------------------------------------------------------------------------------- parse errors

HEADER = "method,epoch,dataset,mIoU\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"the file is empty \(0 bytes\)"),  # pandas: IndexError in detect, EmptyDataError in read_csv
        (b"\xef\xbb\xbf", r"the file is empty|holds no text \(only a byte-order mark"),
        (b"\xef\xbb\xbf\n\n", r"holds no text \(only a byte-order mark and blank space\)"),
        (HEADER.encode(), r"no data rows \(only the header: method, epoch, dataset, mIoU\)"),
        (  # a ragged row (pandas: ParserError)
            (HEADER + "dino,10,voc12_aug,39.0\ndino,20,voc12_aug,40.0,x\n").encode(),
            r":3: 5 fields where the header has 4 .* a value holding the comma\? quote it",
        ),
        (  # a row with a value missing, separator and all
            (HEADER + "dino,10,voc12_aug,39.0\ndino,20,voc12_aug\n").encode(),
            r":3: 3 fields where the header has 4 .* a missing value\?",
        ),
        (  # unquoted decimal commas on every row (pandas took the first column as the index: TypeError)
            (HEADER + "dino,10,voc12_aug,39,5\ndino,20,voc12_aug,40,1\n").encode(),
            r":2: 5 fields where the header has 4 .* an unquoted decimal comma \(39,5\)\? .* \(39\.5\)",
        ),
        (  # a quoted decimal comma
            (HEADER + 'dino,10,voc12_aug,"39,5"\n').encode(),
            r"row 2, column 'mIoU': '39,5' is not a number \(a decimal comma\?\); .* 39\.5",
        ),
        (  # a header that splits on commas and on semicolons, rows that agree with both
            b"method;epoch,x;y\na;1,2;3\n",
            r"its header splits on commas \(2 columns\) and semicolons \(3 columns\)",
        ),
        ((HEADER + "dino,10,voc12_aug,39.0,caf\xe9\n").encode("latin-1"), r"not UTF-8 text \(byte 0xe9"),
        (b"PK\x03\x04\x14\x00rest of a zip", r"a zip archive, not text \(an \.xlsx workbook under another name"),
        ("method,epoch,dataset,mIoU\n".encode("utf-16"), r"UTF-16 text; save it as UTF-8"),
        (  # a column with values but no name
            (HEADER.strip() + ",\n" + "dino,10,voc12_aug,39.0,7\n").encode(),
            r"column 5 has no name in the header \(row 1\) but holds values \(row 2: '7'\)",
        ),
    ],
)
def test_a_file_that_is_not_one_table_is_a_message_naming_it(bench, tmp_path, capsys, content, message):
    f = tmp_path / "scores.csv"
    f.write_bytes(content)
    err = refused(bench, tmp_path, capsys, f)
    assert str(f) in err and re.search(message, err), err


def test_a_semicolon_or_tab_separated_file_is_read_and_says_so(bench, tmp_path, capsys):
    f = tmp_path / "semi.csv"
    f.write_text("method;epoch;dataset;mIoU\n" + "".join(f"dino;{e};voc12_aug;{40 + e / 10:.1f}\n" for e in EPOCHS))
    assert sdd_import(bench, f, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "note: semi.csv: read as semicolon-separated" in out and "would import 5 record(s)" in out
    # Excel's European CSV: semicolons and decimal commas, read as decimals (and said)
    f.write_text("method;epoch;dataset;mIoU\n" + "".join(f"dino;{e};voc12_aug;{40 + e // 10},5\n" for e in EPOCHS))
    p = plan(bench, tmp_path, f)
    assert sorted(it.metrics["mIoU"] for it in p.items) == [41.5, 42.5, 43.5, 44.5, 45.5]
    assert any("5 number(s) with a decimal comma read as decimals (line 2: '41,5' -> 41.5)" in n for n in p.notes)
    # ... but not when the file writes decimals both ways
    f.write_text("method;epoch;dataset;mIoU\ndino;10;voc12_aug;41,5\ndino;20;voc12_aug;42.5\n")
    err = refused(bench, tmp_path, capsys, f)
    assert "decimal commas (line 2: '41,5') and decimal points (line 3: '42.5')" in err
    t = tmp_path / "tab.tsv"
    t.write_text("method\tepoch\tdse\ndino\t10\t1.5\n")
    p = plan(bench, tmp_path, t)
    assert p.items[0].metrics["dse"] == 1.5 and any("read as tab-separated" in n for n in p.notes)


def test_empty_rows_and_trailing_separators_are_not_values(bench, tmp_path):
    f = tmp_path / "gaps.csv"
    f.write_text("method,epoch,dse,w2,\n\ndino,10,1.0,,\ndino,20,2.0,0.5,,\n")
    p = plan(bench, tmp_path, f)
    got = {it.epoch: it.metrics for it in p.items}
    assert got == {10: {"dse": 1.0}, 20: {"dse": 2.0, "w2": 0.5}}
    assert p.items[0].origins["dse"]["row"] == 3  # the file's own line, blank line counted
    assert any("1 empty cell(s) are not values and were left out: row 3 w2" in n for n in p.notes)


def test_the_official_sheet_without_an_epoch_column_refuses_an_empty_row(bench, tmp_path, capsys):
    f = tmp_path / "official.csv"
    f.write_text("Layer 11 DSE Metric\n1.5\n\n2.5\n")  # the empty row would shift epoch 30 to 20
    err = refused(bench, tmp_path, capsys, f, "--method", "dino")
    assert "row 3 is empty, and with no epoch column the rows are the epochs" in err


def _formula_workbook(path: Path, cached: str | None) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["method", "epoch", "dataset", "mIoU"])
    ws.append(["dino", 10, "voc12_aug", 39.5])
    ws.append(["dino", 20, "voc12_aug", "=B3*2"])  # what openpyxl (or pandas) writes: no cached value
    wb.save(path)
    if cached is not None:  # what Excel writes: the formula and the value it computed
        with zipfile.ZipFile(path) as z:
            parts = {n: z.read(n) for n in z.namelist()}
        sheet = "xl/worksheets/sheet1.xml"
        xml = parts[sheet].decode()
        xml, n = re.subn(r"<f>B3\*2</f>(<v\s*/>|<v></v>)?", f"<f>B3*2</f><v>{cached}</v>", xml)
        assert n == 1, xml
        parts[sheet] = xml.encode()
        with zipfile.ZipFile(path, "w") as z:
            for name, data in parts.items():
                z.writestr(name, data)
    return path


def test_an_xlsx_formula_without_a_cached_value_is_named(bench, tmp_path, capsys):
    f = _formula_workbook(tmp_path / "scores.xlsx", None)
    err = refused(bench, tmp_path, capsys, f)
    assert f"{f}: cell D3 holds a formula (=B3*2) with no cached value" in err
    assert "open and save it in Excel/LibreOffice, or export CSV" in err
    # with the value Excel cached, the cell is that value
    p = plan(bench, tmp_path, _formula_workbook(tmp_path / "cached.xlsx", "40"))
    assert sorted(it.metrics["mIoU"] for it in p.items) == [39.5, 40.0]
    assert {it.epoch: it.origins["mIoU"]["row"] for it in p.items} == {10: 2, 20: 3}


def test_a_damaged_or_empty_workbook_is_a_message(bench, tmp_path, capsys):
    f = tmp_path / "scores.xlsx"
    f.write_bytes(b"")
    assert "the file is empty (0 bytes)" in refused(bench, tmp_path, capsys, f)
    f.write_text("method,epoch,dse\ndino,10,1.0\n")  # a CSV under an .xlsx name
    assert "not a readable .xlsx workbook" in refused(bench, tmp_path, capsys, f)
    wb = openpyxl.Workbook()
    wb.active.append(["method", "epoch", "dse"])
    wb.save(f)
    assert "no data rows (only the header: method, epoch, dse)" in refused(bench, tmp_path, capsys, f)
    openpyxl.Workbook().save(f)
    assert "its first sheet, 'Sheet', is empty" in refused(bench, tmp_path, capsys, f)
    x = tmp_path / "old.xls"
    x.write_bytes(b"\xd0\xcf\x11\xe0 an OLE2 file")
    assert "an Excel 97-2003 workbook (.xls); save it as .xlsx or export CSV" in refused(bench, tmp_path, capsys, x)
    pq = tmp_path / "scores.parquet"
    pq.write_bytes(b"not parquet at all")
    err = refused(bench, tmp_path, capsys, pq)  # with pyarrow: its own error; without: what to install
    assert re.search(r"scores\.parquet: (not a readable Parquet file|reading Parquet needs pyarrow)", err)


def test_an_empty_or_damaged_log_is_a_message(bench, tmp_path, capsys):
    args = ["--method", "dino", "--epoch", "10", "--dataset", "voc12_aug"]
    run = tmp_path / "seg"
    d = run / "20250101_000000" / "vis_data"
    d.mkdir(parents=True)
    (d / "scalars.json").write_bytes(b"")
    assert "scalars.json: the file is empty (0 bytes)" in refused(bench, tmp_path, capsys, run, *args)
    (d / "scalars.json").write_text('{"aAcc": 80.0, "mIoU": "n/a", "step": 10}\n{"mIoU": 40.0, "step": 20}\n')
    err = refused(bench, tmp_path, capsys, run, *args, "--take", "best")
    assert "iteration 10, mIoU: 'n/a' is not a number" in err


def test_the_camera_ready_name_dqe_is_read_as_dse(bench, tmp_path):
    """The NeurIPS camera-ready of the SDD paper calls DSE "DQE": a sheet written with that name imports."""
    f = tmp_path / "dqe.csv"
    f.write_text("method,epoch,DQE\n" + "".join(f"dino,{e},{1 + e / 100}\n" for e in EPOCHS))
    p = plan(bench, tmp_path, f)
    assert sorted(it.metrics["dse"] for it in p.items) == [1.1, 1.2, 1.3, 1.4, 1.5]
