"""Open a report in a real browser (headless Chromium through Selenium), check it reads at a glance, screenshot it.

    pip install selenium                    # and Chromium with its driver: apt-get install chromium chromium-driver
    python experiments/check_report.py experiments/results/cpu/report.html --png experiments/results/cpu/report-top.png

Checks, in the page as the browser laid it out: the verdict summary table comes before any section and has a row per
verdict; every table-of-contents link lands on an anchor that exists; every figure decoded (an <img> with a natural
width); the page is no wider than the window at 1280 px (nothing forces sideways scrolling except inside tables);
nothing on the page says `nan`. Prints one line per failed check and exits 1, or prints what it checked and exits 0.
--png writes a screenshot of the top of the page (the title, the table of contents and the summary table).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

WIDTH, HEIGHT = 1280, 1400

CHECKS_JS = r"""
const out = {};
const tables = Array.from(document.querySelectorAll('table'));
const firstSection = document.querySelector('[id^="section-"]');
const summary = tables.find(t => t.querySelector('th') && t.querySelector('th').textContent.trim() === 'section');
out.summary_rows = summary ? summary.querySelectorAll('tr').length - 1 : -1;
out.summary_first = !!(summary && firstSection &&
    (summary.compareDocumentPosition(firstSection) & Node.DOCUMENT_POSITION_FOLLOWING));
const links = Array.from(document.querySelectorAll('a[href^="#"]'));
out.links = links.length;
out.broken_links = links.map(a => a.getAttribute('href').slice(1))
    .filter(id => !document.getElementById(id)).slice(0, 5);
const imgs = Array.from(document.images);
out.images = imgs.length;
out.broken_images = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40));
out.page_width = document.documentElement.scrollWidth;
out.nan = (document.body.innerText.match(/\bnan\b/g) || []).length;
out.verdicts = (document.body.innerText.match(/\b(supports|contradicts|inconclusive)\b/g) || []).length;
return out;
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report.html written by `jscale report`")
    ap.add_argument("--png", type=Path, help="write a screenshot of the top of the page here")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"check_report: {args.report}: no such file", file=sys.stderr)
        return 2
    try:
        from selenium import webdriver
    except ImportError:
        print("check_report: needs selenium (pip install selenium) and Chromium with chromedriver", file=sys.stderr)
        return 2
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(flag)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium:
        options.binary_location = chromium
    driver_path = shutil.which("chromedriver")
    service = webdriver.ChromeService(executable_path=driver_path) if driver_path else None
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(args.report.resolve().as_uri())
        found = driver.execute_script(CHECKS_JS)
        if args.png:
            args.png.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.png))
    finally:
        driver.quit()
    problems = []
    if found["summary_rows"] <= 0:
        problems.append("no verdict summary table (a table whose first column is 'section')")
    elif not found["summary_first"]:
        problems.append("the verdict summary table comes after a section")
    if found["broken_links"]:
        problems.append(f"table-of-contents links to missing anchors: {', '.join(found['broken_links'])}")
    if found["broken_images"]:
        problems.append(f"{len(found['broken_images'])} figures did not decode: {found['broken_images'][:3]}")
    if found["page_width"] > WIDTH:
        problems.append(f"the page is {found['page_width']} px wide in a {WIDTH} px window")
    if found["nan"]:
        problems.append(f"'nan' appears {found['nan']} times in the text")
    for p in problems:
        print(f"check_report: {args.report}: {p}")
    if problems:
        return 1
    print(f"check_report: {args.report}: {found['summary_rows']} verdicts in the summary table, before every "
          f"section; {found['links']} links land on anchors; {found['images']} figures decoded; page width "
          f"{found['page_width']} px" + (f"; screenshot {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
