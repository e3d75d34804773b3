"""Telnyx behind the carrier interface (carriers/base.py): Call Control v2 (answer with a
bidirectional RTP stream, dial, speak, hang up, transfer, record), its media streaming WebSocket,
Ed25519-signed webhooks, and its call events mapped to our CallStatus.

Inbound calls are answered over REST (``answer`` with ``stream_url``), so the webhook's own
reply is an empty JSON 200. Our stream params (call id, one-time token) travel in
``client_state`` (base64), which Telnyx returns in the stream's ``start`` and in every
webhook of the call. Lines said before a hang-up (refusals, goodbyes) are spoken with
``speak`` and hung up on ``call.speak.ended`` (carriers/telnyx/speak.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from agentic_fast.carriers.base import (
    CallDesk,
    OutboundCall,
    RefusalKind,
    Route,
    StatusChange,
    StreamTarget,
    WebhookReply,
    WebhookRequest,
)
from agentic_fast.carriers.common import CarrierParts
from agentic_fast.carriers.registry import register
from agentic_fast.carriers.telnyx.media import (
    CODECS,
    TelnyxCodec,
    TelnyxStreamState,
    encode_client_state,
)
from agentic_fast.carriers.telnyx.rest import StreamOptions, TelnyxRestClient
from agentic_fast.carriers.telnyx.routes import TELNYX_WEBHOOK_PATH, TelnyxWebhooks
from agentic_fast.carriers.telnyx.signature import TelnyxSignatureVerifier, WebhookCheck
from agentic_fast.carriers.telnyx.speak import TelnyxSpeaker
from agentic_fast.carriers.telnyx.status import map_status
from agentic_fast.core.config import TELNYX_MEDIA_STREAM_PATH, Config
from agentic_fast.core.errors import ConfigError, TelnyxApiError

__all__ = ["TelnyxCallControl", "TelnyxCarrier", "TelnyxInboundAnswer",
           "TelnyxWebhookVerifier", "telnyx_stream_url", "telnyx_webhook_url"]

_OK = WebhookReply('{"status":"ok"}', "application/json")


def telnyx_stream_url(config: Config) -> str:
    """``telnyx.stream_url``, or the ``wss://`` URL of ``/telnyx/media-stream`` on
    ``server.public_url``."""
    if config.telnyx.stream_url:
        return config.telnyx.stream_url
    if not config.server.public_url:
        raise ConfigError("server.public_url is not set (Telnyx must reach this server)",
                          key="server.public_url")
    rest = config.server.public_url.split("://", 1)[1]
    return f"wss://{rest}{TELNYX_MEDIA_STREAM_PATH}"


def telnyx_webhook_url(config: Config) -> str:
    """``telnyx.webhook_url``, or ``/telnyx/webhook`` on ``server.public_url``."""
    return config.telnyx.webhook_url or config.server.webhook_url(TELNYX_WEBHOOK_PATH)


class TelnyxWebhookVerifier:
    """``telnyx-signature-ed25519`` over ``timestamp|body``, the timestamp's age checked."""

    __slots__ = ("check",)

    def __init__(self, check: TelnyxSignatureVerifier) -> None:
        self.check = check

    def verify(self, request: WebhookRequest) -> WebhookCheck:
        return self.check.check(request.body, request.headers)


class TelnyxInboundAnswer:
    """Answers over REST: ``answer`` with our stream; a refusal with a line answers without
    a stream, speaks it and hangs up once spoken; one without, hangs up (the reply: 200)."""

    __slots__ = ("_codec", "_rest", "_speaker")

    def __init__(self, rest: TelnyxRestClient | None, codec: TelnyxCodec,
                 speaker: TelnyxSpeaker | None = None) -> None:
        self._rest = rest
        self._codec = codec
        self._speaker = speaker

    async def connect_stream(self, carrier_call_id: str, target: StreamTarget
                             ) -> WebhookReply:
        if self._rest is None:
            raise TelnyxApiError("telnyx.api_key is not set: cannot answer",
                                 code="not-configured")
        await self._rest.answer(carrier_call_id,
                                stream=StreamOptions(target.url, self._codec.name),
                                client_state=encode_client_state(target.params))
        return _OK

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> WebhookReply:
        """Answer (no stream), speak ``text``, hang up on ``call.speak.ended``; no text:
        hang up."""
        if text and self._speaker is not None:
            await self._speaker.answer_and_say(carrier_call_id, text)
        else:
            await self._hang_up_quietly(carrier_call_id)
        return _OK

    async def refuse(self, carrier_call_id: str, kind: RefusalKind,
                     text: str | None = None) -> WebhookReply:
        """``text`` spoken as :meth:`say_and_hang_up` does; without it, hung up."""
        return await self.say_and_hang_up(carrier_call_id, text or "")

    async def _hang_up_quietly(self, carrier_call_id: str) -> None:
        if self._rest is not None:
            with contextlib.suppress(TelnyxApiError):  # logged and counted by the client
                await self._rest.hangup(carrier_call_id)


