"""Behind a reverse proxy: who the client is (caps, logs) and who may use ``/calls``.

The first tests send the forwarding headers themselves from a loopback peer (what a local
proxy does); the ``nginx`` tests put a real nginx (Debian's ``nginx-light``, started here on
127.0.0.1 and stopped by its PID) in front of the server, running the site of
docs/deploy.md with TLS, so the documented configuration is the tested one. Loopback has
the whole of 127.0.0.0/8, so the client (127.0.0.5, 127.0.0.6), the proxy's upstream side
(127.0.0.2) and the server (127.0.0.1) have different addresses without leaving the host.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agentic_fast.core import metrics
from tests.fakes.reverse_proxy import Nginx, NginxUnavailable, find_nginx
from tests.fakes.twilio_rest import FakeTwilioRest
from tests.fakes.twilio_webhooks import TwilioWebhookSender, incoming_call_form, new_sid
from tests.integration.harness import PUBLIC_URL, Harness, start_harness, stream_parameters

pytestmark = pytest.mark.asyncio
TOKEN = "s3cret-token-123"


async def _upgrade_status(url: str, headers: dict[str, str] | None = None,
                          local: str | None = None,
                          tls: ssl.SSLContext | None = None) -> tuple[int, object]:
    """Open a media-stream WebSocket (no ``start``: it holds a slot); (status, socket)."""
    kwargs: dict[str, object] = {"local_addr": (local, 0)} if local else {}
    if tls is not None:
        kwargs["ssl"] = tls
    try:
        ws = await connect(url, additional_headers=headers, open_timeout=5, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code, None
    return 101, ws


# -- forwarding headers from a loopback peer --------------------------------------------------

async def test_no_token_loopback_request_through_a_proxy_is_refused(
        rest: FakeTwilioRest) -> None:
    """Today a loopback peer is enough: a local TLS proxy opened /calls to the internet."""
    h = await start_harness(rest)
    try:
        direct = await h.http.get(f"{h.base_url}/calls")
        assert direct.status == 200  # a local tool, straight to the loopback listener
        before = metrics.get("api.rejected.auth")
        proxied = await h.http.get(f"{h.base_url}/calls",
                                   headers={"X-Forwarded-For": "203.0.113.7"})
        assert proxied.status == 401
        placed = await h.http.post(f"{h.base_url}/calls", json={"to": "+15557654321"},
                                   headers={"Forwarded": "for=203.0.113.7"})
        assert placed.status == 401
        assert metrics.get("api.rejected.auth") == before + 2
        assert rest.calls == {}  # no call was placed
    finally:
        await h.__aexit__(None, None, None)


async def test_trusted_proxy_means_the_token_is_required(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, trusted_proxies="[127.0.0.1]", api_token=TOKEN)
    try:
        assert (await h.http.get(f"{h.base_url}/calls")).status == 401
        ok = await h.http.get(f"{h.base_url}/calls", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200
    finally:
        await h.__aexit__(None, None, None)


async def test_trusted_proxy_without_token_refuses_even_loopback(rest: FakeTwilioRest) -> None:
    """The app built without the serve-time check still fails closed."""
    h = await start_harness(rest, trusted_proxies="[127.0.0.1]")
    try:
        assert (await h.http.get(f"{h.base_url}/calls")).status == 401
    finally:
        await h.__aexit__(None, None, None)


async def test_media_cap_counts_the_forwarded_client(rest: FakeTwilioRest) -> None:
    """Behind a trusted proxy each client has its own cap (not one global one); a client
    cannot dodge it by writing its own X-Forwarded-For entries."""
    h = await start_harness(rest, trusted_proxies="[127.0.0.1]", api_token=TOKEN,
                            max_connections_per_ip=1)
    sockets = []
    try:
        for client in ("203.0.113.7", "203.0.113.8"):
            status, ws = await _upgrade_status(h.ws_url, {"X-Forwarded-For": client})
            assert status == 101, client
            sockets.append(ws)
        before = metrics.get("twilio.media.refused.per_address")
        status, _ = await _upgrade_status(
            h.ws_url, {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert status == 503
        assert metrics.get("twilio.media.refused.per_address") == before + 1
    finally:
        for ws in sockets:
            await ws.close()
        await h.__aexit__(None, None, None)


async def test_untrusted_peer_cannot_claim_another_address(rest: FakeTwilioRest) -> None:
    h = await start_harness(rest, max_connections_per_ip=1)
    sockets = []
    try:
        status, ws = await _upgrade_status(h.ws_url, {"X-Forwarded-For": "203.0.113.7"})
        assert status == 101
        sockets.append(ws)
        status, _ = await _upgrade_status(h.ws_url, {"X-Forwarded-For": "203.0.113.8"})
        assert status == 503  # both are 127.0.0.1: nothing is trusted
    finally:
        for ws in sockets:
            await ws.close()
        await h.__aexit__(None, None, None)


async def test_logs_name_the_forwarded_client(rest: FakeTwilioRest,
                                              caplog: pytest.LogCaptureFixture) -> None:
    h = await start_harness(rest, trusted_proxies="[127.0.0.1]", api_token=TOKEN)
    try:
        with caplog.at_level(logging.WARNING, logger="agentic_fast"):
            resp = await h.http.post(f"{h.base_url}/twilio/voice",
                                     data={"CallSid": "CA" + "1" * 32},
                                     headers={"X-Forwarded-For": "203.0.113.7"})
        assert resp.status == 403
        lines = [r.getMessage() for r in caplog.records if "webhook.rejected" in r.getMessage()]
        assert lines and "remote=203.0.113.7" in lines[-1]
    finally:
        await h.__aexit__(None, None, None)


# -- a real nginx in front ----------------------------------------------------------------------

@pytest.fixture
def nginx_bin() -> str:
    try:
        return find_nginx()
    except NginxUnavailable as exc:
        pytest.skip(f"nginx unavailable ({exc}); .ci/run installs nginx-light")


@pytest.fixture
async def proxied(rest: FakeTwilioRest, nginx_bin: str,
                  tmp_path: Path) -> AsyncIterator[tuple[Harness, Nginx]]:
    h = await start_harness(rest, trusted_proxies="[127.0.0.2]", api_token=TOKEN,
                            max_connections_per_ip=1)
    proxy = Nginx(nginx_bin, tmp_path / "nginx", upstream_port=h.port, bind="127.0.0.2")
    try:
        await proxy.start()
        yield h, proxy
    finally:
        await proxy.stop()
        await h.__aexit__(None, None, None)


def _client(local: str, proxy: Nginx) -> aiohttp.ClientSession:
    """An HTTP client from ``local`` that trusts the proxy's certificate."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        local_addr=(local, 0), ssl=proxy.client_ssl()))


