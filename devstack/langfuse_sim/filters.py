"""The `filter` query parameter of `GET /api/public/traces` and `GET /api/public/v2/observations`.

Three stages, as on the server (v4.16.0):

1. zod (`optionalJsonParam(z.array(singleFilter))`, `packages/shared/src/interfaces/filters.ts`):
   unparsable JSON throws `InvalidRequestError("Invalid JSON in filter parameter")`
   → 400 `{"message", "error": "InvalidRequestError"}`; a schema failure is a `ZodError`
   → 400 `{"message": "Invalid request data", "error": [zod v4 issues]}`. `issues()` reproduces
   the issues zod 4.3 emits (checked against zod 4.3.6), in its order.
2. Column resolution (`createFilterFromFilterState`): an unknown column or a filter type the
   column's definition does not accept → `InvalidRequestError` (400, same body shape).
3. Evaluation: ClickHouse semantics of `clickhouse-filter.ts` (`position`, `startsWith`, `hasAny`,
   `hasAll`, `mapContains(metadata, k) AND metadata[k] …`, NULL never matches).

Conditions are ANDed; a condition on a field replaces the simple query parameter on that field
(`deriveFilters`), other simple parameters still apply. Columns the server knows but the simulator
does not model answer 501 (never a silently wrong result).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.langfuse_sim.wire import Response, js_type

OPERATORS: dict[str, tuple[str, ...]] = {
    "datetime": (">", "<", ">=", "<="),
    "string": ("=", "contains", "does not contain", "starts with", "ends with"),
    "stringOptions": ("any of", "none of"),
    "categoryOptions": ("any of", "none of"),
    "arrayOptions": ("any of", "none of", "all of"),
    "number": ("=", ">", "<", ">=", "<="),
    "stringObject": ("=", "contains", "does not contain", "starts with", "ends with"),
    "numberObject": ("=", ">", "<", ">=", "<="),
    "booleanObject": ("=", "<>"),
    "boolean": ("=", "<>"),
    "null": ("is null", "is not null"),
}
FTS_MATCH = "matches"
_POSITION_KEYS = ("root", "first", "last", "nthFromEnd", "nthFromStart")
#: Field order of each object schema; zod reports issues in this order.
_SHAPES: dict[str, tuple[str, ...]] = {
    "datetime": ("column", "operator", "value", "type"),
    "string": ("column", "operator", "value", "type"),
    "number": ("column", "operator", "value", "type"),
    "stringOptions": ("column", "operator", "value", "type"),
    "categoryOptions": ("type", "column", "key", "operator", "value"),
    "arrayOptions": ("column", "operator", "value", "type"),
    "stringObject": ("type", "column", "key", "operator", "value"),
    "numberObject": ("type", "column", "key", "operator", "value"),
    "booleanObject": ("type", "column", "key", "operator", "value"),
    "boolean": ("type", "column", "operator", "value"),
    "null": ("type", "column", "operator", "value"),
    "positionInTrace": ("type", "column", "operator", "key", "value"),
}
_ARRAY_REFINE = (
    "Value array must not be empty unless operator is 'all of' or 'none of' (which represent waiting for selection)"
)
#: Filter types a column of a given definition type accepts (`COMPATIBLE_FILTER_TYPES`).
COMPATIBLE: dict[str, tuple[str, ...]] = {
    "string": ("string", "stringOptions"),
    "stringOptions": ("string", "stringOptions"),
    "arrayOptions": ("arrayOptions", "stringOptions"),
    "datetime": ("datetime",),
    "number": ("number",),
    "boolean": ("boolean",),
    "stringObject": ("stringObject",),
    "numberObject": ("numberObject",),
    "booleanObject": ("booleanObject",),
    "categoryOptions": ("categoryOptions", "stringOptions"),
}


class FilterRejected(Exception):
    """The request is answered with `response` (a 400 as the server sends it, or the sim's 501)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def invalid_request(message: str) -> FilterRejected:
    return FilterRejected(Response(400, {"message": message, "error": "InvalidRequestError"}))


def zod_error(issues: list[dict[str, Any]]) -> FilterRejected:
    return FilterRejected(Response(400, {"message": "Invalid request data", "error": issues}))


# ---------------------------------------------------------------------------------------------
# zod emulation
# ---------------------------------------------------------------------------------------------
def _received(value: Any, missing: bool) -> str:
    return "undefined" if missing else js_type(value)


def _type_issue(expected: str, value: Any, path: list[Any], missing: bool = False) -> dict[str, Any]:
    return {
        "expected": expected,
        "code": "invalid_type",
        "path": path,
        "message": f"Invalid input: expected {expected}, received {_received(value, missing)}",
    }


def _enum_issue(values: tuple[str, ...], path: list[Any]) -> dict[str, Any]:
    options = "|".join(json.dumps(v) for v in values)
    message = f"Invalid input: expected {options}" if len(values) == 1 else f"Invalid option: expected one of {options}"
    return {"code": "invalid_value", "values": list(values), "path": path, "message": message}


def js_date(value: Any, missing: bool = False) -> float | None:
    """`new Date(value)` as epoch seconds, or None for an Invalid Date (`z.coerce.date()`)."""
    if missing:
        return None
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value) / 1000
    if isinstance(value, int | float):
        return float(value) / 1000
    if isinstance(value, list):
        value = ",".join("" if v is None else str(v) for v in value)
    if not isinstance(value, str):
        return None
    return parse_iso(value)


