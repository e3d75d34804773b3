"""Audio of the demo call: the caller's recorded speech, the stand-in model's voice, and
the crude energy detector the stand-in model uses instead of a real VAD.

``speech_ulaw.raw`` (package data) is 5.26 s of English speech, raw G.711 mu-law 8 kHz mono,
"Hello, this is a test call. Please tell me the weather in Paris tomorrow." It was generated
with espeak-ng 1.51 and sox 14.4 (Debian 12) and encoded with CPython 3.11
``audioop.lin2ulaw``; the same file as the test fixture ``tests/fakes/audio/speech_ulaw.raw``
(see its README for the exact commands).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np

from agentic_fast import audio

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_MS = 20
SILENCE = b"\xff" * FRAME_BYTES
#: What ``speech_ulaw.raw`` says, and its first word (the caller's interruption).
REQUEST_TEXT = "Hello, this is a test call. Please tell me the weather in Paris tomorrow."
INTERRUPTION_TEXT = "Hello,"
_HELLO_FRAMES = 27  # "Hello," ends at frame 26 (0.54 s); silence follows
_VOICED_RMS = 250.0  # frame RMS (16-bit PCM) above which the stand-in hears speech


@cache
def recording() -> bytes:
    """The whole recording, a whole number of 20 ms frames."""
    return resources.files(__package__).joinpath("speech_ulaw.raw").read_bytes()


def trim_silence(ulaw: bytes) -> bytes:
    """``ulaw`` without its trailing silent frames (the caller stops when speech ends)."""
    frames = [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    while frames and not voiced(frames[-1]):
        frames.pop()
    return b"".join(frames)


def request_audio() -> bytes:
    """The caller's request: the whole recording, trailing silence trimmed."""
    return trim_silence(recording())


def interruption_audio() -> bytes:
    """The caller's interruption: the recording's first word."""
    return recording()[:_HELLO_FRAMES * FRAME_BYTES]


def voiced(ulaw_frame: bytes) -> bool:
    """Whether a mu-law frame carries speech (RMS above a fixed threshold)."""
    if not ulaw_frame:
        return False
    pcm = np.frombuffer(audio.ulaw_decode(ulaw_frame), dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(pcm * pcm))) > _VOICED_RMS


def speech_ms(text: str) -> int:
    """How long the stand-in voice takes to say ``text`` (about 14 characters a second)."""
    return max(400, min(4000, 70 * len(text))) // FRAME_MS * FRAME_MS


def synthesize(text: str) -> bytes:
    """Speech-like mu-law audio for ``text``: a voiced buzz with a gliding pitch and a
    syllable rhythm, ``speech_ms(text)`` long. Not words: the demo has no TTS."""
    rate = 8000
    t = np.arange(speech_ms(text) * rate // 1000) / rate
    pitch = 150 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    buzz = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.15, 1.0)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)
    pcm = np.round(5000 * buzz * syllables * fade / 2.0).astype(np.int16)
    return bytes(audio.ulaw_encode(pcm))
