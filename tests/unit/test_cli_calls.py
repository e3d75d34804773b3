"""``agentic-fast calls``: aligned tables, --json, --since, and one-line errors."""

from __future__ import annotations

import socket

import pytest

from agentic_fast.cli.calls import (
    format_call,
    format_calls,
    format_event,
    format_table,
    parse_since,
)
from agentic_fast.cli.calls_api import http_error
from agentic_fast.cli.commands import main

CALL = {
    "call_id": "0b6f7e9c-1111-4222-8333-944445555666", "call_sid": "CA" + "a" * 32,
    "direction": "inbound", "from": "+15551230000", "to": "+15550001111",
    "status": "completed", "reason": "hangup-api", "created_at": "2026-01-02T10:11:12+00:00",
    "answered_at": "2026-01-02T10:11:14+00:00", "ended_at": "2026-01-02T10:12:20+00:00",
    "duration_s": 66.2, "stream_started": True, "transcript_turns": 2,
}


def test_table_columns_are_aligned_without_trailing_spaces() -> None:
    text = format_table(("A", "LONGER"), [("x", "1"), ("wide cell", "")])
    lines = text.splitlines()
    assert lines == ["A          LONGER", "x          1", "wide cell"]


def test_calls_table_shows_the_other_party_status_reason_and_duration() -> None:
    outbound = {**CALL, "call_id": "c2", "direction": "outbound", "status": "in-progress",
                "reason": None, "duration_s": 3725, "transcript_turns": 0}
    lines = format_calls([CALL, outbound]).splitlines()
    assert lines[0].split() == ["CALL", "ID", "STARTED", "DIRECTION", "NUMBER", "STATUS",
                                "ENDED", "BY", "DURATION", "TURNS"]
    assert "+15551230000" in lines[1] and "hangup-api" in lines[1] and "1:06" in lines[1]
    assert "+15550001111" in lines[2] and "1:02:05" in lines[2]
    # every column starts at the same offset on every line
    start = lines[0].index("STATUS")
    assert lines[1][start:].startswith("completed") and lines[2][start:].startswith("in-progress")
    assert format_calls([]) == "no calls"


def test_show_prints_record_transcript_and_commands() -> None:
    call = {**CALL, "transcript": [
        {"role": "user", "text": "turn on the lights", "ts": "2026-01-02T10:11:20+00:00"},
        {"role": "assistant", "text": "Done.", "ts": "2026-01-02T10:11:25+00:00"}],
        "transcript_total": 2, "transcript_truncated": False, "commands": [
        {"command": "turn on the lights", "status": "done", "answer": "lights are on",
         "started_at": "2026-01-02T10:11:21+00:00", "duration_s": 1.25}]}
    text = format_call(call)
    assert "ended by   hangup-api" in text
    assert "transcript (2 turns)" in text
    assert "caller: turn on the lights" in text and " agent: Done." in text
    assert "commands (1)" in text
    assert "turn on the lights  -> done in 1.2s: lights are on" in text


def test_one_line_per_event() -> None:
    base = {"id": 3, "ts": "2026-01-02T10:11:12+00:00", "call_id": "c1"}
    status = format_event({**base, "type": "call.status", "data": CALL})
    assert "\n" not in status and "completed inbound +15551230000 (ended by hangup-api)" in status
    said = format_event({**base, "type": "call.transcript",
                         "data": {"role": "user", "text": "hello"}})
    assert said.endswith("c1  caller: hello")
    lost = format_event({**base, "type": "events.dropped", "call_id": None,
                         "data": {"dropped": 4}})
    assert "4 event(s) lost" in lost


def test_since_takes_durations_iso_times_and_epoch_seconds() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2026-01-02T00:00:00") == parse_since("2026-01-02T00:00:00+00:00")
    with pytest.raises(Exception, match="--since 'yesterday'"):
        parse_since("yesterday")


def test_http_errors_read_as_one_line_naming_the_cause() -> None:
    assert http_error(401, '{"error": "unauthorized"}', "http://h/calls/x").startswith(
        "401 unauthorized: the server refused the API token")
    assert http_error(404, '{"error": "unknown call"}', "http://h/calls/x") == (
        "404 unknown call [http://h/calls/x]")
    assert http_error(502, '{"error": "Twilio refused the hang-up", "detail": "21220"}',
                      "u") == "502 Twilio refused the hang-up: 21220 [u]"
    assert http_error(500, "<html>\n boom </html>", "u") == "500 <html> boom </html> [u]"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("argv", [["calls", "list"], ["calls", "show", "abc"],
                                  ["calls", "hangup", "abc"], ["calls", "tail"],
                                  ["call", "--to", "+15551230000", "--wait"]])
def test_connection_refused_is_one_clear_line(argv, tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  host: 127.0.0.1\n")
    url = f"http://127.0.0.1:{_closed_port()}"
    code = main([*argv, "--config", str(config), "--server", url], env={})
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: cannot connect to {url}")
    assert "Error(" not in err and "Traceback" not in err


def test_bad_usage_exits_2(capsys) -> None:
    assert main(["calls"], env={}) == 2
    assert main(["calls", "list", "--status", "nope"], env={}) == 2
    assert main(["calls", "list", "--since", "yesterday"], env={}) == 2
