"""The model's Markdown as Telegram HTML."""

from __future__ import annotations

from tertulia.bots.telegram import to_telegram_html


def test_code_bold_and_special_characters() -> None:
    markdown = "Use **care** with `a < b` & friends:\n```python\nif a < b:\n    pass\n```\nDone."
    assert to_telegram_html(markdown) == (
        "Use <b>care</b> with <code>a &lt; b</code> &amp; friends:\n"
        '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>\n'
        "Done."
    )


def test_an_unclosed_fence_still_makes_balanced_markup() -> None:
    assert to_telegram_html("```\ncode") == "<pre><code>code</code></pre>"
