"""Regression targets of a raw row: one bare number (the single-target form), a list (target_0, target_1, ...),
a named `targets` object, or several columns mapped with data.columns {target: [quality, speed]}; and the rule
that every row of a file gives the targets of its first regression row."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tunesmith.data.rowproblem import RowProblem

if TYPE_CHECKING:
    from tunesmith.data.formats import Example, FileScan, Mapping


def _number(value, field_name: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise RowProblem(field_name, "wrong_type", f"'{field_name}' is {value!r}, expected a number") from None
    if not math.isfinite(number):
        raise RowProblem(field_name, "invalid_target", f"'{field_name}' is {value!r}")
    return number


def _present(value, field_name: str):
    if value is None or (isinstance(value, str) and not value.strip()):  # an empty CSV cell is a missing value
        raise RowProblem(field_name, "missing_target", f"'{field_name}' is missing")
    return value


def parse_targets(row: dict, cols: dict[str, str]) -> tuple[float | None, dict[str, float] | None]:
    """A regression row's target(s): (one number, None) for the single-target form, else (None, name → value)
    from a list (names target_0, target_1, ...), a `targets` object, or several mapped columns."""
    if "targets" in cols:
        value, key = row.get(cols["targets"]), cols["targets"]
        if not isinstance(value, dict) or not value:
            raise RowProblem(key, "wrong_type", f"'{key}' is {value!r}, expected an object of named numbers "
                             "such as {\"quality\": 4, \"speed\": 2}")
        return None, {str(name): _number(_present(v, f"{key}.{name}"), f"{key}.{name}") for name, v in value.items()}
    if "target" not in cols:  # several mapped columns: data.columns {target: [quality, speed]}
        names = [c for role, c in cols.items() if role.startswith("target:")]
        return None, {name: _number(_present(row.get(name), name), name) for name in names}
    value, key = row.get(cols["target"]), cols["target"]
    if not isinstance(value, list):
        return _number(value, key), None  # the single-target form, read exactly as before
    if not value:
        raise RowProblem(key, "wrong_type", f"'{key}' is an empty list, expected a number or a list of numbers")
    return None, {f"target_{i}": _number(_present(v, f"{key}[{i}]"), f"{key}[{i}]") for i, v in enumerate(value)}


def _target_field(name: str, cols: dict[str, str]) -> str:
    """Where a target sits in the raw row, for findings: targets.speed, target[1], or the column itself."""
    if "targets" in cols:
        return f"{cols['targets']}.{name}"
    if "target" in cols and name.startswith("target_"):
        return f"{cols['target']}[{name.removeprefix('target_')}]"
    return cols.get("target", name) if name == "target" else name


def check_targets(example: Example, mapping: Mapping, scan: FileScan) -> None:
    """Every row of a file gives the same targets as the file's first regression row (the head has one output
    per target); a named row listing them in another order is put in the file's order."""
    names = example.target_names
    if names is None:
        return
    if scan.target_names is None:
        scan.target_names = names
        return
    expected = scan.target_names
    if names == expected:
        return
    shown = ", ".join(expected)
    fix = f"give every row the file's targets ({shown}), or remove the row"
    if sorted(names) == sorted(expected):
        example.targets = {name: example.targets[name] for name in expected}
        return
    if ["target"] in (names, expected):  # one bare number on one side, several targets on the other
        key = mapping.columns.get("target") or mapping.columns.get("targets") or names[0]
        raise RowProblem(key, "wrong_type", f"this row gives {len(names)} target(s) but the file's first row "
                         f"gives {len(expected)} ({shown})", fix)
    missing = [n for n in expected if n not in names]
    if missing:
        raise RowProblem(_target_field(missing[0], mapping.columns), "missing_target",
                         f"target '{missing[0]}' is missing (the file's targets: {shown})", fix)
    extra = next(n for n in names if n not in expected)
    raise RowProblem(_target_field(extra, mapping.columns), "extra_target",
                     f"target '{extra}' is not one of the file's targets ({shown})", fix)
