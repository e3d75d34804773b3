"""A small client of our own ``/calls`` API (used by ``agentic-fast call``)."""

from __future__ import annotations

import aiohttp
import orjson


async def place_call(base_url: str, to: str, prompt: str | None, api_token: str = "",
                     *, timeout_s: float = 30.0) -> tuple[bool, str]:
    """POST /calls; returns (ok, one line to print): the call id, or the server's error."""
    headers = {"Content-Type": "application/json"}
    if api_token:
        headers["Authorization"] = f"Bearer {api_token}"
    body = orjson.dumps({"to": to, **({"prompt": prompt} if prompt else {})})
    url = base_url.rstrip("/") + "/calls"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
                http.post(url, data=body, headers=headers) as resp:
            text = await resp.text()
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                doc = {"error": text[:200]}
            if resp.status == 201:
                return True, f"call {doc['call_id']} placed (CallSid {doc['call_sid']})"
            return False, f"error: {resp.status} {doc.get('error', '')} {doc.get('detail', '')}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"error: cannot reach {url}: {exc!r}"
