"""`sdd import`: numbers a researcher already has, as records of a suite, joined into the same tables.

Formats (detected when not given):
- dse-official: the tree the official `get_DSE.py` writes,
  `<save_root>/DSE_<dataset>/_<kl>local_clusters_<kg>global_clusters_<n>th_layer_datapercent_<p>[_normalized]_bs_<b>/
  epoch_<N>/metrics_epoch_<N>.txt`, one `Layer <L> <quantity>: <value>` line per layer and quantity;
- spreadsheet: the `.xlsx` (or `.csv`) the official README asks users to compile: `Layer <L> <quantity>`
  columns, one row per checkpoint, an `epoch` column or the official convention row i -> epoch (i+1)*10;
- csv / parquet: wide or long (`metric`, `value`) tables with `method`, `epoch` and metric columns: the
  names (or import aliases) of the metrics each protocol kind declares in `harness.kinds`, e.g. `dse`,
  `w2`, `mIoU`, `segm_AP`, `J&F`, `top1`; downstream rows also need `dataset`;
- mmseg: one run's work directory (1.x `vis_data/scalars.json`, 0.x `<stamp>.log.json`): a validation
  mIoU (per-class IoU when logged, which must cover the dataset's classes);
- detectron2: a run's `metrics.json`: bbox / segm AP of one evaluation.

What is refused, with the file and line or row, nothing written: a value that is not a finite number in
its metric's domain (a fraction where a percentage belongs, a NaN), a fractional epoch, a metric the
target protocol's kind does not produce (an mIoU under a metrics protocol), the same metric twice for one
cell, two columns that differ only in case, a per-class log of another class count than the dataset's,
an epoch the suite's grid does not hold or the method file does not list (unless `--allow-outside-grid`:
recorded as outside the grid, with why, and the tables keep it out unless `--include-outside-grid`), a
log with several evaluations unless `--take last|best|iter N` says which, and an ambiguous protocol (the
suite runs several protocols that report that metric: give `--protocol`). Empty cells of a wide table
are not values: they are left out and listed.

The protocol: the one named (`--protocol`, or a table's `protocol` column), else the suite's one protocol
of a kind that reports the metric, and then a note says which and how to name another. A protocol named
may be one of the registry that the suite does not run (an mIoU of your own earlier `linear` probe into a
suite of `linear_mini`) when its kind's tables keep each protocol apart (`OUTSIDE_SUITE_ROLES`: probe,
dense, classification): its records sit under `imported/<protocol>/`, are marked `outside_suite`, get
their own tables (`<table>__<protocol>`) or columns, and are never planned or run. Label-free and
image-level numbers of a protocol outside the suite are refused: those tables read one series per method.

A percentage (a metric whose kind declares the domain [0, 100]: mIoU, aAcc, top-1, AP, ...) given as
fractions is refused: a table column whose non-zero values are all <= 1 (or that mixes values <= 1 with
percentages), and a log evaluation (mmseg 1.x, detectron2) whose percentages are all <= 1. `--scale 100`
multiplies them by 100, `--scale 1` takes them as they are; the record's source keeps the factor. mmseg 0.x
logs hold fractions and are read x 100 by their format.

A file that cannot be read as one table is refused naming the file, line or cell: an empty file (0
bytes, only a byte-order mark, only a header), a row with more or fewer fields than the header (an unquoted
decimal comma), text that is not UTF-8, a header whose separator is not clear, an xlsx formula without a
cached value, a damaged workbook or Parquet file. Semicolon- and tab-separated files are read as such (and
their decimal commas, unless the file also writes decimal points), and the notes say so.

Imports merge per metric: DSE from the official tree and W2 from a CSV for the same checkpoints become
one imported record per cell, each metric keeping its own source (file, sha256, line or row). Only the
same metric twice needs `--replace`, which replaces that metric alone.

An imported record sits apart from computed ones (`results/<suite>/imported/...`). It is never run again:
`plan` and `submit` count its cell as imported; the tables prefer a computed record of the same cell,
mark every number that came from an import and name its cells and files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.errors import HarnessError
from harness.kinds import CLASSIFICATION, DENSE, METRICS_KIND, PROBE, PROTOCOL_KINDS, Metric
from harness.registry import Registry

FORMATS = ("dse-official", "spreadsheet", "csv", "mmseg", "detectron2")
TAKE_HELP = "last, best, or iter N"

# the official estimator's quantities (file lines and spreadsheet columns) -> the harness's metric names
DSE_QUANTITIES = {
    "dse metric (original)": "dse",
    "dse metric": "dse",
    "inter-class distance": "dse_inter",
    "intra-class radius (image)": "dse_intra_image",
    "effective dimensionality": "dse_dim",
    "intra-class radius (batch)": "dse_intra_batch",
}
SEPARABILITY_PARTS = ("dse_inter", "dse_intra_image", "dse_intra_batch")
ID_COLUMNS = ("method", "epoch", "protocol", "dataset", "suite")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".xlsx", ".xlsm", ".xls")
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}  # a text table's column separators, by name
DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")  # 0,39
DECIMAL_POINT = re.compile(r"^\s*[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?\s*$")  # 0.39
SCALES = (1.0, 100.0)  # --scale: 100 = the file's percentages are fractions; 1 = they are percentages, even <= 1
# The roles whose tables keep each protocol's numbers apart (harness.analysis: a `<table>__<protocol>` set per
# probe protocol; a column per protocol in the dense and classification tables). Numbers of a protocol of the
# registry that the suite does not run (`--protocol linear` into a suite of `linear_mini`) can be imported
# for these kinds only: the label-free and image-level tables read one series per method, which such a
# protocol's numbers would join unmarked.
OUTSIDE_SUITE_ROLES = (PROBE, DENSE, CLASSIFICATION)


class ImportError_(HarnessError):
    """Nothing was imported; the message names the file, the line or row, and the fix."""


@dataclass
class Item:
    """The values one file gives one cell, each metric with where it came from."""

    protocol: str
    dataset: str
    method: str
    epoch: int
    metrics: dict
    origins: dict  # metric -> {"file", "line" | "row" [, "column"]}
    details: dict = field(default_factory=dict)
    outside_grid: bool = False
    outside_of: str = ""  # with outside_grid: "the suite's grid" or "the method file's epochs"
    outside_why: str = ""  # with outside_grid: why, in a sentence (kept in the record)
    outside_suite: bool = False  # a protocol of the registry that the suite does not run

    @property
    def key(self) -> tuple:
        return self.protocol, self.dataset, self.method, self.epoch

    def where(self, metric: str | None = None) -> str:
        o = self.origins[metric] if metric else next(iter(self.origins.values()))
        return _where(o)


def _where(origin: dict) -> str:
    text = origin.get("file", "?")
    if "line" in origin:
        text += f":{origin['line']}"
    if "row" in origin:
        text += f": row {origin['row']}"
    if "column" in origin:
        text += f", column {origin['column']!r}"
    return text


def sha256(path: Path) -> str:
    from harness.fingerprint import sha256_of

    return sha256_of(path)


def imported_path(results: Path, suite: str, protocol: str, dataset: str, method: str, epoch: int) -> Path:
    return records.record_path(results, suite, protocol, dataset, method, epoch, tree="imported")


def detect(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        if any(path.rglob("metrics_epoch_*.txt")):
            return "dse-official"
        if any(path.rglob("vis_data/scalars.json")) or any(path.glob("*.log.json")):
            return "mmseg"
        if (path / "metrics.json").is_file():
            return "detectron2"
    elif path.name == "metrics.json":
        return "detectron2"
    elif path.suffix in TABLE_SUFFIXES:
        # the official spreadsheet has 'Layer <L> <quantity>' columns; any other table is read as a csv one
        # (reading the header refuses an empty or unreadable file with its own message)
        columns = _read_frame(path).columns
        return "spreadsheet" if any(re.match(r"Layer \d+ ", str(c).strip()) for c in columns) else "csv"
    raise ImportError_(
        f"{path}: cannot tell its format (a dse-official tree, a .xlsx/.csv, an mmseg work "
        f"directory or a detectron2 metrics.json); give --format one of {', '.join(FORMATS)}"
    )


def _number(value, where: str) -> float:
    if isinstance(value, str) and not value.strip():
        raise ImportError_(f"{where}: empty; give a value or remove the row")
    if isinstance(value, str) and DECIMAL_COMMA.match(value):
        raise ImportError_(
            f"{where}: {value!r} is not a number (a decimal comma?); write it with a decimal point, "
            f"{value.strip().replace(',', '.')}"
        )
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ImportError_(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise ImportError_(f"{where}: {value!r} is not a finite number; remove the row or fix the value")
    return v


def _epoch(value, where: str) -> int:
    v = _number(value, f"{where}, epoch")
    if v != int(v) or v < 0:
        raise ImportError_(
            f"{where}: epoch {value!r} is not a whole number of epochs; checkpoints are numbered by "
            f"completed epochs (a fractional epoch would be truncated to another checkpoint)"
        )
    return int(v)


def _empty(value) -> bool:
    """An empty cell of a table read as text (not a value; "nan" is a value, and refused)."""
    return value is None or not str(value).strip()


def is_percent(metric: Metric) -> bool:
    """A metric measured in percent (mIoU, aAcc, top-1, AP, ...): its kind declares its domain as [0, 100]."""
    return metric.low == 0 and metric.high == 100


def _rows_text(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:6])) + (f" ... {rows[-1]}" if len(rows) > 6 else "")


def _values_text(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values[:5]) + (" ..." if len(values) > 5 else "")


SCALE_FIX = "--scale 100 multiplies them by 100 (fractions); --scale 1 takes them as they are (percentages below 1)"


def _percent_columns(path: Path, found: dict, scale: float | None) -> None:
    """The percentages a table gives, by column: `found` maps (column, metric) -> [(row, value, item)].

    With `scale` every value is multiplied by it (and the origin records the factor). Without, a column
    whose non-zero values are all <= 1 is refused (fractions: 0.39 would be recorded as 0.39 %, and a drop
    of 4 points as one of 0.04), and so is a column that mixes values <= 1 with percentages."""
    if scale is not None:
        for (_, name), hits in found.items():
            for _, value, it in hits:
                it.metrics[name] = value * scale
                it.origins[name]["scale"] = scale
        return
    for (column, name), hits in found.items():
        small = [(r, v) for r, v, _ in hits if 0 < v <= 1]
        if not small:
            continue
        large = [(r, v) for r, v, _ in hits if v > 1]
        col = f"column {column!r}" + ("" if column.strip().lower() == name.lower() else f" ({name})")
        rows = ("rows " if len(small) > 1 else "row ") + _rows_text([r for r, _ in small])
        values = _values_text([v for _, v in small])
        if not large:
            raise ImportError_(
                f"{path}: {col} holds {name}, a percentage (0-100), but every value is <= 1 ({rows}: "
                f"{values}): fractions? {SCALE_FIX}"
            )
        raise ImportError_(
            f"{path}: {col} holds {name}, a percentage (0-100): {rows} hold values <= 1 ({values}) among "
            f"percentages (row {large[0][0]}: {large[0][1]:g}): fractions mixed in? write them as percentages "
            f"(or --scale 1 if they are percentages below 1)"
        )


def _fractions_in_evaluation(where: str, values: dict, writer: str) -> None:
    """One logged evaluation whose percentages are all <= 1 (and not all 0): the log is not what its
    writer writes (percentages), and which unit it holds is not a guess to make."""
    flat = [x for v in values.values() for x in (v.values() if isinstance(v, dict) else [v])]
    if flat and all(x <= 1 for x in flat) and any(x > 0 for x in flat):
        shown = ", ".join(f"{k} {v:g}" for k, v in values.items() if not isinstance(v, dict))
        raise ImportError_(
            f"{where}: every percentage of this evaluation is <= 1 ({shown}) where {writer} writes "
            f"percentages (0-100): fractions? {SCALE_FIX}"
        )


# --------------------------------------------------------------------------------------------- reading files


def _text_of(path: Path) -> str:
    """A text file's content, or a refusal saying why it holds no text to read."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ImportError_(f"{path}: cannot be read ({e.strerror or e})") from None
    if not raw:
        raise ImportError_(f"{path}: the file is empty (0 bytes)")
    if raw.startswith(b"PK\x03\x04"):
        raise ImportError_(f"{path}: a zip archive, not text (an .xlsx workbook under another name? name it .xlsx)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportError_(f"{path}: UTF-16 text; save it as UTF-8 (Excel: 'CSV UTF-8')")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ImportError_(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8 "
            f"(Excel: 'CSV UTF-8')"
        ) from None
    if "\x00" in text:
        raise ImportError_(f"{path}: holds NUL bytes: not a text file")
    if not text.strip():
        bom = "a byte-order mark and " if raw.startswith(b"\xef\xbb\xbf") else ""
        raise ImportError_(f"{path}: holds no text (only {bom}blank space)")
    return text


