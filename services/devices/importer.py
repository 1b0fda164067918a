"""CSV documents of meters (POST /v1/meters:import) as typed rows, with each row's own
errors. Problems with the document as a whole (size, encoding, header) are INVALID_ARGUMENT
at once; problems with a row stay with that row."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from services.devices.validation import (
    Commodity,
    Direction,
    MeterInput,
    MeterState,
    RegisterType,
    parse_duration,
    quoted,
)
from services.kernel.errors import InvalidArgument

# CSV column → MeterInput field.
COLUMNS = {
    "site_id": "site_id",
    "serial_number": "serial_number",
    "name": "name",
    "commodity": "commodity",
    "direction": "direction",
    "unit": "unit",
    "register_type": "register_type",
    "multiplier": "multiplier",
    "rollover_value": "rollover_value",
    "expected_interval": "expected_interval_seconds",
    "labels": "labels",
    "state": "state",
}
# Problems with the header named at most (an error's details travel in a gRPC trailer).
MAX_HEADER_PROBLEMS = 10
ENUM_PREFIXES = {
    "commodity": "COMMODITY_",
    "direction": "FLOW_DIRECTION_",
    "register_type": "REGISTER_TYPE_",
    "state": "METER_STATE_",
}


@dataclass(frozen=True)
class ImportRow:
    # Line of the CSV document the row ends on (the header is line 1).
    line: int
    # The row's cells; None where the cell is empty or the column absent.
    values: MeterInput
    # MeterInput fields whose cell is not empty.
    provided: frozenset[str]
    # (column, problem) for cells that could not be read.
    errors: list[tuple[str, str]]


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], column: str) -> Callable[[str], E]:
    def parse(text: str) -> E:
        word = text.strip().upper().removeprefix(ENUM_PREFIXES[column]).lower()
        try:
            return kind(word)
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise ValueError(f"{quoted(text)} is not one of {choices}") from None

    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{quoted(text)} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{quoted(text)} is not a finite number")
    return value


def _interval(text: str) -> int:
    seconds = parse_duration(text)
    if seconds is None:
        raise ValueError(f"{quoted(text)} is not a duration such as 900, 900s, 15m or 1h")
    return seconds


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{quoted(pair)} is not key=value (pairs are separated by ';')")
        labels[key.strip()] = value.strip()
    return labels


PARSERS: dict[str, Callable[[str], Any]] = {
    "site_id": str.strip,
    "serial_number": str.strip,
    "name": str.strip,
    "unit": str.strip,
    "commodity": _enum(Commodity, "commodity"),
    "direction": _enum(Direction, "direction"),
    "register_type": _enum(RegisterType, "register_type"),
    "state": _enum(MeterState, "state"),
    "multiplier": _number,
    "rollover_value": _number,
    "expected_interval": _interval,
    "labels": _labels,
}


def _column_name(raw: str) -> str:
    return raw.strip().lower().replace(" ", "_").replace("-", "_")


def parse_csv(data: bytes, *, max_bytes: int, max_rows: int) -> list[ImportRow]:
    if not data.strip():
        raise InvalidArgument([("csv", "is empty: send the CSV document as the request body")])
    if len(data) > max_bytes:
        raise InvalidArgument(
            [("csv", f"is {len(data)} bytes; at most {max_bytes} are accepted (split the file)")]
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidArgument([("csv", f"is not UTF-8 text ({error.reason})")]) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [_column_name(cell) for cell in next(reader)]
        columns = _check_header(header)
        rows: list[ImportRow] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) == max_rows:
                raise InvalidArgument([("csv", f"has more than {max_rows} rows (split the file)")])
            rows.append(_row(reader.line_num, header, columns, cells))
    except csv.Error as error:
        raise InvalidArgument([("csv", f"line {reader.line_num}: {error}")]) from None
    if not rows:
        raise InvalidArgument([("csv", "has a header but no rows")])
    return rows


def _check_header(header: list[str]) -> list[str]:
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in header:
        if name not in COLUMNS:
            problems.append(
                ("csv.header", f"unknown column {quoted(name)} (columns: {', '.join(COLUMNS)})")
            )
        elif name in seen:
            problems.append(("csv.header", f"column {quoted(name)} appears twice"))
        seen.add(name)
    if len(problems) > MAX_HEADER_PROBLEMS:
        more = len(problems) - MAX_HEADER_PROBLEMS
        problems = [*problems[:MAX_HEADER_PROBLEMS], ("csv.header", f"{more} more problems")]
    if "serial_number" not in seen:
        problems.append(("csv.header", "the serial_number column is required"))
    if problems:
        raise InvalidArgument(problems)
    return header


def _row(line: int, header: list[str], columns: list[str], cells: list[str]) -> ImportRow:
    errors: list[tuple[str, str]] = []
    if len(cells) != len(header):
        errors.append(("row", f"has {len(cells)} cells but the header names {len(header)}"))
    values: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=False):
        if not cell.strip():
            continue
        try:
            values[COLUMNS[column]] = PARSERS[column](cell)
        except ValueError as error:
            errors.append((column, str(error)))
    provided = frozenset(values)
    return ImportRow(line=line, values=MeterInput(**values), provided=provided, errors=errors)
