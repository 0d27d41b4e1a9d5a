"""A screenshot of a report page for the docs: headless Chromium, offline, full height.

    python benchmarks/report_screenshot.py runs/quickstart/report.html docs/images/quickstart_report.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser import open_offline, start_chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("page")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2600, help="pixels from the top")
    args = parser.parse_args()
    driver = start_chromium()
    try:
        driver.set_window_size(args.width, args.height)
        check = open_offline(driver, Path(args.page))
        if check.console_errors:
            raise SystemExit(f"the page logged errors: {check.console_errors}")
        driver.save_screenshot(args.png)
    finally:
        driver.quit()
    print(f"wrote {args.png} ({check.plots} plots drawn)")


if __name__ == "__main__":
    main()
