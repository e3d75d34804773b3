"""The one exception tree (core/errors.py): every class lives there, local vs remote, peer named."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import agentic_fast
from agentic_fast.core import errors as E

#: Private control-flow exceptions of the provider shells (never leave their module).
_PRIVATE_ALLOWED = {("agentic_fast.providers.openai.provider", "_Fatal"),
                    ("agentic_fast.providers.openai.provider", "_Refused")}


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(agentic_fast.__path__, "agentic_fast.")
            if m.name != "agentic_fast.__main__"]


def test_every_exception_class_is_defined_in_core_errors() -> None:
    outside = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # the optional native extension
            continue
        for cls_name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, BaseException)
                    and cls.__module__ == name and name != E.__name__
                    and (name, cls_name) not in _PRIVATE_ALLOWED):
                outside.append(f"{name}.{cls_name}")
    assert outside == []


def test_docstring_draws_every_class_of_the_tree() -> None:
    doc = E.__doc__ or ""
    missing = [n for n in E.__all__ if f" {n}" not in doc]
    assert missing == []


@pytest.mark.parametrize("exc, peer", [
    (E.TwilioProtocolError("bad", reason="bad_type", field="event"), "twilio"),
    (E.CarrierProtocolError("bad", reason="binary_frame", peer="telnyx"), "telnyx"),
    (E.WebhookBodyError("bad", status=400, reason="too_long"), "twilio"),
    (E.OpenAIProtocolError("bad", reason="bad_type"), "openai"),
    (E.GeminiProtocolError("bad", reason="bad_type"), "gemini"),
    (E.GatewayProtocolError("bad", reason="bad_type"), "openclaw"),
    (E.BadRequestHead("bad"), "http-client"),
    (E.WebSocketProtocolError(1002, "bad"), "websocket-client"),
])
def test_remote_protocol_errors_name_their_peer(exc: E.RemoteProtocolError, peer: str) -> None:
    assert isinstance(exc, E.RemoteError) and isinstance(exc, E.ProtocolError)
    assert not isinstance(exc, E.LocalError)
    assert exc.peer == peer
    assert str(exc) == f"{peer}: bad" and exc.detail == "bad"


@pytest.mark.parametrize("exc, peer", [
    (E.TwilioApiError("down", code=20003, status=401), "twilio"),
    (E.CarrierApiError("down", peer="telnyx", code="10015", status=422), "telnyx"),
    (E.SetupRejected("closed", code=1007, reason="", fatal=True), "gemini"),
    (E.ProviderUnreachableError("down", peer="openai"), "openai"),
    (E.ClassifierError("down"), "classifier"),
    (E.InvalidClassificationError("junk"), "classifier"),
    (E.GatewayError("no", code="FORBIDDEN"), "openclaw"),
    (E.GatewayConnectionError("lost"), "openclaw"),
    (E.GatewayTimeoutError("late"), "openclaw"),
    (E.StreamTokenError("expired", reason="expired"), "media-stream"),
])
def test_remote_errors_name_their_peer(exc: E.RemoteError, peer: str) -> None:
    assert isinstance(exc, E.RemoteError) and not isinstance(exc, E.LocalError)
    assert exc.peer == peer


@pytest.mark.parametrize("exc", [
    E.ConfigError("bad", key="server.port"),
    E.SignatureNotConfiguredError("no auth token"),
    E.CallLimitError(3),
    E.DrainingError(),
    E.LocalProtocolError("would be refused", peer="twilio"),
    E.GatewayPayloadTooLargeError("big", size=10, limit=5),
])
def test_local_errors_are_not_remote(exc: E.LocalError) -> None:
    assert isinstance(exc, E.LocalError) and not isinstance(exc, E.RemoteError)


def test_stdlib_bases_kept() -> None:
    assert issubclass(E.BadRequestHead, ValueError)
    assert issubclass(E.AudioFormatError, ValueError)
    assert issubclass(E.GatewayTimeoutError, TimeoutError)
    assert issubclass(E.GatewayBusyError, E.GatewayConnectionError)


def test_twilio_errors_are_the_carrier_errors() -> None:
    """The carrier-neutral code catches Twilio's errors by the carrier classes."""
    assert issubclass(E.TwilioProtocolError, E.CarrierProtocolError)
    assert issubclass(E.CarrierProtocolError, E.MessageError)
    assert issubclass(E.TwilioApiError, E.CarrierApiError)
