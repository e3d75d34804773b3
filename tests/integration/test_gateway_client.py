"""GatewayClient against the fake OpenClaw gateway (tests/fakes/openclaw_gateway.py) on loopback.

No sleeps as synchronisation: tests wait on what the fake records (``wait_request``,
``wait_hellos``) or on the client's own results. Reconnect delays go through an injected
``sleep`` that records the delay and yields once, so backoff values are asserted, not timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed

from agentic_fast.core import metrics
from agentic_fast.core.config import GatewayConfig
from agentic_fast.core.errors import (
    GatewayConnectionError,
    GatewayError,
    GatewayPayloadTooLargeError,
    GatewayTimeoutError,
)
from agentic_fast.gateway import (
    Backoff,
    ChatEvent,
    DeviceIdentity,
    GatewayClient,
    load_or_create_identity,
    voice_session_key,
)
from agentic_fast.gateway.credentials import DeviceCredentials
from agentic_fast.gateway.device import DeviceTokenStore, StoredDeviceToken
from agentic_fast.gateway.protocol import connect_params
from tests.fakes.openclaw_gateway import ChatScript, FakeOpenClawGateway

TOKEN = "fake-token"


class SleepRecorder:
    """Injected ``sleep``: records each delay and yields to the loop once."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._changed = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._changed.set()
        await asyncio.sleep(0)

    async def wait_count(self, n: int) -> None:
        while len(self.delays) < n:
            self._changed.clear()
            await self._changed.wait()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenClawGateway]:
    async with FakeOpenClawGateway(token=TOKEN) as gateway:
        yield gateway


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_client(tmp_path: Path, sleeps: SleepRecorder) -> Callable[..., GatewayClient]:
    def make(url: str, **kwargs: object) -> GatewayClient:
        kwargs.setdefault("token", TOKEN)
        kwargs.setdefault("identity", load_or_create_identity(tmp_path / "device_key"))
        kwargs.setdefault("sleep", sleeps)
        kwargs.setdefault("backoff", Backoff.endless(jitter=0.0))
        return GatewayClient(url, **kwargs)  # type: ignore[arg-type]
    return make


async def collect(client: GatewayClient, key: str, message: str,
                  deadline_s: float = 10.0) -> list[ChatEvent]:
    async with client.run(key, message, deadline_s=deadline_s) as run:
        return [event async for event in run]


# --- handshake ------------------------------------------------------------------------------


async def test_handshake_sends_a_signed_operator_connect(fake, make_client):
    async with make_client(fake.url) as client:
        hello = await client.wait_ready()
    connect = fake.methods("connect")[0]["params"]
    assert connect["minProtocol"] == connect["maxProtocol"] == 4
    assert connect["client"]["id"] == "gateway-client"
    assert connect["client"]["mode"] == "backend"
    assert connect["role"] == "operator"
    assert connect["scopes"] == ["operator.read", "operator.write"]
    assert connect["auth"] == {"token": TOKEN}
    # the fake verified the Ed25519 signature over the v3 payload before saying hello
    assert fake.device_ids == [client.device_id]
    assert connect["device"]["id"] == client.device_id
    assert hello.protocol == 4
    assert hello.policy.tick_interval_ms == fake.tick_interval_ms
    assert hello.policy.max_payload == fake.max_payload
    assert set(hello.scopes) == {"operator.read", "operator.write"}


async def test_from_config_creates_the_device_key_on_first_use(fake, tmp_path):
    key = tmp_path / "state" / "gateway_device_key"
    config = GatewayConfig(url=fake.url, token=TOKEN, device_key_path=str(key))
    async with GatewayClient.from_config(config) as client:
        await client.wait_ready()
    assert key.exists()
    assert fake.device_ids == [client.device_id]


async def test_device_id_is_stable_across_clients(fake, make_client):
    async with make_client(fake.url) as first:
        await first.wait_ready()
    async with make_client(fake.url) as second:
        await second.wait_ready()
    assert first.device_id == second.device_id
    assert fake.device_ids == [first.device_id, first.device_id]


