"""Both carriers on at once: each carrier's webhook route and media stream are mounted,
``numbers:`` picks the carrier of an outbound call by its ``from`` number, and server/app.py
reaches carriers only through the registry."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agentic_fast.carriers.base import OutboundCall
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.server.app import SERVICES, create_app

TWILIO_NUMBER, TELNYX_NUMBER = "+15550001111", "+15550002222"


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw,
                                                                 PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass
class TwilioControl:
    """Stands in for Twilio's CallControl (records what was placed)."""

    placed: list[OutboundCall] = field(default_factory=list)

    async def place_call(self, call: OutboundCall) -> str:
        self.placed.append(call)
        return "CA" + "0" * 32

    async def hang_up(self, carrier_call_id: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class TelnyxRest:
    """Stands in for the Telnyx REST client (records the dial's fields)."""

    dials: list[dict[str, Any]] = field(default_factory=list)

    async def dial(self, **fields: Any) -> Any:
        self.dials.append(fields)
        return type("Dialed", (), {"call_control_id": "v3:dialed"})()

    async def close(self) -> None: ...


class _Factory:
    def __call__(self, session: Any, sender: Any) -> Any:
        raise AssertionError("no media stream in these tests")


def _config(numbers: str = "") -> Config:
    return Config.from_text(f"""
server: {{public_url: "https://agent.example.test"}}
carrier: twilio
{numbers}
twilio: {{account_sid: AC{"1" * 32}, auth_token: secret, from_number: "{TWILIO_NUMBER}"}}
telnyx: {{api_key: KEY, connection_id: "123", public_key: "{_public_key()}",
          from_number: "{TELNYX_NUMBER}"}}
""")


@pytest.fixture
async def both() -> AsyncIterator[tuple[TestClient[Any, Any], TwilioControl, TelnyxRest]]:
    twilio, telnyx = TwilioControl(), TelnyxRest()
    app = create_app(_config('numbers: {"+15550003333": telnyx}'), bridge_factory=_Factory(),
                     rest_client=twilio, telnyx_rest=telnyx)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, twilio, telnyx


async def test_both_carriers_mount_their_webhooks_and_media_streams(
        both: tuple[TestClient[Any, Any], TwilioControl, TelnyxRest]) -> None:
    client, _, _ = both
    svc = client.app[SERVICES]
    assert sorted(svc.carriers) == ["telnyx", "twilio"]
    paths = {r.resource.canonical for r in client.app.router.routes() if r.resource}
    assert {"/twilio/voice", "/twilio/status", "/twilio/stream-status", "/telnyx/webhook",
            "/twilio/media-stream", "/telnyx/media-stream"} <= paths
    unsigned = await client.post("/telnyx/webhook", data=b"{}")
    assert unsigned.status == 403
    unsigned = await client.post("/twilio/voice", data={"CallSid": "CA" + "1" * 32})
    assert unsigned.status == 403


@pytest.mark.parametrize(("body", "carrier", "caller_id"), [
    ({}, "twilio", TWILIO_NUMBER),                              # the carrier: default
    ({"from": TELNYX_NUMBER}, "telnyx", TELNYX_NUMBER),         # telnyx.from_number
    ({"from": "+15550003333"}, "telnyx", "+15550003333"),       # numbers:
    ({"carrier": "telnyx"}, "telnyx", TELNYX_NUMBER),
])
async def test_outbound_calls_go_through_the_carrier_of_their_number(
        both: tuple[TestClient[Any, Any], TwilioControl, TelnyxRest],
        body: dict[str, str], carrier: str, caller_id: str) -> None:
    client, twilio, telnyx = both
    resp = await client.post("/calls", json={"to": "+15557654321", **body})
    assert resp.status == 201, await resp.text()
    session = client.app[SERVICES].manager.get((await resp.json())["call_id"])
    assert session is not None and session.carrier == carrier
    if carrier == "twilio":
        assert [c.from_number for c in twilio.placed] == [caller_id] and not telnyx.dials
    else:
        assert not twilio.placed and [d["from_"] for d in telnyx.dials] == [caller_id]
        assert telnyx.dials[0]["stream"].url == "wss://agent.example.test/telnyx/media-stream"
        assert telnyx.dials[0]["webhook_url"] == "https://agent.example.test/telnyx/webhook"


@pytest.mark.parametrize(("body", "error"), [
    ({"from": "+15559999999"}, "not one of our numbers"),
    ({"from": TELNYX_NUMBER, "carrier": "twilio"}, "is on carrier telnyx"),
    ({"carrier": "plivo"}, "is not a carrier"),
    ({"from": "5550001111"}, "'from' must be an E.164 number"),
])
async def test_a_bad_from_or_carrier_is_a_400_naming_the_field(
        both: tuple[TestClient[Any, Any], TwilioControl, TelnyxRest],
        body: dict[str, str], error: str) -> None:
    client, twilio, telnyx = both
    resp = await client.post("/calls", json={"to": "+15557654321", **body})
    assert resp.status == 400 and error in (await resp.json())["error"]
    assert not twilio.placed and not telnyx.dials


def test_numbers_are_validated_naming_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        Config.from_text('numbers: {"+15550001111": telnix}\n')
    assert exc.value.key == "numbers.+15550001111" and "twilio, telnyx" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        Config.from_text('numbers: {"5550001111": telnyx}\n')
    assert exc.value.key == "numbers.5550001111" and "E.164" in str(exc.value)
    config = Config.from_text('numbers: {"+15550001111": telnyx}\n')
    assert config.carriers_in_use() == ("twilio", "telnyx")
    assert config.carrier_of("+15550001111") == "telnyx"


def test_the_app_and_its_desk_import_no_carrier_but_through_the_registry() -> None:
    code = ("import sys, agentic_fast.server.app, agentic_fast.server.desk; "
            "print(sorted(m for m in sys.modules if m.startswith('agentic_fast.carriers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ["agentic_fast.carriers.base", "agentic_fast.carriers.registry"]
