"""Post-call delivery, the parts without a network: config, signature, Telegram text,
plain-extract summary, the call manager's end hook."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from agentic_fast.call.manager import CallManager, CallSession
from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError, SignatureError
from agentic_fast.notify import build_notifier
from agentic_fast.notify.record import call_record
from agentic_fast.notify.summary import PlainSummarizer, build_summarizer, plain_extract
from agentic_fast.notify.telegram import MESSAGE_LIMIT, split_text, utf16_len
from agentic_fast.notify.webhook import sign, verify_signature

SECRET = "whsec-0123456789abcdef"


# -- config ---------------------------------------------------------------------------------

def test_notify_is_off_by_default() -> None:
    config = Config()
    assert not config.notify.enabled
    assert build_notifier(config) is None


@pytest.mark.parametrize(("text", "key"), [
    ("notify:\n  webhook_url: http://hooks.example.com/x\n", "notify.webhook_url"),
    ("notify:\n  webhook_url: ftp://127.0.0.1/x\n", "notify.webhook_url"),
    ("notify:\n  telegram:\n    api_base_url: http://api.example.org\n",
     "notify.telegram.api_base_url"),
    ("notify:\n  telegram:\n    chat_id: me\n", "notify.telegram.chat_id"),
    ("notify:\n  max_attempts: 0\n", "notify.max_attempts"),
    ("notify:\n  backoff_base_s: 60\n  backoff_max_s: 30\n", "notify.backoff_base_s"),
    ("notify:\n  summary:\n    provider: mistral\n", "notify.summary.provider"),
    ("notify:\n  webhok_url: https://x.example.com\n", "notify.webhok_url"),
])
def test_bad_notify_settings_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_text(text)
    assert info.value.key == key
    assert key in str(info.value)


def test_urls_are_https_unless_loopback() -> None:
    config = Config.from_text("notify:\n  webhook_url: http://127.0.0.1:9000/hook/\n"
                              "  telegram:\n    api_base_url: http://[::1]:8081\n")
    assert config.notify.webhook_url == "http://127.0.0.1:9000/hook"
    assert Config.from_text("notify:\n  webhook_url: https://hooks.example.com/x\n"
                            ).notify.webhook_url == "https://hooks.example.com/x"


@pytest.mark.parametrize(("text", "key"), [
    ("notify:\n  webhook_url: https://h.example.com/x\n", "notify.webhook_secret"),
    ("notify:\n  telegram:\n    bot_token: '1:abc'\n", "notify.telegram.chat_id"),
    ("notify:\n  telegram:\n    chat_id: '-100123'\n", "notify.telegram.bot_token"),
])
def test_a_destination_without_its_other_half_refuses_to_start(text: str, key: str) -> None:
    config = Config.from_text(text)  # loads (empty secrets are accepted at load)...
    assert any(w.startswith(key) for w in config.warnings())
    with pytest.raises(ConfigError) as info:  # ...but the notifier refuses to start
        build_notifier(config)
    assert info.value.key == key


def test_notify_secrets_are_masked() -> None:
    config = Config.from_text(
        "notify:\n  webhook_url: https://h.example.com/x\n  webhook_secret: s3cret-value-long\n"
        "  telegram:\n    bot_token: '123:tokentokentoken'\n    chat_id: '@my_channel'\n"
        "  summary:\n    api_key: sk-abcdefghijklmnop\n")
    masked = json.dumps(config.masked()["notify"])
    for secret in ("s3cret-value-long", "123:tokentokentoken", "sk-abcdefghijklmnop"):
        assert secret not in masked
    assert config.masked()["notify"]["telegram"]["chat_id"] == "@my_channel"


def test_summary_defaults_follow_the_classifier_providers() -> None:
    summary = Config.from_text("notify:\n  summary:\n    provider: gemini\n").notify.summary
    assert summary.base_url.startswith("https://generativelanguage.googleapis.com")
    assert summary.model
    assert isinstance(build_summarizer(summary), PlainSummarizer)  # no api key


# -- webhook signature -------------------------------------------------------------------------

def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event":"call.ended"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"v1={expected}"


def _headers(timestamp: int, body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-AgenticFast-Timestamp": str(timestamp),
            "X-AgenticFast-Signature": sign(secret, timestamp, body)}


def test_receiver_verification_accepts_a_fresh_signed_body() -> None:
    body = b'{"a":1}'
    assert verify_signature(SECRET, _headers(1000, body), body, now=1100) == 1000


@pytest.mark.parametrize(("headers_for", "body", "now", "why"), [
    (b'{"a":1}', b'{"a":2}', 1000, "does not match"),          # body changed
    (b'{"a":1}', b'{"a":1}', 1000 + 301, r"off \(replay\?\)"),     # replayed too late
    (b'{"a":1}', b'{"a":1}', 1000 - 301, r"off \(replay\?\)"),     # from the future
])
def test_receiver_verification_rejects_tampering_and_replays(
        headers_for: bytes, body: bytes, now: float, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        verify_signature(SECRET, _headers(1000, headers_for), body, now=now)


def test_receiver_verification_rejects_another_secret_and_missing_headers() -> None:
    body = b"{}"
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, _headers(1000, body, "other-secret"), body, now=1000)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(SECRET, {}, body, now=1000)


# -- Telegram text ---------------------------------------------------------------------------

def test_short_text_is_one_message_unchanged() -> None:
    assert split_text("hello\nworld", max_messages=4) == ["hello\nworld"]


def test_long_text_is_split_on_lines_within_the_limit() -> None:
    lines = [f"Caller: {i} " + "word " * 150 for i in range(20)]  # ~15 k characters
    parts = split_text("\n".join(lines), max_messages=10)
    assert 1 < len(parts) <= 10
    assert all(utf16_len(p) <= MESSAGE_LIMIT for p in parts)
    assert parts[0].startswith(f"[1/{len(parts)}] Caller: 0 ")
    body = "\n".join(p.split("] ", 1)[1] for p in parts)
    assert body == "\n".join(lines)  # nothing lost, lines not broken


def test_limits_count_utf16_units_and_one_huge_line_is_cut() -> None:
    text = "😀" * 5000  # 10 000 UTF-16 units, one line
    parts = split_text(text, max_messages=10)
    assert all(utf16_len(p) <= MESSAGE_LIMIT for p in parts)
    assert "".join(p.split("] ", 1)[1] for p in parts) == text


def test_beyond_max_messages_the_text_is_truncated_with_a_note() -> None:
    text = "\n".join("line " + "y" * 1000 for _ in range(30))
    parts = split_text(text, max_messages=2, call_id="call-1")
    assert len(parts) == 2
    assert all(utf16_len(p) <= MESSAGE_LIMIT for p in parts)
    assert parts[-1].endswith("(truncated; the full transcript is in the webhook and "
                              "GET /calls/call-1)")


# -- record, summary, hook -------------------------------------------------------------------

def _call() -> tuple[CallManager, CallSession]:
    manager = CallManager()
    session = manager.create_outbound("+15559870000", from_number="+15551230000")
    manager.attach_call_sid(session, "CA" + "5" * 32)
    manager.transition(session, "in-progress")
    session.add_transcript("agent", "Hello, this is your assistant.")
    session.add_transcript("caller", "Please turn off the kitchen lights.")
    session.add_command({"command": "Turn off the kitchen lights.", "status": "ok"})
    session.add_transcript("agent", "The kitchen lights are off.")
    return manager, session


def test_plain_extract_has_the_request_the_commands_and_the_last_lines() -> None:
    manager, session = _call()
    manager.complete(session, "hangup")
    summary = plain_extract(call_record(session, provider="gemini"))
    assert summary.startswith("Outbound call from +15551230000 to +15559870000, "
                              "completed (hangup)")
    assert 'Caller: "Please turn off the kitchen lights."' in summary
    assert "Agent commands: Turn off the kitchen lights. (ok)." in summary
    assert "agent: The kitchen lights are off." in summary


def test_record_lists_statuses_with_times_and_the_provider() -> None:
    manager, session = _call()
    manager.fail(session, "stream-error")
    record = call_record(session, provider="gemini")
    assert record["event"] == "call.ended" and record["version"] == 1
    assert [s["status"] for s in record["call"]["statuses"]] == [
        "initiating", "in-progress", "failed"]
    assert record["call"]["provider"] == "gemini"
    json.dumps(record)  # plain JSON data


def test_call_ended_listeners_run_once_per_call_and_one_failing_does_not_stop_others(
) -> None:
    metrics.reset()
    manager, session = _call()
    seen: list[str] = []

    def broken(_: CallSession) -> None:
        raise RuntimeError("listener bug")

    manager.on_call_ended.append(broken)
    manager.on_call_ended.append(lambda s: seen.append(s.status.value))
    manager.complete(session)
    manager.complete(session)  # a duplicate: not a second end
    manager.fail(session, "late")  # stale: the call already ended
    assert seen == ["completed"]
    assert metrics.get("calls.on_end.error") == 1
