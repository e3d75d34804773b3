"""``agentic-fast calls list|show|tail|hangup`` and ``agentic-fast call --wait``.

Tables are aligned for a terminal, ``--json`` prints the server's JSON instead, and any
failure is one ``error: ...`` line on stderr with exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import aiohttp
import orjson

from agentic_fast.cli.calls_api import ApiError, CallsApi, http_error

TERMINAL = frozenset({"completed", "failed"})
STATUSES = ("initiating", "ringing", "in-progress", "completed", "failed")
_RELATIVE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])", re.ASCII)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- parsing --------------------------------------------------------------------------------

def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``1d``), an ISO 8601
    time (UTC when it names no zone) or epoch seconds; returns epoch seconds."""
    text = text.strip()
    now = time.time() if now is None else now
    rel = _RELATIVE.fullmatch(text)
    if rel:
        return now - float(rel.group(1)) * _UNIT_S[rel.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: give a duration (10m, 2h, 1d), an ISO time or epoch seconds"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# -- formatting -----------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (no trailing spaces)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines)


def _clock(iso: str | None) -> str:
    """``2026-01-02T10:11:12.5+00:00`` -> ``2026-01-02 10:11:12`` (local time)."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _duration(seconds: Any) -> str:
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return "-"
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _number(call: dict[str, Any]) -> str:
    """The other party: the caller of an inbound call, the callee of an outbound one."""
    number = call.get("from") if call.get("direction") == "inbound" else call.get("to")
    return str(number or "-")


LIST_HEADERS = ("CALL ID", "STARTED", "DIRECTION", "NUMBER", "STATUS", "ENDED BY",
                "DURATION", "TURNS")


def format_calls(calls: Sequence[dict[str, Any]]) -> str:
    if not calls:
        return "no calls"
    rows = [(str(c.get("call_id", "")), _clock(c.get("created_at")), str(c.get("direction", "")),
             _number(c), str(c.get("status", "")), str(c.get("reason") or "-"),
             _duration(c.get("duration_s")), str(c.get("transcript_turns", 0)))
            for c in calls]
    return format_table(LIST_HEADERS, rows)


_ROLE = {"user": "caller", "assistant": "agent"}


def format_call(call: dict[str, Any]) -> str:
    """``calls show``: the record, then the transcript, then the agent's commands."""
    fields = [("call id", call.get("call_id")), ("call sid", call.get("call_sid")),
              ("direction", call.get("direction")), ("from", call.get("from")),
              ("to", call.get("to")), ("status", call.get("status")),
              ("ended by", call.get("reason")), ("created", _clock(call.get("created_at"))),
              ("answered", _clock(call.get("answered_at"))),
              ("ended", _clock(call.get("ended_at"))),
              ("duration", _duration(call.get("duration_s")))]
    if call.get("prompt"):
        fields.append(("prompt", call["prompt"]))
    if call.get("dtmf"):
        fields.append(("dtmf", call["dtmf"]))
    width = max(len(k) for k, _ in fields)
    out = [f"{k.ljust(width)}  {v if v not in (None, '') else '-'}" for k, v in fields]
    out += ["", *format_transcript(call)]
    commands = call.get("commands") or []
    out += ["", f"commands ({len(commands)})"]
    for cmd in commands:
        answer = cmd.get("answer") or cmd.get("error") or ""
        took = f" in {cmd['duration_s']:.1f}s" if isinstance(cmd.get("duration_s"),
                                                            int | float) else ""
        out.append(f"  {_clock(cmd.get('started_at'))}  {cmd.get('command')!s}  "
                   f"-> {cmd.get('status')}{took}" + (f": {answer}" if answer else ""))
    for err in call.get("stream_errors") or []:
        out.append(f"stream error {err.get('code') or ''} {err.get('error', '')}".rstrip())
    return "\n".join(out)


def format_transcript(call: dict[str, Any]) -> list[str]:
    entries = call.get("transcript") or []
    total = call.get("transcript_total", len(entries))
    head = f"transcript ({total} turns" + (f", the last {len(entries)} shown)"
                                           if call.get("transcript_truncated") else ")")
    lines = [head]
    for entry in entries:
        ts = _clock(entry.get("ts"))[11:]
        role = _ROLE.get(str(entry.get("role")), str(entry.get("role")))
        lines.append(f"  {ts}  {role:>6}: {entry.get('text', '')}")
    return lines


def format_event(event: dict[str, Any]) -> str:
    """One readable line per live event (``calls tail``)."""
    kind = str(event.get("type", "?"))
    data = event.get("data") or {}
    ts = _clock(event.get("ts"))[11:]
    call = str(event.get("call_id") or "")
    if kind == "calls.snapshot":
        active = data.get("active") or []
        text = f"connected: {len(active)} active call(s)"
    elif kind in ("call.created", "call.status", "call.updated"):
        text = f"{data.get('status')} {data.get('direction')} {_number(data)}"
        if data.get("reason"):
            text += f" (ended by {data['reason']})"
        if data.get("status") in TERMINAL:
            text += f" after {_duration(data.get('duration_s'))}"
    elif kind == "call.transcript":
        text = f"{_ROLE.get(str(data.get('role')), data.get('role'))}: {data.get('text', '')}"
    elif kind == "call.command":
        text = f"command {data.get('status')}: {data.get('command', '')}"
        if data.get("answer") or data.get("error"):
            text += f" -> {data.get('answer') or data.get('error')}"
    elif kind == "call.barge_in":
        text = (f"barge-in at {data.get('audio_end_ms')} ms of the reply "
                f"(reacted in {float(data.get('reaction_ms') or 0):.0f} ms)")
    elif kind == "call.first_audio":
        text = f"first assistant audio {float(data.get('after_start_ms') or 0):.0f} ms after start"
    elif kind == "events.dropped":
        text = f"{data.get('dropped')} event(s) lost: this reader fell behind"
    else:
        text = orjson.dumps(data).decode()[:200]
    return "  ".join(part for part in (ts, f"{kind:<16}", call, text) if part)


# -- the commands ---------------------------------------------------------------------------

def add_calls_arguments(parser: argparse.ArgumentParser,
                        add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``calls`` subcommands; ``add_common`` adds --config/--server/--timeout."""
    sub = parser.add_subparsers(dest="calls_command", metavar="SUBCOMMAND", required=True)
    lst = sub.add_parser("list", help="recent calls (active and ended), newest first")
    lst.add_argument("--status", choices=STATUSES)
    lst.add_argument("--direction", choices=("inbound", "outbound"))
    lst.add_argument("--since", type=parse_since, metavar="WHEN",
                     help="only calls started since: 10m, 2h, 1d, an ISO time, epoch s")
    lst.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    show = sub.add_parser("show", help="one call: record, transcript and agent commands")
    show.add_argument("call_id", metavar="ID")
    sub.add_parser("tail", help="follow live events, one line each (Ctrl-C stops)")
    hang = sub.add_parser("hangup", help="hang up a call")
    hang.add_argument("call_id", metavar="ID")
    for p in (lst, show, sub.choices["tail"], hang):
        add_common(p)
        p.add_argument("--json", action="store_true", help="print JSON, not a table")


def run_calls(args: argparse.Namespace, base_url: str, api_token: str,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``calls`` subcommand; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if getattr(args, "limit", 1) is not None and getattr(args, "limit", 1) < 1:
        print("error: --limit must be at least 1", file=err)
        return 2
    try:
        return asyncio.run(_calls(args, CallsApi(base_url, api_token,
                                                 timeout_s=args.timeout), out))
    except ApiError as exc:
        print(f"error: {exc.detail}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


async def _calls(args: argparse.Namespace, api: CallsApi, out: TextIO) -> int:
    async with api:
        command = args.calls_command
        if command == "list":
            calls = await api.history(status=args.status, direction=args.direction,
                                      since=args.since, limit=min(args.limit, 500))
            _print(out, calls if args.json else format_calls(calls), args.json)
        elif command == "show":
            call = await api.get(args.call_id)
            _print(out, call if args.json else format_call(call), args.json)
        elif command == "hangup":
            doc = await api.hangup(args.call_id)
            _print(out, doc if args.json else
                   f"call {doc.get('call_id')} hung up (status {doc.get('status')})", args.json)
        else:  # tail
            async for event in api.events():
                _print(out, event if args.json else format_event(event), args.json,
                       compact=True)
            print("error: the server ended the event stream", file=sys.stderr)
            return 1
    return 0


def _print(out: TextIO, value: Any, as_json: bool, *, compact: bool = False) -> None:
    """A table/text line, or JSON (indented; one line per value with ``compact``)."""
    if as_json:
        option = 0 if compact else orjson.OPT_INDENT_2
        out.write(orjson.dumps(value, option=option).decode() + "\n")
    else:
        out.write(str(value) + "\n")
    out.flush()


# -- call --wait ----------------------------------------------------------------------------

async def place_and_follow(api: CallsApi, to: str, prompt: str | None, out: TextIO) -> int:
    """Place a call, print each status it goes through, then its transcript when it ends.

    The event stream is opened before the call is placed, so no status is missed; if the
    stream falls behind or ends, the call record is read instead."""
    async with api:
        events = api.events()
        first = await anext(events)  # calls.snapshot: we are subscribed
        del first
        body = {"to": to, **({"prompt": prompt} if prompt else {})}
        placed = await _post_call(api, body)
        call_id = str(placed["call_id"])
        out.write(f"call {call_id} placed (CallSid {placed.get('call_sid')}), "
                  f"{placed.get('status')}\n")
        out.flush()
        last = placed.get("status")
        final: dict[str, Any] | None = None
        async for event in events:
            if event.get("type") == "events.dropped":
                record = await api.get(call_id)
                if record.get("status") in TERMINAL:
                    final = record
                    break
                continue
            if event.get("call_id") != call_id:
                continue
            line = _follow_line(event, last)
            if line:
                out.write(line + "\n")
                out.flush()
            status = (event.get("data") or {}).get("status")
            if event.get("type") in ("call.status", "call.updated", "call.created"):
                last = status or last
                if status in TERMINAL:
                    break
        final = final or await api.get(call_id)
        out.write("\n" + "\n".join(format_transcript(final)) + "\n")
        for cmd in final.get("commands") or []:
            answer = cmd.get("answer") or cmd.get("error") or ""
            out.write(f"  command {cmd.get('command')!s} -> {cmd.get('status')}"
                      + (f": {answer}" if answer else "") + "\n")
        ended = (f"call {call_id} {final.get('status')}"
                 + (f" (ended by {final['reason']})" if final.get("reason") else "")
                 + f" after {_duration(final.get('duration_s'))}")
        out.write(ended + "\n")
        out.flush()
        return 0 if final.get("status") == "completed" else 1


def _follow_line(event: dict[str, Any], last: Any) -> str | None:
    kind = event.get("type")
    data = event.get("data") or {}
    if kind in ("call.status", "call.updated", "call.created"):
        if data.get("status") == last:
            return None
        return f"  {_clock(event.get('ts'))[11:]}  {data.get('status')}"
    if kind in ("call.transcript", "call.command", "call.barge_in"):
        return "  " + format_event(event).split("  ", 1)[1]
    return None


async def _post_call(api: CallsApi, body: dict[str, Any]) -> dict[str, Any]:
    url = api.base_url + "/calls"
    try:
        async with api.http.post(url, data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise ApiError(http_error(resp.status, text, url))
            return dict(orjson.loads(text))
    except aiohttp.ClientError as exc:
        raise ApiError(f"POST {url} failed: {' '.join(str(exc).split())}") from None
    except TimeoutError:
        raise ApiError(f"POST {url}: no answer in time") from None


def run_call_wait(base_url: str, api_token: str, to: str, prompt: str | None,
                  timeout_s: float, out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return asyncio.run(place_and_follow(CallsApi(base_url, api_token, timeout_s=timeout_s),
                                            to, prompt, out))
    except ApiError as exc:
        print(f"error: {exc.detail}", file=err)
        return 1
    except StopAsyncIteration:
        print("error: the server closed the event stream", file=err)
        return 1
    except KeyboardInterrupt:
        return 130
