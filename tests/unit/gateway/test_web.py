"""The web chat's welcome: the model, the knowledge base, and questions from its headings."""

from __future__ import annotations

from pathlib import Path

from tertulia.gateway.routes.web import GENERAL_EXAMPLES, example_questions
from tests.unit.gateway.conftest import GatewayFactory, write_keys


def test_examples_come_from_section_headings_one_document_after_another() -> None:
    headings = [
        ("Operator", "Install > Scaling the model server"),
        ("Operator", "Install > Scaling the model server"),  # a second chunk of that section
        ("Operator", "Status"),
        ("Gateway", "GPU nodes and their taints"),
        ("Gateway", "A heading far too long to make a question that anyone would want to ask"),
        ("Tides", ""),
    ]

    questions = example_questions(headings, count=4)

    assert questions == [
        "Tell me about scaling the model server.",
        "Tell me about GPU nodes and their taints.",
        "Tell me about tides.",
        "Tell me about status.",
    ]
    assert example_questions(headings, count=2) == questions[:2]
    assert example_questions([]) == []


async def test_the_welcome_names_the_model_to_a_browser_with_a_session(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    keys = write_keys(tmp_path / "keys", {"web": "k-web"})
    client = await gateway(model_name="harbour-bot", api_keys_dir=keys)

    refused = await client.get("/web/welcome")
    bare = await client.get("/web/welcome", headers={"Authorization": "Bearer k-web"})
    opened = await client.post("/web/session", headers={"Authorization": "Bearer k-web"})
    welcome = await client.get("/web/welcome")  # with the session's cookie
    page = await client.get("/")

    assert refused.status_code == 401
    # The web chat's key opens sessions and does nothing else.
    assert bare.status_code == 403
    assert opened.status_code == 204
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert welcome.json() == {
        "model": "harbour-bot",
        "knowledge_base": None,
        "examples": GENERAL_EXAMPLES,
    }
    # The page itself holds nothing secret; its script runs under a strict policy.
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_the_welcome_is_off_with_the_web_chat(gateway: GatewayFactory) -> None:
    client = await gateway(web_chat=False)

    assert (await client.get("/web/welcome")).status_code == 404
    assert (await client.get("/")).status_code == 404
