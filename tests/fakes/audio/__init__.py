"""Fixture audio: real speech as raw G.711 mu-law, 8 kHz mono (Twilio's wire format)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

SPEECH_ULAW_PATH = Path(__file__).with_name("speech_ulaw.raw")
#: Text spoken in ``speech_ulaw.raw``.
SPEECH_TEXT = "Hello, this is a test call. Please tell me the weather in Paris tomorrow."
FRAME_BYTES = 160  # 20 ms at 8 kHz


@cache
def load_speech_ulaw() -> bytes:
    """About 5.3 s of speech, a whole number of 20 ms frames (trailing 0xFF silence)."""
    return SPEECH_ULAW_PATH.read_bytes()


def ulaw_frames(audio: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """``audio`` cut into ``frame_bytes`` frames, the last one padded with mu-law silence."""
    frames = [audio[i:i + frame_bytes] for i in range(0, len(audio), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] += b"\xff" * (frame_bytes - len(frames[-1]))
    return frames


def ulaw_silence(ms: int) -> bytes:
    """``ms`` milliseconds of mu-law silence (0xFF)."""
    return b"\xff" * (ms * 8)
