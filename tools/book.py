"""The book: the notebooks of `nbs/` as a static site, built offline by `mkdocs build` (mkdocs.yml names this file
under `hooks:`; the theme is Material for MkDocs).

Every notebook becomes a Markdown page in memory (nothing is written into the repository): its Markdown cells as they
are, its code cells as highlighted Python with the nbdev directives (`#| export`, `#| default_exp`, ...) taken off, the
exported code in full, and the committed outputs (the figures) as image files beside the page. A cell marked `#| hide`
(or `#| include: false`) is left out; `#| echo: false` / `#| hide_input` keep only its outputs, `#| output: false` /
`#| hide_output` only its code. `nbs/index.ipynb` is the front page, and its "Reading order" list (bold lines name the
parts) is the site's navigation, so the order lives in one place. Links between notebooks (`04_rga.ipynb`, or
`../nbs/04_rga.ipynb` from a page of `docs/`) point to their pages.

Math (`$...$`, `$$...$$`) is typeset in the browser by MathJax 3 as SVG (no web fonts: browsers refuse to load them from
file://), from the copy that the PyPI package `django-static-mathjax` ships (MathJax's own release; the package needs no
Django), copied into the site: no page loads anything from the network.
"""
import base64
import json
import re
from pathlib import Path

import mathjax
from mkdocs.structure.files import File

NBS = "nbs"
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")
LIST_ITEM = re.compile(r"(?:[-*+]|1[.)])\s+\S")      # a list's first item, at the start of a line
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
NB_LINK = re.compile(r"\]\((?:(?:\.\./)?nbs/)?([\w.-]+)\.ipynb(#[^)\s]*)?\)")
IMAGES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "image/gif": "gif"}
MATHJAX = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
MATHJAX_PARTS = ("tex-svg.js", "input/", "output/svg/", "ui/", "a11y/", "adaptors/")   # what tex-svg.js may load


def _src(x) -> str:
    return "".join(x) if isinstance(x, list) else (x or "")


def directives(source: str) -> tuple[dict, str]:
    "nbdev/quarto directives at the top of a code cell (`#| key: value` or `#| key`), and the code without them."
    lines, found = source.split("\n"), {}
    i = 0
    while i < len(lines) and (DIRECTIVE.match(lines[i]) or not lines[i].strip()):
        m = DIRECTIVE.match(lines[i])
        if m and m.group(1):
            key, _, value = m.group(1).partition(":") if ":" in m.group(1) else m.group(1).partition(" ")
            found[key.strip().replace("-", "_")] = value.strip()
        i += 1
    return found, "\n".join(lines[i:]).strip("\n")


def commonmark_lists(md: str) -> str:
    """A blank line before a list that follows a paragraph line. Jupyter's Markdown (CommonMark) lets a list interrupt a
    paragraph; Python-Markdown, which mkdocs uses, needs the blank line, and would otherwise print `- item` as text."""
    out, fence = [], None
    for line in md.split("\n"):
        f = re.match(r"\s*(```+|~~~+)", line)
        if f and (fence is None or f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence)):
            fence = f.group(1) if fence is None else None
        elif fence is None and LIST_ITEM.match(line) and out and out[-1].strip() \
                and not LIST_ITEM.match(out[-1]) and not out[-1].startswith((" ", "\t", "|", ">")):
            out.append("")
        out.append(line)
    return "\n".join(out)


def _off(d: dict, key: str) -> bool:
    return d.get(key, "").lower() in ("false", "no", "0")


def _fence(text: str, lang: str = "") -> str:
    longest = max([len(r) for r in re.findall(r"`+", text)] + [2])
    f = "`" * (longest + 1)
    return f"{f}{lang}\n{text.rstrip()}\n{f}"


def _text_output(o: dict) -> str | None:
    if o["output_type"] == "stream": return _src(o.get("text"))
    if o["output_type"] == "error": return ANSI.sub("", "\n".join(o.get("traceback", [])))
    return None


def outputs_markdown(outputs: list, stem: str, cell_no: int, images: dict) -> list[str]:
    "Markdown for a code cell's outputs; image files are added to `images` (site path -> bytes)."
    parts = []
    for j, o in enumerate(outputs):
        text = _text_output(o)
        if text is not None:
            if text.strip(): parts.append(_fence(text, "text"))
            continue
        data = o.get("data", {})
        kind = next((k for k in IMAGES if k in data), None)
        if kind:
            name = f"{stem}_files/cell{cell_no}_{j}.{IMAGES[kind]}"
            raw = _src(data[kind])
            images[name] = raw.encode() if kind == "image/svg+xml" else base64.b64decode(raw)
            parts.append(f'<div class="nb-output" markdown>\n![output of cell {cell_no}]({name})\n</div>')
        elif "text/html" in data: parts.append(f'<div class="nb-output">\n{_src(data["text/html"]).strip()}\n</div>')
        elif "text/markdown" in data: parts.append(_src(data["text/markdown"]))
        elif "text/latex" in data: parts.append(_src(data["text/latex"]))
        elif "text/plain" in data: parts.append(_fence(_src(data["text/plain"]), "text"))
    return parts