def parse_iso(text: str) -> float | None:
    """ISO 8601 as `Date.parse` reads it: a date alone or a date-time with an offset is UTC-based;
    a date-time without an offset is local time (UTC on a server). Other formats are not modelled."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def js_number(value: Any) -> float | None:
    """`Number(value)` for a query-string value (`z.coerce.number()`); None is NaN."""
    if value is None:
        return 0.0
    text = str(value).strip()
    if text == "":
        return 0.0
    try:
        if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            return float(text)
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return float(int(text, 16))
    except ValueError:
        return None
    if text in ("Infinity", "+Infinity"):
        return float("inf")
    if text == "-Infinity":
        return float("-inf")
    return None


def number_issues(
    raw: str | None, path: str, *, integer: bool, minimum: float, min_inclusive: bool, maximum: float
) -> list[dict[str, Any]]:
    """`z.coerce.number()[.int()].gt/gte(minimum).lte(maximum)` on one query-string value."""
    value = js_number(raw)
    if value is None:
        return [
            {
                "expected": "number",
                "code": "invalid_type",
                "received": "NaN",
                "path": [path],
                "message": "Invalid input: expected number, received NaN",
            }
        ]
    if integer and not (value.is_integer() and abs(value) <= 2**53 - 1):
        return [
            {
                "expected": "int",
                "format": "safeint",
                "code": "invalid_type",
                "path": [path],
                "message": "Invalid input: expected int, received number",
            }
        ]
    too_small = value < minimum if min_inclusive else value <= minimum
    if too_small:
        sign = ">=" if min_inclusive else ">"
        return [
            {
                "origin": "number",
                "code": "too_small",
                "minimum": int(minimum),
                "inclusive": min_inclusive,
                "path": [path],
                "message": f"Too small: expected number to be {sign}{int(minimum)}",
            }
        ]
    if value > maximum:
        return [
            {
                "origin": "number",
                "code": "too_big",
                "maximum": int(maximum),
                "inclusive": True,
                "path": [path],
                "message": f"Too big: expected number to be <={int(maximum)}",
            }
        ]
    return []


_ISO_OFFSET = re.compile(
    r"^\d{4}-\d{2}-\d{2}T(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"
)


def iso_datetime_issue(raw: str | None, path: str) -> list[dict[str, Any]]:
    """`z.iso.datetime({ offset: true })` (calendar validity not re-checked here)."""
    if raw is None or _ISO_OFFSET.match(raw):
        return []
    return [
        {
            "origin": "string",
            "code": "invalid_format",
            "format": "datetime",
            "path": [path],
            "message": "Invalid ISO datetime",
        }
    ]


def parse_filter_json(raw: str | None) -> Any:
    """Stage 1a: the JSON text (empty or absent → no filter). Raises `FilterRejected`."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid_request("Invalid JSON in filter parameter") from None


def issues(value: Any, *, events_table: bool) -> list[dict[str, Any]]:
    """Stage 1b: zod issues of `z.array(singleFilter | eventsTableSingleFilter)` at path `filter`."""
    if not isinstance(value, list):
        return [_type_issue("array", value, ["filter"])]
    found: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        found.extend(_condition_issues(item, ["filter", index], events_table))
    return found


