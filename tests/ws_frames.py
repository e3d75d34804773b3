"""Reading what our WebSocket servers wrote, through websockets' own (strict) parser."""

from __future__ import annotations

from websockets.frames import Frame
from websockets.streams import StreamReader


def parse_frames(data: bytes) -> list[Frame]:
    """Server -> client frames (unmasked); an incomplete trailing frame is an error."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the parser wants more bytes than were written
            raise AssertionError(f"incomplete frame in {data[-40:]!r}")
    return frames
