"""Attacks on the web chat, against a real gateway in front of the real llama.cpp server and
Redis: the admin's key in a browser, one browser acting as another, a forged session, a
request sent from another site's page, and script injected into the page."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.testbed.browser import headless_chromium
from tests.testbed.process import eventually
from tests.testbed.servers import start_gateway

KEYS = {"admin": "admin-key-0123456789", "web": "web-key-0123456789", "slack": "slack-key-01234"}
PAGE_HEADER = {"X-Tertulia-Web": "1"}


@dataclass
class WebChat:
    url: str

    @contextmanager
    def browser(self) -> Iterator[httpx.Client]:
        """A browser of its own: its own cookie jar, with a session opened by the web key."""
        with httpx.Client(base_url=self.url, timeout=120) as client:
            opened = client.post("/web/session", headers={"Authorization": f"Bearer {KEYS['web']}"})
            assert opened.status_code == 204, opened.text
            yield client


@pytest.fixture(scope="module")
def web_chat(
    tmp_path_factory: pytest.TempPathFactory, instruct_url: str, redis_url: str
) -> Iterator[WebChat]:
    workdir = tmp_path_factory.mktemp("web-chat")
    keys = workdir / "keys"
    keys.mkdir()
    for identity, key in KEYS.items():
        (keys / identity).write_text(key)
    process, url = start_gateway(
        workdir,
        {
            "BACKEND__URL": instruct_url,
            "REDIS_URL": redis_url,
            "API_KEYS_DIR": str(keys),
            "MAX_TOKENS": "8",
            "TEMPERATURE": "0",
            "RATE_LIMIT__BURST": "2",
            "RATE_LIMIT__REQUESTS_PER_MINUTE": "1",
        },
    )
    yield WebChat(url)
    process.stop()


@pytest.mark.parametrize("identity", ["admin", "slack"])
def test_no_key_but_the_web_chats_opens_a_session(web_chat: WebChat, identity: str) -> None:
    opened = httpx.post(
        f"{web_chat.url}/web/session",
        headers={"Authorization": f"Bearer {KEYS[identity]}"},
        timeout=10,
    )
    assert opened.status_code == 403
    assert "set-cookie" not in opened.headers
    assert "'web' key" in opened.json()["error"]["message"]


def test_the_web_key_itself_does_nothing_but_open_a_session(web_chat: WebChat) -> None:
    """Whoever holds the web chat's key cannot use it to name another browser's user."""
    answered = httpx.post(
        f"{web_chat.url}/chat",
        json={"message": "hi", "user": "web:someone-else"},
        headers={"Authorization": f"Bearer {KEYS['web']}"},
        timeout=10,
    )
    assert answered.status_code == 403


def test_each_browser_is_a_user_of_its_own(web_chat: WebChat) -> None:
    conversation = f"web:{uuid.uuid4()}"
    with web_chat.browser() as ana, web_chat.browser() as bob:
        said = ana.post(
            "/chat",
            json={"message": "My locker code is 4471.", "conversation_id": conversation},
            headers=PAGE_HEADER,
        )
        assert said.status_code == 200, said.text
        assert ana.get(f"/conversations/{conversation}").status_code == 200
        # Bob, with the same conversation id, sees nothing of Ana's.
        assert bob.get(f"/conversations/{conversation}").status_code == 404
        # Ana's browser id is no secret of hers to borrow: a session acts as itself alone.
        ana_id = ana.cookies["tertulia_session"].split(".")[0]
        borrowed = bob.post(
            "/chat",
            json={"message": "hi", "conversation_id": conversation, "user": f"web:{ana_id}"},
            headers=PAGE_HEADER,
        )
        assert borrowed.status_code == 403
        # Ana's burst (2) runs out; Bob's is his own.
        ana.post("/chat", json={"message": "Thanks."}, headers=PAGE_HEADER)
        assert ana.post("/chat", json={"message": "Again."}, headers=PAGE_HEADER).status_code == 429
        assert bob.post("/chat", json={"message": "Hello."}, headers=PAGE_HEADER).status_code == 200


@pytest.mark.parametrize(
    "forge",
    [
        lambda value: value.split(".")[0] + ".not-the-signature",
        lambda value: "A" * 32 + "." + value.split(".")[1],
        lambda value: "garbage",
    ],
    ids=["signature", "browser", "garbage"],
)
def test_a_forged_session_is_refused(web_chat: WebChat, forge: Callable[[str], str]) -> None:
    with web_chat.browser() as browser:
        genuine = browser.cookies["tertulia_session"]
    forged = forge(genuine)
    answered = httpx.get(
        f"{web_chat.url}/web/welcome", cookies={"tertulia_session": forged}, timeout=10
    )
    assert answered.status_code == 401


def test_a_request_from_another_sites_page_is_refused(web_chat: WebChat) -> None:
    """A cross-site form or fetch can carry neither the page's header (a CORS preflight the
    gateway never grants) nor, in a browser, the SameSite=Strict cookie."""
    with web_chat.browser() as browser:
        sent = browser.post("/chat", json={"message": "hi"})  # no X-Tertulia-Web
        deleted = browser.delete(f"/conversations/web:{uuid.uuid4()}")
    assert sent.status_code == 403
    assert deleted.status_code == 403


def test_the_page_runs_only_its_own_script_and_style(web_chat: WebChat) -> None:
    page = httpx.get(f"{web_chat.url}/", timeout=10)
    policy = page.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    html = page.text
    # Nothing inline but the page's one script and one style, each allowed by its hash.
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "an inline style attribute"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert len(bodies) == 1
        digest = base64.b64encode(hashlib.sha256(bodies[0].encode()).digest()).decode()
        assert directives[directive] == f"'sha256-{digest}'"


def _ready(browser: webdriver.Chrome) -> bool:
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"


def test_a_browser_trades_the_key_in_its_address_for_a_session_and_keeps_no_key(
    web_chat: WebChat,
) -> None:
    """As local mode prints it: the page at /#key=..., under its strict policy, opens a
    session, drops the key from the address, stores none, and answers."""
    with headless_chromium() as browser:
        browser.get(f"{web_chat.url}/#key={KEYS['web']}")
        eventually(lambda: _ready(browser), timeout=30, what="the page to start")
        assert "key" not in browser.current_url
        stored = browser.execute_script("return JSON.stringify(localStorage)")
        assert KEYS["web"] not in stored
        # The session is the browser's, out of the page script's reach.
        assert browser.get_cookie("tertulia_session")["httpOnly"] is True
        assert "tertulia_session" not in browser.execute_script("return document.cookie")
        browser.find_element(By.ID, "message").send_keys("Hello there")
        browser.find_element(By.ID, "send").click()
        answer = eventually(
            lambda: [
                turn
                for turn in browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")
                if turn.get_attribute("data-done") == "true"
            ],
            timeout=120,
            what="the answer",
        )[0]
        assert answer.text.strip()
        assert not browser.find_elements(By.CSS_SELECTOR, ".turn.error")


def test_a_browser_given_the_admin_key_is_refused_and_asked_for_the_web_key(
    web_chat: WebChat,
) -> None:
    with headless_chromium() as browser:
        browser.get(f"{web_chat.url}/#key={KEYS['admin']}")
        shown = eventually(
            lambda: browser.find_elements(By.CSS_SELECTOR, ".turn.error"),
            timeout=30,
            what="the refusal",
        )
        assert "'web' key" in shown[0].text
        assert browser.get_cookie("tertulia_session") is None
        eventually(
            lambda: "shown" in (browser.find_element(By.ID, "key").get_attribute("class") or ""),
            timeout=10,
            what="the key prompt",
        )
