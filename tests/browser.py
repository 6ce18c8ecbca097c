"""Open a static report from disk in headless Chromium (Debian's, driven by playwright) and check what a
reader sees: no console errors, every image loaded, every local link resolving, flagged images blurred
until clicked, and, at a desktop and a phone width, text laid out wide enough to read with nothing
overflowing."""

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: apt-get install -y chromium (scripts/setup.sh does it)"
    return path


#: Viewport widths a page is read at: a laptop and a phone (an iPhone 12-15's CSS width).
WIDTHS = (1280, 390)
#: Text of at least this many characters that wraps must wrap in a box at least ``MIN_TEXT_WIDTH`` px wide.
LONG_TEXT, MIN_TEXT_WIDTH = 20, 120

#: Every visible text node: its length, its lines, its laid-out box, and its nearest block container's box and
#: the width it gives text (scrolled
#: containers count as the container: text inside a sideways-scrolling strip is within it).
_LAYOUT = """() => {
  const found = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const block = e => { while (e && getComputedStyle(e).display.startsWith('inline')) e = e.parentElement; return e; };
  while (walker.nextNode()) {
    const node = walker.currentNode, text = node.textContent.trim();
    if (!text || ['SCRIPT', 'STYLE'].includes(node.parentElement.tagName)) continue;
    const range = document.createRange(); range.selectNodeContents(node);
    if (!range.getClientRects().length) continue;
    const box = range.getBoundingClientRect(), holder = block(node.parentElement), style = getComputedStyle(holder);
    const lines = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top))).size;
    const room = holder.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    found.push({text: text.slice(0, 60), length: text.length, lines: lines, room: room, left: box.left, right: box.right,
                holderLeft: holder.getBoundingClientRect().left + holder.clientLeft,
                holderRight: holder.getBoundingClientRect().left + holder.clientLeft + holder.clientWidth,
                holderTag: holder.tagName + '.' + holder.className});
  }
  return {texts: found, pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth};
}"""


def layout_problems(page, width: int) -> list[str]:
    """What a reader at ``width`` px cannot read on the open page: squeezed text, text past its box, a page
    wider than the screen."""
    layout = page.evaluate(_LAYOUT)
    problems = []
    if layout["pageWidth"] > layout["viewport"] + 1:
        problems.append(f"the page is {layout['pageWidth']} px wide on a {width} px screen")
    for text in layout["texts"]:
        if text["length"] >= LONG_TEXT and text["lines"] > 1 and text["room"] < MIN_TEXT_WIDTH:
            problems.append(f"{text['text']!r} wraps in {text['room']:.0f} px, on {text['lines']} lines")
        if text["right"] > text["holderRight"] + 1 or text["left"] < text["holderLeft"] - 1:
            problems.append(f"{text['text']!r} overflows its {text['holderTag']}")
    return problems


def check_report(index: Path) -> dict[str, int]:
    """Visit ``index`` and every page it links to, at each of :data:`WIDTHS`; returns counts (pages, images,
    flagged tiles checked, texts checked)."""
    from playwright.sync_api import sync_playwright

    counts = {"pages": 0, "images": 0, "flagged": 0, "texts": 0}
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        queue, seen = [index.resolve()], set()
        while queue:
            path = queue.pop(0)
            if path in seen:
                continue
            seen.add(path)
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                problems = layout_problems(page, width)
                assert not problems, f"{path} at {width} px: {problems[:5]}"
                counts["texts"] += len(page.evaluate(_LAYOUT)["texts"])
            counts["pages"] += 1
            widths = page.evaluate(
                "Array.from(document.images).map(i => [i.src, i.complete ? i.naturalWidth : 0])"
            )
            broken = [src for src, width in widths if not width]
            assert not broken, f"{path}: images that did not load: {broken[:3]}"
            counts["images"] += len(widths)
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                target = Path(unquote(urlparse(href).path))
                assert target.is_file(), f"{path}: link to a missing file {target}"
                if target.suffix == ".html":
                    queue.append(target.resolve())
            tiles = page.locator(".tile.flagged")
            if tiles.count():
                tile = tiles.first
                image = tile.locator("img")
                style = "e => getComputedStyle(e).filter"
                assert image.evaluate(style).startswith("blur("), f"{path}: a flagged image is not blurred"
                tile.click()
                assert image.evaluate(style) == "none", f"{path}: a click does not reveal a flagged image"
                tile.click()
                assert image.evaluate(style).startswith("blur("), (
                    f"{path}: a second click does not blur it again"
                )
                counts["flagged"] += 1
        browser.close()
    assert not errors, f"console errors: {errors}"
    return counts
