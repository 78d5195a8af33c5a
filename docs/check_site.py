"""Open the built site in a headless browser and check what a reader relies on.

    python docs/check_site.py [docs/_build/html] [--browser /usr/bin/chromium]

Serves the built HTML on a local port, then, in Chromium (through Playwright):
every page of the navigation bar opens; the search page finds ``KNNVoter`` and its
first result opens the class's page; every image on every gallery page has loaded
(non-zero natural width); no page logs a JavaScript error. Prints one line per
check and exits non-zero if any failed. Needs ``pip install playwright`` and a
Chromium (``apt-get install chromium``); not part of CI.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser moved on (a click) before the file was sent


def _serve(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="docs/_build/html")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "index.html").is_file():
        print(f"no built site at {root}: build it first", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    server, base = _serve(root)
    failures = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.browser, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{base}/index.html")
        check("skknn" in page.title(), f"home page opens: {page.title()!r}")
        links = page.locator("nav.bd-header a.nav-link, .bd-sidebar-primary a")
        hrefs = sorted(
            {
                h
                for h in links.evaluate_all("els => els.map(e => e.href)")
                if h.startswith(base)
            }
        )
        check(len(hrefs) >= 8, f"navigation links: {len(hrefs)}")
        for href in hrefs:
            response = page.goto(href)
            ok = response is not None and response.ok and page.locator("h1").count() > 0
            check(ok, f"navigation opens {href[len(base) :]}")

        page.goto(f"{base}/user_guide/index.html")
        guide = sorted(
            {
                h.split("#")[0]
                for h in page.locator("article a.reference.internal").evaluate_all(
                    "els => els.map(e => e.href)"
                )
            }
        )
        check(len(guide) >= 6, f"user guide pages: {len(guide)}")
        for href in guide:
            response = page.goto(href)
            check(response is not None and response.ok, f"opens {href[len(base) :]}")

        page.goto(f"{base}/search.html?q=KNNVoter")
        results = page.locator("#search-results li a")
        results.first.wait_for(timeout=15000)
        check(results.count() > 0, f"search for KNNVoter: {results.count()} results")
        first = results.first.get_attribute("href")
        results.first.click()
        page.wait_for_load_state()
        check("KNNVoter" in page.content(), f"first search result opens ({first})")

        gallery = sorted((root / "auto_examples").glob("plot_*.html"))
        check(len(gallery) >= 10, f"gallery pages: {len(gallery)}")
        n_images = 0
        for html in gallery:
            page.goto(f"{base}/auto_examples/{html.name}")
            page.wait_for_load_state("load")
            widths = page.locator("img").evaluate_all(
                "els => els.map(e => e.complete ? e.naturalWidth : 0)"
            )
            figures = [w for w in widths]
            n_images += len(figures)
            check(
                bool(figures) and all(w > 0 for w in figures),
                f"{html.name}: {len(figures)} images loaded",
            )
        check(not errors, f"JavaScript errors: {errors[:3]}")
        browser.close()
    server.shutdown()
    print(f"{len(failures)} failed; {n_images} gallery images checked")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