async def test_wrong_token_is_fatal_and_not_retried(fake, make_client):
    client = make_client(fake.url, token="wrong")
    async with client:
        with pytest.raises(GatewayError) as info:
            await client.wait_ready()
        assert info.value.code == "INVALID_REQUEST"
        assert info.value.details_code == "AUTH_TOKEN_MISMATCH"
        assert client.fatal_error is info.value
        with pytest.raises(GatewayError) as again:
            await client.request("health", {})
        assert again.value.details_code == "AUTH_TOKEN_MISMATCH"
    assert fake.connections_opened == 1


async def test_protocol_mismatch_is_fatal(make_client):
    async with FakeOpenClawGateway(token=TOKEN, protocol=5) as newer, \
            make_client(newer.url) as client:
        with pytest.raises(GatewayError) as info:
            await client.wait_ready()
    assert info.value.code == "INVALID_REQUEST"
    assert info.value.details_code == "PROTOCOL_MISMATCH"


async def test_unavailable_during_handshake_is_retried_after_retry_after_ms(
        fake, make_client, sleeps):
    fake.unavailable_connects = 2
    fake.retry_after_ms = 321
    async with make_client(fake.url) as client:
        await client.wait_ready()
    assert sleeps.delays == [0.321, 0.321]
    assert fake.connections_opened == 3
    assert fake.hellos == 1


async def test_unavailable_without_retry_after_backs_off(fake, make_client, sleeps):
    fake.unavailable_connects = 3
    fake.retry_after_ms = None
    async with make_client(fake.url) as client:
        await client.wait_ready()
    assert sleeps.delays == [1.0, 2.0, 4.0]


