"""Typed, validated settings loaded from ``config.yaml``.

    config = Config.load("config.yaml")          # env defaults to os.environ
    config.server.stream_url                     # wss://host/twilio/media-stream

Rules, in the order the loader applies them:

- The YAML is composed into nodes (not loaded), so every key keeps its line: any error names
  the dotted key path and ``file:line``.
- Inside string values ``${VAR}`` and ``${VAR:default}`` expand from the ``env`` mapping (also
  inside longer strings, ``wss://${HOST}/x``). The default applies when ``VAR`` is unset *or
  empty*; ``VAR`` unset with no default is an error. ``$${`` writes a literal ``${``. This is the
  only place in the package that reads environment variables.
- A missing key or an empty (null) value means the default. Unknown keys are errors (typos).
- Strings convert to numbers where a number is expected (so ``port: ${PORT:8080}`` works);
  numbers never silently become strings (``pin: 0123`` is an error: quote it).
- Each section validates its own ranges and formats in ``__post_init__``; ``Config`` checks the
  rules that span sections. Empty secrets are accepted here: the code that needs a secret
  refuses to start without it.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

from agentic_fast.core.errors import ConfigError
from agentic_fast.core.model_status import Kind, model_notice

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_SectionT = TypeVar("_SectionT", bound="DataclassInstance")

MEDIA_STREAM_PATH = "/twilio/media-stream"
"""Route of the Twilio Media Streams WebSocket; ``ServerConfig.stream_url`` points here."""
TELNYX_MEDIA_STREAM_PATH = "/telnyx/media-stream"
"""Route of the Telnyx media streaming WebSocket (``stream_url`` of answer and dial)."""

CARRIERS = ("twilio", "telnyx")
"""Values of ``carrier`` (see ``agentic_fast.carriers.registry``)."""

_DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant on a phone call. Keep answers short and natural, "
    "one or two sentences, and ask when something is unclear."
)
_GEMINI_LIVE_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
# Classifier defaults per provider (both speak the OpenAI-compatible chat API).
# Model ids are current ones (not deprecated; see model_status.py for those that are).
_CLASSIFIER_DEFAULTS = {
    "openai": ("https://api.openai.com/v1", "gpt-6-luna"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini-3.5-flash-lite"),
}
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


# -- field metadata and value checks ------------------------------------------------------------

def _m(*, lo: float | None = None, hi: float | None = None, gt: float | None = None,
       choices: Sequence[str] | None = None, check: Callable[[Any], Any] | None = None,
       each: Callable[[Any], Any] | None = None, secret: bool = False) -> dict[str, Any]:
    """Field metadata: inclusive ``lo``/``hi``, exclusive ``gt``, ``choices``, a normalising
    ``check`` (returns the value, raises ``ValueError``), ``each`` (check per list item),
    ``secret`` (masked in output)."""
    meta = {"lo": lo, "hi": hi, "gt": gt, "choices": choices, "check": check, "each": each}
    meta = {k: v for k, v in meta.items() if v is not None}
    if secret:
        meta["secret"] = True
    return meta


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    """Check that the whole value matches ``pattern``; ``what`` describes the format."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value
    return check


_e164 = _matching(r"\+[1-9][0-9]{1,14}", "an E.164 phone number (like +15551230000)")
_account_sid = _matching(r"AC[0-9a-fA-F]{32}", "a Twilio Account SID (AC + 32 hex digits)")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _optional(check: Callable[[str], str]) -> Callable[[str], str]:
    """``check`` for a string that may also be empty (unset)."""
    return lambda value: check(value) if value else value


_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _instance_id(value: str) -> str:
    """A URL path segment: letters, digits, ``.``, ``_``, ``-``; 1 to 63 characters."""
    if not _INSTANCE_ID.fullmatch(value):
        raise ValueError("must be 1 to 63 letters, digits, '.', '_' or '-' (starting with a "
                         f"letter or digit), got {value!r}")
    return value


def default_instance_id() -> str:
    """This host's name, cut to what ``server.instance_id`` allows (``"local"`` if none)."""
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return name[:63].rstrip("-._") or "local"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _spoken(value: str) -> str:
    """A line the assistant (or Twilio's ``<Say>``) speaks: not empty, not a speech."""
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > 1000:
        raise ValueError(f"must be at most 1000 characters, got {len(value)}")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    """Check for an absolute URL with one of ``schemes``; strips a trailing ``/``."""
    def check(value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid URL ({exc})") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{value!r} must be an absolute {' or '.join(schemes)} URL")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not have a query string or fragment")
        return value.rstrip("/")
    return check


def _public_url(value: str) -> str:
    """An https URL: Twilio only opens ``wss://`` media streams, and that URL is built from
    this one (an ``http://`` public URL would fail every call)."""
    value = _url("https", "http")(value)
    if not value.startswith("https://"):
        raise ValueError(f"must be an https:// URL (Twilio requires wss:// for media streams, "
                         f"and the stream URL is built from this one; put a TLS proxy or "
                         f"tunnel in front); got {value!r}")
    return value


def _pin(value: str) -> str:
    if not value.isascii() or not value.isdigit() or not 4 <= len(value) <= 12:
        raise ValueError("must be 4 to 12 digits")  # the value is secret: not echoed
    return value


def _log_level(value: str) -> str:
    if value.upper() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}; got {value!r}")
    return value.upper()


def _audio_format(value: str) -> str:
    if value not in ("", "pcm16", "pcmu"):
        raise ValueError(f"must be pcm16 or pcmu (or empty: follow audio.provider); got {value!r}")
    return value


_SHARED_KEY_ID = re.compile(r"[A-Za-z0-9_.:-]+")


def _shared_keys(value: tuple[str, ...]) -> tuple[str, ...]:
    """``<SharedKey id>=<secret>`` entries, ids unique; errors never echo a secret."""
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(value):
        key_id, sep, secret = entry.strip().partition("=")
        key_id, secret = key_id.strip(), secret.strip()
        if not sep or not secret or not _SHARED_KEY_ID.fullmatch(key_id):
            raise ValueError(f"entry {i} must be <SharedKey id>=<secret> "
                             "(e.g. webhooks_sharedkey_...=the key's secret)")
        if key_id in seen:
            raise ValueError(f"entry {i}: SharedKey id {key_id!r} is given twice")
        seen.add(key_id)
        out.append(f"{key_id}={secret}")
    return tuple(out)


