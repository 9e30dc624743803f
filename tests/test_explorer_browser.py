"""explorer.html in a real browser (Debian's chromium through selenium): it renders, colours the text by the unit
picked, and says what its numbers mean. Deselect with ``-m "not browser"`` where no browser can be installed."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from charrnn_analysis.explorer import write_explorer
from charrnn_analysis.ranking import rank_units

pytestmark = pytest.mark.browser

TEXT = "".join(f'say "word {i}" and go on\n' if i % 3 else f"line {i} has no quote\n" for i in range(40))
OFFSET = 5000  # the recording's position in its corpus


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium driven by Debian's chromedriver; skipped, saying why, where either is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def rgb(style: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in re.findall(r"\d+", style)[:3])


def test_explorer_colours_the_text_by_the_unit_picked_and_explains_itself(chromium, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    inside = np.array([1.0 if v else -1.0 for v in _in_quotes(TEXT)])
    A = np.stack([inside, np.full(len(TEXT), 0.5), -inside], axis=1)  # a quote unit, a constant, a reversed one
    labels = ["h.0:0", "h.0:1", "h.0:2"]
    top = rank_units(A, labels, TEXT, ["in_double_quotes"], top_k=3)
    page = write_explorer(tmp_path / "explorer.html", TEXT, A, labels, top, "demo", OFFSET, "test corpus")
    chromium.get(page.as_uri())

    spans = chromium.find_elements(By.CSS_SELECTOR, "#text span")
    assert len(spans) == len(TEXT)  # the whole recording
    extent = chromium.find_element(By.ID, "extent").text
    assert extent.startswith(
        f"All {len(TEXT)} recorded characters: characters {OFFSET}-{OFFSET + len(TEXT) - 1} of test corpus"
    )
    # opened on the top unit: blue inside quotes, red outside
    assert chromium.find_element(By.ID, "current").text == "h.0:0"
    first_quote = TEXT.index('"')
    r, g, b = rgb(spans[first_quote + 1].value_of_css_property("background-color"))
    assert b > r + 25, (r, g, b)
    r, g, b = rgb(spans[0].value_of_css_property("background-color"))
    assert r > b + 25, (r, g, b)

    # the table names the sign and the AUC itself, and explains the strength
    rows = chromium.find_elements(By.CSS_SELECTOR, "tr.unit-row")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert cells[0][:5] == ["in_double_quotes", "1", "h.0:0", "+", "AUC 1.00"]
    assert {c[2]: c[3] for c in cells}["h.0:2"] == "\u2212"  # the reversed unit: minus sign
    assert "|AUC \u2212 0.5| \u00d7 2" in chromium.find_element(By.ID, "help").text

    # picking another unit recolours the text: the constant unit gives every character one colour
    Select(chromium.find_element(By.ID, "units")).select_by_visible_text("h.0:1")
    colours = {spans[t].value_of_css_property("background-color") for t in range(0, len(TEXT), 7)}
    assert chromium.find_element(By.ID, "current").text == "h.0:1" and len(colours) == 1
    # clicking a table row shows that unit: the reversed one is red inside quotes
    next(row for row, c in zip(rows, cells) if c[2] == "h.0:2").click()
    r, g, b = rgb(spans[first_quote + 1].value_of_css_property("background-color"))
    assert chromium.find_element(By.ID, "current").text == "h.0:2" and r > b + 25

    # hovering explains the offset
    ActionChains(chromium).move_to_element(spans[first_quote]).perform()
    assert (
        chromium.find_element(By.ID, "hover").text
        == f'corpus character {OFFSET + first_quote} (recorded character {first_quote}): "\\"", unit value -1.00'
    )
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []
    shot = tmp_path / "explorer.png"
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 20_000


def _in_quotes(text: str) -> list[bool]:
    inside, out = False, []
    for ch in text:
        if ch == '"':
            inside = not inside
            out.append(True)
        else:
            out.append(inside)
    return out
