"""What the device presents to the gateway beyond the shared token, and its pairing state.

OpenClaw (2026.9.6, ``connect-device-pairing`` and ``connect-error-details``; checked live):

- A device the gateway does not know is refused with ``NOT_PAIRED`` / details.code
  ``PAIRING_REQUIRED`` (``requestId``, ``deviceId``, ``reason``) and close 1008 until the
  owner runs ``openclaw devices approve <requestId>``. A loopback ``gateway-client``
  backend with the shared token is let in unpaired (and gets no device token).
- A paired device gets ``hello-ok.auth.deviceToken``; sent back as ``auth.deviceToken`` it
  authenticates when the shared token is absent or wrong (``auth.method: device-token``).
  A revoked or rotated one answers ``AUTH_DEVICE_TOKEN_MISMATCH``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit

from agentic_fast.core import metrics
from agentic_fast.core.errors import GatewayError
from agentic_fast.core.log import get_logger
from agentic_fast.gateway.device import DeviceTokenStore, StoredDeviceToken
from agentic_fast.gateway.protocol import ROLE, HelloOk, PairingRequired

__all__ = ["DeviceCredentials"]

_log = get_logger("gateway")


class DeviceCredentials:
    """The stored device token of one device at one gateway URL, and its pending pairing."""

    def __init__(self, *, device_id: str, url: str, shared_token: str,
                 store: DeviceTokenStore | None) -> None:
        self._device_id = device_id
        self._url = url
        self._shared_token = shared_token
        self._store = store
        self._stored: StoredDeviceToken | None = store.load(
            device_id=device_id, role=ROLE, gateway_url=url) if store else None
        self._sent = False
        #: the pending pairing request while the owner has not approved this device
        self.pairing: PairingRequired | None = None

    @property
    def token(self) -> str | None:
        """The device token the gateway issued to this device, if any."""
        return self._stored.token if self._stored else None

    def for_connect(self) -> str | None:
        """The device token to send in this ``connect`` (remembered for :meth:`rejected`).

        Without a shared token it is the only credential. With one, the gateway checks the
        device token only if the shared token is wrong; like OpenClaw's own client it is
        then offered only to a trusted endpoint (loopback), not to whatever ``wss://`` host
        answers at the configured URL.
        """
        token = self.token
        if token is not None and self._shared_token and not _is_loopback_url(self._url):
            token = None
        self._sent = token is not None
        return token

    def rejected(self, exc: GatewayError) -> bool:
        """True when ``exc`` refuses the device token we sent (revoked or rotated)."""
        return self._sent and exc.details_code == "AUTH_DEVICE_TOKEN_MISMATCH"

    async def forget(self) -> None:
        """Drop the rejected token (memory and file), so the next connect goes without."""
        metrics.incr("gateway.device_token.rejected")
        _log.warning("gateway.device_token.rejected", device_id=self._device_id[:16],
                     action="forgotten; reconnecting without it")
        self._stored = None
        self._sent = False
        if self._store is not None:
            await asyncio.to_thread(self._store.clear)

    async def keep(self, hello: HelloOk) -> None:
        """Store a new or rotated ``hello-ok.auth.deviceToken`` (file I/O off the loop)."""
        token = hello.device_token
        if token is None or token == self.token:
            return
        record = StoredDeviceToken(token=token, device_id=self._device_id,
                                   role=hello.role or ROLE, gateway_url=self._url,
                                   scopes=hello.scopes,
                                   issued_at_ms=hello.device_token_issued_at_ms)
        self._stored = record
        if self._store is not None and await asyncio.to_thread(self._store.save, record):
            metrics.incr("gateway.device_token.stored")
            _log.info("gateway.device_token.stored", device_id=self._device_id[:16],
                      path=str(self._store.path))

    def pairing_required(self, pairing: PairingRequired, retry_in_s: float) -> None:
        """Log the owner's cue (once per request, then quieter) and remember the request."""
        metrics.incr("gateway.connect.pairing_required")
        first = self.pairing is None or self.pairing.request_id != pairing.request_id
        self.pairing = pairing
        fields = {"device_id": self._device_id, "request_id": pairing.request_id,
                  "reason": pairing.reason, "approve": pairing.approve_command,
                  "retry_in_s": round(retry_in_s, 3)}
        if first:
            _log.warning("gateway.pairing.required", url=self._url, **fields,
                         hint="approve this device on the gateway host; "
                              "it connects on its own once approved")
        else:
            _log.info("gateway.pairing.waiting", **fields)

    def opened(self) -> None:
        """The connect was accepted: a pending pairing was approved."""
        if self.pairing is not None:
            _log.info("gateway.pairing.approved", device_id=self._device_id,
                      request_id=self.pairing.request_id)
            self.pairing = None


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