async def test_unreachable_gateway_backs_off_doubling_to_the_cap(make_client, sleeps):
    async with FakeOpenClawGateway(token=TOKEN) as gone:
        url = gone.url  # a port nothing listens on once the fake is closed
    async with make_client(url, backoff=Backoff.endless(max_delay_s=8.0, jitter=0.0)) as client:
        async with asyncio.timeout(10):
            await sleeps.wait_count(6)
        assert not client.is_open
    assert sleeps.delays[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


# --- pairing and the device token -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> DeviceTokenStore:
    return DeviceTokenStore.beside(tmp_path / "device_key")


def pair(fake: FakeOpenClawGateway, identity: DeviceIdentity) -> str:
    """The owner approved this device earlier; the token the gateway will issue it."""
    return fake.pair(identity.device_id, identity.public_key_b64url).token


async def test_pairing_required_is_retried_until_the_owner_approves(
        make_client, store, sleeps, tmp_path, caplog):
    async with FakeOpenClawGateway(token=TOKEN, require_pairing=True) as remote:
        client = make_client(remote.url, token_store=store)
        with caplog.at_level("INFO", logger="agentic_fast.gateway"):
            async with client:
                await client.start()
                async with asyncio.timeout(10):
                    await sleeps.wait_count(3)
                # still waiting for the owner, not given up until restart
                assert client.fatal_error is None
                pending = client.pairing_required
                assert pending is not None and pending.device_id == client.device_id
                assert list(remote.pairing_requests) == [pending.request_id]
                with pytest.raises(GatewayTimeoutError, match=pending.request_id):
                    await client.wait_ready(timeout=0.01)
                remote.approve(pending.request_id)
                hello = await client.wait_ready()
                assert client.pairing_required is None
        issued = remote.paired[client.device_id].token
        assert hello.device_token == issued
    assert sleeps.delays[:3] == [1.0, 2.0, 4.0]  # the reconnect backoff, bounded by its cap
    warnings = [r.getMessage() for r in caplog.records
                if "gateway.pairing.required" in r.getMessage()]
    assert len(warnings) == 1  # once per pairing request, then quieter retries
    assert f"device_id={client.device_id}" in warnings[0]
    assert f'approve="openclaw devices approve {pending.request_id}"' in warnings[0]
    stored = json.loads(store.path.read_text())
    assert (stored["token"], stored["deviceId"]) == (issued, client.device_id)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


async def test_device_token_is_reused_after_a_restart(make_client, store, tmp_path):
    identity = load_or_create_identity(tmp_path / "device_key")
    async with FakeOpenClawGateway(token=TOKEN, require_pairing=True) as remote:
        issued = pair(remote, identity)
        async with make_client(remote.url, token_store=store) as first:
            assert (await first.wait_ready()).device_token == issued
        assert remote.methods("connect")[0]["params"]["auth"] == {"token": TOKEN}
        # restart, the shared token no longer configured: the device token is the credential
        async with make_client(remote.url, token="", token_store=store) as second:
            await second.wait_ready()
        assert second.device_token == issued
        assert remote.methods("connect")[1]["params"]["auth"] == {"deviceToken": issued}
        assert remote.auth_methods == ["token", "device-token"]


async def test_device_token_survives_a_rotated_shared_token_on_loopback(
        fake, make_client, store, tmp_path):
    issued = pair(fake, load_or_create_identity(tmp_path / "device_key"))
    async with make_client(fake.url, token_store=store) as first:
        await first.wait_ready()
    async with make_client(fake.url, token="rotated-away", token_store=store) as second:
        await second.wait_ready()
    assert fake.methods("connect")[1]["params"]["auth"] == {"token": "rotated-away",
                                                            "deviceToken": issued}
    assert fake.auth_methods == ["token", "device-token"]


def test_device_token_is_not_offered_to_a_remote_host_with_a_shared_token(store, tmp_path):
    identity = load_or_create_identity(tmp_path / "device_key")
    for url in ("wss://gateway.example:18789", "ws://127.0.0.1:18789", "ws://[::1]:1"):
        store.save(StoredDeviceToken(token="dev", device_id=identity.device_id,
                                     role="operator", gateway_url=url))
        with_token = DeviceCredentials(device_id=identity.device_id, url=url,
                                       shared_token=TOKEN, store=store)
        without = DeviceCredentials(device_id=identity.device_id, url=url, shared_token="",
                                    store=store)
        remote = url.startswith("wss://gateway")
        assert with_token.for_connect() == (None if remote else "dev")
        assert without.for_connect() == "dev"


async def test_a_rotated_device_token_replaces_the_stored_one(fake, make_client, store,
                                                             tmp_path):
    identity = load_or_create_identity(tmp_path / "device_key")
    old = pair(fake, identity)
    async with make_client(fake.url, token_store=store) as first:
        await first.wait_ready()
    new = fake.rotate_device_token(identity.device_id)
    async with make_client(fake.url, token_store=store) as second:
        await second.wait_ready()
    assert old != new
    assert json.loads(store.path.read_text())["token"] == new


async def test_a_rejected_device_token_is_forgotten_not_retried_forever(
        fake, make_client, store, tmp_path, caplog):
    identity = load_or_create_identity(tmp_path / "device_key")
    revoked = pair(fake, identity)
    async with make_client(fake.url, token_store=store) as first:
        await first.wait_ready()
    fake.rotate_device_token(identity.device_id)  # the stored token is now revoked
    with caplog.at_level("WARNING", logger="agentic_fast.gateway"):
        async with make_client(fake.url, token="", token_store=store) as second:
            with pytest.raises(GatewayError) as info:
                await second.wait_ready()
    # the revoked token was dropped, and without it there is no credential left: fatal
    assert [c["params"].get("auth") for c in fake.methods("connect")[1:]] == [
        {"deviceToken": revoked}, None]
    assert info.value.details_code == "AUTH_TOKEN_MISSING"
    assert not store.path.exists()
    assert second.device_token is None
    assert any("gateway.device_token.rejected" in r.getMessage() for r in caplog.records)


async def test_corrupt_token_file_does_not_stop_the_client(fake, make_client, store,
                                                          tmp_path, caplog):
    issued = pair(fake, load_or_create_identity(tmp_path / "device_key"))
    store.path.write_text("{ this is not json")
    os.chmod(store.path, 0o600)
    with caplog.at_level("WARNING", logger="agentic_fast.gateway"):
        async with make_client(fake.url, token_store=store) as client:
            await client.wait_ready()
    assert fake.methods("connect")[0]["params"]["auth"] == {"token": TOKEN}
    assert any("gateway.device_token.corrupt" in r.getMessage() for r in caplog.records)
    assert json.loads(store.path.read_text())["token"] == issued  # rewritten whole


async def test_from_config_keeps_the_device_token_beside_the_key(fake, tmp_path):
    key = tmp_path / "state" / "gateway_device_key"
    issued = pair(fake, load_or_create_identity(key))
    config = GatewayConfig(url=fake.url, token=TOKEN, device_key_path=str(key))
    async with GatewayClient.from_config(config) as client:
        await client.wait_ready()
    token_file = key.with_name("gateway_device_key.token")
    assert json.loads(token_file.read_text())["token"] == issued
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    async with GatewayClient.from_config(config) as again:
        await again.wait_ready()
    assert fake.methods("connect")[1]["params"]["auth"]["deviceToken"] == issued


# --- chat.send ------------------------------------------------------------------------------


async def test_chat_send_streams_status_deltas_and_final(fake, make_client):
    fake.queue_chat(ChatScript(reply="The porch lights are on."))
    key = voice_session_key("CA0123abc")
    async with make_client(fake.url) as client, \
            client.run(key, "turn on the porch lights", deadline_s=10) as run:
        events = [event async for event in run]
    assert [e.state for e in events] == ["status", "status", "delta", "delta", "final"]
    assert [e.phase for e in events[:2]] == ["preparing_context", "starting_model"]
    assert "".join(e.delta_text for e in events if e.state == "delta") == \
        "The porch lights are on."
    assert events[-1].text == run.text == "The porch lights are on."
    assert run.final is events[-1]
    assert {e.run_id for e in events} == {run.run_id}
    params = fake.methods("chat.send")[0]["params"]
    assert params["sessionKey"] == key == "agent:main:voice-ca0123abc"
    assert params["message"] == "turn on the porch lights"
    assert params["idempotencyKey"] == run.idempotency_key
    assert params["timeoutMs"] == 10_000
    assert not fake.methods("chat.abort")  # finished runs are not aborted


async def test_each_send_has_a_fresh_idempotency_key(fake, make_client):
    async with make_client(fake.url) as client:
        first = await client.ask("agent:main:voice-a", "one", deadline_s=10)
        second = await client.ask("agent:main:voice-a", "two", deadline_s=10)
    keys = [r["params"]["idempotencyKey"] for r in fake.methods("chat.send")]
    assert len(set(keys)) == 2
    assert first.state == second.state == "final"


async def test_event_before_the_response_is_not_lost(fake, make_client):
    before = metrics.get("gateway.events.early")
    fake.queue_chat(ChatScript(first_event_before_res=True))
    async with make_client(fake.url) as client:
        events = await collect(client, "agent:main:voice-early", "hi")
    assert metrics.get("gateway.events.early") == before + 1  # held, then handed over
    assert events[0].state == "status"
    assert events[0].phase == "preparing_context"
    assert [e.state for e in events][-1] == "final"


async def test_events_of_other_runs_are_ignored(fake, make_client):
    before = metrics.get("gateway.events.other_run")
    fake.queue_chat(ChatScript(reply="mine", noise=True))
    async with make_client(fake.url) as client, \
            client.run("agent:main:voice-x", "hi", deadline_s=10) as run:
        events = [event async for event in run]
    assert {e.run_id for e in events} == {run.run_id}
    assert all(e.delta_text != "noise" for e in events)
    assert metrics.get("gateway.events.other_run") > before


async def test_error_final_ends_the_run(fake, make_client):
    fake.queue_chat(ChatScript(outcome="error", error_kind="rate_limit",
                               error_message="slow down"))
    async with make_client(fake.url) as client:
        events = await collect(client, "agent:main:voice-err", "hi")
    last = events[-1]
    assert (last.state, last.error_kind, last.error_message) == \
        ("error", "rate_limit", "slow down")
    assert last.terminal
    assert not fake.methods("chat.abort")


async def test_missing_scope_surfaces_forbidden(make_client):
    readonly_scopes = frozenset({"operator.read"})
    async with FakeOpenClawGateway(token=TOKEN, allowed_scopes=readonly_scopes) as readonly, \
            make_client(readonly.url) as client:
        with pytest.raises(GatewayError) as info:
            await client.ask("agent:main:voice-ro", "hi", deadline_s=10)
    assert (info.value.code, info.value.details_code) == ("FORBIDDEN", "MISSING_SCOPE")


async def test_unavailable_chat_send_is_retried_with_the_same_idempotency_key(
        fake, make_client, sleeps):
    fake.fail_next("chat.send", retry_after_ms=1234)
    async with make_client(fake.url) as client:
        final = await client.ask("agent:main:voice-retry", "hi", deadline_s=10)
    assert final.state == "final"
    sends = fake.methods("chat.send")
    assert len(sends) == 2
    assert sends[0]["params"]["idempotencyKey"] == sends[1]["params"]["idempotencyKey"]
    assert 1.234 in sleeps.delays


# --- abort ----------------------------------------------------------------------------------


async def test_deadline_aborts_the_run(fake, make_client):
    fake.queue_chat(ChatScript(outcome="hang"))
    async with make_client(fake.url) as client:
        run = client.run("agent:main:voice-slow", "hi", deadline_s=0.3)
        with pytest.raises(GatewayTimeoutError) as info:
            async for _ in run:
                pass
    assert info.value.run_id == run.run_id
    abort = fake.methods("chat.abort")[0]["params"]
    assert abort == {"sessionKey": "agent:main:voice-slow", "runId": run.run_id}
    assert run.done


async def test_leaving_the_run_early_aborts_it(fake, make_client):
    fake.queue_chat(ChatScript(outcome="hang"))
    async with make_client(fake.url) as client:
        async with client.run("agent:main:voice-hangup", "hi", deadline_s=10) as run:
            async for event in run:
                assert event.state == "status"
                break
        # __aexit__ awaited chat.abort: it is recorded already
        assert fake.methods("chat.abort")[0]["params"]["runId"] == run.run_id
        assert fake.runs[run.run_id].aborted.is_set()


async def test_aclose_aborts_the_run(fake, make_client):
    fake.queue_chat(ChatScript(outcome="hang"))
    async with make_client(fake.url) as client:
        run = client.run("agent:main:voice-close", "hi", deadline_s=10)
        assert (await run.__anext__()).state == "status"
        await run.aclose()
        assert fake.methods("chat.abort")[0]["params"]["runId"] == run.run_id
        with pytest.raises(StopAsyncIteration):
            await run.__anext__()


async def test_cancelling_the_consumer_aborts_the_run(fake, make_client):
    """Barge-in / hang-up: the brain task is cancelled while it waits for the answer."""
    fake.queue_chat(ChatScript(outcome="hang"))
    started = asyncio.Event()
    async with make_client(fake.url) as client:
        run = client.run("agent:main:voice-barge", "hi", deadline_s=10)

        async def consume() -> None:
            async with run:
                async for _ in run:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        abort = await fake.wait_request("chat.abort")
    assert abort["params"]["runId"] == run.run_id


async def test_dropping_a_bare_iterator_aborts_the_run(fake, make_client):
    fake.queue_chat(ChatScript(outcome="hang"))
    async with make_client(fake.url) as client:
        async for _event in client.run("agent:main:voice-bare", "hi", deadline_s=10):
            break
        abort = await fake.wait_request("chat.abort")
    run_id = next(iter(fake.runs))
    assert abort["params"]["runId"] == run_id


# --- connection loss, ticks, limits -----------------------------------------------------------


async def test_drop_mid_run_fails_clearly_then_reconnects(fake, make_client):
    fake.queue_chat(ChatScript(outcome="hang", drop_after_events=2))
    async with make_client(fake.url) as client:
        with pytest.raises(GatewayConnectionError, match="lost"):
            await collect(client, "agent:main:voice-drop", "hi")
        final = await client.ask("agent:main:voice-drop", "again", deadline_s=10)
        assert final.state == "final"
        assert client.connections == 2
    assert fake.hellos == 2


async def test_request_in_flight_during_a_drop_fails(fake, make_client):
    fake.stall("health")
    async with make_client(fake.url) as client:
        pending = asyncio.create_task(client.request("health", {}))
        await fake.wait_request("health")
        fake.drop_connections()
        with pytest.raises(GatewayConnectionError):
            await pending


async def test_missed_ticks_mean_a_dead_link_and_a_reconnect(make_client):
    before = metrics.get("gateway.tick_timeouts")
    async with FakeOpenClawGateway(token=TOKEN, tick_interval_ms=40) as ticking, \
            make_client(ticking.url) as client:
        await client.wait_ready()
        ticking.stop_ticking()
        await ticking.wait_hellos(2)
        await client.wait_ready()
        assert (await client.ask("agent:main:voice-t", "hi", deadline_s=10)).state == "final"
    assert metrics.get("gateway.tick_timeouts") > before


async def test_frames_over_max_payload_are_refused_locally(make_client):
    async with FakeOpenClawGateway(token=TOKEN, max_payload=4096) as small:
        async with make_client(small.url) as client:
            with pytest.raises(GatewayPayloadTooLargeError) as info:
                await client.ask("agent:main:voice-big", "x" * 10_000, deadline_s=10)
            assert info.value.limit == 4096
            assert info.value.size > 10_000
            assert not small.methods("chat.send")
            # the link is still fine for frames that fit
            assert (await client.ask("agent:main:voice-big", "hi", deadline_s=10)).state == \
                "final"
        assert small.connections_opened == 1


async def test_many_concurrent_runs_share_one_connection(fake, make_client):
    fake.default_script = ChatScript(reply=None, event_delay_s=0.001)  # echo, interleaved

    async def one(i: int, client: GatewayClient) -> str:
        final = await client.ask(voice_session_key(f"CA{i:04d}"), f"command {i}",
                                 deadline_s=20)
        return final.text

    async with make_client(fake.url) as client:
        answers = await asyncio.gather(*(one(i, client) for i in range(25)))
    assert answers == [f"echo: command {i}" for i in range(25)]
    assert fake.connections_opened == 1
    assert len({r["params"]["idempotencyKey"] for r in fake.methods("chat.send")}) == 25


# --- the fake itself follows protocols.md 5 (raw frames, not through the client) -----------


async def raw_handshake(url: str, identity: DeviceIdentity | None = None, **overrides: object):
    """Open a raw socket, answer the challenge with a signed connect; (ws, hello frame)."""
    ws = await websockets_connect(url)
    challenge = json.loads(await ws.recv())
    assert challenge["event"] == "connect.challenge"
    params = connect_params(signer=identity or DeviceIdentity.generate(), token=TOKEN,
                            nonce=challenge["payload"]["nonce"],
                            signed_at=challenge["payload"]["ts"], client_version="0.1.0",
                            platform="linux")
    params.update(overrides)
    await ws.send(json.dumps({"type": "req", "id": "c1", "method": "connect",
                              "params": params}))
    return ws, json.loads(await ws.recv())


async def test_fake_closes_1008_on_a_json_rpc_first_frame(fake):
    async with websockets_connect(fake.url) as ws:
        await ws.recv()  # challenge
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "sessions_send",
                                  "params": {}}))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