class TelnyxCallControl:
    """:class:`~agentic_fast.carriers.base.CallControl` over Call Control v2."""

    __slots__ = ("_codec", "_connection_id", "rest", "speaker")

    def __init__(self, rest: TelnyxRestClient, connection_id: str, codec: TelnyxCodec,
                 speaker: TelnyxSpeaker | None = None) -> None:
        self.rest = rest
        self._connection_id = connection_id
        self._codec = codec
        self.speaker = speaker or TelnyxSpeaker(rest, voice="AWS.Polly.Joanna-Neural")

    async def place_call(self, call: OutboundCall) -> str:
        if not self._connection_id:
            raise TelnyxApiError("telnyx.connection_id is not set: cannot dial",
                                 code="not-configured")
        dialed = await self.rest.dial(
            connection_id=self._connection_id, to=call.to, from_=call.from_number,
            webhook_url=call.status_url,
            stream=StreamOptions(call.stream.url, self._codec.name),
            client_state=encode_client_state(call.stream.params),
            timeout_secs=call.ring_timeout_s)
        return dialed.call_control_id

    async def hang_up(self, carrier_call_id: str) -> None:
        await self.rest.hangup(carrier_call_id)

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> None:
        """Stop the media stream, speak ``text``, hang up on ``call.speak.ended`` (a refused
        ``speak``: hang up at once); no text: hang up."""
        if not text:
            await self.rest.hangup(carrier_call_id)
            return
        await self.speaker.say_on_answered(carrier_call_id, text)

    async def redirect(self, carrier_call_id: str, target: str) -> None:
        await self.rest.transfer(carrier_call_id, target)

    async def record(self, carrier_call_id: str) -> None:
        await self.rest.record_start(carrier_call_id)

    async def close(self) -> None:
        await self.rest.close()


class TelnyxCarrier(CarrierParts[TelnyxWebhookVerifier, TelnyxCallControl,
                                 TelnyxInboundAnswer]):
    """Telnyx: one per server. ``rest`` overrides the client built from ``telnyx.*``
    (tests); a client built here is closed by :meth:`close`."""

    name = "telnyx"
    media_path = TELNYX_MEDIA_STREAM_PATH

    def __init__(self, config: Config, rest: TelnyxRestClient | None = None) -> None:
        t = config.telnyx
        self.config = config
        self.from_number = t.from_number
        self.codec = CODECS[t.codec]
        owned = None
        if rest is None and t.api_key:
            rest = owned = TelnyxRestClient(t.api_key, api_base=t.api_base_url,
                                            timeout_s=t.request_timeout_s)
        self.speaker = (TelnyxSpeaker(rest, voice=t.speak_voice, language=t.speak_language,
                                      timeout_s=t.speak_timeout_s)
                        if rest is not None else None)
        verifier: TelnyxWebhookVerifier | None = None
        problem: str | None = None
        if t.public_key:
            verifier = TelnyxWebhookVerifier(TelnyxSignatureVerifier(
                t.public_key, tolerance_s=t.webhook_tolerance_s))
        else:
            problem = "telnyx.public_key is not set: webhooks cannot be verified"
        super().__init__(
            verifier=verifier, verifier_problem=problem,
            control=(TelnyxCallControl(rest, t.connection_id, self.codec, self.speaker)
                     if rest is not None else None),
            answer=TelnyxInboundAnswer(rest, self.codec, self.speaker), owned=owned)

    async def close(self) -> None:
        """Cancel the speak timers, then close the REST client we built."""
        if self.speaker is not None:
            await self.speaker.close()
        await super().close()

    def open_stream(self, query: Mapping[str, str]) -> TelnyxStreamState:
        """Our params come back in ``start.client_state``: ``query`` is unused."""
        return TelnyxStreamState(self.codec)

    def stream_target(self, params: Mapping[str, str]) -> StreamTarget:
        return StreamTarget(telnyx_stream_url(self.config), params)

    @property
    def status_url(self) -> str:
        return telnyx_webhook_url(self.config)

    def map_status(self, carrier_status: str) -> StatusChange:
        return map_status(carrier_status)

    def routes(self, desk: CallDesk) -> Sequence[Route]:
        """``POST /telnyx/webhook``: every Call Control event."""
        return TelnyxWebhooks(self, desk).routes()


register("telnyx", TelnyxCarrier)
