"""A signed voice webhook replayed later gets no new call and no stream token, also after
the call left the in-memory history and after a restart (``server.state_dir``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentic_fast.call.manager import CallManager
from agentic_fast.core import metrics
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import incoming_call_form, new_sid, status_callback_form
from tests.integration.harness import Harness, start_harness

pytestmark = pytest.mark.asyncio


async def _post_voice(h: Harness, form: dict[str, str]) -> str:
    resp = await h.webhooks().post("/twilio/voice", form)
    assert resp.status == 200
    return await resp.text()


async def _end_call(h: Harness, call_sid: str) -> None:
    resp = await h.webhooks().post("/twilio/status", status_callback_form(
        call_sid=call_sid, call_status="completed", sequence_number=3,
        direction="inbound", call_duration=1))
    assert resp.status == 204


def _refused_replay(twiml: str) -> bool:
    return "<Stream" not in twiml and "<Hangup" in twiml and "streamToken" not in twiml


async def test_replay_after_the_call_left_the_history(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, manager=CallManager(history_size=2))
    try:
        form = incoming_call_form(call_sid=new_sid("CA"))
        assert "<Stream" in await _post_voice(h, form)
        await _end_call(h, form["CallSid"])
        for _ in range(3):  # newer calls push the first one out of the history
            sid, _, _ = await h.incoming_call()
            await _end_call(h, sid)
        manager = h.services.manager
        assert manager.get_by_sid(form["CallSid"]) is None
        before = metrics.get("twilio.webhook.replayed")
        created = metrics.get("calls.created.inbound")
        assert _refused_replay(await _post_voice(h, form))
        assert manager.get_by_sid(form["CallSid"]) is None  # no new call
        assert metrics.get("calls.created.inbound") == created
        assert metrics.get("twilio.webhook.replayed") == before + 1
    finally:
        await h.__aexit__(None, None, None)


async def test_replay_after_a_restart(rest: FakeTwilioRest, tmp_path: Path) -> None:
    state = tmp_path / "state"
    form = incoming_call_form(call_sid=new_sid("CA"))
    h = await start_harness(rest, state_dir=str(state))
    try:
        assert "<Stream" in await _post_voice(h, form)
    finally:
        await h.__aexit__(None, None, None)
    assert (state / "replay.sqlite3").exists()
    again = await start_harness(rest, state_dir=str(state))  # a new process, same state
    try:
        assert _refused_replay(await _post_voice(again, form))
        assert again.services.manager.active_count == 0
        # a new call is still answered normally
        assert "<Stream" in await _post_voice(again, incoming_call_form(call_sid=new_sid("CA")))
    finally:
        await again.__aexit__(None, None, None)


async def test_retry_while_ringing_still_connects_the_same_call(rest: FakeTwilioRest) -> None:
    """Twilio's own retry (first answer lost, at most 15 s later) must still connect."""
    h = await start_harness(rest)
    try:
        call_sid, params, _ = await h.incoming_call()
        _, again, _ = await h.incoming_call(call_sid=call_sid)
        assert again["callId"] == params["callId"]
        assert h.services.manager.active_count == 1
    finally:
        await h.__aexit__(None, None, None)


async def test_broken_state_dir_keeps_answering_calls(rest: FakeTwilioRest,
                                                      tmp_path: Path) -> None:
    """The replay file cannot be created: logged and counted, calls go on, replays are
    refused from memory until a restart."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    before = metrics.get("replay_guard.db_error")
    h = await start_harness(rest, state_dir=str(blocker), manager=CallManager(history_size=0))
    try:
        assert metrics.get("replay_guard.db_error") == before + 1
        assert not h.services.replays.persistent
        form = incoming_call_form(call_sid=new_sid("CA"))
        assert "<Stream" in await _post_voice(h, form)
        await _end_call(h, form["CallSid"])
        assert _refused_replay(await _post_voice(h, form))
    finally:
        await h.__aexit__(None, None, None)
    assert os.path.isfile(blocker)