def _ed25519_public_key(value: str) -> str:
    """Base64 of a 32-byte Ed25519 public key (Telnyx's webhook signing key)."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be the base64 of a 32-byte Ed25519 public key (Telnyx "
                         "Mission Control: Keys & Credentials, Public Key)") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one decodes to {len(raw)}")
    return value.strip()


def _ip_network(value: str) -> str:
    """An IP address or CIDR network (``10.0.0.0/8``, ``127.0.0.1``, ``::1``)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"must be an IP address or CIDR network, got {value!r}") from None


def _check_value(value: Any, meta: Mapping[str, Any]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
    if "lo" in meta and value < meta["lo"]:
        raise ValueError(f"must be >= {meta['lo']}, got {value}")
    if "hi" in meta and value > meta["hi"]:
        raise ValueError(f"must be <= {meta['hi']}, got {value}")
    if "gt" in meta and value <= meta["gt"]:
        raise ValueError(f"must be > {meta['gt']}, got {value}")
    check = meta.get("check")
    return check(value) if check is not None else value


def _checked(value: Any, meta: Mapping[str, Any], key: str) -> Any:
    try:
        return _check_value(value, meta)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from None


class _Section:
    """Base of the section dataclasses: validates fields against their metadata."""

    __slots__ = ()
    PATH: ClassVar[str]  # dotted key path of the section in config.yaml
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # every section is a dataclass

    def __post_init__(self) -> None:
        for f in fields(self):
            if not f.metadata:
                continue
            key = f"{self.PATH}.{f.name}"
            value = getattr(self, f.name)
            if "each" in f.metadata:
                each = {"check": f.metadata["each"]}
                new = tuple(_checked(v, each, f"{key}[{i}]") for i, v in enumerate(value))
            else:
                new = _checked(value, f.metadata, key)
            if new != value:
                object.__setattr__(self, f.name, new)


def mask_secret(value: str) -> str:
    """``"****abcd"`` (last 4 shown only for secrets of 12+ chars), ``"****"``, or ``"(unset)"``."""
    if not value:
        return "(unset)"
    return "****" + value[-4:] if len(value) >= 12 else "****"


# -- sections ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServerConfig(_Section):
    """HTTP/WebSocket server: bind address, public URL, limits, auth of the /calls API."""

    PATH: ClassVar[str] = "server"
    host: str = field(default="127.0.0.1", metadata=_m(check=_nonempty))
    port: int = field(default=8080, metadata=_m(lo=0, hi=65535))  # 0: any free port
    public_url: str = field(default="", metadata=_m(check=_optional(_public_url)))
    drain_timeout_s: float = field(default=30.0, metadata=_m(lo=0, hi=3600))
    max_connections_total: int = field(default=1000, metadata=_m(lo=1, hi=1_000_000))
    max_connections_per_ip: int = field(default=100, metadata=_m(lo=1, hi=1_000_000))
    start_timeout_s: float = field(default=5.0, metadata=_m(gt=0, hi=120))
    ws_max_message_bytes: int = field(default=65536, metadata=_m(lo=1024, hi=16 * 2**20))
    ws_heartbeat_s: float = field(default=20.0, metadata=_m(lo=0, hi=600))  # 0: off
    api_token: str = field(default="", metadata=_m(secret=True))
    stream_token_ttl_s: float = field(default=60.0, metadata=_m(gt=0, hi=3600))
    # connection abuse bounds (listener, media sockets; see listener.ListenerLimits)
    head_timeout_s: float = field(default=5.0, metadata=_m(gt=0, hi=120))
    max_pending_total: int = field(default=256, metadata=_m(lo=1, hi=1_000_000))
    max_pending_per_ip: int = field(default=32, metadata=_m(lo=1, hi=1_000_000))
    http_keepalive_s: float = field(default=15.0, metadata=_m(gt=0, hi=3600))
    ws_max_control_frames_per_s: int = field(default=20, metadata=_m(lo=0, hi=100_000))
    ws_max_write_buffer_bytes: int = field(default=256 * 1024,
                                           metadata=_m(lo=16 * 1024, hi=64 * 2**20))
    # young-generation threshold of the cycle collector after startup (serve.tune_gc);
    # 0 leaves Python's defaults (700, nothing frozen)
    gc_young_threshold: int = field(default=10_000, metadata=_m(lo=0, hi=10_000_000))
    # reverse proxies whose forwarding header is believed (see agentic_fast.server.client_address)
    trusted_proxies: tuple[str, ...] = field(default=(), metadata=_m(each=_ip_network))
    proxy_header: str = field(default="x-forwarded-for",
                              metadata=_m(choices=("x-forwarded-for", "forwarded")))
    # where state that must outlive a restart is kept (the webhook replay guard); "": memory
    state_dir: str = ""
    replay_window_s: float = field(default=86400.0, metadata=_m(lo=60, hi=30 * 86400))
    replay_max_entries: int = field(default=100_000, metadata=_m(lo=100, hi=10_000_000))
    # worker processes sharing the port (SO_REUSEPORT) under one supervisor; 0: one per
    # usable core (len(os.sched_getaffinity(0))); 1: a single process, no supervisor
    workers: int = field(default=0, metadata=_m(lo=0, hi=1024))
    # this server's name in stream URLs (/w/<instance_id>-<worker>/...) and call ownership;
    # default: derived from the host name
    instance_id: str = field(default_factory=lambda: default_instance_id(),
                             metadata=_m(check=_instance_id))
    # test/debug aid: each worker also listens on its own loopback port (logged as
    # worker.direct), so a request can be sent to one chosen worker
    worker_direct_ports: bool = False

    def api_exposed(self, host: str | None = None) -> bool:
        """The ``/calls`` API can be reached from off this host: the listener (``host``
        when it overrides ``server.host``) is not loopback, or a proxy is trusted."""
        return (host or self.host) not in _LOOPBACK_HOSTS or bool(self.trusted_proxies)

    def require_api_token(self, host: str | None = None) -> None:
        """Refuse (``ConfigError``) an exposed ``/calls`` API without ``api_token``."""
        if self.api_token or not self.api_exposed(host):
            return
        host = host or self.host
        why = ("server.trusted_proxies is set" if host in _LOOPBACK_HOSTS
               else f"the listener {host!r} is not loopback")
        raise ConfigError(f"server.api_token is not set while the /calls API is exposed ({why}):"
                          " anyone could place and hang up calls; set server.api_token "
                          "(e.g. from AGENTIC_FAST_API_TOKEN)", key="server.api_token")

    @property
    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the number of cores this process may run on."""
        return self.workers or usable_cores()

    @property
    def replay_db_file(self) -> Path | None:
        """``<state_dir>/replay.sqlite3`` (``~`` expanded), None when ``state_dir`` is empty."""
        return Path(self.state_dir).expanduser() / "replay.sqlite3" if self.state_dir else None

    def _require_public_url(self) -> str:
        if not self.public_url:
            raise ConfigError("server.public_url is not set (Twilio must reach this server)",
                              key="server.public_url")
        return self.public_url

    @property
    def stream_url(self) -> str:
        """``wss://`` URL of the media stream route (``public_url`` is always https)."""
        rest = self._require_public_url().split("://", 1)[1]
        return f"wss://{rest}{MEDIA_STREAM_PATH}"

    def webhook_url(self, path: str) -> str:
        """Absolute public URL of ``path`` (e.g. ``/twilio/voice``), as Twilio will sign it."""
        return f"{self._require_public_url()}/{path.lstrip('/')}"


@dataclass(frozen=True, slots=True)
class TwilioConfig(_Section):
    """Twilio account (REST API, webhook signature key) and the caller id of outbound calls."""

    PATH: ClassVar[str] = "twilio"
    account_sid: str = field(default="", metadata=_m(check=_optional(_account_sid)))
    auth_token: str = field(default="", metadata=_m(secret=True))
    from_number: str = field(default="", metadata=_m(check=_optional(_e164)))
    api_base: str = field(default="https://api.twilio.com",
                          metadata=_m(check=_url("https", "http")))
    request_timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))
    # Webhooks signed with a SharedKey (X-Twilio-Webhooks-Signature-Settings): the key ids
    # that header names, each with its secret; several while a key is rotated.
    webhook_shared_keys: tuple[str, ...] = field(
        default=(), metadata=_m(check=_shared_keys, secret=True))

    @property
    def shared_keys(self) -> dict[str, str]:
        """``webhook_shared_keys`` as SharedKey id -> secret."""
        return dict(entry.split("=", 1) for entry in self.webhook_shared_keys)


