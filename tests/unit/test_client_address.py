"""client_address: forwarding headers believed only from trusted proxies, right-most hop."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from agentic_fast.core import metrics
from agentic_fast.core.config import Config
from agentic_fast.core.errors import ConfigError
from agentic_fast.server.client_address import TrustedProxies, came_through_proxy, client_address

PROXY = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    headers = {"x-forwarded-for": "203.0.113.7"}
    assert PROXY.resolve("198.51.100.2", headers) == "198.51.100.2"
    assert client_address("198.51.100.2", headers) == "198.51.100.2"  # nothing trusted
    assert client_address("127.0.0.1", headers) == "127.0.0.1"


def test_trusted_peer_gives_the_right_most_untrusted_hop() -> None:
    # the client forged the first entry; our proxy appended the address it saw
    headers = {"x-forwarded-for": "1.2.3.4, 203.0.113.7"}
    assert client_address("127.0.0.1", headers, PROXY) == "203.0.113.7"
    # a chain of trusted proxies is walked through
    chain = {"x-forwarded-for": "1.2.3.4, 203.0.113.7, 10.1.2.3, 10.9.9.9"}
    assert PROXY.resolve("127.0.0.1", chain) == "203.0.113.7"
    # every hop trusted: the left-most is the origin; no header: the peer
    assert PROXY.resolve("127.0.0.1", {"x-forwarded-for": "10.0.0.5, 10.0.0.6"}) == "10.0.0.5"
    assert PROXY.resolve("127.0.0.1", {}) == "127.0.0.1"


def test_repeated_headers_and_ports_and_mapped_addresses() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8:443")])
    assert PROXY.resolve("::ffff:127.0.0.1", headers) == "5.6.7.8"
    assert PROXY.resolve("127.0.0.1", {"x-forwarded-for": "[2001:db8::1]:80"}) == "2001:db8::1"


def test_garbage_hop_ends_the_chain_at_the_last_trusted_proxy() -> None:
    before = metrics.get("client_address.unparsed_hop")
    assert PROXY.resolve("127.0.0.1", {"x-forwarded-for": "1.2.3.4, not-an-ip"}) == "127.0.0.1"
    assert metrics.get("client_address.unparsed_hop") == before + 1


def test_forwarded_rfc7239() -> None:
    fwd = TrustedProxies(["127.0.0.1"], header="forwarded")
    headers = {"forwarded": 'for=1.2.3.4;proto=https, For="[2001:db8:cafe::17]:4711";by=x'}
    assert fwd.resolve("127.0.0.1", headers) == "2001:db8:cafe::17"
    assert fwd.resolve("127.0.0.1", {"forwarded": "for=unknown"}) == "127.0.0.1"


def test_only_the_configured_header_is_believed() -> None:
    # an X-Forwarded-For proxy passes a client's own Forwarded header through untouched
    headers = {"forwarded": "for=6.6.6.6", "x-forwarded-for": "203.0.113.7"}
    assert PROXY.resolve("127.0.0.1", headers) == "203.0.113.7"
    fwd = TrustedProxies(["127.0.0.1"], header="forwarded")
    assert fwd.resolve("127.0.0.1", {"x-forwarded-for": "6.6.6.6"}) == "127.0.0.1"


def test_came_through_proxy() -> None:
    assert came_through_proxy({"x-forwarded-for": "1.2.3.4"})
    assert came_through_proxy(CIMultiDict({"Via": "1.1 nginx"}))
    assert not came_through_proxy({"host": "localhost"})


def test_config_checks_trusted_proxies_and_names_the_key() -> None:
    config = Config.from_text("server: {trusted_proxies: ['127.0.0.1', '10.0.0.0/8']}", env={})
    assert config.server.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8")
    with pytest.raises(ConfigError) as info:
        Config.from_text("server: {trusted_proxies: [proxy.example.com]}", env={})
    assert info.value.key == "server.trusted_proxies[0]"
    with pytest.raises(ConfigError) as info:
        Config.from_text("server: {proxy_header: x-real-ip}", env={})
    assert info.value.key == "server.proxy_header"


@pytest.mark.parametrize(("yaml", "refused"), [
    ("server: {host: 127.0.0.1}", False),
    ("server: {host: 0.0.0.0}", True),
    ("server: {trusted_proxies: [127.0.0.1]}", True),
    ("server: {host: 0.0.0.0, api_token: t0ken}", False),
    ("server: {trusted_proxies: [127.0.0.1], api_token: t0ken}", False),
])
def test_exposed_api_without_token_is_refused(yaml: str, refused: bool) -> None:
    server = Config.from_text(yaml, env={}).server
    if refused:
        with pytest.raises(ConfigError) as info:
            server.require_api_token()
        assert info.value.key == "server.api_token"
    else:
        server.require_api_token()


def test_bound_host_overrides_the_config_host() -> None:
    server = Config.from_text("", env={}).server
    server.require_api_token()
    with pytest.raises(ConfigError):
        server.require_api_token("0.0.0.0")