def _separator(path: Path, text: str) -> str:
    """The column separator of a text table: the one its header splits on (comma, semicolon or tab); when
    it splits on several, the one every row agrees with; refused when that is not clear."""
    header = next(line for line in text.splitlines() if line.strip())
    width = {s: len(next(csv.reader([header], delimiter=s))) for s in SEPARATORS}
    fits = [s for s, n in width.items() if n > 1]
    if len(fits) <= 1:
        return fits[0] if fits else ","

    def agrees(sep: str) -> bool:
        try:
            rows = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
            return all(len(r) == width[sep] for r in rows if any(f.strip() for f in r))
        except csv.Error:
            return False

    agreed = [s for s in fits if agrees(s)]
    if len(agreed) == 1:
        return agreed[0]
    names = " and ".join(f"{SEPARATORS[s]}s ({width[s]} columns)" for s in fits)
    raise ImportError_(
        f"{path}: its header splits on {names}; which one separates the columns is not clear: save it "
        f"with one separator (commas) and quote values that hold it"
    )


def _ragged(path: Path, line: int, fields: list[str], header: list[str], sep: str) -> ImportError_:
    n, width = len(fields), len(header)
    shown = sep.join(fields)
    shown = repr(shown if len(shown) <= 80 else shown[:77] + "...")
    text = f"{path}:{line}: {n} fields where the header has {width} ({', '.join(header)}): {shown}"
    comma = re.search(r"\d+,\d+", shown) if sep == "," else None
    if n > width and comma:
        return ImportError_(
            f"{text}; an unquoted decimal comma ({comma.group(0)})? write numbers with a decimal point "
            f"({comma.group(0).replace(',', '.')})"
        )
    if n > width:
        return ImportError_(f"{text}; a value holding the {SEPARATORS[sep]}? quote it")
    return ImportError_(
        f"{text}; a missing value? fill it in, or keep its {SEPARATORS[sep]} (an empty field is left out and listed)"
    )


