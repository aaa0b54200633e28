"""HTML building blocks shared by every report page: escaping, tables, figures, the CSS.

The report modules import from here and never from each other's internals, so the imports
run one way: ``markup`` <- ``first_layer`` <- ``html``. Everything that comes from the user or
the data is escaped; images are embedded as ``data:`` URIs and the CSS is inline, so a page
is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: The stylesheet of every page, next to the page template.
STYLE_FILE = "style.css"


def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """One table cell: numbers to ``digits`` significant digits, booleans as yes/no, None and
    NaN as a dash, anything else escaped."""
    if value is None:
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "&ndash;" if math.isnan(v) else escape(f"{v:.{digits}g}")
    return escape(value)


def interval(lo: float, hi: float) -> str:
    """``[lo, hi]`` to 4 significant digits, or a dash when either end is not finite."""
    return "\u2013" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.4g}, {hi:.4g}]"


def html_table(
    frame: pd.DataFrame,
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    row_class: Sequence[str] | None = None,
    text_columns: Iterable[str] = (),
) -> str:
    """A plain HTML table of ``frame`` with every cell escaped; numbers to 4 significant digits.

    Parameters
    ----------
    frame : DataFrame
        The rows; an empty or missing frame gives a ``(none)`` paragraph.
    columns : sequence of str, optional
        The columns to show, in order (default: all).
    headers : mapping, optional
        Header text per column (default: the column name).
    row_class : sequence of str, optional
        A CSS class per row (``""`` for none), e.g. ``"significant"``.
    text_columns : iterable of str
        Columns aligned left as text; non-numeric columns are text anyway.
    """
    if frame is None or frame.empty:
        return '<p class="empty">(none)</p>'
    columns = list(columns or frame.columns)
    headers = dict(headers or {})
    text = set(text_columns)
    out = ['<div class="scroll"><table>', "<thead><tr>"]
    for c in columns:
        cls = ' class="text"' if c in text or not pd.api.types.is_numeric_dtype(frame[c]) else ""
        out.append(f"<th{cls}>{escape(headers.get(c, c))}</th>")
    out.append("</tr></thead><tbody>")
    for i, (_, row) in enumerate(frame[columns].iterrows()):
        cls = f' class="{escape(row_class[i])}"' if row_class is not None and row_class[i] else ""
        out.append(f"<tr{cls}>")
        for c in columns:
            v = row[c]
            is_text = c in text or not isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_))
            out.append(f'<td class="text">{fmt(v)}</td>' if is_text else f"<td>{fmt(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure_to_data_uri(fig: Figure, dpi: int = 110) -> str:
    """``data:image/png;base64,...`` of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures_html(figs: Mapping[str, tuple[Figure, str]], dpi: int) -> str:
    """``<figure id="fig-ID">`` elements (PNG data URI and escaped caption) of ``{id: (figure,
    caption)}``; an empty mapping gives a ``(no figures)`` paragraph."""
    if not figs:
        return '<p class="empty">(no figures)</p>'
    parts = []
    for fid, (fig, caption) in figs.items():
        parts.append(
            f'<figure id="fig-{escape(fid)}"><img alt="{escape(caption)}" src="{figure_to_data_uri(fig, dpi)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def notes_html(notes: Sequence[str] | None) -> str:
    """An escaped ``<ul>`` of ``notes``, or a ``(none)`` paragraph."""
    if not notes:
        return '<p class="empty">(none)</p>'
    return "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"


@lru_cache(maxsize=1)
def stylesheet() -> str:
    """The CSS shared by every page (``report/templates/style.css``)."""
    return resources.files(__package__).joinpath("templates", STYLE_FILE).read_text("utf-8")


def style_element() -> str:
    """The stylesheet as an inline ``<style>`` element."""
    return f"<style>\n{stylesheet()}</style>"


def template(name: str) -> str:
    """The text of ``report/templates/<name>``."""
    return resources.files(__package__).joinpath("templates", name).read_text("utf-8")


def standalone_page(title: str, body: str) -> str:
    """A self-contained HTML page: the shared CSS inline, ``title`` escaped, ``body`` as given
    (already HTML)."""
    t = escape(title)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{t}</title>\n'
            f"{style_element()}\n</head>\n<body>\n<h1>{t}</h1>\n{body}\n</body>\n</html>\n")


__all__ = [
    "escape", "figure_to_data_uri", "figures_html", "fmt", "html_table", "interval", "notes_html",
    "standalone_page", "style_element", "stylesheet", "template",
]
