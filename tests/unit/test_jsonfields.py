"""One JSON field helper (core/jsonfields.py) for every parser; errors name peer and field."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agentic_fast
from agentic_fast.carriers.twilio.media import parse_twilio_message
from agentic_fast.core.errors import (
    GatewayProtocolError,
    MessageError,
    OpenAIProtocolError,
    RemoteProtocolError,
)
from agentic_fast.core.jsonfields import JsonFields
from agentic_fast.gateway.protocol import parse_frame
from agentic_fast.providers.gemini.events import parse_server_message
from agentic_fast.providers.openai.events import parse_server_event

#: The per-module plumbing names the helper replaced.
_PLUMBING = {"_fail", "_str", "_opt_str", "_int", "_obj", "_nonempty_str"}
#: Local accessors with a peer-specific rule (built on the helper's ``fail``).
_SPECIFIC = {
    ("providers/gemini/events.py", "_int"),  # int64 as a proto3 JSON string of digits
    ("carriers/twilio/status.py", "_int"),  # a form field (text), not JSON: digits in a range
    ("providers/openai/commands.py", "_nonempty_str"),  # our own arguments (LocalProtocolError)
    ("gateway/protocol.py", "_opt_str"),  # lenient by design: a non-string is ignored, no error
}


def test_no_parser_defines_its_own_field_plumbing() -> None:
    root = Path(agentic_fast.__file__).parent
    own = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.FunctionDef) and node.name in _PLUMBING
                    and (rel, node.name) not in _SPECIFIC):
                own.append(f"{rel}:{node.name}")
    assert own == []


F = JsonFields(OpenAIProtocolError)


def test_accessors_return_typed_values() -> None:
    msg = {"s": "x", "i": 3, "o": {}, "n": None}
    assert F.get_str(msg, "s") == "x"
    assert F.get_int(msg, "i") == 3
    assert F.get_obj(msg, "o") == {}
    assert F.get_opt_str(msg, "n") is None and F.get_opt_str(msg, "absent") is None
    assert F.get_opt_int(msg, "n") is None and F.get_opt_int(msg, "i", minimum=0) == 3
    assert F.get_nonempty_str(msg, "s") == "x"
    assert F.check_str("y", "a.b") == "y" and F.check_obj({}, "a") == {}


@pytest.mark.parametrize("call, reason, field", [
    (lambda: F.get_str({"k": 1}, "k", "item."), "bad_type", "item.k"),
    (lambda: F.get_int({"k": True}, "k"), "bad_type", "k"),  # a JSON bool is no integer
    (lambda: F.get_obj({"k": []}, "k", "response."), "bad_type", "response.k"),
    (lambda: F.get_opt_str({"k": 2}, "k"), "bad_type", "k"),
    (lambda: F.get_opt_int({"k": -1}, "k", minimum=0), "bad_value", "k"),
    (lambda: F.get_nonempty_str({"k": ""}, "k", "res."), "bad_type", "res.k"),
    (lambda: F.get_nonempty_str({}, "k", "res."), "missing_field", "res.k"),
    (lambda: F.check_str(5, "part.text"), "bad_type", "part.text"),
])
def test_refusals_name_reason_field_and_peer(call, reason: str, field: str) -> None:
    with pytest.raises(OpenAIProtocolError) as info:
        call()
    assert (info.value.reason, info.value.field, info.value.peer) == (reason, field, "openai")


def test_missing_key_is_a_key_error_for_the_parser_to_report() -> None:
    with pytest.raises(KeyError):
        F.get_str({}, "k")


@pytest.mark.parametrize("parse, data, peer, field", [
    (parse_twilio_message, b'{"event": "mark", "sequenceNumber": "1", "streamSid": "MZ1",'
                           b' "mark": {"name": 5}}', "twilio", "mark.name"),
    (parse_server_event, b'{"type": "response.output_audio.delta", "response_id": "r",'
                         b' "item_id": 1, "output_index": 0, "content_index": 0,'
                         b' "delta": ""}', "openai", "item_id"),
    (parse_server_message, b'{"serverContent": {"outputTranscription": {"text": 1}}}',
     "gemini", "outputTranscription.text"),
    (parse_frame, b'{"type": "event", "event": "chat", "seq": -1}', "openclaw", "event.seq"),
])
def test_every_parser_raises_its_peer_error_naming_the_field(parse, data: bytes, peer: str,
                                                              field: str) -> None:
    with pytest.raises(MessageError) as info:
        parse(data)
    assert isinstance(info.value, RemoteProtocolError)
    assert (info.value.peer, info.value.field) == (peer, field)


def test_gateway_frames_refused_with_the_gateway_error() -> None:
    with pytest.raises(GatewayProtocolError) as info:
        parse_frame(b'{"type": "res", "id": "", "ok": true}')
    assert info.value.field == "res.id"
