"""The aiohttp application: the page, signaling (``POST /offer``), SR control, ``GET /stats``, the relay
(``POST /streams/{id}/watch``, ``GET /streams``, ``/viewers/{id}``), the STUN/TURN servers for the page
(``GET /ice-servers``) and the simulated network (``GET``/``POST /network``).

The app's registry of sessions is the only shared mutable state. Every handler answers a bad request
with a 4xx and a JSON ``{"error": ...}`` that says what was wrong, and never disturbs other sessions.
Whoever a request is from (the limits, a session's owner, the operator) is its client as
:func:`srtc.server.access.resolve_client` names it: the peer, or behind a trusted proxy the address it forwards.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .access import (
    FORWARDED_HEADER,
    OPERATOR_HEADER,
    Admission,
    Client,
    IPNetwork,
    is_operator,
    parse_networks,
    resolve_client,
)
from .config import CLIENT_DIR, ConfigError, NetworkConfig, ServerConfig
from .decoder import guard_decoders
from .engine import Upscaler
from .governor import GovernorPolicy
from .ice import bind_media
from .impairment import NetworkControl
from .registry import ModelInfo
from .relay import Relay
from .session import OfferError, Session, parse_offer
from .turn import IceServers
from .viewer import Viewer

log = logging.getLogger(__name__)

SESSIONS = web.AppKey("sessions", dict)
VIEWERS = web.AppKey("viewers", dict)  # viewers of relayed streams, by viewer id
UPSCALER = web.AppKey("upscaler", Upscaler)
MODEL = web.AppKey("model", ModelInfo)
CONFIG = web.AppKey("config", ServerConfig)
NETWORK = web.AppKey("network", NetworkControl)  # the impairment settings shared by all sessions
SECRET_HEADER = "X-Session-Secret"  # a session's routes need the secret its offer's answer carried
ADMISSION = web.AppKey("admission", Admission)
# (Upscaler, ModelInfo) of the governor's faster model, or (None, None)
FAST = web.AppKey[tuple[Upscaler | None, ModelInfo | None]]("fast")
ICE = web.AppKey("ice", IceServers)  # STUN/TURN for the page and for the server's own peer connections
PROXIES = web.AppKey[tuple[IPNetwork, ...]]("proxies")  # the trusted reverse proxies, parsed once
ALLOWED_HOSTS = web.AppKey[frozenset[str]]("allowed_hosts")  # --allowed-hosts, lower case, empty if none


def create_app(
    config: ServerConfig,
    upscaler: Upscaler,
    model: ModelInfo,
    network: NetworkConfig | None = None,
    fast: Upscaler | None = None,
    fast_info: ModelInfo | None = None,
) -> web.Application:
    """Build the app around an already loaded model (loading it is where start-up may fail).

    ``network``: the inbound path's impairment at start (default: none); ``POST /network`` changes it.
    ``fast``: the faster model the governor steps down to before bicubic (``fast_info`` describes it).
    """
    guard_decoders()  # a decoder exception costs a frame, not the receiver's decoder thread
    bind_media(config.host)  # media sockets on the listening address, not on every interface
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_json_errors, _same_site])
    app.on_response_prepare.append(_plain_server_header)
    app[CONFIG], app[UPSCALER], app[MODEL] = config, upscaler, model
    app[NETWORK] = NetworkControl(network)
    app[FAST] = (fast, fast_info)
    app[ICE] = IceServers.from_config(config)
    app[SESSIONS] = {}
    app[VIEWERS] = {}
    app[ADMISSION] = Admission(config.max_sessions_per_address, config.offers_per_minute)
    app[PROXIES] = parse_networks(config.trusted_proxies)
    app[ALLOWED_HOSTS] = frozenset(host.lower() for host in config.allowed_hosts)
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    app.router.add_post("/sessions/{id}/sr", set_sr)
    app.router.add_delete("/sessions/{id}", close_session)
    app.router.add_get("/streams", list_streams)
    app.router.add_get("/streams/{stream}", get_stream)
    app.router.add_post("/streams/{stream}/watch", watch)
    app.router.add_get("/viewers/{id}", get_viewer)
    app.router.add_delete("/viewers/{id}", close_viewer)
    app.router.add_get("/ice-servers", ice_servers)
    app.router.add_get("/network", get_network)
    app.router.add_post("/network", set_network)
    app.router.add_static("/static/", CLIENT_DIR, follow_symlinks=False)
    app.on_shutdown.append(_close_all)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CLIENT_DIR / "index.html")


async def offer(request: web.Request) -> web.Response:
    """Signaling: an SDP offer in, an answer out; the new session is registered under its id."""
    app = request.app
    sessions: dict[str, Session] = app[SESSIONS]
    description, sr_enabled = parse_offer(await _read_json(request))
    if len(sessions) >= app[CONFIG].max_sessions:
        raise _error(web.HTTPServiceUnavailable, f"server is full ({len(sessions)} sessions); try again later")
    address = _admit(request)
    session = Session(
        app[UPSCALER],
        on_closed=lambda s: sessions.pop(s.id, None),
        peer_address=address,
        connect_timeout_s=app[CONFIG].connect_timeout_s,
        network=app[NETWORK],
        resilient=app[CONFIG].resilient_receiver,
        governor=GovernorPolicy(headroom=app[CONFIG].sr_headroom),
        fast=app[FAST][0],
        encoder_nice=app[CONFIG].encoder_nice,
        viewer_kbps=app[CONFIG].viewer_kbps,
        relay_floor_kbps=app[CONFIG].relay_floor_kbps,
        ice_servers=app[ICE].rtc(),
    )
    sessions[session.id] = session
    try:
        answer = await session.answer(description, sr_enabled)
    except BaseException:
        await session.close()
        raise
    stream = session.relay.id if session.relay is not None else None
    return web.json_response(
        {"sdp": answer.sdp, "type": answer.type, "id": session.id, "secret": session.secret, "stream": stream}
    )


def _admit(request: web.Request) -> str:
    """The client's address, once its offer is within the per-address limits (429 else). The operator's own
    machine opens many sessions and viewers on purpose, and is not counted."""
    app = request.app
    client = _client(request)
    address = client.address
    if client.local:
        return address
    held = sum(1 for s in app[SESSIONS].values() if s.peer_address == address)
    held += sum(1 for v in app[VIEWERS].values() if v.peer_address == address)
    refusal = app[ADMISSION].check(address, held)
    if refusal is not None:
        headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s else None
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": refusal.message}), content_type="application/json", headers=headers
        )
    return address


async def watch(request: web.Request) -> web.Response:
    """A viewer's receive-only offer for a stream: SR on (and SR off) of its sender, relayed."""
    app = request.app
    relay = _relay(request)
    description, _ = parse_offer(await _read_json(request))
    viewers: dict[str, Viewer] = app[VIEWERS]
    config = app[CONFIG]
    if len(viewers) >= config.max_viewers:
        raise _error(web.HTTPServiceUnavailable, f"the server has its most viewers ({config.max_viewers}); try later")
    if len(relay.viewers) >= config.max_viewers_per_stream:
        raise _error(
            web.HTTPServiceUnavailable,
            f"this stream has its most viewers ({config.max_viewers_per_stream}); try again later",
        )
    address = _admit(request)
    viewer = Viewer(
        relay,
        on_closed=lambda v: viewers.pop(v.id, None),
        connect_timeout_s=config.connect_timeout_s,
        peer_address=address,
        ice_servers=app[ICE].rtc(),
    )
    viewers[viewer.id] = viewer
    try:
        answer = await viewer.answer(description)
    except BaseException:
        await viewer.close()
        raise
    return web.json_response(
        {"sdp": answer.sdp, "type": answer.type, "id": viewer.id, "secret": viewer.secret, "stream": relay.id}
    )


