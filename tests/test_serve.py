"""`coattn serve` in a real headless browser (issue 14, part 2): Debian's Chromium driven by Selenium
through chromedriver, against the server started on 127.0.0.1. The test types a query, reads the
ranked list back from the page, checks it against `coattn search` (same model, same index, same
scoring), fetches every clip the players serve, checks the attention maps are drawn, and saves a
screenshot in its output folder. CI installs the browser (.ci/browsers.sh) and the app extra."""
from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from coattn.tools import search as S
from tests.reliability_helpers import coattn_cmd, subprocess_env

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
QUERY = "a beep then a dog barks"
HIT = re.compile(r"^(\d+)\.\s+(\S+)\s+score\s+([+-]\d\.\d{4})$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@contextlib.contextmanager
def serving(tmp_path, args: list[str]):
    """`coattn serve ARGS --port P` in a subprocess; yields its URL once it answers 200 (at most 180 s)."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([*coattn_cmd(), "serve", *args, "--port", str(port)],
                            env=subprocess_env(GRADIO_TEMP_DIR=str(tmp_path / "gradio")), stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"coattn serve did not start:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

@pytest.fixture()
def server(exported_demo, tiny_clotho, tmp_path):
    """`coattn serve` on the exported model and the tiny evaluation clips; yields (url, index dir)."""
    _, _, folder = exported_demo
    index = tmp_path / "index"
    with serving(tmp_path, ["--model", str(folder), "--audio-dir", str(tiny_clotho / "evaluation"), "--index-dir",
                            str(index), "--top-k", "3"]) as url:
        yield url, index


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), \
        "install Debian's chromium and chromium-driver (.ci/browsers.sh)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    # headless as root on a machine without a display or a network beyond loopback
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def shown_hits(driver) -> list[tuple[int, str, float]]:
    from selenium.webdriver.common.by import By

    texts = [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".prose.coattn-hit") if e.is_displayed()]
    hits = [HIT.match(" ".join(t.split())) for t in texts if t]
    assert all(hits), texts
    return [(int(m.group(1)), m.group(2), float(m.group(3))) for m in hits]


@pytest.mark.slow
def test_search_page_in_a_real_browser(server, browser, exported_demo, tiny_clotho, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, index = server
    browser.get(url)
    box = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
    assert "4 clips" in browser.find_element(By.TAG_NAME, "body").text  # the index of the folder
    box.send_keys(QUERY)
    browser.find_element(By.CSS_SELECTOR, "#search").click()
    WebDriverWait(browser, 120).until(lambda d: len(shown_hits(d)) == 3)
    hits = shown_hits(browser)

    # the same ranking as `coattn search` with the same model, index and scoring
    capsys.readouterr()
    assert S.main([QUERY, "--model", str(exported_demo[2]), "--audio-dir", str(tiny_clotho / "evaluation"),
                   "--index-dir", str(index), "--top-k", "3", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert [(r, f) for r, f, _ in hits] == [(r, f) for r, _, f in expected]
    assert [s for _, _, s in hits] == [float(f"{s:+.4f}") for _, s, _ in expected]
    assert f'"{QUERY}": 3 best of 4 clips' in browser.find_element(By.CSS_SELECTOR, "#status").text

    # each player serves its clip: the page's download links give the file's bytes
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='gradio_api/file=']")
             if a.get_attribute("href").endswith(".wav")]
    assert [Path(u).name for u in links] == [f for _, f, _ in hits]
    for link, (_, name, _) in zip(links, hits):
        with urllib.request.urlopen(link, timeout=10) as r:
            assert r.read() == (tiny_clotho / "evaluation" / name).read_bytes()
    # one word-by-frame attention map per hit (iterating cascade: 2 audio layers), drawn
    maps = [i for i in browser.find_elements(By.CSS_SELECTOR, ".coattn-map img") if i.is_displayed()]
    assert len(maps) == 3
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 300
               for i in maps)
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")

    # a second query, sent with Enter: the list is replaced
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("rain falls on a roof", Keys.ENTER)
    WebDriverWait(browser, 120).until(
        lambda d: '"rain falls on a roof"' in d.find_element(By.CSS_SELECTOR, "#status").text)
    assert len(shown_hits(browser)) == 3


@pytest.fixture()
def moment_server(tiny_clotho, tmp_path):
    """`coattn serve` on an exported (untrained, tiny) moment model folder; yields (url, folder)."""
    import torch

    from coattn.model import CoAttnModel, build_component
    from coattn.moments.folder import save_moment_folder
    from coattn.moments.model import MomentModel

    def spec(class_path: str, **init_args):  # components with known arguments: the folder can describe them
        return build_component({"class_path": class_path, "init_args": init_args}, torch.nn.Module)

    torch.manual_seed(0)
    text = spec("coattn.encoders.TinyTextEncoder", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                vocab_size=300, max_length=16)
    text.fit_tokenizer(["a dog barks", "a beep", "rain falls on a roof", "a dog, then a beep"] * 3)
    model = CoAttnModel(spec("coattn.encoders.ClapAudioEncoder", config="HTSAT-mini", spec_augment=False,
                             frozen_norm=True, drop_path_rate=0.0), text,
                        spec("coattn.coattention.CoAttentionCascade", kind="iterating", depth=1, width=32, heads=2,
                             ffn_dim=64, dropout=0.0, positions="relative"), embed_dim=32)
    mm = MomentModel(model, top_k=5).eval()
    folder = tmp_path / "moment_model"
    mm.model.save_pretrained(folder)
    save_moment_folder(mm, folder)
    with serving(tmp_path, ["--model", str(folder), "--audio-dir", str(tiny_clotho / "evaluation"), "--index-dir",
                            str(tmp_path / "index"), "--top-k", "2", "--no-maps"]) as url:
        yield url, folder


@pytest.mark.slow
def test_moment_model_shows_the_found_window_on_each_waveform(moment_server, browser, tiny_clotho, tmp_path,
                                                              capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from coattn.cli import main

    url, folder = moment_server
    browser.get(url)
    box = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
    box.send_keys("a dog barks")
    browser.find_element(By.CSS_SELECTOR, "#search").click()
    WebDriverWait(browser, 120).until(lambda d: len(shown_hits(d)) == 2)
    WebDriverWait(browser, 60).until(
        lambda d: len([i for i in d.find_elements(By.CSS_SELECTOR, ".coattn-moment img") if i.is_displayed()]) == 2)
    images = [i for i in browser.find_elements(By.CSS_SELECTOR, ".coattn-moment img") if i.is_displayed()]
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 300
               for i in images)
    windows = [" ".join(e.text.split()) for e in browser.find_elements(By.CSS_SELECTOR, ".prose.coattn-window")
               if e.is_displayed()]
    assert len(windows) == 2 and all(re.fullmatch(r"moment \d+:\d\d\.\d - \d+:\d\d\.\d \(score = -?\d+\.\d\d\)", w)
                                     for w in windows), windows
    # the window shown is `coattn localize`'s best window of that clip, for the same model and query
    first = shown_hits(browser)[0][1]
    capsys.readouterr()
    assert main(["localize", "--model", str(folder), str(tiny_clotho / "evaluation" / first), "a dog barks",
                 "--top-k", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert windows[0].startswith(f"moment {row[4]} - {row[6]}")
    shot = tmp_path / "serve_moments.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
