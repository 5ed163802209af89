"""Tables as people and scripts read them: one function every listing command prints through.

On a terminal: a compact rich table fitted to the terminal's width. Cells are never cut
mid-value (a price, a name or a run id half-shown is worse than absent): when the columns do
not fit, whole columns are left out, least important first, and a note names them. The
columns a listing cannot be read without (`keep`) are never left out; they fold instead.
Not a terminal (piped, redirected): complete plain rows, the header first, columns aligned by
spaces, no box characters, no colour, no truncation, whatever the width; the title and notes
go to stderr so that stdout is only the rows. `--json` is the format for programs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    right: bool = False     # numbers: right-aligned
    drop: int = 0           # 0: never left out; otherwise higher goes first when it does not fit


def _plain(cell) -> str:
    return cell[0] if isinstance(cell, tuple) else ("-" if cell is None else str(cell))


def show(columns: list[Column], rows: list[list], *, title: str | None = None, notes=(), console=None,
         err=None) -> None:
    """Print ROWS (lists of cells: text, or (text, rich style)) under COLUMNS.

    `console`/`err`: rich Consoles for stdout/stderr (tests pass their own)."""
    from rich.console import Console

    console = console or Console(highlight=False)
    if not console.is_terminal:
        err = err or Console(stderr=True, highlight=False, soft_wrap=True)
        return _show_plain(columns, rows, title, notes, console, err)
    shown = list(range(len(columns)))
    hidden: list[str] = []
    while True:
        table = _table(columns, rows, shown, title)
        # widest natural rendering vs the terminal: the `keep` columns may still fold below
        from rich.measure import Measurement

        natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
        if natural <= console.width:
            break
        candidates = [i for i in shown if columns[i].drop]
        if not candidates:
            break
        worst = max(candidates, key=lambda i: (columns[i].drop, i))
        shown.remove(worst)
        hidden.append(columns[worst].name)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, style="dim")
    if hidden:
        console.print(f"not shown at {console.width} columns: {', '.join(reversed(hidden))} "
                      "(a wider terminal, a pipe or --json shows every column)", style="dim", markup=False)


def _table(columns, rows, shown, title):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
                  title_style="bold")
    for i in shown:
        c = columns[i]
        table.add_column(c.name, justify="right" if c.right else "left", no_wrap=bool(c.drop),
                         overflow="fold")
    for row in rows:
        cells = []
        for i in shown:
            cell = row[i]
            if isinstance(cell, tuple):
                from rich.text import Text

                cells.append(Text(cell[0], style=cell[1] or ""))
            else:
                from rich.text import Text

                cells.append(Text(_plain(cell)))
        table.add_row(*cells)
    return table


def _show_plain(columns, rows, title, notes, out, err) -> None:
    texts = [[_plain(c) for c in row] for row in rows]
    widths = [max([len(col.name)] + [len(r[i]) for r in texts]) for i, col in enumerate(columns)]

    def line(cells):
        parts = []
        for i, (cell, col) in enumerate(zip(cells, columns)):
            last = i == len(columns) - 1
            parts.append(cell.rjust(widths[i]) if col.right else (cell if last else cell.ljust(widths[i])))
        return "  ".join(parts).rstrip()

    if title:
        err.print(title, markup=False)
    write = out.file.write if hasattr(out, "file") else sys.stdout.write
    write(line([c.name for c in columns]) + "\n")
    for r in texts:
        write(line(r) + "\n")
    for note in notes:
        err.print(note, markup=False)
