"""The web demo (apps/demo_ui) driven in a real headless Chromium: the app runs as a subprocess on a tiny
stage-2 checkpoint (the `qa_checkpoint` fixture) and a search index of its stage-1 towers; the browser
uploads an image and asks, picks a held-out sample and asks one of its questions, and searches by text.
The answers shown equal those `apps/ask` prints for the same inputs, and the keys shown equal
`apps/search query`'s top keys. Needs Debian's chromium and chromium-driver (skipped without them, except
under CI=true, where their absence fails)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from eg_data import read_all

from apps.alignment.search import search_main
from apps.common.config import ConfigError
from apps.qa.ui import INSTALL_HINT, demo_ui_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qa_helpers import REPO, app_env

DEMO_UI = REPO / "apps" / "demo_ui" / "__main__.py"
ASK = REPO / "apps" / "ask" / "__main__.py"
K = 3  # search results per modality
SEARCH_TEXT = "a small seven"
BROWSER_MISSING = "chromium or chromedriver missing: apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def demo_index(qa_space: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`apps/search index` of the 11-sample test split with the stage-1 towers of the QA model."""
    index = tmp_path_factory.mktemp("demo_index") / "index.npz"
    stage1, test_split = str(qa_space["checkpoint"]), str(qa_space["test"])
    assert search_main(["index", "--checkpoint", stage1, "--shards", test_split, "--out", str(index)]) == 0
    return index