@dataclass(frozen=True, slots=True)
class TelnyxConfig(_Section):
    """Telnyx account (Call Control v2 REST, webhook public key) and the media codec."""

    PATH: ClassVar[str] = "telnyx"
    api_key: str = field(default="", metadata=_m(secret=True))
    api_base_url: str = field(default="https://api.telnyx.com/v2",
                              metadata=_m(check=_url("https", "http")))
    # the Call Control Application (its id) whose webhooks and numbers the server uses
    connection_id: str = ""
    # verifies telnyx-signature-ed25519 on every webhook (base64, 32 bytes)
    public_key: str = field(default="", metadata=_m(check=_optional(_ed25519_public_key)))
    from_number: str = field(default="", metadata=_m(check=_optional(_e164)))
    # media both ways: PCMU (8 kHz mu-law) or L16 (16 kHz linear PCM; Gemini input as is)
    codec: str = field(default="PCMU", metadata=_m(choices=("PCMU", "L16")))
    # a webhook whose telnyx-timestamp is further than this from now is refused
    webhook_tolerance_s: float = field(default=300.0, metadata=_m(gt=0, hi=3600))
    request_timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))
    # where Telnyx opens media streams and posts a dialled call's webhooks; "": from
    # server.public_url (wss://<host>/telnyx/media-stream, https://<host>/telnyx/webhook)
    stream_url: str = field(default="", metadata=_m(check=_optional(_url("wss", "ws"))))
    webhook_url: str = field(default="", metadata=_m(check=_optional(_url("https", "http"))))
    # refusals and goodbyes are spoken with Call Control's speak, then hung up: the voice
    # ("<Provider>.<Model>.<VoiceId>", e.g. AWS.Polly.Joanna-Neural; or male / female on
    # the basic service level), the language ("": not sent; ignored for Polly voices), and
    # how long the line may take before the call is hung up anyway (call.speak.ended lost)
    speak_voice: str = field(default="AWS.Polly.Joanna-Neural", metadata=_m(check=_nonempty))
    speak_language: str = "en-US"
    speak_timeout_s: float = field(default=30.0, metadata=_m(gt=0, hi=600))


@dataclass(frozen=True, slots=True)
class VadConfig(_Section):
    """OpenAI server VAD (turn detection)."""

    PATH: ClassVar[str] = "openai_realtime.vad"
    threshold: float = field(default=0.5, metadata=_m(lo=0, hi=1))
    prefix_padding_ms: int = field(default=300, metadata=_m(lo=0, hi=5000))
    silence_duration_ms: int = field(default=500, metadata=_m(lo=0, hi=10000))


@dataclass(frozen=True, slots=True)
class OpenAIRealtimeConfig(_Section):
    """OpenAI Realtime (GA) session settings."""

    PATH: ClassVar[str] = "openai_realtime"
    api_key: str = field(default="", metadata=_m(secret=True))
    url: str = field(default="wss://api.openai.com/v1/realtime",
                     metadata=_m(check=_url("wss", "ws")))
    model: str = field(default="gpt-realtime-2.1", metadata=_m(check=_nonempty))
    voice: str = field(default="marin", metadata=_m(check=_nonempty))
    # "" follows audio.provider (openai -> pcm16, openai-pcmu -> pcmu); always set after load.
    audio_format: str = field(default="", metadata=_m(check=_audio_format))
    instructions: str = _DEFAULT_INSTRUCTIONS
    transcription_model: str = "gpt-transcribe"  # "" turns input transcription off
    greeting: str = ""  # what to say first when the call connects; "" waits for the caller
    # spoken when a response fails (response.done failed/incomplete); "" says nothing
    failed_response_message: str = "Sorry, I had a problem there. Could you say that again?"
    # this many failed responses in a row end the call (a completed one resets); 0: never
    max_failed_responses: int = field(default=3, metadata=_m(lo=0, hi=100))
    vad: VadConfig = field(default_factory=VadConfig)


