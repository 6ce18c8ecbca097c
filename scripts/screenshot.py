"""Screenshot a static report page in headless Chromium, optionally with its first flagged image revealed.

.venv/bin/python scripts/screenshot.py tiny-run/eval-test/report/hate-1.html docs/report_screenshot.png --reveal
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--reveal", action="store_true", help="click the first flagged image")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        if args.reveal and page.locator(".tile.flagged").count():
            page.locator(".tile.flagged").first.click()
        page.screenshot(path=str(args.png))
        browser.close()


if __name__ == "__main__":
    main()
