"""A client of Janus's HTTP API (REST requests, events by long poll), as far as the SR worker needs it.

Janus's model: a *session* (kept alive by a request at least every ``session_timeout`` seconds, 60 by
default) holds *handles*, each attached to one plugin. A plugin message is answered twice: an ``ack``
at once, then an ``event`` carrying the same transaction (and often a JSEP) on the session's long
poll; a synchronous plugin request (``listparticipants``) is answered directly. Events without a
pending transaction (a publisher left, a peer connection went down) go to the handle's listener.

When Janus no longer knows the session (it timed out while this process was stalled, or Janus
restarted), every pending and later call raises :class:`JanusSessionLost`: whoever owns the session
starts over with a fresh one. Every wait is bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

NO_SUCH_SESSION = 458  # Janus's error code for a session it does not know (any more)
NO_SUCH_HANDLE = 459
POLL_EVENTS = 10  # events one long poll may bring back at once


class JanusError(RuntimeError):
    """Janus (or its plugin) refused a request; the message carries its code and reason."""


class JanusSessionLost(JanusError):
    """Janus no longer knows the session: its handles, feeds and subscriptions are gone with it."""


@dataclass(frozen=True)
class Jsep:
    """An SDP offer or answer as Janus carries it."""

    type: str
    sdp: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "sdp": self.sdp, "trickle": False}  # aiortc gathers before it answers


@dataclass(frozen=True)
class Reply:
    """A plugin's answer: its ``plugindata.data`` and the JSEP that came with it, if any."""

    data: dict[str, Any]
    jsep: Jsep | None


def _transaction() -> str:
    return secrets.token_hex(8)


def _jsep(message: dict[str, Any]) -> Jsep | None:
    jsep = message.get("jsep")
    if isinstance(jsep, dict) and isinstance(jsep.get("sdp"), str) and isinstance(jsep.get("type"), str):
        return Jsep(jsep["type"], jsep["sdp"])
    return None


def _raise_for(message: dict[str, Any], what: str) -> None:
    """Raise the error a Janus answer carries: Janus's own, or its plugin's."""
    if message.get("janus") == "error":
        error = message.get("error") or {}
        code, reason = error.get("code"), error.get("reason")
        kind = JanusSessionLost if code == NO_SUCH_SESSION else JanusError
        raise kind(f"{what}: Janus error {code}: {reason}")
    data = (message.get("plugindata") or {}).get("data") or {}
    if "error" in data or "error_code" in data:
        raise JanusError(f"{what}: plugin error {data.get('error_code')}: {data.get('error')}")