async def list_streams(request: web.Request) -> web.Response:
    """The live streams. Their ids are what lets one watch, so only the operator sees them listed; anyone
    sees how many there are, and the viewer limits."""
    relays = _relays(request.app)
    config = request.app[CONFIG]
    return web.json_response(
        {
            "streams": [r.listing() for r in relays] if _operator(request) else [],
            "count": len(relays),
            "viewers": len(request.app[VIEWERS]),
            "max_viewers": config.max_viewers,
            "max_viewers_per_stream": config.max_viewers_per_stream,
        }
    )


async def get_stream(request: web.Request) -> web.Response:
    """One stream's figures, for whoever has its id (its watch page asks every second: 404 once it ended)."""
    return web.json_response(_relay(request).listing())


async def get_viewer(request: web.Request) -> web.Response:
    return web.json_response(_viewer(request).stats())


async def close_viewer(request: web.Request) -> web.Response:
    viewer = _viewer(request)
    await viewer.close()
    return web.json_response({"id": viewer.id, "closed": True})


def _relays(app: web.Application) -> list[Relay]:
    return [s.relay for s in app[SESSIONS].values() if s.relay is not None and not s.relay.ended]


def _relay(request: web.Request) -> Relay:
    wanted = request.match_info["stream"]
    for relay in _relays(request.app):
        if hmac.compare_digest(relay.id.encode(), wanted.encode()):
            return relay
    raise _error(web.HTTPNotFound, "no such stream: it has ended, or the link is wrong")


