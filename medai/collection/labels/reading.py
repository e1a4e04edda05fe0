"""Reading a label sheet (CSV or .xlsx) as text cells, known afterwards only by its sha256."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medai.errors import LabelSheetError

__all__ = ["SHEET_SUFFIXES", "LabelSheet", "read_label_sheet"]

SHEET_SUFFIXES = (".csv", ".xlsx")


@dataclass(frozen=True)
class LabelSheet:
    """A sheet as read: its header, its non-blank rows (with row numbers) and its sha256."""

    header: list[str]
    rows: list[tuple[int, list[str]]]
    sha256: str


def read_label_sheet(path: Path | str) -> LabelSheet:
    """Read a label sheet (``.csv`` or ``.xlsx``), every cell as text.

    Cells are read as written (``dtype=str``), so accession numbers keep their leading
    zeros and nothing is taken for "missing". A CSV may be UTF-8 (with or without BOM)
    or Windows-1252, separated by commas, semicolons or tabs (as the header shows); of a
    workbook the first worksheet is read. Wholly blank rows are skipped.

    Raises
    ------
    LabelSheetError
        If the file does not exist, cannot be read, has another extension, is empty or
        is not a valid CSV file or workbook.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SHEET_SUFFIXES:
        hint = " (re-save the old .xls workbook as .xlsx)" if suffix == ".xls" else ""
        raise LabelSheetError(
            f"unsupported label sheet type {suffix or '(no extension)'!r}: export the sheet "
            f"as .csv (UTF-8) or .xlsx{hint}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LabelSheetError("the label sheet does not exist: check the path") from None
    except IsADirectoryError:
        raise LabelSheetError("the label sheet path is a folder: give the file") from None
    except OSError as exc:
        raise LabelSheetError(
            f"cannot read the label sheet ({exc.strerror}): check its permissions"
        ) from None
    table = _read_csv(data) if suffix == ".csv" else _read_xlsx(data)
    if not table or not any(table[0]):
        raise LabelSheetError("the label sheet is empty: its first row must be the header")
    rows = [(number, cells) for number, cells in enumerate(table[1:], start=2) if any(cells)]
    return LabelSheet(header=table[0], rows=rows, sha256=hashlib.sha256(data).hexdigest())


def _cells(frame: Any) -> list[list[str]]:
    import pandas as pd

    return [
        ["" if pd.isna(value) else str(value).strip() for value in row]
        for row in frame.itertuples(index=False, name=None)
    ]


def _read_csv(data: bytes) -> list[list[str]]:
    import pandas as pd

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")  # what Excel on Windows writes as plain "CSV"
        except UnicodeDecodeError:
            raise LabelSheetError(
                "the CSV file is neither UTF-8 nor Windows-1252 text: save it as 'CSV UTF-8'"
            ) from None
    if not text.strip():
        raise LabelSheetError("the label sheet is empty: its first row must be the header")
    first_line = text.split("\n", 1)[0]
    separator = max((",", ";", "\t"), key=first_line.count)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=separator,
            header=None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        # pandas' message may quote the offending text: keep only where it is.
        where = re.search(r"line (\d+)", str(exc))
        at = f" near line {where.group(1)}" if where else ""
        raise LabelSheetError(
            f"the CSV file cannot be parsed{at}: a row has more fields than the header, or a "
            "quote is not closed"
        ) from None
    return _cells(frame)


def _read_xlsx(data: bytes) -> list[list[str]]:
    import pandas as pd

    try:
        frame = pd.read_excel(
            io.BytesIO(data),
            sheet_name=0,
            header=None,
            dtype=str,
            keep_default_na=False,
            engine="openpyxl",
        )
    except ImportError:
        raise LabelSheetError(
            "reading .xlsx sheets needs openpyxl: install it, or export the sheet as CSV"
        ) from None
    except Exception as exc:  # broken workbooks fail deep in zip/XML readers, with any error
        raise LabelSheetError(
            f"the file is not a readable .xlsx workbook ({type(exc).__name__}): save it "
            "again from the spreadsheet program, or export it as CSV"
        ) from None
    return _cells(frame)