@dataclass(frozen=True, slots=True)
class GeminiConfig(_Section):
    """Gemini Live (BidiGenerateContent) session settings."""

    PATH: ClassVar[str] = "gemini"
    api_key: str = field(default="", metadata=_m(secret=True))
    url: str = field(default=_GEMINI_LIVE_URL, metadata=_m(check=_url("wss", "ws")))
    model: str = field(default="gemini-3.8-live", metadata=_m(check=_nonempty))
    voice: str = field(default="Puck", metadata=_m(check=_nonempty))
    instructions: str = _DEFAULT_INSTRUCTIONS


@dataclass(frozen=True, slots=True)
class GatewayConfig(_Section):
    """OpenClaw gateway connection and device identity."""

    PATH: ClassVar[str] = "gateway"
    url: str = field(default="ws://127.0.0.1:18789", metadata=_m(check=_url("ws", "wss")))
    token: str = field(default="", metadata=_m(secret=True))
    device_key_path: str = field(default="~/.agentic_fast/gateway_device_key",
                                 metadata=_m(check=_nonempty))
    session_scope: str = field(default="call", metadata=_m(choices=("call", "caller")))

    @property
    def device_key_file(self) -> Path:
        """``device_key_path`` with ``~`` expanded."""
        return Path(self.device_key_path).expanduser()


@dataclass(frozen=True, slots=True)
class ClassifierConfig(_Section):
    """Small chat model (OpenAI-compatible API) that classifies caller turns.

    Empty ``base_url`` / ``model`` take the provider's default (set after load).
    """

    PATH: ClassVar[str] = "brain.classifier"
    provider: str = field(default="openai", metadata=_m(choices=tuple(_CLASSIFIER_DEFAULTS)))
    base_url: str = field(default="", metadata=_m(check=_optional(_url("https", "http"))))
    model: str = ""
    api_key: str = field(default="", metadata=_m(secret=True))
    timeout_s: float = field(default=5.0, metadata=_m(gt=0, hi=60))

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _chat_model_defaults(self)


def _chat_model_defaults(section: ClassifierConfig | NotifySummaryConfig) -> None:
    """Empty ``base_url`` / ``model`` of a chat-model section take its provider's default."""
    base_url, model = _CLASSIFIER_DEFAULTS[section.provider]
    if not section.base_url:
        object.__setattr__(section, "base_url", base_url)
    if not section.model:
        object.__setattr__(section, "model", model)


@dataclass(frozen=True, slots=True)
class BrainConfig(_Section):
    """Conversation brain: how turns reach the agent, who may use it, timing."""

    PATH: ClassVar[str] = "brain"
    mode: str = field(default="tool", metadata=_m(choices=("transcript", "tool", "both")))
    allowed_callers: tuple[str, ...] = field(default=(), metadata=_m(each=_e164))
    pin: str = field(default="", metadata=_m(check=_optional(_pin), secret=True))
    filler_after_s: float = field(default=2.0, metadata=_m(lo=0, hi=60))  # 0: no filler
    deadline_s: float = field(default=30.0, metadata=_m(gt=0, hi=600))
    # turns of both sides kept as context for the classifier
    memory_turns: int = field(default=12, metadata=_m(lo=1, hi=200))
    # transcript fragments without end punctuation are joined until this much quiet (0: none)
    turn_gap_s: float = field(default=0.6, metadata=_m(lo=0, hi=10))
    # the same command (normalised text) is not sent twice within this window of a call
    dedupe_window_s: float = field(default=120.0, metadata=_m(gt=0, hi=86400))
    # mode both: a tool call and a transcript command this close in time are one command
    delegation_window_s: float = field(default=5.0, metadata=_m(lo=0, hi=60))
    barge_in_aborts: bool = False  # hang-up always aborts in-flight runs; barge-in only if set
    gateway_wait_s: float = field(default=3.0, metadata=_m(lo=0, hi=60))  # gateway not up
    workers: int = field(default=32, metadata=_m(lo=1, hi=1024))  # brain task pool size
    queue_size: int = field(default=1024, metadata=_m(lo=1, hi=1_000_000))  # all calls
    call_queue_size: int = field(default=32, metadata=_m(lo=1, hi=10_000))  # per call
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


#: The ``audio.provider`` names a config may select: the built-in providers, and every name
#: registered since (:func:`agentic_fast.providers.registry.register` adds to it).
PROVIDER_NAMES: list[str] = ["openai", "gemini", "openai-pcmu"]


@dataclass(frozen=True, slots=True)
class AudioConfig(_Section):
    """Audio path: which provider format the converter targets, handoff chunk size."""

    PATH: ClassVar[str] = "audio"
    provider: str = field(default="openai", metadata=_m(choices=PROVIDER_NAMES))
    handoff_ms: int = field(default=20, metadata=_m(lo=20, hi=100))


@dataclass(frozen=True, slots=True)
class BridgeConfig(_Section):
    """Per-call bridge: outbound pacing, marks, barge-in sensitivity, provider reach."""

    PATH: ClassVar[str] = "bridge"
    lead_ms: int = field(default=120, metadata=_m(lo=40, hi=1000))
    mark_every_frames: int = field(default=10, metadata=_m(lo=1, hi=50))
    max_queue_s: float = field(default=60.0, metadata=_m(gt=0, hi=600))
    barge_in_min_speech_ms: int = field(default=0, metadata=_m(lo=0, hi=2000))
    prewarm: bool = True
    provider_connect_timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))
    # a provider socket whose server stopped reading (unanswered probe ping, or a write buffer
    # that stayed full) for this long is dropped and the session renewed; 0: keepalive only
    provider_stall_timeout_s: float = field(default=5.0, metadata=_m(lo=0, hi=120))
    unavailable_message: str = "Sorry, the assistant is not available right now. Goodbye."


@dataclass(frozen=True, slots=True)
class RateLimitsConfig(_Section):
    """Rates of new inbound calls (see ``agentic_fast.call.admission``); 0 turns a limit off."""

    PATH: ClassVar[str] = "calls.rate_limits"
    per_caller_per_minute: int = field(default=5, metadata=_m(lo=0, hi=10_000))
    global_per_second: int = field(default=10, metadata=_m(lo=0, hi=100_000))
    # callers whose per-caller window is remembered at most (least recently admitted go first)
    max_tracked_callers: int = field(default=10_000, metadata=_m(lo=1, hi=10_000_000))


