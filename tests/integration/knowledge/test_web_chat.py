"""The web chat at `/`, driven in headless Chromium: a question streamed into the page, its
sources listed, the conversation reset. A screenshot is saved beside the test's logs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.integration.knowledge.conftest import DOCUMENTS, KnowledgeBase
from tests.testbed.process import eventually
from tests.testbed.servers import WeaviateAddress, start_gateway

QUESTION = "What does a small boat pay for a night at the berth?"


@pytest.fixture
def gateway(
    tmp_path: Path, weaviate: WeaviateAddress, embeddings_url: str, llama_url: str, redis_url: str
) -> Iterator[str]:
    """A gateway without API keys (local use), its knowledge base holding the harbour docs."""
    key_file = tmp_path / "weaviate-key"
    key_file.write_text(weaviate.api_key)
    knowledge_base = KnowledgeBase(weaviate, key_file, embeddings_url, "WebChat")
    process, url = start_gateway(
        tmp_path,
        {
            "BACKEND__URL": llama_url,
            "REDIS_URL": redis_url,
            "MAX_TOKENS": "60",
            "TEMPERATURE": "0",
            "RATE_LIMIT__ENABLED": "false",
            "KNOWLEDGE_BASE__TOP_K": "2",
            **knowledge_base.gateway_settings(),
        },
        name="web-gateway",
    )
    documents = [{"source": name, "content": text} for name, text in DOCUMENTS.items()]
    uploaded = httpx.post(
        f"{url}/admin/knowledge/documents", json={"documents": documents}, timeout=120
    )
    assert uploaded.status_code == 200, uploaded.text
    yield url
    process.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,800",
    ):
        options.add_argument(argument)  # fmt: skip
    # Debian's chromedriver, matched to its chromium; nothing is downloaded.
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def test_the_web_chat_streams_an_answer_with_its_sources_and_resets(
    gateway: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(f"{gateway}/")
    assert browser.title == "Tertulia"
    browser.find_element(By.ID, "message").send_keys(QUESTION)
    browser.find_element(By.ID, "send").click()

    # While the answer streams, the page shows it growing.
    partial_lengths: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answers = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")
        if answers and answers[-1].get_attribute("data-done") == "true":
            break
        if answers and "streaming" in (answers[-1].get_attribute("class") or ""):
            partial_lengths.add(len(answers[-1].text))
        time.sleep(0.05)
    answer = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[-1]
    assert answer.get_attribute("data-done") == "true", "the answer never finished"
    assert len({length for length in partial_lengths if length > 0}) >= 2, (
        f"no streaming seen: {sorted(partial_lengths)}"
    )

    conversation = browser.execute_script("return sessionStorage.getItem('tertulia-conversation')")
    remembered = httpx.get(f"{gateway}/conversations/{conversation}", timeout=10).json()
    reply = remembered["turns"][-1]["content"]
    sources = [item.text for item in answer.find_elements(By.CSS_SELECTOR, ".sources li")]
    # The model's own words, as the gateway remembered them, are what the page shows.
    assert len(reply.split()) >= 3, f"the model said {reply!r}"
    assert answer.text.startswith(reply.strip()[:40])
    assert sources and sources[0].startswith("harbour/berths.md")
    assert remembered["turns"][0]["content"] == QUESTION

    screenshot = tmp_path / "web-chat.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000

    browser.find_element(By.ID, "reset").click()
    eventually(
        lambda: not browser.find_elements(By.CSS_SELECTOR, ".turn.assistant"),
        timeout=10,
        what="the page to clear",
    )
    gone = httpx.get(f"{gateway}/conversations/{conversation}", timeout=10)
    assert gone.status_code == 404
    assert (
        browser.execute_script("return sessionStorage.getItem('tertulia-conversation')")
        != conversation
    )
