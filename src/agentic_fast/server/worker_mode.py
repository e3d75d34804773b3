"""What a server process adds when it is one of several workers (``serve --workers N``).

- its stream URLs name it (``ServerDesk.stream_prefix``);
- it receives the streams other workers accepted for its calls (:class:`HandoverReceiver`)
  and hands over the ones it accepted for theirs (``CallServerSite(handover=...)``);
- it answers control actions for its calls from other workers (:class:`ControlServer`), and
  forwards those it gets for calls it does not hold (:class:`CallRouter`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from agentic_fast.core.instance import set_instance_id
from agentic_fast.core.log import get_logger
from agentic_fast.server.app import SERVICES, hangup
from agentic_fast.server.control import CallRouter, ControlReply, ControlServer, LocalWorkersRouter
from agentic_fast.server.workers import WorkerIdentity
from agentic_fast.ws.handover import Handover, HandoverReceiver
from agentic_fast.ws.listener import CallServerSite

__all__ = ["WorkerMode"]

log = get_logger("serve")

#: the routes whose action must run where the call lives
_HANGUP_ROUTE = "/calls/{call_id}/hangup"


class WorkerMode:
    """The multi-worker parts of one worker's server; ``router`` finds other owners."""

    def __init__(self, app: web.Application, identity: WorkerIdentity,
                 router: CallRouter | None = None) -> None:
        self.app = app
        self.identity = identity
        self.router: CallRouter = router or LocalWorkersRouter(identity)
        self.handover = Handover(identity)
        self._receiver: HandoverReceiver | None = None
        self._control = ControlServer(identity.control_path(identity.worker_id),
                                      {"hangup": self._hangup_here})
        app[SERVICES].desk.stream_prefix = identity.prefix
        set_instance_id(identity.owner)  # the call store's owner id: this worker
        app.middlewares.append(self._forward)  # after api_auth: forwarded requests are authed

    def site_options(self) -> dict[str, Any]:
        """``start_site`` options: share the port, hand over other workers' streams."""
        return {"reuse_port": True, "handover": self.handover}

    async def start(self, site: CallServerSite) -> None:
        """Receive handed-over streams into ``site``; answer other workers' control RPCs."""
        self._receiver = HandoverReceiver(self.identity.fd_path(self.identity.worker_id),
                                          site.adopt)
        self._receiver.start()
        await self._control.start()

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        await self._control.close()
        self.handover.close()

    async def _hangup_here(self, call_id: str, req: Mapping[str, Any]) -> ControlReply | None:
        svc = self.app[SERVICES]
        if svc.manager.get(call_id) is None:
            return None
        response = await hangup(svc, call_id)
        body = json.loads(response.text or "{}")
        return ControlReply(response.status, body if isinstance(body, dict) else {})

    @web.middleware
    async def _forward(self, request: web.Request,
                       handler: Any) -> web.StreamResponse:
        """A hang-up of a call this worker does not hold runs on its owner."""
        route = request.match_info.route.resource
        if (request.method == "POST" and route is not None
                and route.canonical == _HANGUP_ROUTE):
            call_id = request.match_info["call_id"]
            if self.app[SERVICES].manager.get(call_id) is None:
                reply = await self.router.forward(call_id, "hangup", {})
                if reply is not None:
                    log.info("control.forwarded", op="hangup", call_id=call_id,
                             status=reply.status)
                    return web.json_response(reply.body, status=reply.status)
        result: web.StreamResponse = await handler(request)
        return result