@dataclass(frozen=True, slots=True)
class CallsConfig(_Section):
    """Call registry limits, who gets a model session (inbound policy, rates) and
    per-call time limits."""

    PATH: ClassVar[str] = "calls"
    max_concurrent_calls: int = field(default=50, metadata=_m(lo=1, hi=100_000))
    inbound: str = field(default="allowlist",
                         metadata=_m(choices=("open", "allowlist", "disabled")))
    # empty: brain.allowed_callers (set after load, in Config)
    inbound_numbers: tuple[str, ...] = field(default=(), metadata=_m(each=_e164))
    refuse_with: str = field(default="reject", metadata=_m(choices=("reject", "say")))
    refuse_message: str = field(default="Sorry, this number cannot take your call. Goodbye.",
                                metadata=_m(check=_spoken))
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    # -- time limits (call/timers.py): 0 turns a limit off ------------------------------------
    max_duration_s: float = field(default=900.0, metadata=_m(lo=0, hi=86_400))
    duration_warning_s: float = field(default=30.0, metadata=_m(lo=0, hi=3600))
    duration_warning_message: str = field(
        default="Just so you know, this call will end in about {seconds} seconds.",
        metadata=_m(check=_spoken))
    duration_goodbye_message: str = field(
        default="We have reached the time limit for this call. Goodbye!",
        metadata=_m(check=_spoken))
    silence_timeout_s: float = field(default=60.0, metadata=_m(lo=0, hi=3600))
    silence_grace_s: float = field(default=15.0, metadata=_m(gt=0, hi=3600))
    silence_prompt_message: str = field(default="Are you still there?",
                                        metadata=_m(check=_spoken))
    silence_goodbye_message: str = field(
        default="I haven't heard from you, so I will hang up now. Goodbye!",
        metadata=_m(check=_spoken))
    goodbye_timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))


def _check_call_limits(calls: CallsConfig) -> None:
    """The duration warning must come before the end it announces."""
    if 0 < calls.max_duration_s <= calls.duration_warning_s:
        raise ConfigError(f"calls.duration_warning_s: must be below calls.max_duration_s "
                          f"({calls.max_duration_s}); 0 for no warning",
                          key="calls.duration_warning_s")


@dataclass(frozen=True, slots=True)
class LoggingConfig(_Section):
    """Log level and line format (see ``agentic_fast.core.log.configure``)."""

    PATH: ClassVar[str] = "logging"
    level: str = field(default="INFO", metadata=_m(check=_log_level))
    format: str = field(default="text", metadata=_m(choices=("text", "json")))


