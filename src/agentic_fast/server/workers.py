"""Who a worker process is, and how a stream URL names the worker that answered the webhook.

With ``serve --workers N`` every worker accepts on the same port, so a call's webhook and its
media stream (two TCP connections) may land on different workers. The webhook's answer puts
the owner in the stream URL's path: ``wss://host/w/<instance_id>-<worker>/twilio/media-stream``
(the same for every carrier's media path). A load balancer in front of several machines
routes ``/w/<instance_id>-*`` to that machine (docs/deploy.md, "Several machines"); on the
machine, the worker that accepts the stream hands the socket to the owner
(:mod:`agentic_fast.ws.handover`) before answering the upgrade.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OWNER_SEGMENT", "WorkerIdentity", "parse_owner", "prefixed_url"]

#: the first path segment of a stream URL that names its owner
OWNER_SEGMENT = "w"
_OWNER = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,62})-([0-9]{1,4})")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """One worker of ``count`` on instance ``instance_id``; ``runtime_dir`` holds every
    worker's Unix sockets (``w<id>.fd``: socket hand-over, ``w<id>.ctl``: control RPC)."""

    instance_id: str
    worker_id: int
    count: int
    runtime_dir: Path

    @property
    def owner(self) -> str:
        """``<instance_id>-<worker_id>``: this worker's name in stream URLs."""
        return f"{self.instance_id}-{self.worker_id}"

    @property
    def prefix(self) -> str:
        """The path prefix of the stream URLs this worker hands out (``/w/<owner>``)."""
        return f"/{OWNER_SEGMENT}/{self.owner}"

    def fd_path(self, worker_id: int) -> Path:
        """Worker ``worker_id``'s hand-over socket."""
        return self.runtime_dir / f"w{worker_id}.fd"

    def control_path(self, worker_id: int) -> Path:
        """Worker ``worker_id``'s control RPC socket."""
        return self.runtime_dir / f"w{worker_id}.ctl"

    def sibling(self, owner: str) -> int | None:
        """The worker id of ``owner`` when it names another worker of this instance."""
        found = _OWNER.fullmatch(owner)
        if found is None or found.group(1) != self.instance_id:
            return None
        worker = int(found.group(2))
        return worker if worker != self.worker_id and worker < self.count else None

    def siblings(self) -> list[int]:
        """Every other worker id of this instance."""
        return [w for w in range(self.count) if w != self.worker_id]


def parse_owner(target: bytes) -> tuple[str, bytes] | None:
    """``(owner, rest)`` of a request target ``/w/<owner>/rest``; None without a prefix or
    with an owner that is not ``<instance>-<worker>``."""
    if not target.startswith(b"/w/"):
        return None
    end = target.find(b"/", 3)
    if end < 0:
        return None
    owner = target[3:end].decode("latin-1")
    if _OWNER.fullmatch(owner) is None:
        return None
    return owner, target[end:]


def prefixed_url(url: str, prefix: str) -> str:
    """``url`` with ``prefix`` put before its path (``wss://h/p`` -> ``wss://h/w/x-0/p``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host}{prefix}/{path}" if slash else f"{scheme}://{host}{prefix}"


def runtime_dir(state_dir: str) -> Path:
    """A fresh private directory for the workers' Unix sockets: under ``state_dir`` when
    set, else under ``$XDG_RUNTIME_DIR`` or the temp dir (a Unix socket path is short)."""
    import tempfile

    base = (Path(state_dir).expanduser() if state_dir
            else Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()))
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="af-workers-", dir=base))
    if len(str(path)) > 80:  # sun_path holds 108 bytes; keep room for "/w123.ctl"
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="af-workers-"))
    return path