def _decimal_commas(path: Path, rows: list, sep: str, notes: list[str]) -> None:
    """A semicolon- or tab-separated file may write decimals with a comma (0,39): read as 0.39, said in a
    note; a file that writes both 0,39 and 0.41 is refused (which is the decimal separator is not clear)."""
    commas = [(n, f) for n, r in rows for f in r if DECIMAL_COMMA.match(f)]
    if not commas:
        return
    points = [(n, f) for n, r in rows for f in r if DECIMAL_POINT.match(f)]
    if points:
        raise ImportError_(
            f"{path}: {SEPARATORS[sep]}-separated, with decimal commas (line {commas[0][0]}: {commas[0][1]!r}) "
            f"and decimal points (line {points[0][0]}: {points[0][1]!r}): which is the decimal separator is "
            f"not clear; write every number one way"
        )
    for n, r in rows:
        r[:] = [f.replace(",", ".") if DECIMAL_COMMA.match(f) else f for f in r]
    notes.append(
        f"{path.name}: {len(commas)} number(s) with a decimal comma read as decimals (line {commas[0][0]}: "
        f"{commas[0][1]!r} -> {commas[0][1].strip().replace(',', '.')})"
    )


def _csv_rows(path: Path, notes: list[str]) -> list[tuple[int, list[str]]]:
    """(line, fields) of every non-blank row of a text table, the header first."""
    text = _text_of(path)
    sep = _separator(path, text)
    if sep != ",":
        notes.append(f"{path.name}: read as {SEPARATORS[sep]}-separated")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ImportError_(f"{path}:{reader.line_num}: not a readable table row ({e})") from None
        if any(f.strip() for f in fields):  # blank lines are not rows
            rows.append((start, fields))
    header = rows[0][1]
    for n, fields in rows[1:]:
        if len(fields) > len(header) and not any(f.strip() for f in fields[len(header) :]):
            del fields[len(header) :]  # trailing empty fields hold nothing
        if len(fields) != len(header):
            raise _ragged(path, n, fields, header, sep)
    if sep != ",":
        _decimal_commas(path, rows[1:], sep, notes)
    return rows


def _cell_text(value) -> str:
    return "" if value is None else str(value)