def _redis_url(value: str) -> str:
    """``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be a redis:// or rediss:// URL with a host "
                         "(like redis://127.0.0.1:6379/0)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the path must be a database number (like /0), got {parts.path!r}")
    return value


@dataclass(frozen=True, slots=True)
class StoreConfig(_Section):
    """The shared call store (``agentic_fast.store``): records, transcripts, stream-token
    nonces and live-call ownership; SQLite on one machine, Redis across machines."""

    PATH: ClassVar[str] = "store"
    backend: str = field(default="sqlite", metadata=_m(choices=("sqlite", "redis")))
    path: str = field(default="~/.agentic_fast/calls.db", metadata=_m(check=_nonempty))
    url: str = field(default="redis://127.0.0.1:6379/0",
                     metadata=_m(check=_redis_url, secret=True))  # may hold a password
    key_prefix: str = field(default="agentic_fast:", metadata=_m(check=_nonempty))
    retention_days: float = field(default=30.0, metadata=_m(lo=0, hi=36_500))  # 0: forever
    prune_interval_s: float = field(default=3600.0, metadata=_m(lo=1, hi=7 * 86_400))
    queue_size: int = field(default=10_000, metadata=_m(lo=1, hi=10_000_000))
    batch_max: int = field(default=500, metadata=_m(lo=1, hi=100_000))
    batch_interval_s: float = field(default=0.05, metadata=_m(gt=0, hi=60))
    retry_initial_s: float = field(default=0.1, metadata=_m(gt=0, hi=60))
    retry_max_s: float = field(default=5.0, metadata=_m(gt=0, hi=600))
    max_attempts: int = field(default=3, metadata=_m(lo=1, hi=1000))
    timeout_s: float = field(default=2.0, metadata=_m(gt=0, hi=120))
    connect_timeout_s: float = field(default=2.0, metadata=_m(gt=0, hi=120))
    lease_s: float = field(default=15.0, metadata=_m(gt=0, hi=3600))
    shutdown_timeout_s: float = field(default=5.0, metadata=_m(lo=0, hi=600))

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if self.retry_max_s < self.retry_initial_s:
            raise ConfigError(f"store.retry_max_s: must be >= store.retry_initial_s "
                              f"({self.retry_initial_s}), got {self.retry_max_s}",
                              key="store.retry_max_s")
        if self.batch_max > self.queue_size:
            raise ConfigError(f"store.batch_max: must be <= store.queue_size "
                              f"({self.queue_size}), got {self.batch_max}",
                              key="store.batch_max")

    @property
    def file(self) -> Path:
        """``path`` with ``~`` expanded."""
        return Path(self.path).expanduser()


def _https_or_loopback(value: str) -> str:
    """An https URL, or http to a loopback host (a local receiver or a test fake)."""
    value = _url("https", "http")(value)
    host = urlsplit(value).hostname or ""
    if value.startswith("http://") and host not in _LOOPBACK_HOSTS:
        raise ValueError(f"must be an https:// URL (http:// only to a loopback host); "
                         f"got {value!r}")
    return value


_telegram_chat = _matching(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}",
                           "a Telegram chat id (an integer) or @channelusername")


@dataclass(frozen=True, slots=True)
class NotifyTelegramConfig(_Section):
    """Telegram Bot API destination of post-call messages (``notify/telegram.py``)."""

    PATH: ClassVar[str] = "notify.telegram"
    bot_token: str = field(default="", metadata=_m(secret=True))
    chat_id: str = field(default="", metadata=_m(check=_optional(_telegram_chat)))
    api_base_url: str = field(default="https://api.telegram.org",
                              metadata=_m(check=_https_or_loopback))
    timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))
    # a long transcript is split into at most this many messages, the last one truncated
    max_messages: int = field(default=4, metadata=_m(lo=1, hi=50))


@dataclass(frozen=True, slots=True)
class NotifySummaryConfig(_Section):
    """Small chat model (OpenAI-compatible API) writing the post-call summary.

    Empty ``base_url`` / ``model`` take the provider's default (like the classifier's);
    without ``api_key`` the summary is a plain extract of the call."""

    PATH: ClassVar[str] = "notify.summary"
    provider: str = field(default="openai", metadata=_m(choices=tuple(_CLASSIFIER_DEFAULTS)))
    base_url: str = field(default="", metadata=_m(check=_optional(_url("https", "http"))))
    model: str = ""
    api_key: str = field(default="", metadata=_m(secret=True))
    timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _chat_model_defaults(self)


@dataclass(frozen=True, slots=True)
class NotifyConfig(_Section):
    """Post-call delivery (``agentic_fast.notify``): a signed webhook and/or Telegram, from
    a persisted outbox (``<server.state_dir>/outbox.sqlite3``) retried with backoff."""

    PATH: ClassVar[str] = "notify"
    webhook_url: str = field(default="", metadata=_m(check=_optional(_https_or_loopback)))
    webhook_secret: str = field(default="", metadata=_m(secret=True))
    webhook_timeout_s: float = field(default=10.0, metadata=_m(gt=0, hi=120))
    telegram: NotifyTelegramConfig = field(default_factory=NotifyTelegramConfig)
    summary: NotifySummaryConfig = field(default_factory=NotifySummaryConfig)
    # retries: exponential backoff from backoff_base_s, capped at backoff_max_s; a delivery
    # still failing after max_attempts tries or max_age_s is dead-lettered (logged, counted)
    max_attempts: int = field(default=12, metadata=_m(lo=1, hi=1000))
    max_age_s: float = field(default=86400.0, metadata=_m(gt=0, hi=30 * 86400))
    backoff_base_s: float = field(default=5.0, metadata=_m(gt=0, hi=3600))
    backoff_max_s: float = field(default=900.0, metadata=_m(gt=0, hi=86400))
    # deliveries waiting at most; an ended call beyond it is refused (logged, counted)
    max_pending: int = field(default=10_000, metadata=_m(lo=1, hi=10_000_000))

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if self.backoff_base_s > self.backoff_max_s:
            raise ConfigError(f"notify.backoff_base_s: must be at most notify.backoff_max_s "
                              f"({self.backoff_max_s})", key="notify.backoff_base_s")

    @property
    def enabled(self) -> bool:
        """A destination is configured (the webhook, or Telegram's bot token or chat)."""
        return bool(self.webhook_url or self.telegram.bot_token or self.telegram.chat_id)

    def require_complete(self) -> None:
        """Refuse (``ConfigError``) a destination without its secret or its other half."""
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("notify.webhook_secret is not set while notify.webhook_url is: "
                              "post-call webhooks are always signed; set a long random "
                              "secret (e.g. from AGENTIC_FAST_NOTIFY_WEBHOOK_SECRET)",
                              key="notify.webhook_secret")
        telegram = self.telegram
        if telegram.bot_token and not telegram.chat_id:
            raise ConfigError("notify.telegram.chat_id is not set while "
                              "notify.telegram.bot_token is", key="notify.telegram.chat_id")
        if telegram.chat_id and not telegram.bot_token:
            raise ConfigError("notify.telegram.bot_token is not set while "
                              "notify.telegram.chat_id is", key="notify.telegram.bot_token")

    def warnings(self) -> list[str]:
        """``notify.*: ...`` for a destination that cannot work as configured."""
        try:
            self.require_complete()
        except ConfigError as exc:
            return [str(exc)]
        return []


@dataclass(frozen=True, slots=True)
class MetricsConfig(_Section):
    """Prometheus ``/metrics`` (see ``agentic_fast.core.metrics_export``)."""

    PATH: ClassVar[str] = "metrics"
    # false: no histograms and no audio-path sampling (the counters stay); to measure their cost
    enabled: bool = True
    # time our code on one audio frame (each way) in this many; 0: never
    latency_sample_every: int = field(default=50, metadata=_m(lo=0, hi=1_000_000))
    # seconds between pushes of the counters to prometheus_client's multiprocess files
    # (only with PROMETHEUS_MULTIPROC_DIR set; each scrape pushes too)
    multiprocess_sync_s: float = field(default=5.0, metadata=_m(gt=0, hi=3600))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. Build it with ``load``/``from_text``; ``Config()`` = defaults."""

    server: ServerConfig = field(default_factory=ServerConfig)
    # the default telephone carrier: outbound calls go through it unless ``numbers`` maps
    # their from number to another one
    carrier: str = "twilio"
    # our own E.164 numbers -> the carrier each one is on (POST /calls ``from``)
    numbers: dict[str, str] = field(default_factory=dict)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    telnyx: TelnyxConfig = field(default_factory=TelnyxConfig)
    openai_realtime: OpenAIRealtimeConfig = field(default_factory=OpenAIRealtimeConfig)
    gemini: GeminiConfig = field(default_factory=GeminiConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    brain: BrainConfig = field(default_factory=BrainConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if self.carrier not in CARRIERS:
            close = difflib.get_close_matches(self.carrier, CARRIERS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"carrier: must be one of {', '.join(CARRIERS)}, got "
                              f"{self.carrier!r}{hint}", key="carrier")
        for number, name in self.numbers.items():
            key = f"numbers.{number}"
            try:
                _e164(number)
            except ValueError as exc:
                raise ConfigError(f"{key}: the key must be one of our phone numbers in "
                                  f"E.164 ({exc})", key=key) from None
            if name not in CARRIERS:
                raise ConfigError(f"{key}: must be one of {', '.join(CARRIERS)}, got "
                                  f"{name!r}", key=key)
        if (self.telnyx.codec == "L16" and "telnyx" in self.carriers_in_use()
                and self.audio.provider == "openai-pcmu"):
            raise ConfigError("telnyx.codec: L16 needs a PCM16 provider leg, but "
                              "audio.provider is openai-pcmu (mu-law); use codec PCMU or "
                              "audio.provider openai/gemini", key="telnyx.codec")
        provider, fmt = self.audio.provider, self.openai_realtime.audio_format
        wanted = "pcmu" if provider == "openai-pcmu" else "pcm16"
        if fmt and provider != "gemini" and fmt != wanted:
            raise ConfigError(f"openai_realtime.audio_format: {fmt} contradicts audio.provider "
                              f"{provider} (which needs {wanted}); leave it empty",
                              key="openai_realtime.audio_format")
        if not fmt:
            object.__setattr__(self, "openai_realtime",
                               replace(self.openai_realtime, audio_format=wanted))
        brain = self.brain
        if not self.calls.inbound_numbers and brain.allowed_callers:
            object.__setattr__(self, "calls", replace(
                self.calls, inbound_numbers=brain.allowed_callers))
        if brain.filler_after_s >= brain.deadline_s:
            raise ConfigError(f"brain.filler_after_s: must be below brain.deadline_s "
                              f"({brain.deadline_s})", key="brain.filler_after_s")
        _check_call_limits(self.calls)

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str] = os.environ) -> Config:
        """Read and validate the YAML file at ``path``; raises ``ConfigError``."""
        source = os.fspath(path)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror or exc}",
                              source=source) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("config file is not UTF-8 text", source=source) from exc
        return cls.from_text(text, source=source, env=env)

    @classmethod
    def from_text(cls, text: str, source: str = "<string>",
                  env: Mapping[str, str] = os.environ) -> Config:
        """Validate YAML ``text``; ``source`` names it in error messages."""
        return _Loader(text, source, env).load()

    def carriers_in_use(self) -> tuple[str, ...]:
        """The carriers whose webhook routes and media streams this server serves: the
        ``carrier`` default, those ``numbers`` names, and any whose credentials are set
        (``twilio.auth_token``; ``telnyx.api_key`` or ``telnyx.public_key``)."""
        names = [self.carrier, *self.numbers.values()]
        if self.twilio.auth_token:
            names.append("twilio")
        if self.telnyx.api_key or self.telnyx.public_key:
            names.append("telnyx")
        return tuple(dict.fromkeys(names))

    def carrier_of(self, number: str) -> str | None:
        """The carrier our number ``number`` is on (``numbers``, else the carrier whose
        ``from_number`` it is), or None when it is not one of ours."""
        if number in self.numbers:
            return self.numbers[number]
        for name in self.carriers_in_use():
            if getattr(self, name).from_number == number:
                return name
        return None

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by ``mask_secret``."""
        return _to_dict(self)

    def warnings(self, today: date | None = None) -> list[str]:
        """Settings a production server should not run with (not errors at load): empty
        ones it needs, and models their vendor deprecated or shut down by ``today``
        (default: the current UTC date). Each warning starts with the key it is about."""
        out = []
        if not self.server.public_url:
            out.append("server.public_url is not set: no webhook or media stream URL for Twilio")
        if self.carrier == "telnyx":
            for key in ("api_key", "connection_id", "public_key"):
                if not getattr(self.telnyx, key):
                    out.append(f"telnyx.{key} is not set: Telnyx calls will be refused")
        else:
            for key in ("account_sid", "auth_token"):
                if not getattr(self.twilio, key):
                    out.append(f"twilio.{key} is not set: Twilio calls will be refused")
        provider = "gemini" if self.audio.provider == "gemini" else "openai_realtime"
        if not getattr(self, provider).api_key:
            out.append(f"{provider}.api_key is not set (audio.provider is {self.audio.provider})")
        if not self.server.state_dir:
            out.append("server.state_dir is not set: answered voice webhooks are remembered "
                       "in memory only, so a replay after a restart places a new call")
        return (out + self.inbound_warnings() + self.notify.warnings()
                + self.model_warnings(today))

    def inbound_warnings(self) -> list[str]:
        """``calls.inbound_numbers: ...`` when the allow list admits no inbound caller."""
        calls = self.calls
        if calls.inbound != "allowlist" or calls.inbound_numbers:
            return []
        return ["calls.inbound_numbers is empty (and so is brain.allowed_callers, its "
                "default) while calls.inbound is allowlist: no inbound caller will be "
                "answered; list the callers' numbers, or set calls.inbound: open to "
                "answer anyone"]

    def model_warnings(self, today: date | None = None) -> list[str]:
        """``key: ...`` for each model in use that its vendor deprecated, shut down or
        superseded (see ``model_status``); models of an unused provider are not checked."""
        today = today or datetime.now(UTC).date()
        checks: list[tuple[str, Kind, str, str]] = []  # key, table, model, default
        realtime, defaults = self.openai_realtime, OpenAIRealtimeConfig()
        if self.audio.provider == "gemini":
            checks.append(("gemini.model", "gemini", self.gemini.model, GeminiConfig().model))
        else:
            checks.append(("openai_realtime.model", "openai_realtime", realtime.model,
                           defaults.model))
            if realtime.transcription_model:
                checks.append(("openai_realtime.transcription_model", "openai_transcription",
                               realtime.transcription_model, defaults.transcription_model))
        classifier = self.brain.classifier
        if self.brain.mode != "tool":  # the classifier only runs on transcripts
            kind: Kind = "gemini" if classifier.provider == "gemini" else "openai_chat"
            checks.append(("brain.classifier.model", kind, classifier.model,
                           _CLASSIFIER_DEFAULTS[classifier.provider][1]))
        out = []
        for key, kind, model, default in checks:
            notice = model_notice(kind, model)
            if notice is not None:
                out.append(f"{key}: {notice.describe(model, today)}; "
                           f"use a current model such as {default}")
        return out


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            value = _to_dict(value)
        elif f.metadata.get("secret"):
            value = ([mask_secret(v) for v in value] if isinstance(value, tuple)
                     else mask_secret(value))
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


# -- loader: YAML nodes -> dataclasses, with line numbers --------------------------------------

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_WANT = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_VAR = re.compile(r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<default>[^}]*))?\}"
                  r"|(?P<bad>\{[^}]*\}?))")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