def _condition_issues(item: Any, path: list[Any], events_table: bool) -> list[dict[str, Any]]:
    if not isinstance(item, dict):
        return [
            {
                "code": "invalid_type",
                "expected": "object",
                "path": path,
                "message": f"Invalid input: expected object, received {js_type(item)}",
            }
        ]
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in _SHAPES:
        return [
            {
                "code": "invalid_union",
                "errors": [],
                "note": "No matching discriminator",
                "discriminator": "type",
                "path": [*path, "type"],
                "message": "Invalid input",
            }
        ]
    found: list[dict[str, Any]] = []
    for name in _SHAPES[kind]:
        found.extend(_field_issues(kind, name, item, [*path, name], events_table))
    if found:
        return found
    if kind == "arrayOptions" and item["operator"] == "any of" and not item["value"]:
        return [{"code": "custom", "path": path, "message": _ARRAY_REFINE}]
    if kind == "positionInTrace" and item["key"] in ("nthFromEnd", "nthFromStart"):
        position = item.get("value")
        if not position or position < 1:
            return [{"code": "custom", "message": "Position must be >= 1 for nth selection", "path": [*path, "value"]}]
    return []


def _field_issues(
    kind: str, name: str, item: dict[str, Any], path: list[Any], events_table: bool
) -> list[dict[str, Any]]:
    missing = name not in item
    value = item.get(name)
    if name == "type":
        return []  # the discriminator already matched
    if name in ("column",) or (name == "key" and kind != "positionInTrace"):
        return [] if isinstance(value, str) else [_type_issue("string", value, path, missing)]
    if name == "key":
        return [] if value in _POSITION_KEYS else [_enum_issue(_POSITION_KEYS, path)]
    if name == "operator":
        return _operator_issues(kind, value, path, events_table)
    return _value_issues(kind, value, path, missing)


def _operator_issues(kind: str, value: Any, path: list[Any], events_table: bool) -> list[dict[str, Any]]:
    if kind == "positionInTrace":
        return [] if value == "=" else [_enum_issue(("=",), path)]
    allowed = OPERATORS["string" if kind == "stringObject" else kind]
    if value in allowed:
        return []
    if events_table and kind in ("string", "stringObject"):
        if value == FTS_MATCH:
            return []
        return [
            {
                "code": "invalid_union",
                "errors": [[_enum_issue(allowed, [])], [_enum_issue((FTS_MATCH,), [])]],
                "path": path,
                "message": "Invalid input",
            }
        ]
    return [_enum_issue(allowed, path)]


