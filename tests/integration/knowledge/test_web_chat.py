"""The web chat at `/`, driven in headless Chromium as a person uses it: the welcome names the
model and the knowledge base and offers questions from its documents; an answer streams in,
rendered as Markdown, its numbered sources open their passages; the stop button cancels the
stream; the conversation is still there after a reload; the page fits a phone in dark mode.
Screenshots at two sizes are saved under test-artifacts/web-chat/ to be looked at.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.integration.knowledge.conftest import start_harbour_gateway
from tests.testbed.browser import headless_chromium
from tests.testbed.process import eventually
from tests.testbed.servers import WeaviateAddress, start_fake_backend, start_gateway

QUESTION = "What does a small boat pay for a night at the berth?"
MODEL = "harbour-assistant"
ARTIFACTS = (
    Path(
        os.environ.get("TERTULIA_TEST_ARTIFACTS")
        or Path(__file__).resolve().parents[3] / "test-artifacts"
    )
    / "web-chat"
)
# What a model might send: Markdown of every kind the page renders, and attempts at injection.
MARKDOWN_REPLY = """## Mooring at night

Small boats pay **ten crowns** a night; see [the harbour site](https://harbour.example/fees).

1. Call the quay master.
2. Wait for a berth.

- Bring `lines` and fenders
- Pay at the office

```bash
tertulia chat --conversation harbour
```

<img src=x onerror="window.injected=1"> and [a trap](javascript:window.injected=2)
"""


@pytest.fixture
def gateway(
    tmp_path: Path,
    weaviate: WeaviateAddress,
    embeddings_url: str,
    instruct_url: str,
    redis_url: str,
) -> Iterator[str]:
    """A gateway without API keys (local use), its knowledge base holding the harbour docs."""
    process, url = start_harbour_gateway(
        tmp_path,
        weaviate,
        embeddings_url,
        "WebChat",
        {
            "BACKEND__URL": instruct_url,
            "REDIS_URL": redis_url,
            "MODEL_NAME": MODEL,
            "MAX_TOKENS": "60",
            "TEMPERATURE": "0",
            "KNOWLEDGE_BASE__TOP_K": "2",
        },
        name="web-gateway",
    )
    yield url
    process.stop()


@pytest.fixture
def scripted(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str]]:
    """A gateway in front of a model server whose answers the test scripts; (gateway, model
    server) URLs."""
    backend, backend_url = start_fake_backend(tmp_path)
    process, url = start_gateway(
        tmp_path,
        {
            "BACKEND__URL": backend_url,
            "REDIS_URL": redis_url,
            "MODEL_NAME": MODEL,
            "RATE_LIMIT__ENABLED": "false",
        },
        name="scripted-gateway",
    )
    yield url, backend_url.removesuffix("/v1")
    process.stop()
    backend.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def _open(browser: webdriver.Chrome, url: str) -> None:
    browser.get(url)
    eventually(
        lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
        timeout=30,
        what="the page to load its welcome and conversation",
    )


def _answers(browser: webdriver.Chrome) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")


def _wait_for_answer(
    browser: webdriver.Chrome, timeout: float = 120
) -> tuple[WebElement, set[int]]:
    """The last answer once it is done, and the lengths it was seen at while it streamed."""
    lengths: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = _answers(browser)
        if answers and answers[-1].get_attribute("data-done") == "true":
            return answers[-1], lengths
        if answers and "streaming" in (answers[-1].get_attribute("class") or ""):
            lengths.add(len(answers[-1].text))
        time.sleep(0.05)
    raise AssertionError("the answer never finished")


def _screenshot(browser: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    return path


def _phone_in_dark_mode(browser: webdriver.Chrome) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )


def _luminance(css_color: str) -> float:
    red, green, blue = (int(part) for part in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def test_the_web_chat_welcomes_answers_cites_and_keeps_the_conversation(
    gateway: str, browser: webdriver.Chrome
) -> None:
    _open(browser, f"{gateway}/")
    _screenshot(browser, "welcome-desktop-light.png")

    # The welcome: which model, which knowledge base, questions from its documents.
    assert browser.find_element(By.ID, "welcome").is_displayed()
    assert browser.find_element(By.ID, "title").text == MODEL
    assert "WebChat" in browser.find_element(By.ID, "knowledge").text
    examples = [
        button.text for button in browser.find_elements(By.CSS_SELECTOR, "#examples button")
    ]
    headings = {"berths", "fees", "market", "tides"}
    topics = {re.sub(r"^Tell me about (.*)\.$", r"\1", example).lower() for example in examples}
    assert examples and topics <= headings, examples

    browser.find_element(By.ID, "message").send_keys(QUESTION)
    browser.find_element(By.ID, "send").click()
    answer, lengths = _wait_for_answer(browser)

    assert len({length for length in lengths if length > 0}) >= 2, f"no streaming seen: {lengths}"
    conversation = browser.execute_script("return localStorage.getItem('tertulia-conversation')")
    # Read as the page reads it: with the browser's session, whose user holds the history.
    session = {"tertulia_session": browser.get_cookie("tertulia_session")["value"]}
    remembered = httpx.get(
        f"{gateway}/conversations/{conversation}", cookies=session, timeout=10
    ).json()
    reply = remembered["turns"][-1]["content"]
    # The model's own words, as the gateway remembered them, are what the page shows.
    assert len(reply.split()) >= 3, f"the model said {reply!r}"
    # The fact, from the passage (tests/integration/knowledge/test_answers.py asks more ways).
    assert "ten crowns" in reply, reply
    shown = answer.find_element(By.CSS_SELECTOR, ".body").text
    _assert_shows(shown, reply)
    assert remembered["turns"][0]["content"] == QUESTION

    # Numbered sources; the first opens the passage the model was given.
    sources = answer.find_elements(By.CSS_SELECTOR, ".sources button")
    assert sources and sources[0].text.startswith("[1] Berths")
    sources[0].click()
    passage = answer.find_element(By.CSS_SELECTOR, ".passage")
    assert "harbour/berths.md" in passage.text
    assert "ten crowns a night" in passage.find_element(By.CSS_SELECTOR, ".text").text
    _screenshot(browser, "desktop-light.png")

    # A reload keeps the conversation.
    browser.refresh()
    _open(browser, f"{gateway}/")
    assert not browser.find_element(By.ID, "welcome").is_displayed()
    turns = browser.find_elements(By.CSS_SELECTOR, "#log .turn")
    assert [turn.text for turn in turns[:1]] == [QUESTION]
    _assert_shows(turns[1].text, reply)

    # A phone, in dark mode: dark, and nothing wider than the screen.
    _phone_in_dark_mode(browser)
    browser.refresh()
    _open(browser, f"{gateway}/")
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert _luminance(background) < 0.2, background
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    _screenshot(browser, "phone-dark.png")

    # A new chat forgets this one.
    browser.find_element(By.ID, "reset").click()
    eventually(lambda: not _answers(browser), timeout=10, what="the page to clear")
    assert browser.find_element(By.ID, "welcome").is_displayed()
    gone = httpx.get(f"{gateway}/conversations/{conversation}", cookies=session, timeout=10)
    assert gone.status_code == 404
    assert (
        browser.execute_script("return localStorage.getItem('tertulia-conversation')")
        != conversation
    )


def test_markdown_is_rendered_safely_and_copied(
    scripted: tuple[str, str], browser: webdriver.Chrome
) -> None:
    gateway, model_server = scripted
    httpx.post(f"{model_server}/fake/config", json={"reply": MARKDOWN_REPLY}, timeout=5)
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": gateway, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    _open(browser, f"{gateway}/")

    browser.find_element(By.ID, "message").send_keys("How do I moor at night?")
    browser.find_element(By.ID, "send").click()
    answer, _ = _wait_for_answer(browser, timeout=30)
    body = answer.find_element(By.CSS_SELECTOR, ".body")

    assert body.find_element(By.CSS_SELECTOR, "h3").text == "Mooring at night"
    assert body.find_element(By.CSS_SELECTOR, "strong").text == "ten crowns"
    assert [li.text for li in body.find_elements(By.CSS_SELECTOR, "ol li")] == [
        "Call the quay master.",
        "Wait for a berth.",
    ]
    assert len(body.find_elements(By.CSS_SELECTOR, "ul li")) == 2
    assert body.find_element(By.CSS_SELECTOR, "ul li code").text == "lines"
    link = body.find_element(By.CSS_SELECTOR, "a")
    assert link.get_attribute("href") == "https://harbour.example/fees"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    # The injections are shown as the text they are, and run nothing.
    assert not body.find_elements(By.CSS_SELECTOR, "img")
    assert len(body.find_elements(By.CSS_SELECTOR, "a")) == 1
    assert '<img src=x onerror="window.injected=1">' in body.text
    assert "[a trap](javascript:window.injected=2)" in body.text
    assert browser.execute_script("return window.injected") is None

    code = body.find_element(By.CSS_SELECTOR, ".code")
    assert code.find_element(By.CSS_SELECTOR, "pre").text == "tertulia chat --conversation harbour"
    assert code.find_element(By.CSS_SELECTOR, ".language").text == "bash"
    copy = code.find_element(By.CSS_SELECTOR, "button.copy")
    copy.click()
    eventually(lambda: copy.text == "Copied", timeout=5, what="the copy button to say Copied")
    copied = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('error: ' + e))"
    )
    assert copied == "tertulia chat --conversation harbour"


def test_the_stop_button_cancels_the_stream(
    scripted: tuple[str, str], browser: webdriver.Chrome
) -> None:
    gateway, model_server = scripted
    reply = " ".join(f"word{index}" for index in range(200))
    httpx.post(f"{model_server}/fake/config", json={"reply": reply, "token_delay": 0.05}, timeout=5)
    _open(browser, f"{gateway}/")

    browser.find_element(By.ID, "message").send_keys("Talk for a long time.")
    browser.find_element(By.ID, "send").click()
    eventually(lambda: len(_answers(browser)[-1].text.split()) >= 5, timeout=20, what="a few words")
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_displayed() and not browser.find_element(By.ID, "send").is_displayed()
    stop.click()
    answer, _ = _wait_for_answer(browser, timeout=10)

    assert answer.get_attribute("data-stopped") == "true"
    shown = len(answer.find_element(By.CSS_SELECTOR, ".body").text.split())
    assert 5 <= shown < 200, f"{shown} words shown"

    # The gateway closed the model server's stream: nobody generates for a closed page.
    def cancelled() -> bool:
        sent = httpx.get(f"{model_server}/fake/requests", timeout=5).json()
        return bool(sent["streams_cancelled"] == 1)

    eventually(cancelled, timeout=10, what="the model server's stream to be cancelled")
    assert browser.find_element(By.ID, "send").is_displayed()


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _assert_shows(shown: str, reply: str) -> None:
    """The page shows the reply's words: Markdown takes away its marks (and a list's numbers,
    a link's address), never adds a word."""
    said, seen = _words(reply), _words(shown)
    assert set(seen) <= set(said), f"shown {shown!r} for {reply!r}"
    assert len(seen) >= 0.8 * len(said), f"shown {shown!r} for {reply!r}"
