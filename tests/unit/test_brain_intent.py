"""Rule layer, classifier JSON validation and request shape (brain/intent.py)."""

from __future__ import annotations

import json

import pytest

from agentic_fast.brain.intent import (
    ACTION,
    CHAT,
    MAX_COMMAND_CHARS,
    ChatModelClassifier,
    Intent,
    _content_of,
    build_messages,
    parse_classification,
    rule_intent,
)
from agentic_fast.brain.turns import ASSISTANT, CALLER, MemoryTurn
from agentic_fast.core.config import ClassifierConfig
from agentic_fast.core.errors import ClassifierError, InvalidClassificationError


@pytest.mark.parametrize("turn", [
    "Hello!", "hi there", "Good morning.", "Hey, how are you doing?", "Thanks!",
    "Thank you so much.", "Cheers", "Okay.", "Yeah, got it.", "Sounds good, thanks.",
    "Um...", "Mhm.", "No, thanks.", "Bye!", "Goodbye, talk soon.", "Great, perfect.",
    "...", "",
])
def test_small_talk_is_chat_by_rules(turn: str) -> None:
    assert rule_intent(turn) == Intent(CHAT, source="rules")


@pytest.mark.parametrize("turn", [
    "Text Sam that I'm late.", "Turn on the lights.", "What's on my calendar today?",
    "Yes, do it.", "Remind me to call mom.", "hello can you text Sam",
    "okay okay okay okay okay okay okay okay okay",  # too long for a rule
])
def test_anything_else_goes_to_the_model(turn: str) -> None:
    assert rule_intent(turn) is None


def test_a_yes_after_an_assistant_question_goes_to_the_model() -> None:
    assert rule_intent("Yes please.", last_assistant="Shall I text Sam you're late?") is None
    assert rule_intent("No.", last_assistant="Should I book it?") is None
    # not a question, or not a yes/no: still small talk
    assert rule_intent("Yes.", last_assistant="I booked it.") is not None
    assert rule_intent("Thanks!", last_assistant="Anything else?") is not None


def test_valid_action() -> None:
    intent = parse_classification('{"intent": "action", "command": " Text  Sam that I am late. "}')
    assert intent == Intent(ACTION, "Text Sam that I am late.", "model")
    assert intent.is_action


@pytest.mark.parametrize("content", [
    '{"intent": "chat", "command": ""}', '{"intent": "chat"}',
    '{"intent": "chat", "command": "ignored"}'])
def test_valid_chat(content: str) -> None:
    assert parse_classification(content) == Intent(CHAT, "", "model")


@pytest.mark.parametrize(("content", "why"), [
    ("not json", "not JSON"),
    ("```json\n{\"intent\": \"chat\"}\n```", "not JSON"),
    ('["action"]', "not a JSON object"),
    ('{"intent": "maybe", "command": ""}', "intent must be"),
    ('{"command": "x"}', "intent must be"),
    ('{"intent": "action"}', "non-empty command"),
    ('{"intent": "action", "command": "   "}', "non-empty command"),
    ('{"intent": "action", "command": 7}', "command must be a string"),
    ('{"intent": "action", "command": "x", "reason": "y"}', "unexpected key"),
    (json.dumps({"intent": "action", "command": "x" * (MAX_COMMAND_CHARS + 1)}), "longer"),
])
def test_invalid_classifications_are_errors(content: str, why: str) -> None:
    with pytest.raises(InvalidClassificationError, match=why) as info:
        parse_classification(content)
    assert isinstance(info.value, ClassifierError)  # the brain's fallback catches this type
    assert info.value.peer == "classifier"


@pytest.mark.parametrize(("body", "why"), [
    ({}, "no choices"), ({"choices": []}, "no choices"),
    ({"choices": [{"message": {"content": None}}]}, "not text"),
    ({"choices": [{"finish_reason": "length", "message": {"content": "{"}}]}, "cut off"),
])
def test_bad_completion_bodies(body: dict, why: str) -> None:
    with pytest.raises(InvalidClassificationError, match=why):
        _content_of(body)


def test_messages_carry_the_context_and_the_turn() -> None:
    context = (MemoryTurn(CALLER, "Can you text Sam?"),
               MemoryTurn(ASSISTANT, "Sure, what should I say?"))
    system, user = build_messages('I\'m late, "sorry"', context)
    assert system["role"] == "system" and '"intent"' in system["content"]
    assert user["role"] == "user"
    assert "caller: Can you text Sam?\nassistant: Sure, what should I say?" in user["content"]
    assert user["content"].endswith(json.dumps('I\'m late, "sorry"'))


def test_request_body_asks_for_a_json_object() -> None:
    classifier = ChatModelClassifier.from_config(ClassifierConfig(api_key="sk-x"))
    body = classifier.request_body("Turn on the lights.", ())
    assert body["model"] == "gpt-6-luna"
    assert body["response_format"] == {"type": "json_object"}
    assert body["stream"] is False and body["temperature"] == 0
    assert classifier.url == "https://api.openai.com/v1/chat/completions"
    gemini = ChatModelClassifier.from_config(ClassifierConfig(provider="gemini"))
    assert gemini.url == ("https://generativelanguage.googleapis.com/v1beta/openai"
                          "/chat/completions")


def test_openai_request_fits_reasoning_chat_models() -> None:
    # OpenAI's current chat models reason: they refuse max_tokens, and a temperature unless
    # reasoning_effort is none (which is also the fastest verdict).
    body = ChatModelClassifier.from_config(ClassifierConfig()).request_body("Hi.", ())
    assert body["reasoning_effort"] == "none" and body["max_completion_tokens"] == 300
    assert "max_tokens" not in body
    gemini = ChatModelClassifier.from_config(ClassifierConfig(provider="gemini"))
    body = gemini.request_body("Hi.", ())
    assert body["model"] == "gemini-3.5-flash-lite" and body["max_tokens"] == 300
    assert "reasoning_effort" not in body


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ChatModelClassifier("http://127.0.0.1:1/v1", "m", timeout_s=0)
