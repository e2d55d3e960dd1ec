"""Screenshot a report page with headless Chromium (Debian's `chromium` package), so a person (or a
test) can see what a browser shows.

    python -m benchmarks.screenshot runs/eval/report.html report.png [--width 1200 --height 900]"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(page: str, png: str, *, width: int = 1200, height: int = 900, timeout: float = 120.0) -> str:
    """Render `page` (an HTML file) in headless Chromium and write a PNG of the first screen."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install Debian's package (apt-get install chromium).")
    if not os.path.isfile(page):
        raise FileNotFoundError(f"page {page!r} does not exist; write the report first (flowalign eval ...).")
    png = os.path.abspath(png)
    os.makedirs(os.path.dirname(png), exist_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
           f"--window-size={width},{height}", "file://" + os.path.abspath(page)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not os.path.isfile(png):
        raise RuntimeError(f"chromium failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args(argv)
    print(f"wrote {screenshot(args.page, args.png, width=args.width, height=args.height)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