async def test_nginx_media_cap_is_per_client(proxied: tuple[Harness, Nginx]) -> None:
    h, proxy = proxied
    url = proxy.url("/twilio/media-stream", "wss")
    tls = proxy.client_ssl()
    sockets = []
    try:
        for local in ("127.0.0.5", "127.0.0.6"):  # two clients: one slot each
            status, ws = await _upgrade_status(url, local=local, tls=tls)
            assert status == 101, (local, proxy.log_tail())
            sockets.append(ws)
        assert set(h.services.media.limiter._per_address) == {"127.0.0.5", "127.0.0.6"}
        # the first client again, claiming to be someone else: still its own cap
        status, _ = await _upgrade_status(url, {"X-Forwarded-For": "203.0.113.99"},
                                          local="127.0.0.5", tls=tls)
        assert status == 503
    finally:
        for ws in sockets:
            await ws.close()


async def test_nginx_calls_api_needs_the_token(proxied: tuple[Harness, Nginx],
                                               caplog: pytest.LogCaptureFixture) -> None:
    _, proxy = proxied
    async with _client("127.0.0.5", proxy) as http:
        with caplog.at_level(logging.WARNING, logger="agentic_fast"):
            refused = await http.get(proxy.url("/calls"),
                                     headers={"X-Forwarded-For": "127.0.0.1"})
        assert refused.status == 401
        lines = [r.getMessage() for r in caplog.records if "api.rejected" in r.getMessage()]
        assert lines and "remote=127.0.0.5" in lines[-1] and "peer=127.0.0.2" in lines[-1]
        ok = await http.get(proxy.url("/calls"),
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200


async def test_nginx_without_trusting_it_the_api_stays_closed(
        rest: FakeTwilioRest, nginx_bin: str, tmp_path: Path) -> None:
    """No token, loopback listener, the proxy not declared: what the issue saw (200 through
    a local proxy) is now a 401; straight to the listener still works."""
    h = await start_harness(rest)
    proxy = Nginx(nginx_bin, tmp_path / "nginx", upstream_port=h.port)
    try:
        await proxy.start()
        async with _client("127.0.0.5", proxy) as http:
            resp = await http.get(proxy.url("/calls"))
            assert resp.status == 401, proxy.log_tail()
        assert (await h.http.get(f"{h.base_url}/calls")).status == 200
    finally:
        await proxy.stop()
        await h.__aexit__(None, None, None)


async def test_nginx_documented_site_carries_a_signed_call(
        proxied: tuple[Harness, Nginx]) -> None:
    """Twilio's side of docs/deploy.md: a voice webhook over TLS through the documented site,
    signed for ``server.public_url``, is answered with the stream TwiML (the signature holds
    over the path nginx forwards); its media stream upgrades through the same site, and a
    webhook signed for another URL is refused."""
    h, proxy = proxied
    assert h.rest is not None
    async with _client("127.0.0.5", proxy) as http:
        twilio = TwilioWebhookSender(http, auth_token=h.rest.auth_token,
                                     base_url=proxy.url(""), public_url=PUBLIC_URL)
        resp = await twilio.post("/twilio/voice", incoming_call_form(call_sid=new_sid("CA")))
        assert resp.status == 200, proxy.log_tail()
        assert stream_parameters(await resp.text())  # <Connect><Stream> with its token
        status, ws = await _upgrade_status(proxy.url("/twilio/media-stream", "wss"),
                                           local="127.0.0.5", tls=proxy.client_ssl())
        assert status == 101
        await ws.close()
        elsewhere = TwilioWebhookSender(http, auth_token=h.rest.auth_token,
                                        base_url=proxy.url(""),
                                        public_url="https://other.example.test")
        before = metrics.get("twilio.webhook.rejected.bad_signature")
        resp = await elsewhere.post("/twilio/voice", incoming_call_form(call_sid=new_sid("CA")))
        assert resp.status == 403
        assert metrics.get("twilio.webhook.rejected.bad_signature") == before + 1
