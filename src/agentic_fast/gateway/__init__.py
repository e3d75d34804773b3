"""OpenClaw gateway: sans-I/O protocol (:mod:`.protocol`), device identity (:mod:`.device`)
and the shared connection (:mod:`.client`). Knows nothing about calls.
"""

from agentic_fast.core.backoff import Backoff
from agentic_fast.gateway.client import GatewayClient
from agentic_fast.gateway.device import DeviceIdentity, load_or_create_identity
from agentic_fast.gateway.protocol import ChatEvent, HelloOk, Policy, voice_session_key
from agentic_fast.gateway.run import ChatRun

__all__ = [
    "Backoff",
    "ChatEvent",
    "ChatRun",
    "DeviceIdentity",
    "GatewayClient",
    "HelloOk",
    "Policy",
    "load_or_create_identity",
    "voice_session_key",
]