_KINDS = {int: "integer", float: "number", bool: "boolean"}


def _describe(node: yaml.Node, value: Any = None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if value is None:
        return repr(node.value)
    return f"{_KINDS.get(type(value), type(value).__name__)} {node.value}"


class _Loader:
    """One load: composes the YAML, walks nodes against the dataclass fields."""

    def __init__(self, text: str, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.lines: dict[str, int] = {}  # dotted key -> line where it is set
        self.text = text
        self.yaml: yaml.SafeLoader

    def error(self, key: str, message: str, node: yaml.Node) -> ConfigError:
        return ConfigError(f"{key}: {message}" if key else message, key=key or None,
                           source=self.source, line=_line(node))

    def load(self) -> Config:
        try:
            self.yaml = yaml.SafeLoader(self.text)
            root = self.yaml.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = " ".join(str(p) for p in (exc.problem, exc.context) if p)
            raise ConfigError(f"invalid YAML: {problem}", source=self.source,
                              line=mark.line + 1 if mark else None) from exc
        except yaml.reader.ReaderError as exc:
            raise ConfigError(f"invalid YAML: unacceptable character #x{exc.character:04x}",
                              source=self.source,
                              line=self.text.count("\n", 0, exc.position) + 1) from exc
        try:
            if root is None or root.tag == _NULL_TAG:
                return Config()
            return self.section(Config, root, "")
        finally:
            self.yaml.dispose()

    def section(self, cls: type[_SectionT], node: yaml.Node, path: str) -> _SectionT:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(path, f"expected a mapping of settings, got {_describe(node)}", node)
        own = {id(key_node) for key_node, _ in node.value}  # keys not from a merge
        try:
            self.yaml.flatten_mapping(node)  # YAML merge keys (<<: *anchor); own keys win
        except yaml.MarkedYAMLError as exc:
            raise self.error(path, f"invalid merge: {exc.problem}", node) from exc
        fields_by_name = {f.name: f for f in fields(cls)}
        names = list(fields_by_name)
        seen: dict[str, yaml.Node] = {}
        kwargs: dict[str, Any] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            key = f"{path}.{name}" if path else str(name)
            if key_node.tag != _STR_TAG or not isinstance(name, str):
                raise self.error(path, f"keys must be strings, got {key_node.value!r}",
                                 key_node)
            if name in seen and id(seen[name]) in own:
                raise self.error(key, f"duplicate key (first set at line {_line(seen[name])})",
                                 key_node)
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"in {path}" if path else "at top level"
                raise self.error(key, f"unknown key {where}{hint}", key_node)
            seen[name] = key_node
            self.lines[key] = _line(key_node)
            kwargs.pop(name, None)
            if value_node.tag != _NULL_TAG:  # null: keep the default
                secret = bool(fields_by_name[name].metadata.get("secret"))
                kwargs[name] = self.value(_hints(cls)[name], value_node, key, secret)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            if exc.source is not None:
                raise
            raise ConfigError(str(exc), key=exc.key, source=self.source,
                              line=self.line_of(exc.key or "")) from exc

    def line_of(self, key: str) -> int | None:
        """Line of ``key``, else of its nearest enclosing section that the file sets."""
        while key and key not in self.lines:
            key = key.rpartition(".")[0]
        return self.lines.get(key)

    def value(self, tp: Any, node: yaml.Node, key: str, secret: bool = False) -> Any:
        if isinstance(tp, type) and is_dataclass(tp):
            return self.section(tp, node, key)
        if get_origin(tp) is tuple:
            return self.string_list(node, key)
        if get_origin(tp) is dict:
            return self.string_map(node, key)
        return self.scalar(tp, node, key, secret)

    def string_map(self, node: yaml.Node, key: str) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(key, f"expected a mapping, got {_describe(node)}", node)
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            name = self.scalar(str, key_node, key)
            sub = f"{key}.{name}"
            if name in out:
                raise self.error(sub, "duplicate key", key_node)
            self.lines[sub] = _line(key_node)
            out[name] = self.scalar(str, value_node, sub)
        return out

    def string_list(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[f"{key}[{i}]"] = _line(item)
                items.append(self.scalar(str, item, f"{key}[{i}]"))
            return tuple(items)
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            # "+1555..., +1666..." (typically from ${ALLOWED_CALLERS}): comma-separated.
            parts = [p.strip() for p in self.expand(node, key).split(",")]
            items = [p for p in parts if p]
            for i in range(len(items)):
                self.lines[f"{key}[{i}]"] = _line(node)
            return tuple(items)
        raise self.error(key, f"expected a list of strings, got {_describe(node)}", node)

    def scalar(self, tp: type, node: yaml.Node, key: str, secret: bool = False) -> Any:
        want = _WANT[tp]
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(key, f"expected {want}, got {_describe(node)}", node)
        if node.tag == _STR_TAG:
            text = self.expand(node, key)
            if tp is str:
                return text
            if tp is bool:
                word = _BOOL_WORDS.get(text.strip().lower())
                if word is None:
                    raise self.error(key, f"expected {want}, got {text!r}", node)
                return word
            try:
                return tp(text.strip())
            except ValueError:
                raise self.error(key, f"expected {want}, got {text!r}", node) from None
        try:
            value = self.yaml.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.error(key, f"cannot read value: {exc.problem}", node) from exc
        if tp is float and type(value) is int:
            value = float(value)
        if type(value) is not tp:
            hint = " (quote it to make it a string)" if tp is str else ""
            got = type(value).__name__ if secret else _describe(node, value)  # no secret echo
            raise self.error(key, f"expected {want}, got {got}{hint}", node)
        return value

    def expand(self, node: yaml.ScalarNode, key: str) -> str:
        """``${VAR}`` / ``${VAR:default}`` / ``$$`` expansion of a string scalar."""
        def sub(match: re.Match[str]) -> str:
            if match["esc"]:
                return "$"
            if match["bad"] is not None:
                raise self.error(key, f"malformed variable reference {match[0]!r} "
                                 "(use ${NAME} or ${NAME:default}; $$ for a literal $)", node)
            name, default = match["name"], match["default"]
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(key, f"environment variable {name} is not set (use "
                                     f"${{{name}:default}} to give a default)", node)
                return default
            return value

        return _VAR.sub(sub, node.value) if "$" in node.value else node.value
