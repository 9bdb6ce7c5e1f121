"""The search page of ``sapindex serve``, in a real browser (Debian's Chromium driven by Selenium through
the system ChromeDriver; nothing is downloaded): a query finds the expected page first, its thumbnail
and its explain overlay load, a path filter narrows the results, a token-protected service asks for the
token once, and a file named like an HTML tag shows as text. Beside it, the routes the page uses: the
thumbnails only of indexed pages (no path traversal), placeholders for changed or missing files, and
the security headers."""

from __future__ import annotations

import io
import shutil
import urllib.parse
from pathlib import Path

import pytest
from helpers import TOKEN, Server
from PIL import Image

from sapindex.index.indexer import run_index
from sapindex.runtime.defaults import default_bundle_path, example_pages, example_queries
from sapindex.search import Searcher

EVIL = "<img src=x onerror=alert(1)>.png"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _variant(source: Path, target: Path, shade: int) -> None:
    """A copy of ``source`` with one pixel changed: other bytes, so the index stores it as a file of its own."""
    with Image.open(source) as im:
        image = im.convert("RGB")
    image.putpixel((0, 0), (shade, shade, shade))
    image.save(target)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    pages = root / "pages"
    (pages / "finance").mkdir(parents=True)
    for p in example_pages():
        shutil.copy(p, pages / ("finance" if p.name == "page-03.png" else "") / p.name)
    _variant(example_pages()[1], pages / EVIL, 1)
    _variant(example_pages()[2], pages / "changing.png", 2)
    _variant(example_pages()[3], pages / "gone.png", 3)
    run_index(default_bundle_path(), [str(pages)], root / "idx")
    _variant(example_pages()[2], pages / "changing.png", 200)  # changed since it was indexed
    (pages / "gone.png").unlink()
    (root / "token").write_text(TOKEN)
    open_server, token_server = Server(root / "idx"), Server(root / "idx", "--token-file", str(root / "token"))
    yield root, open_server, token_server
    open_server.stop()
    token_server.stop()


def _q(**params) -> str:
    return urllib.parse.urlencode(params)


def test_page_routes_read_only_indexed_files(site):
    root, server, secured = site
    pages = root / "pages"
    status, headers, body = server.fetch("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert b"http://" not in body and b"https://" not in body  # nothing external: the page works air-gapped
    for name in ("app.js", "app.css"):
        status, _, asset = server.fetch(f"/ui/{name}")
        assert status == 200 and b"http://" not in asset and b"https://" not in asset
    assert server.fetch("/ui/../sapindex.json")[0] == 404 and server.fetch("/ui/index.html")[0] == 404
    good = str(pages / "page-01.png")
    status, headers, png = server.fetch("/page?" + _q(path=good, page=1, width=200))
    assert status == 200 and headers["content-type"] == "image/png" and "x-sapindex-note" not in headers
    assert Image.open(io.BytesIO(png)).width <= 200 and "max-age" in headers["cache-control"]
    assert server.fetch("/page?" + _q(path=good, page=1, width=200), headers={"If-None-Match": headers["etag"]})[0] \
        == 304
    for path, page in ((str(pages / "page-01.png"), 2), ("/etc/passwd", 1), (f"{pages}/../pages/page-01.png", 1),
                       (str(root / "idx" / "sapindex.json"), 1)):
        status, _, body = server.fetch("/page?" + _q(path=path, page=page))
        assert status == 404 and b"not in the index" in body
        assert server.fetch("/file?" + _q(path=path))[0] == (200 if page == 2 else 404)
    for name, said in (("changing.png", "changed since it was indexed"), ("gone.png", "no such file")):
        status, headers, png = server.fetch("/page?" + _q(path=str(pages / name), page=1))
        assert status == 200 and said in headers["x-sapindex-note"] and png.startswith(b"\x89PNG")
        assert server.fetch("/file?" + _q(path=str(pages / name)))[0] == 409
    status, headers, raw = server.fetch("/file?" + _q(path=good))
    assert status == 200 and raw == (pages / "page-01.png").read_bytes() and headers["content-type"] == "image/png"
    assert secured.fetch("/")[0] == 200  # the page itself holds no data
    assert secured.fetch("/page?" + _q(path=good, page=1))[0] == 401
    assert secured.fetch("/page?" + _q(path=good, page=1), token=TOKEN)[0] == 200


# ------------------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waiting for {what}")


def _search(driver, query: str, prefix: str = ""):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "prefix").clear()
    if prefix:
        driver.find_element(By.ID, "prefix").send_keys(prefix)
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    _wait(driver, lambda d: "best first" in d.find_element(By.ID, "status").text
          or "No indexed page" in d.find_element(By.ID, "status").text, "the results")
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


