"""Page assembly: inlined Vega/Vega-Lite/vega-embed, escaped data, and the SQL under each chart.

Specs are embedded as JSON inside ``<script type="application/json">`` with ``<``, ``>`` and ``&``
written as ``\\u003c``, ``\\u003e`` and ``\\u0026``: Altair's own ``to_html`` lets a ``</script>``
inside a benchmark question end the script block. Every text shown as HTML is escaped.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from attnwh.core.output import readable

_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
section { margin-bottom: 2.5rem; }
details pre { background: #f6f6f6; padding: .75rem; overflow-x: auto; }
.table { overflow-x: auto; }  /* wide tables scroll inside the page, not the page */
table.data { border-collapse: collapse; font-size: .85rem; }
table.data td { white-space: nowrap; }
table.data td, table.data th { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
p.empty { color: #777; font-style: italic; }
.pictures figure { margin: 0 0 1.5rem; padding: .5rem; border-left: .4rem solid #999; }
.pictures figure.right { border-color: #1a7f37; }
.pictures figure.wrong { border-color: #b3261e; }
.pictures img { max-width: 100%; height: auto; display: block; }
.pictures figcaption { font-size: .85rem; margin-top: .25rem; }
ul.story li { margin-bottom: .4rem; line-height: 1.4; }
"""


def json_for_script(value) -> str:
    """JSON that cannot end or alter the ``<script>`` element it is placed in."""
    return json.dumps(value, allow_nan=False, default=_plain).translate(_JSON_ESCAPES)


def _plain(value):
    """Numbers DuckDB hands over as Decimal (sums of integers) stay numbers; anything else becomes text."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


@cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script, from vl-convert (no network)."""
    import vl_convert

    return vl_convert.javascript_bundle().replace("</script", "<\\/script")


@dataclass(frozen=True)
class Picture:
    """An image of the page, inlined as a data URI (no file beside the page, no network), with its caption."""

    data_uri: str
    alt: str
    caption: str
    verdict: str = ""  # "right" / "wrong": the frame's colour


@dataclass(frozen=True)
class Link:
    """A table cell that links to another page (or a place on one)."""

    text: str
    href: str


@dataclass(frozen=True)
class Sentence:
    """A sentence of the report's text, computed from a mart, with a link to the figure it describes."""

    text: str
    href: str
    label: str = "figure"


@dataclass
class Section:
    title: str
    description: str
    sql: str
    spec: dict | None = None  # a Vega-Lite spec, or None when there is no data
    table: list[dict] | None = None  # rows shown as an HTML table
    empty_message: str = "No data for this section yet."
    pictures: list[Picture] | None = None  # images shown in a gallery (self-contained data URIs)
    anchor: str | None = None  # the section's id, for links from other pages (default: its place on the page)
    sentences: list[Sentence] | None = None  # a list of sentences, each linking to its figure


@dataclass
class Page:
    title: str
    sections: list[Section] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, label)

    def render(self) -> str:
        body, scripts = [], []
        for index, section in enumerate(self.sections):
            body.append(_section_html(index, section))
            if section.spec is not None:
                scripts.append(f'<script type="application/json" id="spec-{index}">{json_for_script(section.spec)}</script>')
        nav = " · ".join(f'<a href="{html.escape(href)}">{html.escape(label)}</a>' for href, label in self.links)
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                f"<title>{html.escape(self.title)}</title>",
                f"<style>{STYLE}</style>",
                f"<script>{vega_bundle()}</script>",
                "</head><body>",
                f"<h1>{html.escape(self.title)}</h1>",
                f"<nav>{nav}</nav>" if nav else "",
                *body,
                *scripts,
                "<script>",
                "document.querySelectorAll('script[id^=\"spec-\"]').forEach(function (node) {",
                "  var target = '#chart-' + node.id.slice(5);",
                "  vegaEmbed(target, JSON.parse(node.textContent), {actions: false, renderer: 'svg'})",
                "    .catch(function (error) { console.error(error); });",
                "});",
                "</script>",
                f"<script>{IMAGE_CHECK}</script>" if any(section.pictures for section in self.sections) else "",
                "</body></html>",
            ]
        )


def _section_html(index: int, section: Section) -> str:
    parts = [f'<section id="{html.escape(section.anchor or f"section-{index}", quote=True)}">', f"<h2>{html.escape(section.title)}</h2>"]
    if section.description:
        parts.append(f"<p>{html.escape(section.description)}</p>")
    if section.spec is not None:
        parts.append(f'<div class="chart" id="chart-{index}"></div>')
    elif section.sentences:
        items = "".join(f'<li>{html.escape(item.text)} <a href="{html.escape(item.href, quote=True)}">({html.escape(item.label)})</a></li>' for item in section.sentences)
        parts.append(f'<ul class="story">{items}</ul>')
    elif section.pictures or section.table:
        if section.pictures:
            parts.append(_pictures_html(section.pictures))
        if section.table:
            parts.append(_table_html(section.table))
    else:
        parts.append(f'<p class="empty">{html.escape(section.empty_message)}</p>')
    parts.append(f"<details><summary>SQL</summary><pre>{html.escape(section.sql.strip())}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _pictures_html(pictures: list[Picture]) -> str:
    figures = "".join(
        f'<figure class="{html.escape(picture.verdict, quote=True)}"><img src="{html.escape(picture.data_uri, quote=True)}" alt="{html.escape(picture.alt, quote=True)}">'
        f"<figcaption>{html.escape(picture.caption)}</figcaption></figure>"
        for picture in pictures
    )
    return f'<div class="pictures">{figures}</div>'


# a broken image says so on the console (the browser test fails on any console line), and every image records the
# width it decoded to
IMAGE_CHECK = """
window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-decoded-width', String(img.naturalWidth));
    if (!img.complete || img.naturalWidth === 0) { console.error('broken image: ' + img.alt); }
  });
});
"""


def _table_html(rows: list[dict]) -> str:
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell_html(row[c], c)}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<div class="table"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell_html(value, column: str) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.href, quote=True)}">{html.escape(value.text)}</a>'
    return html.escape(readable(value, column))
