"""Twilio, sans-I/O: Media Streams messages, TwiML, webhook signatures, stream tokens and
status callbacks (protocols.md section 1). Nothing here opens a socket or knows about AI
providers; the REST wrapper lives in its own I/O module.
"""

from agentic_fast.call.stream_token import StreamTokenClaims, StreamTokenSigner, UsedTokenSet
from agentic_fast.carriers.twilio.media import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioEvent,
    TwilioOutbound,
    TwilioStreamState,
    binary_frame_error,
    clear_message,
    mark_message,
    media_message,
    parse_twilio_message,
)
from agentic_fast.carriers.twilio.signature import (
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    SignatureCheck,
    TwilioSignatureValidator,
)
from agentic_fast.carriers.twilio.status import (
    CallStatusCallback,
    StreamStatusCallback,
    map_call_status,
    parse_status_callback,
    parse_stream_status_callback,
    should_apply,
)
from agentic_fast.carriers.twilio.twiml import busy_twiml, connect_stream_twiml, say_hangup_twiml
from agentic_fast.core.errors import (
    SignatureNotConfiguredError,
    StreamTokenError,
    TwilioProtocolError,
)

__all__ = [
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "CallStatusCallback",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "SignatureCheck",
    "SignatureNotConfiguredError",
    "Start",
    "Stop",
    "StreamStatusCallback",
    "StreamTokenClaims",
    "StreamTokenError",
    "StreamTokenSigner",
    "TwilioEvent",
    "TwilioOutbound",
    "TwilioProtocolError",
    "TwilioSignatureValidator",
    "TwilioStreamState",
    "UsedTokenSet",
    "binary_frame_error",
    "busy_twiml",
    "clear_message",
    "connect_stream_twiml",
    "map_call_status",
    "mark_message",
    "media_message",
    "parse_status_callback",
    "parse_stream_status_callback",
    "parse_twilio_message",
    "say_hangup_twiml",
    "should_apply",
]
