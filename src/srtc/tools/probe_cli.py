"""``python -m server.probe``: the probe's command line, for its clients (:mod:`srtc.tools.probe`) and its
viewers (:mod:`srtc.tools.probe_viewers`), which builds on the clients' code."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import probe
from .probe import ProbeError, open_generator, run_clients
from .probe_report import clients_summary
from .probe_source import SourceError
from .probe_viewers import check_viewer_counts, run_viewers

log = logging.getLogger("srtc.tools.probe")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.probe", description=probe.__doc__.split("\n\n")[0] if probe.__doc__ else None
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to send")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second sent")
    parser.add_argument(
        "--source", default=None, help="video file, image or folder of images (default: Big Buck Bunny)"
    )
    parser.add_argument("--psnr-every", type=int, default=5, help="PSNR on every Nth source frame")
    parser.add_argument(
        "--vmaf",
        choices=("auto", "on", "off"),
        default="auto",
        help="also score both streams in VMAF and VMAF-NEG (libvmaf: pip install -e '.[vmaf]'); "
        "auto: when libvmaf is present (default %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="the server's model, run here on the SR-off frames as received to measure its own gain "
        "and the return path's transparency: a manifest name or path, 'default', or 'none'",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--clients", type=int, default=1, help="concurrent clients, each with its own session (default 1)"
    )
    parser.add_argument(
        "--network-change",
        metavar="SECONDS:JSON",
        action="append",
        default=[],
        help="after SECONDS of sending, POST JSON to /network, e.g. '20:{\"loss\": 0}', and report the recovery;"
        " repeat it for a schedule of changes",
    )
    parser.add_argument(
        "--uplink",
        choices=("live", "replay"),
        default="live",
        help="live: encode the uplink while sending, as a browser does (default); replay: encode it once before"
        " the run and replay it, so the probe costs the machine little (a keyframe request makes it live)",
    )
    parser.add_argument(
        "--uplink-kbps",
        type=float,
        default=None,
        help="the replayed uplink's bitrate (default: 70%% of the server's link cap, else 1000)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the probe this many nice levels below normal (0..19), so the server's figures on a shared"
        " machine are the server's own",
    )
    viewers = parser.add_argument_group(
        "viewers", "one sender, and viewers watching its relayed stream in phases (srtc.tools.probe_viewers)"
    )
    viewers.add_argument(
        "--viewers",
        type=int,
        nargs="+",
        metavar="N",
        default=None,
        help="viewers in each phase, increasing: '1 5 20' is 1 viewer, then 5, then 20 (viewer 0 decodes"
        " everything; the others take frames from RTP and decode keyframes only). --seconds is then ignored",
    )
    viewers.add_argument(
        "--phase-seconds", type=float, default=20.0, help="how long each phase is measured (default %(default)s)"
    )
    viewers.add_argument(
        "--settle-seconds",
        type=float,
        default=3.0,
        help="after a phase's joins, before its measurement starts (default %(default)s)",
    )
    viewers.add_argument(
        "--kill-viewers",
        type=int,
        default=0,
        metavar="K",
        help="a last phase in which the K newest viewers vanish without DELETE, and the others watch on",
    )
    viewers.add_argument(
        "--kill-mode",
        choices=("close", "silent"),
        default="close",
        help="how they vanish: close their peer connections (aiortc still sends RTCP BYE and DTLS close_notify,"
        " as a closed tab), or silent (nothing more leaves their sockets, as a crashed browser); default %(default)s",
    )
    viewers.add_argument(
        "--replay-keyframe-seconds",
        type=float,
        default=0.0,
        help="with --uplink replay: a keyframe every this many seconds in the pre-encoded uplink, where the replay"
        " resumes after a viewer's keyframe request made it live; 0 (default): the first request (the first"
        " viewer's) makes it live for good, as a browser answers keyframe requests (periodic keyframes cost"
        " latency on a capped link)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.viewers is not None or args.kill_viewers:
        problem = check_viewer_counts(args.viewers or [], args.kill_viewers)
        if problem:
            parser.error(problem)
        if args.clients != 1:
            parser.error("--viewers runs one sender: leave out --clients")
        if not 1.0 <= args.phase_seconds <= 3600.0 or not 0.0 <= args.settle_seconds <= 60.0:
            parser.error("need --phase-seconds in 1..3600 and --settle-seconds in 0..60")
        if not 0.0 <= args.replay_keyframe_seconds <= 60.0:
            parser.error("need --replay-keyframe-seconds in 0..60")
    if not 0 <= args.nice <= 19 or (args.uplink_kbps is not None and not 50 <= args.uplink_kbps <= 20000):
        parser.error("need --nice in 0..19 and --uplink-kbps in 50..20000")
    if args.seconds <= 0 or not 1 <= args.fps <= 120 or args.psnr_every < 1 or not 1 <= args.clients <= 64:
        parser.error("need --seconds > 0, --fps in 1..120, --psnr-every >= 1 and --clients in 1..64")
    changes = []
    for change in args.network_change:
        when, _, body = change.partition(":")
        try:
            after_s, settings = float(when), json.loads(body)
        except ValueError:
            parser.error("--network-change takes SECONDS:JSON, for example '20:{\"loss\": 0}'")
        if not isinstance(settings, dict) or not 0 <= after_s <= args.seconds:
            parser.error("--network-change: SECONDS must lie within --seconds and the JSON must be an object")
        changes.append((after_s, settings))
    args.network_change = sorted(changes, key=lambda c: c[0])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # this process and the threads it starts from now on
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.viewers:
        return main_viewers(args)
    try:
        reports = asyncio.run(
            run_clients(
                args.url,
                args.seconds,
                args.clients,
                source=args.source,
                fps=args.fps,
                psnr_every=args.psnr_every,
                network_changes=args.network_change,
                vmaf={"auto": None, "on": True, "off": False}[args.vmaf],
                generator=open_generator(args.model),
                uplink=args.uplink,
                uplink_kbps=args.uplink_kbps,
            )
        )
    except (ProbeError, SourceError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.clients > 1:
        for i, report in enumerate(reports):
            print(f"--- client {i}\n{report.to_text()}\n", file=sys.stderr if args.json else sys.stdout, flush=True)
        summary = clients_summary(reports)
        if args.json:
            print(json.dumps({**summary, "reports": [r.to_dict() for r in reports]}), flush=True)
        else:
            shown = ("median", "server_cpu", "probe_cpu")
            print(json.dumps({key: summary[key] for key in shown}), flush=True)
        return 0
    report = reports[0]
    if args.json:
        print(report.to_text(), file=sys.stderr, flush=True)  # stdout stays one JSON object
        print(report.to_json(), flush=True)
    else:
        print(report.to_text(), flush=True)
    return 0


def main_viewers(args: argparse.Namespace) -> int:
    """``--viewers``: the sender's report, then the viewers' (one JSON object with ``--json``)."""

    try:
        report = asyncio.run(
            run_viewers(
                args.url,
                args.viewers,
                phase_s=args.phase_seconds,
                settle_s=args.settle_seconds,
                kill=args.kill_viewers,
                kill_mode=args.kill_mode,
                source=args.source,
                fps=args.fps,
                psnr_every=args.psnr_every,
                uplink=args.uplink,
                uplink_kbps=args.uplink_kbps,
                network_changes=args.network_change,
                vmaf={"auto": None, "on": True, "off": False}[args.vmaf],
                generator=open_generator(args.model),
                replay_keyframe_s=args.replay_keyframe_seconds,
            )
        )
    except (ProbeError, SourceError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    text = f"--- the sender\n{report.sender_text}\n\n--- its viewers\n{report.to_text()}"
    if args.json:
        print(text, file=sys.stderr, flush=True)  # stdout stays one JSON object
        print(report.to_json(), flush=True)
    else:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