def _loaded(driver, element) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


def test_search_in_the_browser(site, browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    root, server, _ = site
    with Searcher.open(root / "idx") as searcher:  # a query the micro model answers with its own page first
        example = next(e for e in example_queries()
                       if Path(searcher.search(e["query"], k=1)[0].path).name == e["page"] != "page-03.png")
    browser.get(server.url + "/")
    _wait(browser, lambda d: "pages" in d.find_element(By.ID, "stats").text, "the index statistics")
    stats = browser.find_element(By.ID, "stats").text
    assert "11 pages" in stats and "exact search" in stats
    hits = _search(browser, example["query"])
    assert hits[0].find_element(By.CSS_SELECTOR, ".path").text == f"{root / 'pages' / example['page']} · page 1"
    thumbs = [h.find_element(By.TAG_NAME, "img") for h in hits]
    _wait(browser, lambda d: all(_loaded(d, t) for t in thumbs[:3]), "the thumbnails")
    assert all(t.get_attribute("alt").startswith("Page ") for t in thumbs)
    browser.save_screenshot(str(tmp_path / "results.png"))
    # accessibility: every input labelled, the focused result visibly outlined
    for field in browser.find_elements(By.CSS_SELECTOR, "input"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field.get_attribute('id')}']"), field
    hits[0].send_keys(Keys.ARROW_RIGHT)
    focused = browser.switch_to.active_element
    assert focused == hits[1]
    assert browser.execute_script("return getComputedStyle(arguments[0]).outlineStyle", focused) != "none"
    # the overlay, opened with Enter and closed with Esc
    hits[0].send_keys(Keys.ENTER)
    overlay = browser.find_element(By.ID, "overlay")
    _wait(browser, lambda d: _loaded(d, overlay), "the explain overlay")
    assert example["page"] in browser.find_element(By.ID, "viewer-title").text
    browser.save_screenshot(str(tmp_path / "overlay.png"))
    main_tab = browser.current_window_handle
    browser.find_element(By.ID, "open-file").click()  # the source file, fetched with the page's credentials
    _wait(browser, lambda d: len(d.window_handles) == 2, "the file's tab")
    browser.switch_to.window(next(h for h in browser.window_handles if h != main_tab))
    _wait(browser, lambda d: d.current_url.startswith("blob:"), "the file in its tab")
    assert browser.current_url.endswith("#page=1")
    browser.close()
    browser.switch_to.window(main_tab)
    browser.find_element(By.ID, "close-viewer").send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: not d.find_element(By.ID, "viewer").is_displayed(), "the viewer to close")
    # a path filter, and a prefix nothing has
    filtered = _search(browser, example["query"], prefix=str(root / "pages" / "finance"))
    assert [h.find_element(By.CSS_SELECTOR, ".path").text.split(" · ")[0] for h in filtered] == \
        [str(root / "pages" / "finance" / "page-03.png")]
    assert _search(browser, "revenue", prefix="/nowhere/") == []
    assert "/nowhere/" in browser.find_element(By.ID, "status").text
    # a file named like an HTML tag is text, and runs nothing
    everything = _search(browser, "annual report total", prefix=str(root / "pages" / "<"))
    assert [h.find_element(By.CSS_SELECTOR, ".path").text for h in everything] == \
        [f"{root / 'pages' / EVIL} · page 1"]
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)
    # a changed file: a placeholder and its reason, not an error page
    changed = _search(browser, "annual report total", prefix=str(root / "pages" / "changing"))
    _wait(browser, lambda d: "changed since it was indexed" in changed[0].find_element(By.CSS_SELECTOR, ".note").text,
          "the placeholder's note")
    shutil.copy(tmp_path / "results.png", root / "results.png")  # for a look after the run


def test_a_token_is_asked_once_per_tab(site, browser):
    from selenium.webdriver.common.by import By

    _, _, secured = site
    browser.get(secured.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed(), "the token form")
    assert browser.find_elements(By.CSS_SELECTOR, "label[for='token']")
    browser.find_element(By.ID, "token").send_keys("wrong-token-0123456789")
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed(), "the form again after a wrong token")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    _wait(browser, lambda d: "pages" in d.find_element(By.ID, "stats").text, "the statistics with the token")
    assert _search(browser, "annual report")
    browser.refresh()  # the same tab keeps it: no second prompt
    _wait(browser, lambda d: "pages" in d.find_element(By.ID, "stats").text, "the statistics after a reload")
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    assert browser.execute_script("return document.cookie") == "" and TOKEN not in browser.current_url
