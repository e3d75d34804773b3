"""Making agent answers speakable (brain/speech.py)."""

from __future__ import annotations

import json

import pytest

from agentic_fast.brain.speech import MAX_CHARS, Phrases, speakable, tool_output


@pytest.mark.parametrize(("text", "spoken"), [
    ("Done.", "Done."),
    ("Done", "Done."),
    ("**Done!** I texted *Sam*.", "Done! I texted Sam."),
    ("I sent `hello` to __Sam__.", "I sent hello to Sam."),
    ("# Result\nThe lights are on.", "Result. The lights are on."),
    ("> quoted answer", "quoted answer."),
    ("<b>Bold</b> move.", "Bold move."),
    ("All set! 🎉👍", "All set!"),
])
def test_markdown_becomes_plain_text(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


@pytest.mark.parametrize(("text", "spoken"), [
    ("See [the booking](https://example.com/b/123) for details.",
     "See the booking for details."),
    ("It's at https://www.example.com/path?q=1 now.", "It's at example.com now."),
    ("Details: <https://docs.example.org/x>.", "Details: docs.example.org."),
    ("Go to www.example.net.", "Go to example.net."),
    ("[https://example.com/x](https://example.com/x)", "example.com."),
    ("![chart](https://example.com/c.png) Sales went up.", "chart Sales went up."),
])
def test_urls_are_replaced_by_the_site_name(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


def test_a_list_is_read_as_one_sentence() -> None:
    text = ("Here are your meetings:\n- **Standup** at 9\n- Lunch with Sam at 12\n"
            "- Review at 3\n")
    assert speakable(text) == ("Here are your meetings: Standup at 9, Lunch with Sam at 12, "
                               "and Review at 3.")


def test_numbered_list_of_two() -> None:
    assert speakable("1. Milk\n2) Eggs") == "Milk and Eggs."


def test_table_rows_are_read_without_the_header() -> None:
    text = "| Task | When |\n|---|---|\n| Standup | 9 |\n| Review | 3 |"
    assert speakable(text) == "Standup, 9 and Review, 3."


def test_code_blocks_are_dropped() -> None:
    assert speakable("Run this:\n```bash\nrm -rf /tmp/x\n```\nThat cleans up.") == \
        "Run this: That cleans up."


def test_long_answers_keep_three_sentences() -> None:
    text = "One. Two! Three? Four. Five."
    assert speakable(text) == "One. Two! Three?"
    assert speakable(text, max_sentences=1) == "One."


def test_long_sentences_are_cut_at_a_word() -> None:
    spoken = speakable("word " * 500)
    assert len(spoken) <= MAX_CHARS
    assert spoken.endswith("word.")
    assert "  " not in spoken


def test_decimals_and_times_do_not_split_sentences() -> None:
    assert speakable("It is 3.5 degrees at 10.30 today. Bring a coat. Really. Now.") == \
        "It is 3.5 degrees at 10.30 today. Bring a coat. Really."


def test_nothing_left_is_empty() -> None:
    assert speakable("") == ""
    assert speakable("```\ncode only\n```") == ""
    assert speakable("🎉") == ""


def test_tool_output_shapes() -> None:
    assert json.loads(tool_output(result="Done.")) == {"result": "Done."}
    assert json.loads(tool_output(error="Sorry.")) == {"error": "Sorry."}
    assert "é" in tool_output(result="café")  # not escaped: fewer tokens for the model


def test_phrases_are_speakable_already() -> None:
    for line in Phrases().__slots__:
        text = getattr(Phrases(), line)
        assert speakable(text, max_chars=1000) == text
