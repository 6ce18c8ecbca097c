"""Open a static report from disk in headless Chromium (Debian's, driven by playwright) and check what a
reader sees: no console errors, every image loaded, every local link resolving, flagged images blurred
until clicked."""

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: apt-get install -y chromium (scripts/setup.sh does it)"
    return path


def check_report(index: Path) -> dict[str, int]:
    """Visit ``index`` and every page it links to; returns counts (pages, images, flagged tiles checked)."""
    from playwright.sync_api import sync_playwright

    counts = {"pages": 0, "images": 0, "flagged": 0}
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
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
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
