"""Hanging up a call that has already ended is a clear 409, never a 500 (found by mypy)."""

from __future__ import annotations

import pytest

from tests.fakes.twilio_webhooks import status_callback_form
from tests.integration.harness import Harness

pytestmark = pytest.mark.asyncio


async def test_hangup_of_an_ended_call_is_409_with_its_status(harness: Harness) -> None:
    resp = await harness.http.post(f"{harness.base_url}/calls", json={"to": "+15557654321"})
    assert resp.status == 201, await resp.text()
    doc = await resp.json()
    r = await harness.webhooks().post("/twilio/status", status_callback_form(
        call_sid=doc["call_sid"], call_status="busy", sequence_number=1))
    assert r.status == 204

    hang = await harness.http.post(f"{harness.base_url}/calls/{doc['call_id']}/hangup")
    assert hang.status == 409, await hang.text()
    assert await hang.json() == {"error": "call already ended", "status": "failed"}