def _value_issues(kind: str, value: Any, path: list[Any], missing: bool) -> list[dict[str, Any]]:
    if kind == "datetime":
        if js_date(value, missing) is None:
            return [
                {
                    "expected": "date",
                    "code": "invalid_type",
                    "received": "Invalid Date",
                    "path": path,
                    "message": "Invalid input: expected date, received Date",
                }
            ]
        return []
    if kind in ("string", "stringObject"):
        return [] if isinstance(value, str) else [_type_issue("string", value, path, missing)]
    if kind in ("number", "numberObject"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [_type_issue("number", value, path, missing)]
    if kind in ("boolean", "booleanObject"):
        return [] if isinstance(value, bool) else [_type_issue("boolean", value, path, missing)]
    if kind == "null":
        return [] if value == "" else [_enum_issue(("",), path)]
    if kind == "positionInTrace":
        ok = missing or (isinstance(value, int | float) and not isinstance(value, bool))
        return [] if ok else [_type_issue("number", value, path)]
    if not isinstance(value, list):
        return [_type_issue("array", value, path, missing)]
    found = [_type_issue("string", v, [*path, i]) for i, v in enumerate(value) if not isinstance(v, str)]
    if not found and kind == "stringOptions" and not value:
        return [{"code": "custom", "path": path, "message": "Invalid input"}]
    return found


# ---------------------------------------------------------------------------------------------
# columns and evaluation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One filterable column: the ids/names a filter may use, the underlying field (for precedence
    over simple parameters), the definition type (`None`: the server skips the type check), the
    value kind for evaluation (`None`: known to the server, not modelled here), and the getter."""

    names: tuple[str, ...]
    field: str
    definition: str | None
    kind: str | None
    get: Callable[[Any], Any] | None = None
    empty_is_null: bool = False


@dataclass(frozen=True)
class Condition:
    field: str
    test: Callable[[Any], bool]


def resolve(filters: list[dict[str, Any]], columns: list[Column]) -> list[Condition]:
    """Stage 2 and 3: conditions in filter order; raises `FilterRejected` on the first bad one."""
    conditions: list[Condition] = []
    for item in filters:
        if item["type"] == "positionInTrace":
            continue  # accepted by the schema, then dropped by createFilterFromFilterState
        name = _legacy_score_column(item, columns)
        column = next((c for c in columns if name in c.names), None)
        if column is None:
            raise invalid_request(f"Column {name} does not match a UI / CH table mapping.")
        if column.definition is not None and item["type"] != "null":
            allowed = COMPATIBLE.get(column.definition)
            if allowed is not None and item["type"] not in allowed:
                raise invalid_request(
                    f"Invalid filter type '{item['type']}' for column '{item['column']}'. "
                    f"Expected filter type '{column.definition}'."
                )
        conditions.append(Condition(column.field, _test(item, column)))
    return conditions


_LEGACY_SCORE_COLUMNS = {
    "categoryOptions": "score_categories",
    "numberObject": "scores_avg",
    "booleanObject": "score_booleans",
}


def _legacy_score_column(item: dict[str, Any], columns: list[Column]) -> str:
    """`resolveLegacyScoreFilterColumn`: a column named `scores` (any case) is typed by the filter."""
    name = str(item["column"])
    if name.lower() != "scores":
        return name
    typed = _LEGACY_SCORE_COLUMNS.get(item["type"])
    if typed is None:
        raise invalid_request(
            f"Invalid filter type '{item['type']}' for legacy score column '{name}'. "
            "Expected one of 'categoryOptions', 'numberObject', or 'booleanObject'."
        )
    if item["type"] == "numberObject" and not any(typed in c.names for c in columns):
        return name
    return typed


def _not_modelled(what: str) -> FilterRejected:
    return FilterRejected(
        Response(501, {"message": f"langfuse-sim does not model {what}", "error": "NotImplementedError"})
    )


_KIND_TYPES = {
    "text": ("string", "stringOptions", "null"),
    "datetime": ("datetime", "null"),
    "array": ("arrayOptions",),
    "map": ("stringObject",),
    "bool": ("boolean",),
}


def _test(item: dict[str, Any], column: Column) -> Callable[[Any], bool]:
    kind, ftype, op = column.kind, item["type"], item["operator"]
    if kind is None or column.get is None or ftype not in _KIND_TYPES.get(kind, ()) or op == FTS_MATCH:
        raise _not_modelled(f"a '{ftype}' filter with '{op}' on column '{item['column']}'")
    get = column.get
    if ftype == "null":
        wants_null = op == "is null"
        return lambda row: _is_null(get(row), column.empty_is_null) == wants_null
    if ftype == "string":
        return _string_test(get, op, item["value"])
    if ftype == "stringOptions":
        values = set(item["value"])
        if op == "any of":
            return lambda row: (v := get(row)) is not None and v in values
        return lambda row: (v := get(row)) is not None and v not in values
    if ftype == "datetime":
        bound = js_date(item["value"])
        assert bound is not None
        compare = _COMPARE[op]
        return lambda row: (v := get(row)) is not None and compare(round(v, 3), round(bound, 3))
    if ftype == "arrayOptions":
        wanted = list(item["value"])
        if op == "any of":
            return lambda row: any(tag in get(row) for tag in wanted)
        if op == "none of":
            return lambda row: not any(tag in get(row) for tag in wanted)
        return lambda row: all(tag in get(row) for tag in wanted)
    if ftype == "stringObject":
        key = item["key"]
        text_test = _string_test(lambda value: value, op, item["value"])
        return lambda row: (value := get(row)(key)) is not None and text_test(value)
    return lambda row: (get(row) == item["value"]) == (op == "=")  # boolean


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def _is_null(value: Any, empty_is_null: bool) -> bool:
    return value is None or (empty_is_null and value == "")


def _string_test(get: Callable[[Any], Any], op: str, needle: str) -> Callable[[Any], bool]:
    """ClickHouse string operators; a NULL field matches none of them."""
    checks: dict[str, Callable[[str], bool]] = {
        "=": lambda v: v == needle,
        "contains": lambda v: needle in v,
        "does not contain": lambda v: needle not in v,
        "starts with": lambda v: v.startswith(needle),
        "ends with": lambda v: v.endswith(needle),
    }
    check = checks[op]
    return lambda row: (v := get(row)) is not None and check(v)


def apply(rows: list[Any], conditions: list[Condition]) -> list[Any]:
    return [row for row in rows if all(c.test(row) for c in conditions)]


def merge_simple(advanced: list[Condition], simple: list[Condition]) -> list[Condition]:
    """`deriveFilters`: a simple parameter is dropped when a filter condition targets its field."""
    taken = {c.field for c in advanced}
    return advanced + [c for c in simple if c.field not in taken]
