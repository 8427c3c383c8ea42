"""The book: `mkdocs build` (mkdocs.yml, tools/book.py) turns the notebooks into a static site, built here into a
temporary folder and opened page by page in headless Chromium through its DevTools protocol. Every chapter of the
index's reading order has a page, in that order; no nbdev directive shows and `#| hide` cells are left out; exported
code is shown in full; every page's math is typeset, its images load, its links to local files and anchors resolve,
and it makes no request outside the machine; search finds a chapter from file://. The browser checks skip where
Debian's `chromium` is not installed (.ci/run installs it)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="Debian's chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book") / "site"
    p = subprocess.run([str(BIN / "mkdocs"), "build", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert p.returncode == 0, p.stderr[-4000:]
    return out


def _nb(stem):
    return json.loads((ROOT / "nbs" / f"{stem}.ipynb").read_text(encoding="utf-8"))


def _squeeze(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _article(html: Path):
    return BeautifulSoup(html.read_text(encoding="utf-8"), "html.parser").find("article")


# ---- the conversion, on a made-up notebook ---------------------------------------------------------------------------

def _cell(kind, src, **kw):
    return {"cell_type": kind, "source": src, "metadata": {}, **({"outputs": []} if kind == "code" else {}), **kw}


def test_directives_hidden_cells_and_outputs():
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    nb = {"cells": [
        _cell("markdown", "# Title\n\nSee [the next](02_next.ipynb#part)."),
        _cell("code", "#| default_exp things"),
        _cell("code", "#| export\ndef shown(x):\n    return x + 1"),
        _cell("code", "#| hide\nsecret = 42"),
        _cell("code", "#|include: false\nalso_secret = 1"),
        _cell("code", "#| echo: false\nonly_the_figure()",
              outputs=[{"output_type": "display_data", "data": {"image/png": png}, "metadata": {}}]),
        _cell("code", "#| output: false\nprint('quiet')",
              outputs=[{"output_type": "stream", "name": "stdout", "text": "q"}]),
        _cell("code", "print('loud')", outputs=[{"output_type": "stream", "name": "stdout", "text": "loud\n"}]),
    ]}
    md, images = book.notebook_markdown(nb, "01_x")
    assert "#|" not in md and "default_exp" not in md
    assert "def shown(x):\n    return x + 1" in md
    assert "secret" not in md and "only_the_figure" not in md and "\nq\n" not in md and "loud\n```" in md
    assert list(images) == ["01_x_files/cell5_0.png"] and images["01_x_files/cell5_0.png"].startswith(b"\x89PNG")
    assert "](01_x_files/cell5_0.png)" in md
    assert book.NB_LINK.sub(lambda m: f"]({m[1]}.md{m[2] or ''})", md).count("](02_next.md#part)") == 1


def test_lists_after_a_paragraph_line():
    "A list may follow a paragraph line in Jupyter (CommonMark); Python-Markdown needs the blank line added."
    md = "Three ideas:\n- a\n- b\n\n```\nnot:\n- a list\n```\n1. one\n2. two"
    assert book.commonmark_lists(md) == "Three ideas:\n\n- a\n- b\n\n```\nnot:\n- a list\n```\n\n1. one\n2. two"


def test_reading_order_is_the_index():
    parts = book.reading_order(_nb("index"))
    stems = [s for _, ss in parts for s in ss]
    assert len(parts) >= 2 and len(stems) == len(set(stems)) >= 20, parts
    assert all((ROOT / "nbs" / f"{s}.ipynb").exists() for s in stems), stems


# ---- the built site --------------------------------------------------------------------------------------------------

def test_a_page_per_chapter_in_reading_order(site):
    stems = [s for _, ss in book.reading_order(_nb("index")) for s in ss]
    missing = [s for s in book.notebooks(ROOT) if not (site / f"{s}.html").exists()]
    assert not missing, f"no page for {missing}"
    soup = BeautifulSoup((site / "index.html").read_text(encoding="utf-8"), "html.parser")
    nav = [a["href"].removesuffix(".html") for a in soup.select("nav.md-nav--primary a.md-nav__link[href$='.html']")]
    nav = [s for s in dict.fromkeys(nav) if s in stems]
    assert nav == stems, f"the sidebar's order {nav} is not the index's {stems}"


def test_code_shown_in_full_without_directives(site):
    "Every exported cell's code is on its chapter's page as written (not a signature); no code block shows a directive."
    for stem in book.notebooks(ROOT):
        art = _article(site / f"{stem}.html")
        code_text = "\n".join(pre.get_text() for pre in art.find_all("pre"))
        assert not re.search(r"(?m)^\s*#\s*\|", code_text), f"{stem}: an nbdev directive is shown"
        text = _squeeze(code_text)
        for c in _nb(stem)["cells"]:
            if c["cell_type"] != "code": continue
            d, code = book.directives("".join(c["source"]))
            if "hide" in d: assert _squeeze(code) not in text, f"{stem}: a `#| hide` cell is shown"
            elif "export" in d and code.strip():
                assert _squeeze(code) in text, f"{stem}: exported code not shown in full: {code[:80]!r}"


def test_markdown_rendered(site):
    "No page's prose shows Markdown that was not rendered: `**`, `](`, backticks, a `- ` item as text, a `#` heading."
    left = []
    for page in sorted(site.glob("*.html")):
        art = _article(page)
        if art is None: continue
        for tag in art.find_all(["pre", "code", "script"]): tag.decompose()
        text = art.get_text(" ")
        for pattern in (r"\*\*\S", r"\]\(", r"`", r"(?m)^\s*[-*] \S", r"(?m)^#{1,6} \S"):
            left += [f"{page.name}: {text[max(0, m.start() - 40):m.end() + 20]!r}" for m in re.finditer(pattern, text)]
    assert not left, left[:10]


def test_no_remote_source_in_the_html(site):
    "Nothing a page loads comes from outside: scripts, styles, images, frames and CSS urls are local files."
    bad = []
    for f in site.rglob("*.html"):
        soup = BeautifulSoup(f.read_text(encoding="utf-8"), "html.parser")
        for tag in soup.find_all(["script", "link", "img", "iframe", "source", "video", "audio"]):
            url = tag.get("src") or (tag.get("href") if tag.name == "link" else None)
            if url and re.match(r"(https?:)?//", url): bad.append(f"{f.name}: <{tag.name}> {url}")
    for f in site.rglob("*.css"):
        css = f.read_text(encoding="utf-8", errors="replace")
        bad += [f"{f.name}: {u}" for u in re.findall(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", css)]
    assert not bad, bad


# ---- in Chromium -----------------------------------------------------------------------------------------------------

class Chromium:
    "Headless Chromium driven through the DevTools protocol (one page, websocket-client)."

    def __init__(self, profile: Path):
        import websocket
        self.proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", "--remote-allow-origins=*",
                                      f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = profile / "DevToolsActivePort", time.monotonic()   # Chromium writes the port it chose there
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, f"chromium exited with status {self.proc.returncode}"
            assert time.monotonic() - t0 < 60, "chromium did not open its DevTools port in 60 s"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        self.ws = websocket.create_connection(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"],
                                              timeout=30, suppress_origin=True)
        self.n, self.events = 0, []
        for domain in ("Page", "Network", "Runtime"): self.call(f"{domain}.enable")

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]
            self.events.append(msg)

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True, timeout=30000)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def open(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        t0 = time.monotonic()
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() - t0 < 60, f"{url} did not load"
            self.events.append(json.loads(self.ws.recv()))

    def requests(self):
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Chromium(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


# What a page shows once MathJax has typeset it: math found and rendered, raw TeX left in the text, images that did not
# load, the local links (file: URLs) and the page's element ids.
INSPECT = """new Promise(done => {
  const report = () => {
    const art = document.querySelector("article").cloneNode(true);
    art.querySelectorAll("pre, code, script").forEach(e => e.remove());
    const math = [...document.querySelectorAll(".arithmatex")];
    done({
      math: math.length,
      rendered: math.filter(e => e.querySelector("mjx-container svg")).length,
      errors: document.querySelectorAll("mjx-merror, [data-mjx-error]").length,
      raw: ["$$", "\\\\(", "\\\\[", "\\\\frac", "\\\\mathrm"].filter(s => art.textContent.includes(s)),
      images: [...document.images].length,
      broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
      links: [...document.querySelectorAll("a[href]")].map(a => a.href).filter(h => h.startsWith("file:")),
      ids: [...document.querySelectorAll("[id]")].map(e => e.id),
    });
  };
  if (window.MathJax && MathJax.startup) MathJax.startup.promise.then(report); else report();
})"""


@needs_chromium
def test_pages_in_chromium(site, browser):
    "Every page in the browser: math typeset, no raw TeX, images loaded, no request off the machine, links resolve."
    pages = sorted(p for p in site.glob("*.html") if p.name != "404.html")   # 404.html is a server's: links from /
    found, problems = {}, []
    for page in pages:
        browser.open(page.as_uri())
        r = found[page.resolve()] = browser.js(INSPECT)
        outside = [u for u in browser.requests() if not u.startswith(("file:", "data:", "about:", "blob:"))]
        problems += [f"{page.name}: requested {u}" for u in outside]
        problems += [f"{page.name}: image did not load: {u}" for u in r["broken"]]
        if r["rendered"] != r["math"] or r["errors"]:
            problems.append(f"{page.name}: {r['math']} formulas, {r['rendered']} typeset, {r['errors']} errors")
        problems += [f"{page.name}: raw TeX {s!r} in the text" for s in r["raw"]]
    for page, r in found.items():
        for href in r["links"]:
            u = urlsplit(href)
            target = Path(unquote(u.path))
            if target.is_dir(): target = target / "index.html"
            if not target.exists(): problems.append(f"{page.name}: broken link {href}")
            elif u.fragment and target.resolve() in found and unquote(u.fragment) not in found[target.resolve()]["ids"]:
                problems.append(f"{page.name}: link to a missing anchor {href}")
    assert not problems, "\n".join(problems[:40])
    math, images = sum(r["math"] for r in found.values()), sum(r["images"] for r in found.values())
    assert math >= 5 and images >= 10, (math, images)   # the checks above did see formulas and figures


@needs_chromium
def test_search_works_from_file(site, browser):
    "Material's search (its worker run in an iframe from file://) finds the re-ranking chapter."
    browser.open((site / "index.html").as_uri())
    box = browser.js("(() => { const r = document.querySelector('input.md-search__input').getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):   # a click, as a reader's: it opens the search and starts its worker
        browser.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
    browser.call("Input.insertText", text="reciprocal")
    found = browser.js("""new Promise(done => {
      const t0 = Date.now();
      const poll = () => {
        const hits = [...document.querySelectorAll(".md-search-result__item a")].map(a => a.getAttribute("href"));
        if (hits.length || Date.now() - t0 > 20000) done(hits); else setTimeout(poll, 100);
      };
      poll();
    })""")
    assert any("22_rerank.html" in h for h in found), found
