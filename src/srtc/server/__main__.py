"""``python -m server``: parse the command line into a :class:`ServerConfig`, load the model, serve."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from .app import create_app
from .config import ConfigError, NetworkConfig, ServerConfig
from .engine import ModelError, Upscaler
from .memory import tune_allocator
from .priority import per_thread_nice
from .registry import ModelInfo, open_fast_model, open_model

log = logging.getLogger("server")


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    return parse_command_line(argv)[0]


def parse_command_line(argv: list[str] | None = None) -> tuple[ServerConfig, NetworkConfig]:
    """The server's settings and the simulated network's (``--loss`` and friends; default: no impairment)."""
    defaults = ServerConfig()
    net = NetworkConfig()
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve the demo page and the WebRTC receiver that super-resolves every frame it receives "
        "(640x360 in, 1280x720 out) and sends both streams back.",
        epilog="Who may do what: a session's routes need the secret its offer's answer carried; the simulated "
        "network and every session's figures in /stats are the operator's, that is requests from this machine, "
        "or carrying the token of the SRTC_OPERATOR_TOKEN environment variable (16+ characters) in the "
        "X-Operator-Token header. One other address may hold --max-sessions-per-address sessions and make "
        "--offers-per-minute offers (429 beyond). Behind a reverse proxy, name it with --trusted-proxy: the "
        "client is then the address it forwards, and no forwarded request is the operator but by the token.",
    )
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (default %(default)s)")
    parser.add_argument(
        "--model",
        default=None,
        help="a model name from srtc/zoo/manifest.json or a path to an .onnx file (default: the manifest's default)",
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="onnxruntime threads per inference (default %(default)s)"
    )
    parser.add_argument(
        "--max-sessions", type=int, default=defaults.max_sessions, help="concurrent clients (default %(default)s)"
    )
    parser.add_argument(
        "--max-sessions-per-address",
        type=int,
        default=defaults.max_sessions_per_address,
        help="sessions one address other than this machine may hold (default %(default)s)",
    )
    parser.add_argument(
        "--offers-per-minute",
        type=int,
        default=defaults.offers_per_minute,
        help="offers one address other than this machine may make a minute (default %(default)s)",
    )
    parser.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        nargs="+",
        default=[],
        metavar="ADDR",
        help="reverse proxies (addresses or networks, e.g. 127.0.0.1 10.0.0.0/8) whose X-Forwarded-For names "
        "the client: its right-most address that is not a trusted proxy counts for the limits and owns "
        "sessions; a request through them is never the operator by address, only by X-Operator-Token; "
        "X-Forwarded-For from any other peer is ignored (default: none)",
    )
    parser.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=[],
        metavar="NAME",
        help="the Host names served (without port), e.g. the proxy's public name; any other Host gets 403, and "
        "a POST's Origin may name any of them (default: any Host, or only localhost, 127.0.0.1 and ::1 when "
        "listening on loopback; list those too to keep reaching the server by them)",
    )
    parser.add_argument(
        "--sr-headroom",
        type=float,
        default=defaults.sr_headroom,
        help="share of the frame interval the generator may use per frame, 0.1..1; beyond it some "
        "frames get bicubic instead of falling behind (default %(default)s)",
    )
    parser.add_argument(
        "--fast-model",
        default=defaults.fast_model,
        help='the faster model tried before bicubic under load: "auto" (the manifest\'s fallback '
        'of --model), "none", or a manifest name or path (default %(default)s)',
    )
    parser.add_argument(
        "--encoder-nice",
        type=int,
        default=defaults.encoder_nice,
        help="run the return encoders this many nice levels (0..19) below the server, so the SR "
        "stage takes shared cores first (Linux; default %(default)s)",
    )
    parser.add_argument(
        "--viewer-kbps",
        type=float,
        default=defaults.viewer_kbps,
        help="the viewer's link for the returned streams, 300..100000: the SR-on encode starts at it "
        "and never exceeds it (a forwarded SR-off stream's rate comes off it first); the default "
        "suits a viewer on the same machine or LAN (default %(default)s)",
    )
    relay = parser.add_argument_group("relay: others watch a sender's stream (POST /streams/ID/watch)")
    relay.add_argument(
        "--max-viewers", type=int, default=defaults.max_viewers, help="viewers in all, 0..1024 (default %(default)s)"
    )
    relay.add_argument(
        "--max-viewers-per-stream",
        type=int,
        default=defaults.max_viewers_per_stream,
        help="viewers of one stream, 0..1024 (default %(default)s)",
    )
    relay.add_argument(
        "--relay-floor-kbps",
        type=float,
        default=defaults.relay_floor_kbps,
        help="the least a relayed SR-on encode gets, whatever a congested viewer reports (default %(default)s)",
    )
    turn = parser.add_argument_group(
        "TURN for clients behind NATs and firewalls (GET /ice-servers); the secret shared with the TURN "
        "server (coturn's use-auth-secret, 16+ characters) comes from the SRTC_TURN_SECRET environment variable"
    )
    turn.add_argument(
        "--turn-url",
        dest="turn_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a TURN server URL, e.g. turn:turn.example.org:3478?transport=udp (repeatable)",
    )
    turn.add_argument(
        "--stun-url",
        dest="stun_urls",
        action="append",
        default=[],
        metavar="URL",
        help="a STUN server URL handed out with the TURN ones, e.g. stun:turn.example.org:3478 (repeatable)",
    )
    turn.add_argument(
        "--turn-ttl-s",
        type=int,
        default=defaults.turn_ttl_s,
        help="how long a handed-out TURN credential can open relays, 60..86400 s (default %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--stock-receiver",
        action="store_true",
        help="receive with aiortc's stock jitter buffer instead of the loss-resilient one (for comparisons)",
    )
    sim = parser.add_argument_group("simulated network on the inbound media path (also GET/POST /network)")
    sim.add_argument(
        "--loss", type=float, default=net.loss, help="long-run packet loss fraction, 0..1 (default %(default)s)"
    )
    sim.add_argument(
        "--burst",
        type=float,
        default=net.burst,
        help="mean loss burst length in packets, 1 = independent (default %(default)s)",
    )
    sim.add_argument(
        "--kbps", type=float, default=net.kbps, help="link capacity, 10..100000, 0 = unlimited (default %(default)s)"
    )
    sim.add_argument("--delay-ms", type=float, default=net.delay_ms, help="one-way base delay (default %(default)s)")
    sim.add_argument(
        "--jitter-ms", type=float, default=net.jitter_ms, help="standard deviation of the delay (default %(default)s)"
    )
    sim.add_argument(
        "--queue-ms",
        type=float,
        default=net.queue_ms,
        help="drop-tail queue in ms of data at --kbps (default %(default)s)",
    )
    sim.add_argument("--seed", type=int, default=net.seed, help="random seed of loss and jitter (default %(default)s)")
    sim.add_argument("--reorder", action="store_true", help="let jitter reorder packets (default: in order)")
    sim.add_argument(
        "--no-impair-rtcp",
        dest="impair_rtcp",
        action="store_false",
        help="RTCP bypasses the impairment (default: impaired like RTP)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            model=args.model,
            threads=args.threads,
            max_sessions=args.max_sessions,
            max_sessions_per_address=args.max_sessions_per_address,
            offers_per_minute=args.offers_per_minute,
            operator_token=os.environ.get("SRTC_OPERATOR_TOKEN") or None,
            trusted_proxies=tuple(args.trusted_proxies),
            allowed_hosts=tuple(args.allowed_hosts),
            resilient_receiver=not args.stock_receiver,
            sr_headroom=args.sr_headroom,
            fast_model=args.fast_model,
            encoder_nice=args.encoder_nice,
            viewer_kbps=args.viewer_kbps,
            max_viewers=args.max_viewers,
            max_viewers_per_stream=args.max_viewers_per_stream,
            relay_floor_kbps=args.relay_floor_kbps,
            turn_urls=tuple(args.turn_urls),
            turn_secret=os.environ.get("SRTC_TURN_SECRET") or None,
            turn_ttl_s=args.turn_ttl_s,
            stun_urls=tuple(args.stun_urls),
        )
        network = NetworkConfig(
            loss=args.loss,
            burst=args.burst,
            kbps=args.kbps,
            delay_ms=args.delay_ms,
            jitter_ms=args.jitter_ms,
            queue_ms=args.queue_ms,
            seed=args.seed,
            reorder=args.reorder,
            impair_rtcp=args.impair_rtcp,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return config, network


def governor_steps(fast: Upscaler | None, fast_info: ModelInfo | None) -> str:
    """What the governor falls back to under load: the fast model only if it loaded and passed its self-check
    (``open_fast_model`` hands back the info of a refused one, with no upscaler)."""
    if fast is not None and fast_info is not None:
        return f"under load, the governor steps down to {fast_info.name} ({fast_info.precision}) before bicubic"
    if fast_info is not None:
        return f"under load, the governor goes straight to bicubic ({fast_info.name} failed its self-check here)"
    return "under load, the governor goes straight to bicubic (no fast model)"


def main(argv: list[str] | None = None) -> int:
    config, network = parse_command_line(argv)
    tune_allocator()
    try:
        upscaler, info = open_model(config.model, config.threads)
        fast, fast_info = open_fast_model(config.fast_model, info, config.threads)
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("model %s (%s, %s, %s params) from %s", info.name, info.kind, info.precision, info.params, info.path)
    log.info("%s", governor_steps(fast, fast_info))
    if config.encoder_nice and not per_thread_nice():
        log.info("--encoder-nice needs per-thread priorities (Linux); the encoders run at the server's priority")
    if network.active:
        log.info("simulated network on the inbound path: %s", network.to_json())
    if config.turn_urls:
        log.info("TURN for clients: %s (credentials valid %d s)", ", ".join(config.turn_urls), config.turn_ttl_s)
    app = create_app(config, upscaler, info, network, fast=fast, fast_info=fast_info)
    try:
        web.run_app(app, host=config.host, port=config.port, print=lambda msg: log.info("%s", msg.strip()))
    except OSError as exc:  # the address is taken or not ours: say so, not a traceback
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
