"""The demo app in a real browser: start `demo/app.py` on 127.0.0.1, upload a photo with headless Chromium,
read the caption and the drawn image back, ask a question.

The app runs tiny exported folders (random weights, a random YOLOS detector), so the caption is
words from the vocabulary, not a description; the test checks that the page works end to end.
Skipped, with the reason, where Chromium, its driver or selenium is missing (`.ci/run` installs
Debian's `chromium` and `chromium-driver`).
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image
from support import REPO_ROOT, isolated_env
from support.folders import export_tiny_folders, sample_photos


pytest.importorskip("gradio", reason="the demo needs gradio (pip install 'oscar-hf[demo]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium through selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo app exited with {process.returncode}:\n{process.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the demo app did not serve {url} within {timeout} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    folders = export_tiny_folders(tmp_path_factory.mktemp("models"), ("oscar-captioning", "oscar-vqa"))
    port = free_port()
    workdir = tmp_path_factory.mktemp("app")
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "demo" / "app.py"), "--port", str(port), "--device", "cpu"],
        cwd=workdir,
        env=isolated_env(
            workdir,
            OSCAR_DEMO_MODEL=str(folders["oscar-captioning"]),
            OSCAR_DEMO_VQA_MODEL=str(folders["oscar-vqa"]),
            GRADIO_TEMP_DIR=str(workdir / "gradio"),
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def field_value(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].get_attribute("value") if found else ""


def test_upload_caption_drawing_and_question(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (photo,) = sample_photos(tmp_path, ("chelsea",))
    browser.get(app_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
    WebDriverWait(browser, 180).until(lambda d: field_value(d, "#caption textarea"))
    caption = field_value(browser, "#caption textarea")
    assert caption.strip() and "Upload" not in caption

    # The drawn image is served by the app: the photo with the caption band below it.
    drawn = browser.find_element(By.CSS_SELECTOR, "#drawn img").get_attribute("src")
    with urllib.request.urlopen(drawn, timeout=30) as response:
        image = Image.open(io.BytesIO(response.read()))
    width, height = Image.open(photo).size
    assert image.width == width and image.height > height
    assert browser.find_elements(By.CSS_SELECTOR, "#regions table")  # the tag / score / box table

    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("what animal is this?")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()
    WebDriverWait(browser, 120).until(lambda d: field_value(d, "#answer textarea"))
    answer = field_value(browser, "#answer textarea")
    assert answer.count("(") == 3  # the top 3 answers with their scores
