"""What every `brinell` command module shares: consoles, the root state, output helpers.

Kept apart from ``brinell.cli`` so that the command modules (``cli_plugins``,
``cli_models``) and ``cli`` itself use one copy of the state, even under
``python -m brinell.cli``, where ``cli`` runs as ``__main__``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .client import DEFAULT_TARGET, Client

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED = 1
EXIT_ERROR = 2


@dataclasses.dataclass
class _State:
    target: str
    json: bool
    client: Client | None = None
    token: str | None = None
    tls_ca: str | None = None


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


def _state(ctx: typer.Context) -> _State:
    root = ctx.find_root()
    state = root.obj
    if not isinstance(state, _State):  # invoked without the root callback (tests)
        state = root.obj = _State(target=DEFAULT_TARGET, json=False)
    return state


def _client(ctx: typer.Context) -> Client:
    state = _state(ctx)
    if state.client is None:
        client = state.client = Client(state.target, token=state.token, tls=state.tls_ca)
        ctx.find_root().call_on_close(client.close)
    return state.client


def _want_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or _state(ctx).json


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(getattr(type(value), "id", None), property):
            data = {"id": value.id, **data}  # type: ignore[attr-defined]
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    out.print_json(json.dumps(_jsonable(value)), highlight=False)


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _seconds(value: timedelta | None) -> str:
    if value is None:
        return "-"
    total = value.total_seconds()
    if total < 60:
        return f"{total:.1f}s"
    minutes, seconds = divmod(int(total), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _details(rows: Iterable[tuple[str, object]]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, str) else escape(str(value)))
    out.print(table)


# In a narrow terminal other columns fold onto more lines; these keep their whole width on
# one line, so an id can be copied from the screen.
_WHOLE_COLUMNS = {"ID", "STATE", "DIGEST", "VERSION", "JOB", "TASK"}


class _Listing(Table):
    """A table that remembers its rows, to print them plain where stdout is not a terminal."""

    def __init__(self, *columns: str) -> None:
        super().__init__(box=None, pad_edge=False, header_style="bold")
        for column in columns:
            self.add_column(column, overflow="fold", no_wrap=column in _WHOLE_COLUMNS)
        self.plain_rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: Any, **options: Any) -> None:
        # Piped, a row is one line: tabs and line breaks inside a cell become spaces.
        plain = (Text.from_markup(str(c)).plain for c in cells)
        self.plain_rows.append(tuple(" ".join(c.split("\t")).replace("\n", " ") for c in plain))
        super().add_row(*cells, **options)


def _table(*columns: str) -> _Listing:
    return _Listing(*columns)


def _print_table(table: _Listing) -> None:
    """A table on a terminal; piped, one tab-separated line per row, nothing cut or wrapped."""
    if out.is_terminal:
        for i, column in enumerate(table.columns):
            if column.header in _WHOLE_COLUMNS:
                cells = [str(column.header), *(row[i] for row in table.plain_rows)]
                column.min_width = max(map(len, cells))
        out.print(table)
        return
    lines = [[str(c.header) for c in table.columns], *table.plain_rows]
    out.file.write("".join("\t".join(cells) + "\n" for cells in lines))
    out.file.flush()


def _kv(values: list[str] | None, option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; a value may contain ``=``."""
    result: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(text: str, option: str) -> int:
    """``512m``, ``4g``, ``4GiB``, ``1000`` -> bytes (binary units, as docker reads them)."""
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        result = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a size such as 512m or 4g") from None
    if result < 0:
        raise ValueError(f"{option} {text!r}: a size cannot be negative")
    return int(result)


def _limited(items: Iterator[Any], limit: int) -> list[Any]:
    return list(islice(items, limit) if limit > 0 else items)


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 12] if digest else "-"
