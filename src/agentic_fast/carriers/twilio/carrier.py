"""Twilio behind the carrier interface (carriers/base.py): Media Streams, TwiML answers,
X-Twilio-Signature webhooks, the Calls REST resource, CallStatus mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agentic_fast.carriers.base import (
    CallDesk,
    RefusalKind,
    Route,
    StatusChange,
    StreamTarget,
    WebhookReply,
    WebhookRequest,
)
from agentic_fast.carriers.common import CarrierParts
from agentic_fast.carriers.registry import register
from agentic_fast.carriers.twilio.form import JSON_TYPE
from agentic_fast.carriers.twilio.media import TwilioStreamState
from agentic_fast.carriers.twilio.rest import TwilioRestClient
from agentic_fast.carriers.twilio.routes import STATUS_PATH, STREAM_STATUS_PATH, twilio_routes
from agentic_fast.carriers.twilio.signature import (
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    SignatureCheck,
    TwilioSignatureValidator,
)
from agentic_fast.carriers.twilio.status import map_call_status
from agentic_fast.carriers.twilio.twiml import (
    busy_twiml,
    connect_stream_twiml,
    reject_twiml,
    say_hangup_twiml,
)
from agentic_fast.core.config import MEDIA_STREAM_PATH, Config
from agentic_fast.core.errors import SignatureNotConfiguredError

__all__ = ["TwilioCarrier", "TwilioInboundAnswer", "TwilioWebhookVerifier"]

XML_TYPE = "text/xml"


class TwilioWebhookVerifier:
    """``X-Twilio-Signature`` (HMAC-SHA1 over URL and form, or ``bodySHA256`` for JSON),
    and SharedKey signatures named by ``X-Twilio-Webhooks-Signature-Settings``."""

    __slots__ = ("validator",)

    def __init__(self, validator: TwilioSignatureValidator) -> None:
        self.validator = validator

    def verify(self, request: WebhookRequest) -> SignatureCheck:
        headers = request.headers
        signature = headers.get(SIGNATURE_HEADER)
        settings = headers.get(SETTINGS_HEADER)
        if request.content_type == JSON_TYPE:
            return self.validator.validate_json(request.raw_path, request.body, signature,
                                                settings)
        return self.validator.validate_form(request.raw_path, request.fields, signature,
                                            settings)


def _twiml(xml: str) -> WebhookReply:
    return WebhookReply(xml, XML_TYPE)


class TwilioInboundAnswer:
    """Answers in the voice webhook's reply: TwiML (nothing is sent over REST)."""

    __slots__ = ()

    async def connect_stream(self, carrier_call_id: str, target: StreamTarget
                             ) -> WebhookReply:
        return _twiml(connect_stream_twiml(target.url, target.params,
                                           status_callback=target.status_url,
                                           fallback_say=target.fallback_say or None))

    async def say_and_hang_up(self, carrier_call_id: str, text: str) -> WebhookReply:
        return _twiml(say_hangup_twiml(text))

    async def refuse(self, carrier_call_id: str, kind: RefusalKind,
                     text: str | None = None) -> WebhookReply:
        if kind == "busy" and text:
            return _twiml(busy_twiml(text))
        return _twiml(reject_twiml(kind))


class TwilioCarrier(CarrierParts[TwilioWebhookVerifier, TwilioRestClient, TwilioInboundAnswer]):
    """Twilio: one per server. ``rest`` overrides the REST client built from ``twilio.*``
    (tests); a client built here is closed by :meth:`close`."""

    name = "twilio"
    media_path = MEDIA_STREAM_PATH

    def __init__(self, config: Config, rest: TwilioRestClient | None = None) -> None:
        tw = config.twilio
        self.from_number = tw.from_number
        owned = None
        if rest is None and tw.account_sid and tw.auth_token:
            rest = owned = TwilioRestClient(tw.account_sid, tw.auth_token,
                                            api_base=tw.api_base,
                                            timeout_s=tw.request_timeout_s)
        verifier: TwilioWebhookVerifier | None = None
        problem: str | None = None
        try:
            verifier = TwilioWebhookVerifier(TwilioSignatureValidator(
                tw.auth_token, config.server.public_url, tw.shared_keys))
        except SignatureNotConfiguredError as exc:
            problem = str(exc)
        super().__init__(verifier=verifier, verifier_problem=problem, control=rest,
                         answer=TwilioInboundAnswer(), owned=owned)
        self._server = config.server

    def open_stream(self, query: Mapping[str, str]) -> TwilioStreamState:
        """Twilio returns our params in ``start.customParameters``: ``query`` is unused."""
        return TwilioStreamState()

    def map_status(self, carrier_status: str) -> StatusChange:
        return map_call_status(carrier_status)

    def stream_target(self, params: Mapping[str, str]) -> StreamTarget:
        """``<Connect><Stream>`` to ``server.stream_url``, its status reports to
        ``/twilio/stream-status``."""
        server = self._server
        return StreamTarget(server.stream_url, params,
                            status_url=server.webhook_url(STREAM_STATUS_PATH),
                            fallback_say="Sorry, the assistant could not be reached. Goodbye.")

    @property
    def status_url(self) -> str:
        return self._server.webhook_url(STATUS_PATH)

    def routes(self, desk: CallDesk) -> Sequence[Route]:
        """``/twilio/voice``, ``/twilio/status``, ``/twilio/stream-status``."""
        return twilio_routes(self, desk)


register("twilio", TwilioCarrier)
