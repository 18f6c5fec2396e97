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


def test_italics_in_either_markdown_form_but_not_in_names_code_or_arithmetic() -> None:
    assert to_telegram_html("_(Starting up.)_ and *this* too") == (
        "<i>(Starting up.)</i> and <i>this</i> too"
    )
    assert to_telegram_html("a snake_case_name, 2 * 3 * 4, `_x_`") == (
        "a snake_case_name, 2 * 3 * 4, <code>_x_</code>"
    )
    assert to_telegram_html("**bold** then *it*") == "<b>bold</b> then <i>it</i>"