def _viewer(request: web.Request) -> Viewer:
    """The viewer the route names, for its own page only (its secret; 403 else)."""
    viewer = request.app[VIEWERS].get(request.match_info["id"])
    if viewer is None:
        raise _error(web.HTTPNotFound, f"no viewer {request.match_info['id']!r} (closed or never opened)")
    if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), viewer.secret.encode()):
        raise _error(
            web.HTTPForbidden,
            f"viewer {viewer.id!r} belongs to the page that opened it: send the "
            f'"secret" of its watch answer in the {SECRET_HEADER} header',
        )
    return viewer


async def set_sr(request: web.Request) -> web.Response:
    """Switch SR on or off for one session at runtime: ``{"enabled": bool}`` (its owner only)."""
    session = _session(request, owner=True)
    body = await _read_json(request)
    enabled = body.get("enabled") if isinstance(body, dict) else None
    if not isinstance(enabled, bool):
        raise _error(web.HTTPBadRequest, 'expected {"enabled": true|false}')
    session.set_sr(enabled)
    return web.json_response({"id": session.id, "sr_enabled": session.sr_enabled})


async def close_session(request: web.Request) -> web.Response:
    session = _session(request, owner=True)
    await session.close()
    return web.json_response({"id": session.id, "closed": True})


async def stats(request: web.Request) -> web.Response:
    """Live figures for the page and the probe: the model, the totals, and the sessions the caller may see.

    The operator sees every session (or ``?id=`` one); a client sees its own, named by ``?id=`` with its
    secret in the ``X-Session-Secret`` header, and the totals; nobody else's ids or figures."""
    sessions: dict[str, Session] = request.app[SESSIONS]
    wanted = request.query.get("id")
    figures = {sid: s.stats() for sid, s in sessions.items()}  # once per session: the page polls every second
    operator = _operator(request)
    if operator:
        chosen = [sid for sid in figures if wanted in (None, sid)]
    else:
        own = sessions.get(wanted or "")
        secret = request.headers.get(SECRET_HEADER, "")
        chosen = [own.id] if own is not None and hmac.compare_digest(secret.encode(), own.secret.encode()) else []
    fast_info = request.app[FAST][1]
    model = {**_public(request.app[MODEL].to_json()), "fast": _public(fast_info.to_json()) if fast_info else None}
    process = process_stats(len(sessions), len(request.app[VIEWERS]))
    if operator:
        process["pid"] = os.getpid()  # for profiling on the server's machine (srtc.tools.cpu_budget)
    return web.json_response(
        {
            "model": model,
            "process": process,
            "totals": totals(list(figures.values())),
            "sessions": [figures[sid] for sid in chosen],
        }
    )


def totals(figures: list[dict]) -> dict:
    """Every session's figures summed, without ids: what anyone may know of the others."""
    return {
        "sessions": len(figures),
        "frames_in": sum(f.get("frames_in", 0) for f in figures),
        "frames_out": sum(f.get("frames_out", 0) for f in figures),
        "fps_out": round(sum(f.get("fps_out", 0.0) for f in figures), 1),
    }


def _public(model: dict) -> dict:
    """A model's figures without where it lives on the server's disk (its file name is enough)."""
    return {**model, "path": Path(model["path"]).name if model.get("path") else model.get("path")}


def process_stats(sessions: int, viewers: int = 0) -> dict:
    """This server's CPU time so far (user + system, all threads): two readings give its cores in use."""
    times = os.times()
    return {
        "cpu_s": round(times.user + times.system, 3),
        "monotonic_s": round(time.monotonic(), 3),
        "cores": os.cpu_count(),
        "sessions": sessions,
        "viewers": viewers,
    }


async def ice_servers(request: web.Request) -> web.Response:
    """The STUN and TURN servers for the page's peer connection, with TURN credentials made for this request
    (the secret stays here); an empty list without any. Never cached: the credentials expire."""
    servers = request.app[ICE].listing()
    return web.json_response({"iceServers": servers}, headers={"Cache-Control": "no-store"})


async def get_network(request: web.Request) -> web.Response:
    """The simulated network's settings and its counters over all sessions (see srtc/server/impairment.py)."""
    return web.json_response(request.app[NETWORK].stats())


async def set_network(request: web.Request) -> web.Response:
    """Change the network settings at runtime for every live session: a partial JSON object of fields.

    It changes every client's link, so it is the operator's action: from the server's own machine, or with
    the operator token (``X-Operator-Token``)."""
    if not _operator(request):
        raise _error(
            web.HTTPForbidden,
            "the simulated network is the operator's: change it from the server's own machine "
            f"(POST /network over loopback, or the command line), or send the operator token in {OPERATOR_HEADER}",
        )
    control = request.app[NETWORK]
    try:
        control.update(await _read_json(request))
    except ConfigError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from exc
    return web.json_response(control.stats())