def _browser() -> Any:
    """A headless Chromium through selenium and Debian's chromedriver (no browser download)."""
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI"):
            pytest.fail(BROWSER_MISSING + " (.ci/run installs them)")
        pytest.skip(BROWSER_MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"apps/demo_ui exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"apps/demo_ui did not serve {url} within {timeout} s: {log.read_text()[-3000:]}")


def _search_keys(index: Path, modality: str, capsys: pytest.CaptureFixture) -> list[str]:
    """The keys `apps/search query --text SEARCH_TEXT --modality M --k K` prints, best first."""
    capsys.readouterr()
    assert (
        search_main(
            ["query", "--index", str(index), "--text", SEARCH_TEXT, "--modality", modality, "--k", str(K)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "score"]) + 1
    return [line.split()[-1] for line in lines[start:]]


@pytest.mark.slow  # the session's tiny stage-1/stage-2 runs, the app's and apps/ask's start-up
def test_demo_ui_in_chromium_answers_as_apps_ask_and_searches_as_apps_search(
    qa_checkpoint: dict, demo_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()  # skips (or fails under CI) before anything runs when chromium is missing
    start = time.perf_counter()
    root, checkpoint = qa_checkpoint["root"], qa_checkpoint["checkpoint"]
    samples = read_all(qa_checkpoint["test"])
    uploaded, picked = samples[1], samples[0]
    files = {}
    for name, sample in (("uploaded", uploaded), ("picked", picked)):
        for ext in ("png", "flac"):
            files[name, ext] = tmp_path / f"{name}.{ext}"
            files[name, ext].write_bytes(sample[ext])
    question = "which digit is this?"
    picked_qa = json.loads(picked["json"])["qa"][1]  # one of the questions the picker offers
    # the same questions through apps/ask (one load, --interactive), while the index is built and the app starts
    ask = subprocess.Popen(
        [sys.executable, str(ASK), "--checkpoint", str(checkpoint), "--interactive"],
        cwd=root, env=app_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    index = demo_index
    port = _free_port()
    log = tmp_path / "demo_ui.log"
    with open(log, "w") as out:
        app = subprocess.Popen(
            [sys.executable, str(DEMO_UI), "--checkpoint", str(checkpoint), "--index", str(index),
             "--k", str(K), "--port", str(port)],
            cwd=root, env={**app_env(), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    phases = {"app started": time.perf_counter() - start}
    try:
        want_keys = {m: _search_keys(index, m, capsys) for m in ("vision", "audio")}
        script = (
            f":image {files['uploaded', 'png']}\n{question}\n"
            f":image {files['picked', 'png']}\n:audio {files['picked', 'flac']}\n{picked_qa['question']}\n"
        )
        asked_out, asked_err = ask.communicate(script, timeout=180)
        assert ask.returncode == 0, asked_err[-2000:]
        want_uploaded, want_picked = asked_out.split("\n")[:2]  # an answer may be empty: an empty line
        phases["apps/ask"] = time.perf_counter() - start
        url = f"http://127.0.0.1:{port}/"
        _wait_until_serving(url, app, log)
        phases["app serving"] = time.perf_counter() - start

        browser.get(url)
        wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))

        def value(selector: str) -> str:
            return browser.find_element(By.CSS_SELECTOR, selector).get_property("value")

        def ask_and_read() -> tuple[str, str]:
            """Click Ask; (the answer shown, the note under it) once the note says it answered."""
            info = browser.find_element(By.ID, "answer-info")
            wait.until(lambda b: info.text == "")  # new inputs cleared the last answer and its note
            browser.find_element(By.ID, "ask").click()
            wait.until(lambda b: "answered by step" in info.text)
            return value("#answer textarea"), info.text

        # 0. no question: one line in the page, no answer
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda b: "type a question" in b.find_element(By.TAG_NAME, "body").text)
        assert value("#answer textarea") == "" and browser.find_element(By.ID, "answer-info").text == ""
        # 1. upload an image, type a question
        browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(
            str(files["uploaded", "png"])
        )
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
        browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(question)
        shown_uploaded, info = ask_and_read()
        assert shown_uploaded == want_uploaded
        assert info.startswith("inputs: image;")

        # 2. pick a held-out sample (its image and audio fill in) and one of its own questions
        def option(dropdown: str, text: str) -> Any:
            """Open a dropdown; its item whose text starts with `text`, once rendered."""
            browser.find_element(By.CSS_SELECTOR, f"#{dropdown} input").click()
            items = f"#{dropdown} ul li"
            return wait.until(
                lambda b: next(
                    (e for e in b.find_elements(By.CSS_SELECTOR, items) if e.text.startswith(text)), None
                )
            )

        option("sample", picked["__key__"] + ":").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#audio audio"))
        option("suggested", picked_qa["question"]).click()
        wait.until(lambda b: value("#question textarea") == picked_qa["question"])
        shown_picked, info = ask_and_read()
        assert shown_picked == want_picked
        assert info.startswith("inputs: image + audio;")
        assert info.endswith(f"the dataset's answer for sample {picked['__key__']}: {picked_qa['answer']}")
        # 3. search by text: the keys shown, per modality, are apps/search query's
        browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Search']").click()
        text = wait.until(
            lambda b: [
                e for e in b.find_elements(By.CSS_SELECTOR, "#search-text textarea") if e.is_displayed()
            ]
        )
        text[0].send_keys(SEARCH_TEXT)
        browser.find_element(By.ID, "search").click()
        rows = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#search-results table tbody tr"))
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert {m: [c[-1] for c in cells if c[0] == m] for m in ("vision", "audio")} == want_keys
        images = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#search-images img") or None)
        assert len(images) == K
        assert len(browser.find_elements(By.CSS_SELECTOR, "[id^=search-audio-] audio")) == K
        phases["browser"] = time.perf_counter() - start
        screenshot = tmp_path / "demo_ui.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}; seconds since start: {phases}")
        app.terminate()  # SIGTERM stops the app as Ctrl-C does: a clean exit
        assert app.wait(timeout=60) == 0, log.read_text()[-3000:]
        output = log.read_text()  # the page's user error was one line on stderr too, without a traceback
        assert "error: type a question\n" in output and "Traceback" not in output, output[-3000:]
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        print(f"screenshot: {tmp_path / 'failure.png'}\napps/demo_ui's output:\n{log.read_text()[-3000:]}")
        raise
    finally:
        browser.quit()
        for proc in (app, ask):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def test_a_port_in_use_is_one_line_before_any_loading(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert demo_ui_main(["--checkpoint", "not-loaded.pt", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--host 127.0.0.1 --port {port}: cannot serve there" in err


def test_without_gradio_one_line_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert demo_ui_main(["--checkpoint", "any.pt", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {INSTALL_HINT}\n" and "uv sync --extra ui" in err


@pytest.mark.slow  # gradio's import and a checkpoint load
def test_bad_inputs_are_one_line_and_exit_2(
    qa_space: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "nope.pt"
    assert demo_ui_main(["--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "does not exist" in err
    # a stage-1 checkpoint is not a model to ask
    assert demo_ui_main(["--checkpoint", str(qa_space["checkpoint"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage-1 (alignment) checkpoint" in err


def test_shard_samples_read_and_write_the_shards_own_bytes(qa_space: dict) -> None:
    from apps.common.ui import ShardSamples

    raw = read_all(qa_space["test"])  # 11 samples in shards of 4: reads grouped over three shards
    samples = ShardSamples(qa_space["test"], "--samples")
    assert samples.keys == [s["__key__"] for s in raw] and samples.errors == []
    assert [samples.info[s["__key__"]]["json"] for s in raw] == [json.loads(s["json"]) for s in raw]
    wanted = [raw[9]["__key__"], raw[0]["__key__"], raw[5]["__key__"]]
    files = samples.media(wanted)
    for sample in (raw[9], raw[0], raw[5]):
        image, audio = files[sample["__key__"]]
        assert Path(image).read_bytes() == sample["png"] and Path(audio).read_bytes() == sample["flac"]
    with pytest.raises(ConfigError, match="no sample with key 'nope'"):
        samples.read(["nope"])
    with pytest.raises(ConfigError, match="--samples='/nowhere' is not a folder"):
        ShardSamples("/nowhere", "--samples")


@pytest.mark.slow  # two model loads
def test_search_reuses_the_qa_towers_only_when_their_weights_are_the_indexs(
    qa_space: dict, qa_checkpoint: dict, demo_index: Path
) -> None:
    import copy

    import torch

    from apps.qa import load_qa
    from apps.qa.ui import DemoSearch

    index = demo_index
    aligned = load_qa(qa_checkpoint["checkpoint"]).aligned
    reused = DemoSearch(str(index), aligned=aligned)
    loaded = DemoSearch(str(index))  # the index's own checkpoint, loaded again
    assert reused.embedder.aligned is aligned and loaded.embedder.aligned is not aligned
    found, expected = reused.search(SEARCH_TEXT, K), loaded.search(SEARCH_TEXT, K)
    assert [[(h.key, h.score) for h in found[m]] for m in found] == [
        [(h.key, h.score) for h in expected[m]] for m in expected
    ]
    raw = {s["__key__"]: s for s in read_all(qa_space["test"])}
    for hit in found["vision"]:
        assert Path(hit.path).read_bytes() == raw[hit.key]["png"]
    for hit in found["audio"]:
        assert Path(hit.path).read_bytes() == raw[hit.key]["flac"]
    # towers with one changed weight (e.g. a stage 2 that trained the resampler) are not used for queries
    changed = copy.deepcopy(aligned)
    with torch.no_grad():
        next(changed.model.towers["vision"].parameters()).add_(1.0)
    assert DemoSearch(str(index), aligned=changed).embedder.aligned is not changed