def notebook_markdown(nb: dict, stem: str) -> tuple[str, dict]:
    "A notebook as one Markdown page, and the images it shows (site path -> bytes)."
    parts, images = [], {}
    for n, c in enumerate(nb["cells"]):
        src = _src(c.get("source"))
        if c["cell_type"] == "markdown":
            for name, bundle in c.get("attachments", {}).items():
                kind = next((k for k in IMAGES if k in bundle), None)
                if kind:
                    safe = re.sub(r"[^\w.-]", "_", name)
                    path = f"{stem}_files/cell{n}_{safe}"
                    images[path] = base64.b64decode(_src(bundle[kind]))
                    src = src.replace(f"attachment:{name}", path)
            parts.append(src.strip("\n"))
        elif c["cell_type"] == "code":
            d, code = directives(src)
            if "hide" in d or _off(d, "include"): continue
            if code.strip() and "hide_input" not in d and not _off(d, "echo"): parts.append(_fence(code, "python"))
            if "hide_output" not in d and not _off(d, "output"):
                parts += outputs_markdown(c.get("outputs", []), stem, n, images)
    return "\n\n".join(p for p in parts if p.strip()) + "\n", images


def _title(nb: dict) -> str:
    for c in nb["cells"]:
        m = re.search(r"^#\s+(.+?)\s*$", _src(c["source"]), re.M) if c["cell_type"] == "markdown" else None
        if m: return m.group(1).replace("`", "")
    return ""


def reading_order(index: dict) -> list[tuple[str, list[str]]]:
    """The index's "Reading order" section as [(part, [notebook stem, ...]), ...]: a line in bold starts a part, a list
    item linking `NN_name.ipynb` adds a chapter."""
    parts, on = [], False
    for c in index["cells"]:
        if c["cell_type"] != "markdown": continue
        for line in _src(c["source"]).split("\n"):
            if line.startswith("#"): on = "reading order" in line.lower()
            if not on: continue
            bold = re.fullmatch(r"\s*\*\*(.+?)\*\*\s*", line)
            link = re.match(r"\s*[-*]\s+\[[^\]]*\]\(([\w.-]+)\.ipynb\)", line)
            if bold: parts.append((bold.group(1), []))
            elif link:
                if not parts: parts.append(("Chapters", []))
                parts[-1][1].append(link.group(1))
    return parts


def notebooks(root: Path) -> dict[str, Path]:
    "Every top-level notebook of nbs/ (the chapters and the index) by stem."
    return {p.stem: p for p in sorted((root / NBS).glob("*.ipynb")) if not p.name.startswith((".", "_"))}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _label(stem: str, nb: dict) -> str:
    "A chapter's name in the sidebar: its number and its title up to a colon (`03 Channel attention`)."
    number = re.match(r"\d+", stem)
    return " ".join(filter(None, [number and number.group(0), _title(nb).split(":")[0] or stem]))


def navigation(root: Path, docs_dir: Path) -> list:
    """The site's nav: the front page, the index's parts in its order, the notebooks it does not list, then the pages
    of docs/ (named by their first heading)."""
    nbs = notebooks(root)
    label = {s: _label(s, _load(p)) for s, p in nbs.items()}
    nav, listed = [{"Home": "index.md"}], {"index"}
    for part, stems in reading_order(_load(nbs["index"])):
        nav.append({part: [{label[s]: f"{s}.md"} for s in stems if s in nbs]})
        listed.update(stems)
    rest = [s for s in nbs if s not in listed]
    if rest: nav.append({"Other notebooks": [{label[s]: f"{s}.md"} for s in rest]})
    pages = []
    for p in sorted(docs_dir.rglob("*.md")):
        h1 = re.search(r"^#\s+(.+)$", p.read_text(encoding="utf-8"), re.M)
        pages.append({h1.group(1) if h1 else p.stem: p.relative_to(docs_dir).as_posix()})
    if pages: nav.append({"Using and reproducing": pages})
    return nav


# ---- mkdocs hooks ----------------------------------------------------------------------------------------------------

def on_config(config):
    if config.nav is None: config.nav = navigation(_root(config), Path(config.docs_dir))
    if "pymdownx.snippets" in config.mdx_configs:   # docs/results.md's includes (reports/*.md) from the repository root
        config.mdx_configs["pymdownx.snippets"]["base_path"] = [str(_root(config))]
    return config


def on_files(files, config):
    for stem, path in notebooks(_root(config)).items():
        text, images = notebook_markdown(_load(path), stem)
        files.append(File.generated(config, f"{stem}.md", content=text))
        for name, data in images.items(): files.append(File.generated(config, name, content=data))
    for p in sorted((_root(config) / "reports").glob("*.png")):   # the report's figures, for docs/results.md
        files.append(File.generated(config, f"reports/{p.name}", abs_src_path=str(p)))
    for p in sorted(MATHJAX.rglob("*")):
        rel = p.relative_to(MATHJAX).as_posix()
        if p.is_file() and rel.startswith(MATHJAX_PARTS):
            files.append(File.generated(config, f"assets/mathjax/{rel}", abs_src_path=str(p)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Lists read as Jupyter and code hosts read them (`commonmark_lists`); links to notebooks (`04_rga.ipynb`,
    `../nbs/04_rga.ipynb`) become links to their pages, and `../reports/X.png` (right from docs/ on a code host) the
    copy of the figure in the site."""
    markdown = NB_LINK.sub(lambda m: f"]({m.group(1)}.md{m.group(2) or ''})", commonmark_lists(markdown))
    return markdown.replace("](../reports/", "](reports/")