def _session(request: web.Request, owner: bool = False) -> Session:
    """The session the route names; with ``owner``, only for the client that opened it (its secret, 403 else)."""
    session = request.app[SESSIONS].get(request.match_info["id"])
    if session is None:
        raise _error(web.HTTPNotFound, f"no session {request.match_info['id']!r} (closed or never opened)")
    if owner and not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), session.secret.encode()):
        raise _error(
            web.HTTPForbidden,
            f"session {session.id!r} belongs to the client that opened it: send the "
            f'"secret" of its offer\'s answer in the {SECRET_HEADER} header',
        )
    return session


async def _read_json(request: web.Request) -> object:
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise _error(web.HTTPBadRequest, f"body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise _error(web.HTTPBadRequest, "body is not UTF-8 text") from exc
    except RecursionError as exc:  # thousands of nested [ or {: no request needs that
        raise _error(web.HTTPBadRequest, "body is nested too deeply") from exc
    except ValueError as exc:  # an integer past Python's 4300-digit limit, among others
        raise _error(web.HTTPBadRequest, f"body is not usable JSON: {str(exc)[:200]}") from exc


def _error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Turn validation errors and aiohttp's own 4xx (413 too large, 404, 405) into JSON with a message."""
    try:
        return await handler(request)
    except OfferError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[CONFIG].max_body_bytes
        return web.json_response({"error": f"request body too large (limit {limit} bytes)"}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return web.json_response({"error": exc.reason}, status=exc.status, headers=_allow(exc))
        raise


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@web.middleware
async def _same_site(request: web.Request, handler) -> web.StreamResponse:
    """What another site's page must not do through a visitor's browser: change state here.

    - A POST must be JSON: a cross-site form or ``text/plain`` fetch cannot send that without CORS, which
      this server does not grant (no ``Access-Control-Allow-*`` header anywhere).
    - A POST or DELETE that names an ``Origin`` must come from this server's own pages.
    - With ``allowed_hosts``, the ``Host`` must be one of them; without, served on a loopback address (the
      default), it must be a loopback name: a DNS-rebound hostname that resolves to 127.0.0.1 is refused.
    """
    config, allowed = request.app[CONFIG], request.app[ALLOWED_HOSTS]
    refusal = _host_refusal(request.host, config.host, allowed)
    if refusal is not None:
        raise _error(web.HTTPForbidden, refusal)
    if request.method == "OPTIONS":  # a CORS preflight: no other site may call this server's routes
        raise _error(web.HTTPForbidden, "cross-origin requests are not allowed (this server grants no CORS)")
    if request.method in ("POST", "DELETE"):
        origin = request.headers.get("Origin")
        if origin is not None and not _own_origin(origin, request.host, allowed):
            raise _error(web.HTTPForbidden, f"cross-origin {request.method} from {origin!r} refused")
        if request.method == "POST" and request.content_type != "application/json":
            raise _error(web.HTTPUnsupportedMediaType, 'send JSON: the Content-Type must be "application/json"')
    return await handler(request)


def _host_refusal(host: str, listen_host: str, allowed: frozenset[str]) -> str | None:
    """Why a ``Host`` is not served here (off the allow-list, or not loopback on loopback), or None."""
    name = _hostname(host).lower()
    if allowed:
        if name not in allowed:
            return f"host {host!r} is not served here (it is not among the server's --allowed-hosts)"
    elif _on_loopback(listen_host) and name not in LOOPBACK_NAMES:
        return f"host {host!r} is not served here (the server listens on loopback)"
    return None


def _own_origin(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """An ``Origin`` of this server's own pages: the ``Host`` the request names, or an allowed host."""
    try:
        parts = urlsplit(origin)
    except ValueError:  # "http://[", among others: no origin of ours
        return False
    if parts.netloc == host:
        return True
    return (parts.hostname or "") in allowed


def _hostname(host: str | None) -> str:
    """The name or address of a Host header, without its port (and without the brackets of IPv6)."""
    host = host or ""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _client(request: web.Request) -> Client:
    """Who sent the request: the peer, or the client a trusted proxy forwards (``X-Forwarded-For``)."""
    return resolve_client(request.remote, request.headers.getall(FORWARDED_HEADER, []), request.app[PROXIES])


def _operator(request: web.Request) -> bool:
    return is_operator(_client(request), request.headers.get(OPERATOR_HEADER), request.app[CONFIG].operator_token)


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No versions in the ``Server`` header (aiohttp would name itself and Python's version)."""
    response.headers["Server"] = "srtc"


def _on_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def _close_all(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        await session.close()
    for viewer in list(app[VIEWERS].values()):
        await viewer.close()