async def test_fake_rejects_unknown_properties_and_a_missing_idempotency_key(fake):
    ws, hello = await raw_handshake(fake.url, surprise=True)
    assert hello["ok"] is False and hello["error"]["code"] == "INVALID_REQUEST"
    await ws.close()
    ws, hello = await raw_handshake(fake.url)
    assert hello["payload"]["type"] == "hello-ok"
    await ws.send(json.dumps({"type": "req", "id": "r1", "method": "chat.send",
                              "params": {"sessionKey": "main", "message": "hi"}}))
    res = json.loads(await ws.recv())
    while res["type"] != "res":
        res = json.loads(await ws.recv())
    assert (res["ok"], res["error"]["code"]) == (False, "INVALID_REQUEST")
    await ws.close()


async def test_fake_refuses_an_unpaired_device_like_the_real_gateway():
    async with FakeOpenClawGateway(token=TOKEN, require_pairing=True) as remote:
        identity = DeviceIdentity.generate()
        ws, hello = await raw_handshake(remote.url, identity)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        ws2, again = await raw_handshake(remote.url, identity)
        await ws2.close()
    error = hello["error"]
    assert (error["code"], error["message"]) == ("NOT_PAIRED",
                                                 "pairing required: device is not approved yet")
    assert "retryable" not in error
    details = error["details"]
    assert (details["code"], details["reason"]) == ("PAIRING_REQUIRED", "not-paired")
    assert details["requestId"] in remote.pairing_requests
    assert again["error"]["details"]["requestId"] == details["requestId"]  # reused
    assert ws.close_code == 1008
    assert ws.close_reason == ("pairing required: device is not approved yet "
                               f"(requestId: {details['requestId']})")


async def test_fake_rejects_a_bad_signature(fake):
    ws, hello = await raw_handshake(fake.url, scopes=["operator.admin"])  # signed other scopes
    assert hello["error"]["details"]["code"] == "DEVICE_AUTH_SIGNATURE_INVALID"
    await ws.close()