def _xlsx_rows(path: Path, notes: list[str]) -> list[tuple[int, list[str]]]:
    """(row, cells) of every non-blank row of a workbook's first sheet, as text; a formula cell is its
    cached value, and one without a cached value is refused (it would read as empty)."""
    if path.suffix == ".xls":
        raise ImportError_(f"{path}: an Excel 97-2003 workbook (.xls); save it as .xlsx or export CSV")
    import openpyxl

    try:
        values = openpyxl.load_workbook(path, data_only=True)
        formulas = openpyxl.load_workbook(path, data_only=False)
    except Exception as e:  # a damaged or foreign file: zip, XML and openpyxl's own errors
        raise ImportError_(
            f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e}); save it again from "
            f"Excel/LibreOffice, or export CSV"
        ) from None
    sheet, written = values.worksheets[0], formulas.worksheets[0]
    if len(values.worksheets) > 1:
        notes.append(f"{path.name}: read its first sheet, {sheet.title!r} (of {len(values.worksheets)})")
    rows = []
    for n, row in enumerate(sheet.iter_rows(min_row=1, min_col=1, values_only=True), 1):
        cells = []
        for j, value in enumerate(row, 1):
            if value is None and written.cell(row=n, column=j).data_type == "f":
                cell = written.cell(row=n, column=j)
                raise ImportError_(
                    f"{path}: cell {cell.coordinate} holds a formula ({cell.value}) with no cached value (the "
                    f"program that wrote the file did not compute it); open and save it in Excel/LibreOffice, "
                    f"or export CSV"
                )
            cells.append(_cell_text(value))
        if any(c.strip() for c in cells):
            rows.append((n, cells))
    if not rows:
        raise ImportError_(f"{path}: its first sheet, {sheet.title!r}, is empty")
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, list[str]]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError as e:  # no Parquet engine installed
        raise ImportError_(f"{path}: reading Parquet needs pyarrow ({e}); install it, or export CSV") from None
    except Exception as e:  # pyarrow's errors for a damaged or foreign file
        raise ImportError_(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    rows = [(1, [str(c) for c in frame.columns])]
    rows += [(i + 2, [_cell_text(v) for v in r]) for i, r in enumerate(frame.astype(object).itertuples(False))]
    return rows


# --------------------------------------------------------------------------------------------- readers

SETTINGS = re.compile(
    r"^_?(?P<local_clusters>\d+)local_clusters_(?P<global_clusters>\d+)global_clusters_"
    r"(?P<layers>\d+)th_layer_datapercent_(?P<data_percent>[0-9.eE-]+)(?P<normalized>_normalized)?"
    r"_bs_(?P<batch_size>\d+)$"
)
LINE = re.compile(r"^Layer (?P<layer>\d+) (?P<quantity>.+?):\s*(?P<value>\S+)\s*$")


def read_dse_official(root: Path, method: str | None, layer: int, metrics_protocol: str, dataset: str) -> list[Item]:
    if method is None:
        raise ImportError_(f"{root}: the official tree does not name its method; give --method")
    items = []
    for f in sorted(Path(root).rglob("metrics_epoch_*.txt")):
        settings_dir = f.parent.parent
        m = SETTINGS.match(settings_dir.name)
        if not m:
            raise ImportError_(
                f"{settings_dir}: folder name not in get_DSE.py's form "
                f"'_<kl>local_clusters_<kg>global_clusters_<n>th_layer_datapercent_<p>[_normalized]_bs_<b>'"
            )
        settings = {k: v for k, v in m.groupdict().items()}
        settings["normalized"] = bool(settings["normalized"])
        epoch_dir = re.match(r"^epoch_(\d+)$", f.parent.name)
        if not epoch_dir or int(epoch_dir.group(1)) != int(re.search(r"(\d+)", f.stem).group(1)):
            raise ImportError_(f"{f}: expected epoch_<N>/metrics_epoch_<N>.txt")
        values, origins = {}, {}
        for n, line in enumerate(_text_of(f).splitlines(), 1):
            if not line.strip():
                continue
            lm = LINE.match(line)
            if not lm:
                raise ImportError_(f"{f}:{n}: {line!r} is not 'Layer <L> <quantity>: <value>'")
            q = lm.group("quantity").strip().lower()
            if q not in DSE_QUANTITIES:
                raise ImportError_(
                    f"{f}:{n}: unknown quantity {lm.group('quantity')!r}; expected one of "
                    f"{', '.join(sorted(set(DSE_QUANTITIES)))}"
                )
            if int(lm.group("layer")) != layer:
                continue
            name = DSE_QUANTITIES[q]
            if name in values:
                raise ImportError_(
                    f"{f}:{n}: a second {lm.group('quantity')!r} of layer {layer} (first at line "
                    f"{origins[name]['line']}); keep one"
                )
            values[name] = _number(lm.group("value"), f"{f}:{n}")
            origins[name] = {"file": str(f), "line": n}
        if not values:
            raise ImportError_(f"{f}: no line of layer {layer} (the method's last; --layer picks another)")
        items.append(
            Item(
                metrics_protocol,
                dataset,
                method,
                int(epoch_dir.group(1)),
                values,
                origins,
                {"official_settings": settings, "layer": layer, "dse_dataset_folder": settings_dir.parent.name},
            )
        )
    if not items:
        raise ImportError_(f"{root}: no metrics_epoch_<N>.txt under it")
    return items


SHEET_COLUMN = re.compile(r"^Layer (?P<layer>\d+) (?P<quantity>.+)$")


def _read_frame(path: Path, notes: list[str] | None = None):
    """Every cell as the text the file holds (no NaN guessing: an empty cell is "", a "nan" is "nan"),
    indexed by the file's own row (a text file's line, a sheet's row; the header is row 1). Whatever
    cannot be read as one table is refused naming the file, the line or cell, and the fix: an empty file,
    a row with more or fewer fields than the header (an unquoted decimal comma), a separator that is not
    clear, a formula without a cached value, column names that differ only in case or surrounding spaces,
    a header without data rows. A semicolon- or tab-separated file is read as such (said in `notes`)."""
    import pandas as pd

    path = Path(path)
    notes = [] if notes is None else notes
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImportError_(f"{path}: cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise ImportError_(f"{path}: the file is empty (0 bytes)")
    if path.suffix in (".xlsx", ".xlsm", ".xls"):
        rows = _xlsx_rows(path, notes)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _csv_rows(path, notes)
    (header_row, header), data = rows[0], rows[1:]
    keep = [j for j, name in enumerate(header) if name.strip() or any(r[j].strip() for _, r in data)]
    for j in keep:
        if not header[j].strip():
            n, value = next((n, r[j]) for n, r in data if r[j].strip())
            raise ImportError_(
                f"{path}: column {j + 1} has no name in the header (row {header_row}) but holds values (row {n}: "
                f"{value!r}); name it or remove it"
            )
    header = [header[j] for j in keep]
    seen: dict[str, str] = {}
    for col in header:
        key = col.strip().lower()
        if key in seen:
            raise ImportError_(
                f"{path}: columns {seen[key]!r} and {col!r} "
                + ("have the same name" if seen[key] == col else "differ only in case or spaces")
                + ": which one holds the numbers is not clear; rename or remove one"
            )
        seen[key] = col
    if not data:
        raise ImportError_(f"{path}: no data rows (only the header: {', '.join(header)})")
    frame = pd.DataFrame([[r[j] for j in keep] for _, r in data], columns=header, index=[n for n, _ in data])
    frame.attrs["header_row"] = header_row
    return frame


def read_spreadsheet(
    path: Path, method: str | None, layer: int, metrics_protocol: str, dataset: str
) -> tuple[list[Item], list[str]]:
    notes: list[str] = []
    frame = _read_frame(path, notes)
    columns = {}
    for col in frame.columns:
        name = str(col).strip()
        if name.lower() in ("epoch", "method"):
            continue
        m = SHEET_COLUMN.match(name)
        if not m or m.group("quantity").strip().lower() not in DSE_QUANTITIES:
            raise ImportError_(
                f"{path}: unknown column {name!r}; expected 'epoch', 'method' or 'Layer <L> <quantity>' "
                f"with a quantity among {', '.join(sorted(set(DSE_QUANTITIES)))}"
            )
        if int(m.group("layer")) == layer:
            metric = DSE_QUANTITIES[m.group("quantity").strip().lower()]
            if metric in columns.values():
                other = next(c for c, v in columns.items() if v == metric)
                raise ImportError_(f"{path}: columns {other!r} and {name!r} both give {metric}; keep one")
            columns[col] = metric
    if not columns:
        raise ImportError_(f"{path}: no 'Layer {layer} ...' column (the method's last layer; --layer picks another)")
    epoch_col = next((c for c in frame.columns if str(c).strip().lower() == "epoch"), None)
    method_col = next((c for c in frame.columns if str(c).strip().lower() == "method"), None)
    if epoch_col is None:
        notes.append(f"{path.name}: no epoch column; rows numbered as the official code does: row i -> epoch (i+1)*10")
        first = frame.attrs["header_row"] + 1
        gap = next((first + k for k, n in enumerate(frame.index) if n != first + k), None)
        if gap is not None:
            raise ImportError_(
                f"{path}: row {gap} is empty, and with no epoch column the rows are the epochs (row i -> epoch "
                f"(i+1)*10): an empty row would shift every later epoch; add an epoch column or remove the row"
            )
    items = []
    for pos, (i, row) in enumerate(frame.iterrows()):
        where = f"{path}: row {i}"  # the spreadsheet's own row number (header = row 1)
        who = str(row[method_col]).strip() if method_col is not None else method
        if not who:
            raise ImportError_(f"{where}: no method (no 'method' column, and no --method)")
        epoch = _epoch(row[epoch_col], where) if epoch_col is not None else (pos + 1) * 10
        values = {metric: _number(row[col], f"{where}, column {str(col)!r}") for col, metric in columns.items()}
        origins = {metric: {"file": str(path), "row": i, "column": str(col)} for col, metric in columns.items()}
        items.append(Item(metrics_protocol, dataset, who, epoch, values, origins, {"layer": layer}))
    return items, notes


@dataclass
class Target:
    """Which protocols a metric column can go to: the suite's, chosen by kind, or one named (by --protocol
    or a 'protocol' column), which may be a protocol of the registry that the suite does not run."""

    suite: str
    protocols: dict[str, str]  # protocol -> kind (the suite's)
    metrics_dataset: str
    explicit: str | None  # --protocol
    registry: dict[str, str] = field(default_factory=dict)  # every protocol of the registry -> kind
    by_kind: dict[str, str] = field(default_factory=dict)  # metric -> the suite protocol chosen for it by kind

    def kind_of(self, protocol: str, where: str) -> str:
        """The kind of a protocol named for the numbers: the suite's, or one of the registry the suite does
        not run whose numbers the tables keep apart (refused otherwise, saying why)."""
        if protocol in self.protocols:
            return self.protocols[protocol]
        return admit_outside_suite(self.registry, protocol, self.suite, self.protocols, where)

    def resolve(self, column: str, row_protocol: str | None, where: str) -> tuple[str, Metric]:
        """(protocol, metric) of a column, or a refusal saying why."""
        chosen = row_protocol or self.explicit
        if chosen is not None:
            kind_name = self.kind_of(chosen, where)
            kind = PROTOCOL_KINDS[kind_name]
            metric = kind.metric_for_column(column)
            if metric is None:
                raise ImportError_(
                    f"{where}: column {column!r} is not a metric of protocol '{chosen}' (kind "
                    f"{kind_name}: {', '.join(m.name for m in kind.metrics)})"
                )
            return chosen, metric
        fits = [(p, PROTOCOL_KINDS[k].metric_for_column(column)) for p, k in self.protocols.items()]
        fits = [(p, m) for p, m in fits if m is not None]
        if not fits:
            return None, None  # not a metric of any protocol of the suite: the caller names it
        if len(fits) > 1:
            raise ImportError_(
                f"{where}: column {column!r} could belong to {len(fits)} protocols of suite "
                f"'{self.suite}' ({', '.join(p for p, _ in fits)}); give --protocol or a 'protocol' "
                f"column"
            )
        self.by_kind.setdefault(fits[0][1].name, fits[0][0])
        return fits[0]


def read_table(
    path: Path, method: str | None, target: Target, dataset: str | None, *, scale: float | None = None
) -> tuple[list[Item], list[str]]:
    """Wide (one column per metric) or long (`metric`, `value`) tables. A percentage's column whose values
    are all <= 1 is refused unless `scale` (100: fractions; 1: percentages) says what they are."""
    notes: list[str] = []
    frame = _read_frame(path, notes)
    cols = {str(c).strip().lower(): c for c in frame.columns}
    long = {"metric", "value"} <= set(cols)
    if "epoch" not in cols:
        raise ImportError_(f"{path}: no 'epoch' column")
    if not long:
        kinds = set(PROTOCOL_KINDS) if "protocol" in cols else set(target.protocols.values())
        if target.explicit is not None and target.explicit in target.registry:
            kinds.add(target.registry[target.explicit])
        unknown = [
            str(c)
            for k, c in cols.items()
            if k not in ID_COLUMNS and not any(PROTOCOL_KINDS[kd].metric_for_column(k) for kd in kinds)
        ]
        if unknown:
            known = sorted({m.name for kd in kinds for m in PROTOCOL_KINDS[kd].metrics})
            raise ImportError_(
                f"{path}: unknown column(s) {unknown}; expected {', '.join(ID_COLUMNS)} or a metric of "
                f"the suite's protocols ({', '.join(known)})"
            )
    items, empty, percents = [], [], {}
    for i, row in frame.iterrows():
        where = f"{path}: row {i}"
        get = lambda name: str(row[cols[name]]).strip() if name in cols and str(row[cols[name]]).strip() else None
        who = get("method") or method
        if who is None:
            raise ImportError_(f"{where}: no method (no 'method' column, and no --method)")
        epoch = _epoch(get("epoch") or "", where)
        pairs = (
            [(get("metric") or "", row[cols["value"]], "value")]
            if long
            else [(str(c).strip(), row[c], str(c)) for k, c in cols.items() if k not in ID_COLUMNS]
        )
        for name, raw, column in pairs:
            if not name:
                raise ImportError_(f"{where}: no metric name in column 'metric'")
            if _empty(raw):
                empty.append(f"row {i} {name}")
                continue
            proto, metric = target.resolve(name, get("protocol"), f"{where}, column {column!r}")
            if proto is None:
                raise ImportError_(f"{where}: {name!r} is not a metric of any protocol of suite '{target.suite}'")
            is_label_free = target.kind_of(proto, where) == METRICS_KIND
            ds = target.metrics_dataset if is_label_free else (get("dataset") or dataset)
            if ds is None:
                raise ImportError_(
                    f"{where}: {name} is a result of protocol '{proto}': give a 'dataset' column or --dataset"
                )
            value = _number(raw, f"{where}, column {column!r}")
            origin = {"file": str(path), "row": i, "column": column}
            items.append(Item(proto, ds, who, epoch, {metric.name: value}, {metric.name: origin}))
            if is_percent(metric):
                percents.setdefault((column, metric.name), []).append((i, value, items[-1]))
    if scale is not None and not percents:
        names = sorted({n for it in items for n in it.metrics})
        raise ImportError_(
            f"{path}: --scale applies to percentages (mIoU, top-1, AP, ...); this file gives none "
            f"({', '.join(names) or 'no values'})"
        )
    _percent_columns(path, percents, scale)
    for proto in dict.fromkeys(target.by_kind.values()):
        names = ", ".join(n for n, p in target.by_kind.items() if p == proto)
        notes.append(filed_note(f"{path.name}: {names}", proto, target.protocols[proto], target.suite))
    if empty:
        notes.append(
            f"{path.name}: {len(empty)} empty cell(s) are not values and were left out: "
            + ", ".join(empty[:8])
            + (" ..." if len(empty) > 8 else "")
        )
    return items, notes


def _json_lines(f: Path) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(_text_of(f).splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise ImportError_(f"{f}:{n}: not a JSON line") from None
        if isinstance(entry, dict):
            out.append((n, entry))
    return out


def pick_evaluation(f: Path, found: list[tuple[int, dict]], take: str | None, step_of, score_of, what: str):
    """(line, entry) of the evaluation `take` names among `found` (line, entry) in file order; a file with
    several evaluations needs `take` (never a silent choice)."""
    if not found:
        raise ImportError_(f"{f}: {what}")
    if len(found) > 1 and take is None:
        steps = ", ".join(str(step_of(e)) for _, e in found[:8]) + (" ..." if len(found) > 8 else "")
        raise ImportError_(f"{f}: {len(found)} evaluations (at iterations {steps}); say which with --take {TAKE_HELP}")
    if take in (None, "last"):
        return found[-1]
    if take == "best":
        return max(found, key=lambda le: (score_of(le[1]), -le[0]))  # the first of equal bests
    m = re.fullmatch(r"iter\s*(\d+)", take or "")
    if not m:
        raise ImportError_(f"--take {take!r}: expected {TAKE_HELP}")
    hit = [le for le in found if step_of(le[1]) == int(m.group(1))]
    if not hit:
        raise ImportError_(
            f"{f}: no evaluation at iteration {m.group(1)} (there are: {', '.join(str(step_of(e)) for _, e in found)})"
        )
    return hit[-1]


def read_mmseg(
    root: Path,
    method: str | None,
    epoch: int | None,
    dataset: str | None,
    protocol: str,
    num_classes: int | None,
    take: str | None,
    *,
    scale: float | None = None,
) -> list[Item]:
    """A validation mIoU of one mmseg run: 1.x vis_data/scalars.json (percent) or 0.x <stamp>.log.json
    (fractions, as UDI's and iBOT's logs: read x 100). `scale` overrides what the format says; a 1.x log
    whose percentages are all <= 1 is refused without it."""
    if method is None or epoch is None or dataset is None:
        raise ImportError_(
            f"{root}: an mmseg work directory does not say which checkpoint it evaluated: give "
            f"--method, --epoch and --dataset"
        )
    found = sorted(Path(root).rglob("vis_data/scalars.json")) or sorted(Path(root).rglob("*.log.json"))
    if not found:
        raise ImportError_(
            f"{root}: neither <timestamp>/vis_data/scalars.json (mmseg 1.x) nor <timestamp>.log.json (0.x) under it"
        )
    if len(found) > 1:
        raise ImportError_(
            f"{root}: {len(found)} runs' logs under it ({', '.join(str(p) for p in found[:4])}); "
            f"import one run's folder at a time"
        )
    f = found[0]
    evals = [(n, e) for n, e in _json_lines(f) if "mIoU" in e and e.get("mode", "val") == "val"]
    line_no, last = pick_evaluation(
        f,
        evals,
        take,
        lambda e: e.get("step", e.get("iter")),
        lambda e: _number(e["mIoU"], f"{f}, iteration {e.get('step', e.get('iter'))}, mIoU"),
        "no validation entry with mIoU",
    )
    where = f"{f}:{line_no}"
    miou = _number(last["mIoU"], f"{where}, mIoU")
    fractions = f.name.endswith(".log.json") and miou <= 1.0  # 0.x logs fractions
    factor = scale if scale is not None else 100.0 if fractions else 1.0
    values = {"mIoU": miou * factor}
    for k in ("aAcc", "mAcc"):
        if k in last:
            values[k] = _number(last[k], f"{where}, {k}") * factor
    per_class = {k[4:]: _number(v, f"{where}, {k}") * factor for k, v in last.items() if k.startswith("IoU.")}
    if per_class:
        if num_classes and len(per_class) != num_classes:
            raise ImportError_(
                f"{where}: the log holds per-class IoU of {len(per_class)} classes but dataset "
                f"'{dataset}' has {num_classes}: a run on another dataset or class set"
            )
        values["IoU"] = per_class
    version = "1.x" if f.name == "scalars.json" else "0.x"
    if scale is None and factor == 1.0:
        _fractions_in_evaluation(where, values, f"mmseg {version}")
    details = {"mmseg_log": version, "iteration": last.get("step", last.get("iter"))}
    return [_logged_item(protocol, dataset, method, epoch, values, f, line_no, details, factor)]


def read_detectron2(
    path: Path,
    method: str | None,
    epoch: int | None,
    dataset: str | None,
    protocol: str,
    take: str | None,
    *,
    scale: float | None = None,
) -> list[Item]:
    """bbox / segm AP of one evaluation (percentages, as detectron2's COCOEvaluator writes them: an
    evaluation whose APs are all <= 1 is refused unless `scale` says what they are)."""
    if method is None or epoch is None or dataset is None:
        raise ImportError_(
            f"{path}: a detectron2 metrics.json does not say which checkpoint it evaluated: give "
            f"--method, --epoch and --dataset"
        )
    f = path / "metrics.json" if path.is_dir() else path
    evals = [(n, e) for n, e in _json_lines(f) if "bbox/AP" in e or "segm/AP" in e]
    line_no, last = pick_evaluation(
        f,
        evals,
        take,
        lambda e: e.get("iteration"),
        lambda e: _number(e.get("segm/AP", e.get("bbox/AP")), f"{f}, iteration {e.get('iteration')}, AP"),
        "no evaluation line (bbox/AP, segm/AP)",
    )
    where = f"{f}:{line_no}"
    factor = 1.0 if scale is None else scale
    values = {
        f"{kind}_{name}": _number(last[f"{kind}/{name}"], f"{where}, {kind}/{name}") * factor
        for kind in ("bbox", "segm")
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        if f"{kind}/{name}" in last
    }
    if scale is None:
        _fractions_in_evaluation(where, values, "detectron2's COCOEvaluator")
    details = {"iteration": last.get("iteration")}
    return [_logged_item(protocol, dataset, method, epoch, values, f, line_no, details, factor)]


def _logged_item(
    protocol, dataset, method, epoch, values: dict, f: Path, line_no: int, details: dict, scale: float = 1.0
) -> Item:
    """One evaluation read from one line of a training log: every value's origin is that line (and the
    factor its values were multiplied by, when not 1)."""
    origin = {"file": str(f), "line": line_no, **({"scale": scale} if scale != 1.0 else {})}
    return Item(protocol, dataset, method, int(epoch), values, {k: dict(origin) for k in values}, details)


# --------------------------------------------------------------------------------------------- the command


@dataclass
class ImportPlan:
    format: str
    items: list[Item]  # one per cell, merged over the file's rows
    notes: list[str]
    merges: dict = field(default_factory=dict)  # cell key -> metrics an earlier import holds and keeps
    replaces: dict = field(default_factory=dict)  # cell key -> metrics this import replaces
    written: list[Path] = field(default_factory=list)


def last_layer(reg: Registry, method: str) -> int:
    """The official model selection's layer: ViT block L-1 (11 for ViT-S/B), stage index 3 for ResNet/Swin."""
    from harness.models.archs import facts_of_method

    info = facts_of_method(reg.method(method))
    return info.depth - 1 if info.family == "vit" else 3


def suite_protocols(reg: Registry, suite: str) -> dict[str, str]:
    """The suite's protocols -> their kinds, in grid order."""
    return {e.protocol: reg.protocol(e.protocol).kind for e in reg.suite(suite).grid}


def registry_protocols(reg: Registry) -> dict[str, str]:
    """Every protocol of the registry -> its kind."""
    return {name: spec.kind for name, spec in reg.protocols.items()}


def admit_outside_suite(registry: dict[str, str], protocol: str, suite: str, protos: dict[str, str], where: str) -> str:
    """The kind of `protocol`, named for imported numbers but not run by the suite: a protocol of the
    registry whose kind's tables keep each protocol apart (`OUTSIDE_SUITE_ROLES`); anything else is refused
    saying how to bring such numbers."""
    if protocol not in registry:
        import difflib

        close = difflib.get_close_matches(protocol, list(registry), n=1)
        raise ImportError_(
            f"{where}: protocol '{protocol}' is neither run by suite '{suite}' (its protocols: {', '.join(protos)}) "
            f"nor a protocol of the registry"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + "; `sdd ls protocols` lists them"
        )
    kind = registry[protocol]
    role = PROTOCOL_KINDS[kind].role
    if role not in OUTSIDE_SUITE_ROLES:
        raise ImportError_(
            f"{where}: protocol '{protocol}' (kind {kind}) is not run by suite '{suite}', and the tables read "
            f"one {role} series per method, which its numbers would join unmarked; import them into a suite that "
            f"runs '{protocol}' (add it to this suite's grid, or write a suite for them)"
        )
    return kind


def filed_note(what: str, protocol: str, kind: str, suite: str) -> str:
    """Where numbers went whose protocol was chosen by kind, and how to name another: an mIoU of another
    recipe filed silently under the suite's own probe would be a wrong number."""
    text = f"{what} filed under protocol '{protocol}', the one protocol of suite '{suite}' that reports it"
    if PROTOCOL_KINDS[kind].role in OUTSIDE_SUITE_ROLES:
        text += (
            f"; numbers of another recipe go under their own protocol: --protocol P (a protocol of kind {kind} "
            f"from `sdd ls protocols`; one the suite does not run is recorded as outside the suite and kept "
            f"apart in the tables)"
        )
    return text


def one_protocol_of(
    protos: dict[str, str],
    kinds: tuple[str, ...],
    suite: str,
    explicit: str | None,
    what: str,
    registry: dict[str, str] | None = None,
) -> str:
    """The suite's one protocol of these kinds, or `--protocol` (the suite's, or with `registry`, a protocol
    of the registry the suite does not run: `admit_outside_suite`); several -> the user must say which."""
    if explicit is not None:
        if explicit not in protos and registry is None:
            raise ImportError_(
                f"--protocol {explicit}: suite '{suite}' runs no such protocol (its protocols: {', '.join(protos)})"
            )
        flag = f"--protocol {explicit}"
        kind = protos.get(explicit) or admit_outside_suite(registry or {}, explicit, suite, protos, flag)
        if kind not in kinds:
            raise ImportError_(
                f"--protocol {explicit} is of kind {kind}; {what} belong to a protocol of kind {' or '.join(kinds)}"
            )
        return explicit
    fit = [p for p, k in protos.items() if k in kinds]
    if not fit:
        raise ImportError_(
            f"suite '{suite}' runs no protocol of kind {' or '.join(kinds)}: {what} have no cell to go "
            f"into; give --protocol or add one to the suite"
        )
    if len(fit) > 1:
        raise ImportError_(
            f"suite '{suite}' runs {len(fit)} protocols {what} could belong to ({', '.join(fit)}); give --protocol"
        )
    return fit[0]


def _check_options(fmt: str, take: str | None, scale: float | None) -> None:
    """--take and --scale where they mean something, with a value they can have."""
    if take is not None and fmt not in ("mmseg", "detectron2"):
        raise ImportError_(f"--take applies to mmseg and detectron2 logs, not to a {fmt} file")
    if scale is not None and scale not in SCALES:
        raise ImportError_(
            f"--scale {scale:g}: expected 100 (the file's percentages are fractions: 0.39 -> 39) or 1 (they are "
            f"percentages, even those <= 1)"
        )
    if scale is not None and fmt in ("dse-official", "spreadsheet"):
        raise ImportError_(f"--scale applies to percentages (mIoU, top-1, AP, ...); a {fmt} file gives DSE values")


def plan_import(
    reg: Registry,
    suite: str,
    path: Path,
    results: Path,
    *,
    fmt: str = "auto",
    method: str | None = None,
    epoch: int | None = None,
    dataset: str | None = None,
    protocol: str | None = None,
    layer: int | None = None,
    replace: bool = False,
    take: str | None = None,
    allow_outside_grid: bool = False,
    scale: float | None = None,
) -> ImportPlan:
    """Read and check everything; raise ImportError_ on the first problem (nothing is written here).
    `scale` (`--scale`): what the file's percentages are, 100 = fractions (multiplied by 100), 1 =
    percentages even when all <= 1; without it such a column (or log evaluation) is refused."""
    path = Path(path)
    if not path.exists():
        raise ImportError_(f"{path} does not exist")
    s = reg.suite(suite)
    fmt = detect(path) if fmt == "auto" else fmt
    protos = suite_protocols(reg, suite)
    every = registry_protocols(reg)
    notes: list[str] = []
    if method is not None:
        reg.method(method)
    _check_options(fmt, take, scale)
    if fmt in ("dse-official", "spreadsheet"):
        metrics_protocol = one_protocol_of(protos, (METRICS_KIND,), suite, protocol, "DSE scores", every)
        ds = next(d for e in s.grid if e.protocol == metrics_protocol for d in e.datasets)
        if protocol is None:
            notes.append(filed_note("the DSE scores", metrics_protocol, METRICS_KIND, suite))
        lay = layer if layer is not None else (last_layer(reg, method) if method else None)
        if lay is None:
            raise ImportError_(f"{path}: give --method (its architecture gives the layer) or --layer")
        if fmt == "dse-official":
            items = read_dse_official(path, method, lay, metrics_protocol, ds)
        else:
            items, more = read_spreadsheet(path, method, lay, metrics_protocol, ds)
            notes += more
    elif fmt == "csv":
        metrics_protos = [p for p, k in protos.items() if k == METRICS_KIND]
        metrics_dataset = next((d for e in s.grid if e.protocol in metrics_protos[:1] for d in e.datasets), "imagenet")
        target = Target(suite, protos, metrics_dataset, protocol, every)
        items, notes = read_table(path, method, target, dataset, scale=scale)
    elif fmt == "mmseg":
        proto = one_protocol_of(
            protos,
            tuple(k for k, v in PROTOCOL_KINDS.items() if v.metric("mIoU")),
            suite,
            protocol,
            "an mmseg run's mIoU",
            every,
        )
        if protocol is None:
            notes.append(filed_note("the mmseg run's mIoU", proto, protos[proto], suite))
        num_classes = reg.dataset(dataset).num_classes if dataset in reg.datasets else None
        items = read_mmseg(path, method, epoch, dataset, proto, num_classes, take, scale=scale)
    elif fmt == "detectron2":
        proto = one_protocol_of(
            protos,
            tuple(k for k, v in PROTOCOL_KINDS.items() if v.metric("bbox_AP")),
            suite,
            protocol,
            "a detectron2 run's AP",
            every,
        )
        if protocol is None:
            notes.append(filed_note("the detectron2 run's AP", proto, protos[proto], suite))
        items = read_detectron2(path, method, epoch, dataset, proto, take, scale=scale)
    else:
        raise ImportError_(f"--format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    merged = merge_items(items)
    plan = ImportPlan(fmt, merged, notes)
    _check_items(reg, suite, plan, results, replace, allow_outside_grid)
    return plan


def merge_items(items: list[Item]) -> list[Item]:
    """One item per cell: the metrics of every row or line that names it. The same metric twice is an
    error naming both places (never the first or the last value silently)."""
    out: dict[tuple, Item] = {}
    for it in items:
        have = out.get(it.key)
        if have is None:
            out[it.key] = Item(*it.key, dict(it.metrics), dict(it.origins), dict(it.details), it.outside_grid)
            continue
        for name, value in it.metrics.items():
            if name in have.metrics:
                raise ImportError_(
                    f"{it.where(name)}: {name} of '{it.method}' epoch {it.epoch} ({it.protocol}/"
                    f"{it.dataset}) appears twice (also at {have.where(name)}); keep one"
                )
            have.metrics[name] = value
            have.origins[name] = it.origins[name]
        have.details.update(it.details)
    return list(out.values())


def _check_value(it: Item, metric: Metric | None, name: str, value, kind: str, num_classes: int | None) -> None:
    where = it.where(name)
    if metric is None:
        raise ImportError_(
            f"{where}: {name} is not a metric of protocol '{it.protocol}' (kind {kind}: "
            f"{', '.join(m.name for m in PROTOCOL_KINDS[kind].metrics)})"
        )
    values = value.values() if isinstance(value, dict) else [value]
    if metric.per_class != isinstance(value, dict):
        raise ImportError_(f"{where}: {name} should be {'a per-class mapping' if metric.per_class else 'one number'}")
    for v in values:
        if not metric.in_domain(v):
            hint = (
                " (a fraction where a percentage belongs?)"
                if metric.high == 100 and 0 < v <= 1
                else " (a percentage where a fraction belongs?)"
                if metric.high == 1 and v > 1
                else ""
            )
            factor = it.origins[name].get("scale")
            if factor is not None:
                hint += f" (read as the file's {v / factor:g} x {factor:g})"
            raise ImportError_(f"{where}: {name} = {v!r} is outside its domain, {metric.domain_text()}{hint}")


def _check_items(
    reg: Registry, suite: str, plan: ImportPlan, results: Path, replace: bool, allow_outside_grid: bool
) -> None:
    from harness.plan import build_plan

    s = reg.suite(suite)
    grid = {(c.protocol, c.dataset, c.method, c.epoch) for c in build_plan(reg, suite)}
    pairs = {(e.protocol, d) for e in s.grid for d in e.datasets}
    protos, every = suite_protocols(reg, suite), registry_protocols(reg)
    for it in plan.items:
        where = it.where()
        if it.method not in s.methods:
            raise ImportError_(
                f"{where}: method '{it.method}' is not in suite '{suite}' (its methods: "
                f"{', '.join(s.methods)}); add it to the suite or give --method"
            )
        _check_protocol(reg, suite, it, pairs, protos, every)
        _check_epoch(reg, suite, it, grid, allow_outside_grid)
        kind = reg.protocol(it.protocol).kind
        num_classes = reg.dataset(it.dataset).num_classes
        for name, value in it.metrics.items():
            _check_value(it, PROTOCOL_KINDS[kind].metric(name), name, value, kind, num_classes)
        target = imported_path(results, suite, *it.key)
        try:
            old = records.read_record(target, Path(results))
        except records.CorruptRecord as e:
            raise ImportError_(f"{e}; it was not touched: move it away (or delete it) and import again") from None
        if old is None:
            continue
        earlier = (
            set(old.get("metrics") or {}) - {"dse_separability"} if _derived(old) else set(old.get("metrics") or {})
        )
        again = sorted(earlier & set(it.metrics))
        if again and not replace:
            src = _sources(old)
            files = sorted({(src.get(m) or {}).get("file", "?") for m in again})
            raise ImportError_(
                f"{where}: {', '.join(again)} of {records.cell_id(*it.key)} were imported before (from "
                f"{', '.join(files)}); --replace replaces those metrics (the record's other metrics are kept)"
            )
        if again:
            plan.replaces[it.key] = again
        kept = sorted(earlier - set(it.metrics))
        if kept:
            plan.merges[it.key] = kept


OUTSIDE_GRID_FIX = (
    "--allow-outside-grid records it as outside the grid (kept out of the tables unless --include-outside-grid)"
)


def _check_protocol(
    reg: Registry, suite: str, it: Item, pairs: set[tuple[str, str]], protos: dict[str, str], every: dict[str, str]
) -> None:
    """The item's protocol and dataset: a (protocol, dataset) of the suite's grid, or a protocol of the
    registry the suite does not run (named for the import; marked `outside_suite`) on a dataset it takes."""
    where = it.where()
    if it.protocol not in protos:
        admit_outside_suite(every, it.protocol, suite, protos, where)
        it.outside_suite = True
    if it.dataset not in reg.datasets:
        raise ImportError_(f"{where}: unknown dataset '{it.dataset}'")
    if it.outside_suite:
        takes = reg.protocol(it.protocol).datasets
        if takes and it.dataset not in takes:
            raise ImportError_(
                f"{where}: protocol '{it.protocol}' takes {', '.join(takes)} ({reg.protocol(it.protocol).source}), "
                f"not '{it.dataset}'"
            )
    elif (it.protocol, it.dataset) not in pairs:
        raise ImportError_(
            f"{where}: suite '{suite}' runs protocol '{it.protocol}' on "
            f"{', '.join(d for p, d in sorted(pairs) if p == it.protocol)}, not on '{it.dataset}'"
        )


def _check_epoch(reg: Registry, suite: str, it: Item, grid: set[tuple], allow_outside_grid: bool) -> None:
    """An epoch the method file lists and the suite's grid holds for the cell's protocol and dataset (a
    protocol outside the suite: any epoch the method file lists). Anything else is refused, or with
    `allow_outside_grid` recorded as outside the grid, saying why (`outside_why`)."""
    where = it.where()
    spec = reg.method(it.method)
    eps = spec.epochs()
    if it.epoch not in eps:
        why = f"epoch {it.epoch} is not a checkpoint of '{it.method}' ({eps[0]}..{eps[-1]} in {spec.source})"
        if not allow_outside_grid:
            raise ImportError_(f"{where}: {why}; fix the epoch or the method file, or {OUTSIDE_GRID_FIX}")
        it.outside_grid, it.outside_of, it.outside_why = True, "the method file's epochs", why
    elif not it.outside_suite and it.key not in grid:
        held = sorted(c[3] for c in grid if c[:3] == it.key[:3])
        why = (
            f"epoch {it.epoch} of '{it.method}' is not in suite '{suite}''s grid for {it.protocol}/{it.dataset} "
            f"(it holds epochs {_eps(held)})"
        )
        if not allow_outside_grid:
            raise ImportError_(f"{where}: {why}; {OUTSIDE_GRID_FIX}")
        it.outside_grid, it.outside_of, it.outside_why = True, "the suite's grid", why


def _eps(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    return ", ".join(map(str, epochs[:6])) + (f" ... {epochs[-1]}" if len(epochs) > 6 else "")


def _sources(rec: dict) -> dict:
    """metric -> origin of an imported record (records written before per-metric sources: one for all)."""
    imp = rec.get("imported") or {}
    if "sources" in imp:
        return imp["sources"]
    return {m: imp for m in rec.get("metrics") or {}}


def _derived(rec: dict) -> bool:
    return "derived_from" in (_sources(rec).get("dse_separability") or {})


def _with_separability(metrics: dict, sources: dict) -> None:
    """The estimator's components also give separability (inter − mean intra radius), as computed records
    have it; derived again whenever the components are all there and separability was not given."""
    given = "dse_separability" in sources and "derived_from" not in sources["dse_separability"]
    if set(SEPARABILITY_PARTS) <= metrics.keys() and not given:
        metrics["dse_separability"] = (
            metrics["dse_inter"] - (metrics["dse_intra_image"] + metrics["dse_intra_batch"]) / 2
        )
        sources["dse_separability"] = {"derived_from": list(SEPARABILITY_PARTS)}


def _imported_marks(it: Item, old: dict, sources: dict) -> dict:
    """The record's `imported` block: each metric's source, and whether the cell lies outside the suite's
    grid (with why: `outside_grid_why`) or its protocol outside the suite (`outside_suite`: the suite did not
    run that protocol when the numbers were imported)."""
    out: dict = {"sources": sources, "outside_grid": bool(it.outside_grid or old.get("outside_grid"))}
    why = it.outside_why or old.get("outside_grid_why")
    if out["outside_grid"] and why:
        out["outside_grid_why"] = why
    if it.outside_suite:
        out["outside_suite"] = True
    return out


def write_import(plan: ImportPlan, reg: Registry, suite: str, results: Path) -> list[Path]:
    """Every record of the plan, merged into what earlier imports wrote, after everything was checked; all of
    them together or none (a full disk or Ctrl-C leaves the earlier records as they were: the same command
    then imports again). The caller holds the suite's lock from `plan_import` on (`sdd import` does), so no
    other writer changes the records the plan merged into."""
    from harness.atomic import FileSet

    with FileSet(Path(results) / suite) as files:
        written = _write_items(plan, reg, suite, Path(results), files)
    plan.written = written
    return written


def _write_items(plan: ImportPlan, reg: Registry, suite: str, results: Path, files) -> list[Path]:
    shas: dict[str, str] = {}
    written = []
    at = records.now()
    for it in plan.items:
        target = imported_path(results, suite, *it.key)
        old = records.read_record(target, Path(results)) or {}
        metrics, sources = dict(old.get("metrics") or {}), dict(_sources(old)) if old else {}
        for name, value in it.metrics.items():
            f = it.origins[name]["file"]
            shas.setdefault(f, sha256(Path(f)))
            metrics[name] = value
            sources[name] = {"format": plan.format, **it.origins[name], "sha256": shas[f], "at": at}
        _with_separability(metrics, sources)
        rec = {
            "suite": suite,
            "protocol": it.protocol,
            "dataset": it.dataset,
            "method": it.method,
            "epoch": it.epoch,
            "cell": records.cell_id(it.protocol, it.dataset, it.method, it.epoch),
            "status": "ok",
            "config_hash": "imported",
            "source": "imported",
            "config": {"protocol": {"name": it.protocol, "kind": reg.protocol(it.protocol).kind}},
            "imported": _imported_marks(it, old.get("imported") or {}, sources),
            "metrics": metrics,
            "details": {**(old.get("details") or {}), **it.details},
        }
        files.json(target, rec)
        written.append(target)
    return written
