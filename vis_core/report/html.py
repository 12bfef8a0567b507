"""The markdown subset the report writes -> one self-contained HTML page.

Supported: ATX headings (``#``..``######``), pipe tables (``---:`` right-aligns), paragraphs, ``- `` lists,
``> `` notes, fenced code blocks, inline ``code``, ``**bold**``, ``[text](href)`` links and ``![alt](path)``
images. Images are read from disk (relative to ``base_dir``) and inlined as base64 ``data:`` URIs; the CSS is
inline; nothing is fetched from the network, so the file works offline and can be mailed or archived alone.
External URLs are never turned into ``src=``/``href=`` attributes: they are printed as text.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from vis_core.io.atomic import atomic_write_text

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml"}
_EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; line-height: 1.5; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; }
th { background: #f6f8fa; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; background: #f6f8fa; border-radius: 4px; }
code { padding: .1em .3em; }
pre { padding: .8em; overflow-x: auto; }
blockquote { margin: .8em 0; padding: .2em 1em; color: #57606a; border-left: 4px solid #d0d7de; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.9em; }
.missing { color: #cf222e; }
"""


def _data_uri(path: Path) -> str | None:
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _image_html(alt: str, src: str, base_dir: Path) -> str:
    """``alt``/``src`` come unescaped; the result is safe HTML."""
    if _EXTERNAL.match(src):
        return f'<span class="missing">[external image not embedded: {html.escape(alt)}]</span>'
    uri = _data_uri(base_dir / src)
    if uri is None:
        return f'<span class="missing">[missing image: {html.escape(src)}]</span>'
    return f'<img alt="{html.escape(alt, quote=True)}" src="{uri}">'


def _inline(text: str, base_dir: Path) -> str:
    """Inline markdown -> HTML: code spans first (their content is literal), then the rest."""
    out = []
    for part in re.split(r"(`[^`]*`)", text):
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(_inline_text(part, base_dir))
    return "".join(out)


def _link(m: re.Match) -> str:
    label, href = m.group(1), html.unescape(m.group(2))
    if _EXTERNAL.match(href):
        return f"{label} ({html.escape(href)})"  # text only: the page must not point outside
    return f'<a href="{html.escape(href, quote=True)}">{label}</a>'


def _inline_text(text: str, base_dir: Path) -> str:
    """Images (rendered first, parked behind NUL placeholders so escaping leaves them alone), links, bold."""
    images: list[str] = []

    def park_image(m: re.Match) -> str:
        images.append(_image_html(m.group(1), m.group(2), base_dir))
        return f"\x00{len(images) - 1}\x00"

    s = html.escape(_IMAGE.sub(park_image, text), quote=False)
    s = _LINK.sub(_link, s)
    s = _BOLD.sub(r"<strong>\1</strong>", s)
    return re.sub("\x00(\\d+)\x00", lambda m: images[int(m.group(1))], s)


def _split_row(line: str) -> list[str]:
    """``| a | b \\| c |`` -> ``["a", "b | c"]`` (escaped pipes stay inside the cell)."""
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _table_html(lines: list[str], base_dir: Path) -> str:
    header = _split_row(lines[0])
    aligns = ["r" if c.strip().endswith(":") else "" for c in _split_row(lines[1])]
    aligns += [""] * (len(header) - len(aligns))

    def cell(tag: str, text: str, j: int) -> str:
        cls = ' class="r"' if j < len(aligns) and aligns[j] == "r" else ""
        return f"<{tag}{cls}>{_inline(text, base_dir)}</{tag}>"

    head = "".join(cell("th", h, j) for j, h in enumerate(header))
    out = ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for line in lines[2:]:
        out.append("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(_split_row(line))) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _is_separator(line: str) -> bool:
    return bool(re.fullmatch(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*", line))


def markdown_to_html(markdown: str, base_dir: str | os.PathLike = ".", title: str = "report") -> str:
    """Render the supported markdown subset to a complete, self-contained HTML document."""
    base_dir = Path(base_dir)
    lines = markdown.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif m := _HEADING.match(stripped):
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2), base_dir)}</h{level}>")
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table_html(lines[i:j], base_dir))
            i = j
        elif (m := _IMAGE.fullmatch(stripped)) is not None:
            caption = f"<figcaption>{html.escape(m.group(1))}</figcaption>" if m.group(1) else ""
            body.append(f"<figure>{_image_html(m.group(1), m.group(2), base_dir)}{caption}</figure>")
            i += 1
        elif stripped.startswith(">"):
            j = i
            while j < len(lines) and lines[j].strip().startswith(">"):
                j += 1
            text = " ".join(ln.strip()[1:].strip() for ln in lines[i:j])
            body.append(f"<blockquote><p>{_inline(text, base_dir)}</p></blockquote>")
            i = j
        elif stripped.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:], base_dir)}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not _starts_block(lines, j):
                j += 1
            j = max(j, i + 1)
            body.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines[i:j]), base_dir)}</p>")
            i = j
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _starts_block(lines: list[str], j: int) -> bool:
    s = lines[j].strip()
    return (s.startswith(("#", "```", ">", "- ", "|")) or _IMAGE.fullmatch(s) is not None)


def write_html(
    markdown_path: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None
) -> Path:
    """Render ``markdown_path`` (images resolved next to it) into ``html_path``, atomically."""
    markdown_path = Path(markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    if title is None:
        first = next((ln for ln in text.splitlines() if ln.startswith("# ")), "# report")
        title = re.sub(r"[`*]", "", first[2:]).strip()
    return atomic_write_text(html_path, markdown_to_html(text, markdown_path.parent, title))
