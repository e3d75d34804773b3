"""Dedupe and the tool declaration: normalised command keys, the per-call window, mode both
matching of tool calls and transcript turns, ``run_command`` arguments."""

from __future__ import annotations

import json

import pytest

from agentic_fast.brain import ConversationBrain
from agentic_fast.brain.intent import (
    MAX_COMMAND_CHARS,
    RUN_COMMAND,
    parse_tool_arguments,
    run_command_declaration,
)
from agentic_fast.brain.policy import CallerPolicy, CallGate, command_key, related
from agentic_fast.brain.turns import CallState, Command
from agentic_fast.call.manager import CallDirection, CallSession
from agentic_fast.core.config import BrainConfig


@pytest.mark.parametrize(("a", "b"), [
    ("Text Sam that I'm late.", "text sam that im late"),
    ("  Turn on   the LIGHTS! ", "turn on the lights"),
    ("Call mom, please.", "call mom please"),
])
def test_command_key_normalises(a: str, b: str) -> None:
    assert command_key(a) == command_key(b)


def test_different_commands_have_different_keys() -> None:
    assert command_key("Turn on the lights.") != command_key("Turn off the lights.")


def make_state() -> CallState:
    session = CallSession(CallDirection.INBOUND, "+15551230000", "+15550001111")
    gate = CallGate(CallerPolicy(["+15551230000"]), "+15551230000")
    return CallState(session, gate, gap_s=0.0, memory_turns=4)


def command(text: str, started: float) -> Command:
    return Command(text, command_key(text), "transcript", at=started, started=started,
                   record={})


def test_duplicate_within_the_window_only() -> None:
    state = make_state()
    state.recent.append(command("Text Sam that I'm late.", started=10.0))
    state.recent.append(command("Turn on the lights.", started=20.0))
    key = command_key("text sam that im late")
    assert state.duplicate_of(key, now=50.0, window=120.0) is state.recent[0]
    assert state.duplicate_of(key, now=200.0, window=120.0) is None
    assert state.duplicate_of(command_key("Call mom."), now=21.0, window=120.0) is None


@pytest.mark.parametrize(("status", "blocks"), [
    (None, True), ("done", True), ("error", False), ("timeout", False),
    ("unavailable", False), ("aborted", False), ("cancelled", False)])
def test_only_commands_in_flight_or_done_block_a_repeat(status: str | None,
                                                        blocks: bool) -> None:
    state = make_state()
    state.recent.append(command("Book a table.", started=10.0))
    state.recent[0].status = status
    found = state.duplicate_of(command_key("book a table"), now=11.0, window=120.0)
    assert (found is not None) is blocks


def test_tool_call_near_a_turn_is_consumed_once() -> None:
    state = make_state()
    state.tool_calls.append((10.0, "Text Sam I am late."))
    turn = "please text Sam that I'm running late"
    assert not state.take_tool_call_near(20.0, 5.0, turn)  # too far apart
    assert not state.take_tool_call_near(12.0, 5.0, "Book a table for two.")  # unrelated
    assert state.take_tool_call_near(12.0, 5.0, turn)
    assert not state.take_tool_call_near(12.0, 5.0, turn)  # already matched
    state.tool_calls.append((30.0, "Turn on the porch lights"))
    assert state.take_tool_call_near(27.0, 5.0, "lights on in the porch")  # turn came first


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Text Sam I am late.", "please text Sam that I'm running late", True),
    ("Call grandpa.", "Book a table.", False),
    ("Do it please.", "Yes do it now.", False),  # stopwords and short words do not count
])
def test_related(a: str, b: str, same: bool) -> None:
    assert related(a, b) is same
    assert related(b, a) is same


@pytest.mark.parametrize(("arguments", "command"), [
    ('{"command": "Turn on the lights."}', "Turn on the lights."),
    ('{"command": "  text\\n Sam "}', "text Sam"),
    ('{"command": ""}', None), ('{"command": 5}', None), ('{"cmd": "x"}', None),
    ("not json", None), ("[]", None),
])
def test_tool_arguments(arguments: str, command: str | None) -> None:
    assert parse_tool_arguments(arguments) == command


def test_tool_arguments_are_bounded() -> None:
    long = json.dumps({"command": "x" * (MAX_COMMAND_CHARS * 2)})
    assert len(parse_tool_arguments(long) or "") == MAX_COMMAND_CHARS


def test_tool_declarations_per_mode() -> None:
    declaration = run_command_declaration()
    assert declaration["name"] == RUN_COMMAND
    assert declaration["parameters"]["required"] == ["command"]
    assert declaration["parameters"]["properties"]["command"]["type"] == "string"
    tool = ConversationBrain(BrainConfig(mode="tool"), gateway=None)  # type: ignore[arg-type]
    assert tool.tools() == [{"type": "function", **declaration}]
    assert tool.function_declarations() == [declaration]
    both = ConversationBrain(BrainConfig(mode="both"), gateway=None)  # type: ignore[arg-type]
    assert both.tools() == tool.tools()
    transcript = ConversationBrain(BrainConfig(mode="transcript"),
                                   gateway=None)  # type: ignore[arg-type]
    assert transcript.tools() == [] and transcript.function_declarations() == []


def test_session_key_per_call_or_per_caller() -> None:
    session = CallSession(CallDirection.INBOUND, "+15551230000", "+15550001111",
                          call_sid="CA0123abcd")
    per_call = ConversationBrain(BrainConfig(), gateway=None)  # type: ignore[arg-type]
    per_caller = ConversationBrain(BrainConfig(), gateway=None,  # type: ignore[arg-type]
                                   session_scope="caller")
    assert per_call.session_key(session) == "agent:main:voice-ca0123abcd"
    assert per_caller.session_key(session) == "agent:main:voice-15551230000"
    with pytest.raises(ValueError):
        ConversationBrain(BrainConfig(), gateway=None,  # type: ignore[arg-type]
                          session_scope="room")
