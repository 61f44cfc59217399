"""Render the report's blocks as Markdown and as one self-contained-looking HTML page.

A document is a list of blocks: ``("h", level, text)``, ``("p", text)``, ``("ul", [text, ...])``,
``("img", relative_path, caption)``, ``("gallery", [(relative_path, caption), ...])`` and
``("table", header, rows)``. Text may use `backticks` for code. Images stay files beside the
report (relative links), so the folder can be zipped or served as is.
"""
from __future__ import annotations

import html
import re
from typing import Any, Sequence

Block = tuple[Any, ...]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}
td.blocked{background:repeating-linear-gradient(45deg,#e4e4e4,#e4e4e4 4px,#f6f6f6 4px,#f6f6f6 8px)}
td.na{background:#f2f2f2;color:#666}
td.error{background:repeating-linear-gradient(45deg,#f4c7c3,#f4c7c3 4px,#fbe9e7 4px,#fbe9e7 8px)}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;max-width:48%}
code{background:#f3f3f3;padding:0 3px;border-radius:3px;overflow-wrap:anywhere}
"""


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        elif kind == "gallery":
            out.append("\n\n".join(f"![{cap}]({src})" for src, cap in b[1]))
        elif kind == "table":
            header, rows = b[1], b[2]
            lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
            out.append("\n".join(lines))
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** (the only markup the report's text uses)."""
    t = html.escape(str(text))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def _td(v: Any) -> str:
    s = str(v)
    cls = " class='blocked'" if s.startswith("blocked") else " class='error'" if s.startswith("error") else \
        " class='na'" if s.startswith(("n/a", "n/e", "denied")) else ""
    return f"<td{cls}>{_inline(s)}</td>"


def to_html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            anchor = re.sub(r"[^a-z0-9]+", "-", b[2].lower()).strip("-")
            body.append(f"<h{b[1]} id='{anchor}'>{_inline(b[2])}</h{b[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "img":
            body.append(f"<figure><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'>"
                        f"<figcaption>{_inline(b[2])}</figcaption></figure>")
        elif kind == "gallery":
            body.append("<div class='gallery'>" + "".join(
                f"<figure><img src='{html.escape(src)}' alt='{html.escape(cap)}'><figcaption>{_inline(cap)}"
                "</figcaption></figure>" for src, cap in b[1]) + "</div>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