class JanusHandle:
    """One handle on a plugin: its requests, and the events meant for it."""

    def __init__(self, session: JanusSession, handle_id: int, plugin: str) -> None:
        self.session = session
        self.id = handle_id
        self.plugin = plugin
        self.url = f"{session.url}/{handle_id}"
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # events no request waits for
        self.detached = False

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (e.g. ``listparticipants``): its ``plugindata.data``."""
        answer = await self.session.post(self.url, {"janus": "message", "body": body})
        _raise_for(answer, f"{body.get('request')}")
        if answer.get("janus") != "success":
            raise JanusError(f"{body.get('request')}: expected an immediate answer, got {answer.get('janus')!r}")
        return dict((answer.get("plugindata") or {}).get("data") or {})

    async def message(self, body: dict[str, Any], jsep: Jsep | None = None) -> Reply:
        """An asynchronous plugin request: Janus acks it, and its answer comes as an event."""
        transaction = _transaction()
        waiter = self.session.expect(transaction)
        payload: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            payload["jsep"] = jsep.to_json()
        try:
            ack = await self.session.post(self.url, payload)
            _raise_for(ack, f"{body.get('request')}")
            if ack.get("janus") == "success":  # some requests are answered at once after all
                return Reply(dict((ack.get("plugindata") or {}).get("data") or {}), _jsep(ack))
            event = await asyncio.wait_for(waiter, self.session.timeout_s)
        finally:
            self.session.forget(transaction)
        _raise_for(event, f"{body.get('request')}")
        return Reply(dict((event.get("plugindata") or {}).get("data") or {}), _jsep(event))

    async def detach(self) -> None:
        """Let the handle go (Janus hangs up its peer connection and, for a publisher, unpublishes). Idempotent;
        a session already gone is not an error here."""
        if self.detached:
            return
        self.detached = True
        self.session.handles.pop(self.id, None)
        try:
            answer = await self.session.post(self.url, {"janus": "detach"})
            _raise_for(answer, "detach")
        except (JanusError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.debug("handle %d: detach: %s", self.id, exc)

    def _deliver(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a listener's bug must not stop the session's events
                log.exception("handle %d: event listener failed", self.id)


class JanusSession:
    """A Janus session over HTTP: create it, attach handles, keep it alive, read its events.

    ``keepalive_s`` must stay below the server's ``session_timeout``; ``timeout_s`` bounds every request
    and the wait for every answer."""

    def __init__(self, root_url: str, keepalive_s: float = 3.0, timeout_s: float = 10.0) -> None:
        self.root_url = root_url.rstrip("/")
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.id: int | None = None
        self.handles: dict[int, JanusHandle] = {}
        self.lost: JanusSessionLost | None = None  # set once Janus has dropped the session
        self._http: aiohttp.ClientSession | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        if self.id is None:
            raise JanusError("the session is not created yet")
        return f"{self.root_url}/{self.id}"

    async def create(self) -> None:
        self._http = aiohttp.ClientSession()
        answer = await self.post(self.root_url, {"janus": "create"})
        _raise_for(answer, "create")
        self.id = int(answer["data"]["id"])
        self._tasks = [asyncio.ensure_future(self._poll()), asyncio.ensure_future(self._keepalive())]
        log.info("janus session %d on %s", self.id, self.root_url)

    async def attach(self, plugin: str) -> JanusHandle:
        answer = await self.post(self.url, {"janus": "attach", "plugin": plugin})
        _raise_for(answer, f"attach {plugin}")
        handle = JanusHandle(self, int(answer["data"]["id"]), plugin)
        self.handles[handle.id] = handle
        return handle

    async def destroy(self) -> None:
        """End the session (Janus detaches its handles) and stop polling. Idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.id is not None and self.lost is None and self._http is not None:
            try:
                await self.post(self.url, {"janus": "destroy"})
            except (JanusError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.debug("janus session %s: destroy: %s", self.id, exc)
        self._fail_pending(JanusSessionLost("the session was destroyed"))
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def post(self, url: str, message: dict[str, Any]) -> dict[str, Any]:
        if self.lost is not None:
            raise self.lost
        if self._http is None:
            raise JanusError("the session's HTTP client is closed")
        message.setdefault("transaction", _transaction())
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self._http.post(url, json=message, timeout=timeout) as response:
            answer = await response.json(content_type=None)
        if not isinstance(answer, dict):
            raise JanusError(f"{message['janus']}: Janus answered {answer!r}")
        if answer.get("janus") == "error" and (answer.get("error") or {}).get("code") == NO_SUCH_SESSION:
            self._lose(answer)
        return answer

    def expect(self, transaction: str) -> asyncio.Future[dict[str, Any]]:
        """The future the event answering ``transaction`` resolves (registered before the request is sent)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
        self._pending[transaction] = future
        return future

    def forget(self, transaction: str) -> None:
        self._pending.pop(transaction, None)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await self.post(self.url, {"janus": "keepalive"})
            except JanusSessionLost:
                return
            except (JanusError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("janus session %s: keepalive failed: %s", self.id, exc)

    async def _poll(self) -> None:
        """Long-poll the session's events and hand each to its transaction or its handle."""
        while self.lost is None:
            assert self._http is not None  # open while the session polls
            try:
                timeout = aiohttp.ClientTimeout(total=60.0)  # Janus answers an idle long poll after 30 s
                async with self._http.get(self.url, params={"maxev": POLL_EVENTS}, timeout=timeout) as response:
                    answer = await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                log.warning("janus session %s: long poll failed (%s); polling again", self.id, exc)
                await asyncio.sleep(0.5)
                continue
            for event in answer if isinstance(answer, list) else [answer]:
                if isinstance(event, dict):
                    self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        if kind == "error" and (event.get("error") or {}).get("code") == NO_SUCH_SESSION:
            self._lose(event)
            return
        waiter = self._pending.get(str(event.get("transaction")))
        if waiter is not None and not waiter.done() and kind in ("event", "error", "success"):
            waiter.set_result(event)
            return
        handle = self.handles.get(event.get("sender", -1))
        if handle is not None:
            handle._deliver(event)
        else:
            log.debug("janus session %s: event for no handle: %s", self.id, kind)

    def _lose(self, answer: dict[str, Any]) -> None:
        if self.lost is None:
            reason = (answer.get("error") or {}).get("reason")
            self.lost = JanusSessionLost(f"Janus dropped session {self.id}: {reason}")
            log.warning("%s", self.lost)
            self._fail_pending(self.lost)

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
