"""The probe's findings: per-stream summaries, the acceptance targets, the text and JSON reports.

Pure functions of what the probe measured (and the server's ``/stats`` it fetched), so they can be
tested without a network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, overload

import numpy as np

from srtc.server.budget import STAGES
from srtc.server.metrics import FreezeDetector, percentile
from srtc.training.vmaf import FrameBank

from . import framecode
from .probe_source import (
    CODE_MARGIN,
    FULL_H,
    FULL_W,
    SENT_H,
    SENT_W,
    NumberedTrack,
    Source,
)

GROWTH_WINDOW_S = 5.0


def frame_rate(times: Sequence[float]) -> float:
    """Frames per second over the span from first to last receipt (0 with fewer than two frames)."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


def recovery_after(times: Sequence[float], change_at: float, fps: float) -> dict[str, Any]:
    """How the stream behaved after a network change at ``change_at`` (monotonic seconds).

    ``recovery_ms``: from the change to the first received frame after which no gap between frames
    exceeds the freeze threshold at the sent rate (max(3 / fps, 1 / fps + 0.15) s); None if it never
    settles. ``last_gaps``: the last five such gaps, as (seconds after the change that they ended,
    length in ms). Also the frame rate over the time after the change plus one second.
    """
    threshold = max(3.0 / fps, 1.0 / fps + 0.150)
    after = [t for t in times if t >= change_at]
    long_gaps = [(a, b) for a, b in zip(after, after[1:]) if b - a >= threshold]
    settled_at = long_gaps[-1][1] if long_gaps else (after[0] if after else None)
    late = [t for t in after if t >= change_at + 1.0]
    return {
        "recovery_ms": rounded((settled_at - change_at) * 1000.0) if settled_at is not None else None,
        "last_gaps": [[rounded(b - change_at), rounded((b - a) * 1000.0)] for a, b in long_gaps[-5:]],
        "frames_after": len(after),
        "fps_from_1s_after": rounded(frame_rate(late)),
    }


def latency_summary(
    samples: Sequence[tuple[float, float]], window_s: float = GROWTH_WINDOW_S
) -> dict[str, float | None]:
    """p50/p95/max of latencies, and the medians of the first and last ``window_s`` of sending.

    ``samples`` are ``(send_time, latency_ms)``; the windows are by send time, so frames still in
    flight at the end do not count as growth.
    """
    lat = [ms for _, ms in samples]
    out: dict[str, float | None] = {
        "p50": rounded(percentile(lat, 50)),
        "p95": rounded(percentile(lat, 95)),
        "max": rounded(max(lat) if lat else None),
        "first5s_p50": None,
        "last5s_p50": None,
    }
    if samples:
        first = min(t for t, _ in samples)
        last = max(t for t, _ in samples)
        out["first5s_p50"] = rounded(percentile([ms for t, ms in samples if t < first + window_s], 50))
        out["last5s_p50"] = rounded(percentile([ms for t, ms in samples if t > last - window_s], 50))
    return out


@dataclass
class ProbeReport:
    """The probe's findings; ``to_json`` is the machine-readable form, ``to_text`` the human one."""

    url: str
    session_id: str | None
    sent: int
    seconds: float
    fps: float
    skipped: int | None
    streams: dict[str, dict]
    psnr_reference: dict[str, float | int | None]
    source: str
    psnr_every: int = 5
    server_session: dict | None = None
    network: dict | None = None  # the cap, the probe's achieved send bitrate, the server's /network counters
    server_cpu: dict | None = None  # the server process's cores in use while the probe sent (see cpu_between)
    probe_cpu: dict | None = None  # this probe process's own, over the same time (all its clients together)
    generator_gain: dict | None = None  # the model's own gain on SR off as received (server.probe.GeneratorGain)
    paired: dict | None = None  # mean PSNR-Y of each stream (and the generator) on the frames all of them have

    def targets(self) -> dict[str, bool]:
        """The system's acceptance targets, checked on the SR-on stream."""
        sr = self.streams.get("sr", {})
        lat = sr.get("latency_ms", {})
        first, last = lat.get("first5s_p50"), lat.get("last5s_p50")
        return {
            "sr_1280x720": (sr.get("width"), sr.get("height")) == (FULL_W, FULL_H),
            "sr_fps_ge_20": min(sr.get("fps") or 0, sr.get("fps_over_run", sr.get("fps")) or 0) >= 20,
            "sr_alive_to_the_end": (sr.get("trailing_gap_ms") or 0) <= 1000,
            "sr_latency_p95_le_250ms": lat.get("p95") is not None and lat["p95"] <= 250,
            "sr_no_latency_growth_50ms": first is not None and last is not None and last - first <= 50,
        }

    def budget(self) -> dict[str, dict]:
        """The server's per-stage latency (p50/p95 ms) of each returned stream, from its /stats."""
        streams = (self.server_session or {}).get("streams") or {}
        return {name: s["budget_ms"] for name, s in streams.items() if s and s.get("budget_ms")}

    def governor(self) -> dict | None:
        """What the server's SR stage did under load: generator or bicubic, and on how many frames."""
        return (self.server_session or {}).get("governor")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["freezes"] = {name: s.get("freezes") for name, s in self.streams.items()}
        out["latency_ms"] = {name: s.get("latency_ms") for name, s in self.streams.items()}
        out["budget_ms"] = self.budget()
        out["governor"] = self.governor()
        out["targets"] = self.targets()
        return _finite(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_text(self) -> str:
        lines = [
            f"probe of {self.url} (session {self.session_id}), source: {self.source}",
            f"sent {self.sent} frames of {SENT_W}x{SENT_H} in {self.seconds:.1f} s at {self.fps:g} fps"
            f" (frame number drawn in the top-left {framecode.COLS * framecode.BLOCK}x"
            f"{framecode.ROWS * framecode.BLOCK} px)",
            f"frames the server's SR stage skipped (/stats): {_fmt(self.skipped)}",
            "",
            "stream              frames  size       fps    latency p50 / p95 / max ms   first 5 s / last 5 s p50 ms",
        ]
        labels = {"sr": "sr  (SR on, 720p)", "raw": "raw (SR off)"}
        for name in ("sr", "raw"):
            s = self.streams.get(name)
            if s is None:
                lines.append(f"{labels[name]:<19} not received")
                continue
            lat = s["latency_ms"]
            lines.append(
                f"{labels[name]:<19} {s['frames']:>6}  {s['width']}x{s['height']:<5} {_fmt(s['fps']):>6}"
                f"   {_fmt(lat['p50']):>7} / {_fmt(lat['p95']):>7} / {_fmt(lat['max']):>7}"
                f"       {_fmt(lat['first5s_p50']):>7} / {_fmt(lat['last5s_p50'])}"
            )
            arrival = s["arrival_latency_ms"]
            if arrival["p50"] is not None:
                lines.append(
                    f"{'':<19} to the frame's last RTP packet (before decode):"
                    f" p50 {_fmt(arrival['p50'])} / p95 {_fmt(arrival['p95'])} ms"
                )
            freezes = s.get("freezes") or {}
            lines.append(
                f"{'':<19} freezes (WebRTC freezeCount rule): {freezes.get('freezeCount')},"
                f" {_fmt(freezes.get('totalFreezesDuration'))} s in all;"
                f" longest gap {_fmt(freezes.get('longestGapMs'))} ms;"
                f" silent for the last {_fmt(s.get('trailing_gap_ms'))} ms of the run"
            )
            if s["unreadable"] or s["unknown"] or s["repeats"]:
                lines.append(
                    f"{'':<19} ({s['unreadable']} without a readable number, {s['unknown']} unknown, "
                    f"{s['repeats']} repeats)"
                )
        lines += self._budget_lines()
        cpu = self.server_cpu
        if cpu:
            lines.append(
                f"server CPU while sending: {cpu['cores_used']:.2f} of {cpu['machine_cores']} cores for"
                f" {cpu['sessions']} session(s): {cpu['cores_per_session']} cores per session,"
                f" {_fmt(cpu['sessions_per_core'])} sessions per core"
            )
        if self.probe_cpu:
            cores = self.probe_cpu["cores_used"]
            lines.append(f"probe's own CPU over the same time: {cores:.2f} cores (all its clients)")
        net = self.network or {}
        if net:
            server = net.get("server") or {}
            lines += [
                "",
                f"network: cap {_fmt(net.get('cap_kbps'))} kbps, probe sent {_fmt(net.get('sent_kbps'))} kbps"
                f" ({_fmt(net.get('packets_sent'))} RTP packets)",
            ]
            if server:
                lines.append(f"  server's impairment: {json.dumps(server, sort_keys=True)}")
            for change in net.get("changes") or []:
                lines.append(f"  network changed to {change['settings']} after {change['after_s']:g} s:")
                for name, rec in change["streams"].items():
                    lines.append(
                        f"    {name}: back to a freeze-free stream {_fmt(rec['recovery_ms'])} ms after the change;"
                        f" {_fmt(rec['fps_from_1s_after'])} fps from 1 s after it"
                    )
        box = framecode.region(FULL_W, FULL_H, margin=CODE_MARGIN)
        ref = self.psnr_reference
        sr_psnr = self.streams.get("sr", {}).get("psnr_y")
        raw_psnr = self.streams.get("raw", {}).get("psnr_y")
        lines += [
            "",
            f"PSNR-Y (dB) against the 1280x720 original's luma, excluding the top-left {box[2]}x{box[3]} px"
            f" frame-code area, on every {self.psnr_every}th source frame:",
            f"  SR-on stream as received (1280x720):                 {_fmt(sr_psnr, 2)}",
            f"  SR-off stream as received, bicubic 2x:               {_fmt(raw_psnr, 2)}",
            f"  reference: sent 360p before compression, bicubic 2x: {_fmt(ref.get('bicubic_sent'), 2)}",
            f"  SR on - SR off:                                      {_fmt(_gap(self.streams, 'psnr_y'), 2)}",
        ]
        if any(self.streams.get(n, {}).get("vmaf") is not None for n in ("sr", "raw")):
            frames = self.streams.get("sr", {}).get("vmaf_frames")
            lines += [
                "",
                f"VMAF / VMAF-NEG (libvmaf, v0.6.1 models) against the same originals, on {frames} of those frames:",
                *(
                    f"  {label:<40}{_fmt(self.streams.get(n, {}).get('vmaf'))} / "
                    f"{_fmt(self.streams.get(n, {}).get('vmaf_neg'))}"
                    for n, label in (
                        ("sr", "SR-on stream as received:"),
                        ("raw", "SR-off stream as received, bicubic:"),
                    )
                ),
                f"  {'SR on - SR off:':<40}{_fmt(_gap(self.streams, 'vmaf'), 2)} / "
                f"{_fmt(_gap(self.streams, 'vmaf_neg'), 2)}",
            ]
        gain = self.generator_gain
        raw = self.streams.get("raw", {})
        own_vmaf = _minus(gain.get("model_vmaf"), raw.get("vmaf")) if gain else None
        own_vmaf_neg = _minus(gain.get("model_vmaf_neg"), raw.get("vmaf_neg")) if gain else None
        paired = self.paired or {}
        if paired.get("frames"):
            lines.append(
                f"  on the {paired['frames']} frames both streams returned: SR on {_fmt(paired.get('sr'), 2)},"
                f" SR off {_fmt(paired.get('raw'), 2)}, SR on - SR off "
                f"{_fmt(_minus(paired.get('sr'), paired.get('raw')), 2)}"
            )
        if gain and gain.get("frames"):
            own = _minus(paired.get("generator"), paired.get("raw"))
            kept = _kept(_minus(paired.get("sr"), paired.get("raw")), own)
            lines += [
                "",
                f"The generator ({gain['model']}) run here on {gain['frames']} SR-off frames as received, as the server"
                " ran it on the same decoded frames:",
                f"  its own gain over bicubic:                           {_fmt(gain.get('gain_db'), 2)} dB"
                f" ({_fmt(gain.get('model_psnr_y'), 2)} against {_fmt(gain.get('bicubic_psnr_y'), 2)}); on the paired"
                f" frames {_fmt(own, 2)} dB",
                f"  kept at the viewer (SR on - SR off) / its own gain:  {_fmt(kept, 2)}",
                *(
                    [
                        f"  in VMAF / VMAF-NEG: its own gain {_fmt(own_vmaf, 2)} / {_fmt(own_vmaf_neg, 2)}, kept "
                        f"{_fmt(_kept(_gap(self.streams, 'vmaf'), own_vmaf), 2)} / "
                        f"{_fmt(_kept(_gap(self.streams, 'vmaf_neg'), own_vmaf_neg), 2)}"
                    ]
                    if gain.get("model_vmaf") is not None
                    else []
                ),
                f"  the return path's transparency, SR on as received against the generator's output:"
                f" {_fmt(gain.get('return_encode_psnr_y'))} dB on {gain.get('encode_frames')} frames",
            ]
        lines += [
            "",
            "latency growth on the SR stream (last 5 s p50 - first 5 s p50): "
            + _fmt(_diff(self.streams.get("sr", {}).get("latency_ms", {})))
            + " ms",
            "targets: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in self.targets().items()),
        ]
        return "\n".join(lines)

    def _budget_lines(self) -> list[str]:
        budget = self.budget()
        if not budget:
            return []
        lines = [
            "",
            "server latency budget, ms p50 / p95 (receive = first packet to decoder; total = first packet to sent):",
            f"{'stream':<8}" + "".join(f"{stage:>15}" for stage in STAGES),
        ]
        for name, stages in budget.items():
            cells = (f"{_fmt(stages[st]['p50'])} / {_fmt(stages[st]['p95'])}" for st in STAGES if st in stages)
            lines.append(f"{name:<8}" + "".join(f"{cell:>15}" for cell in cells))
        gov = self.governor()
        if gov:
            fast = (
                f" ({gov['fast_frames']} of them the fast model, p50 {_fmt(gov['fast_ms_p50'])} ms)"
                if gov.get("fast_frames")
                else ""
            )
            lines.append(
                f"SR stage under load: {gov['mode']}, a model on {_fmt(gov['share'])} of frames now;"
                f" {gov['generator_frames']} model{fast} / {gov['bicubic_frames']} bicubic frames;"
                f" generator p50 {_fmt(gov['generator_ms_p50'])} ms against a {_fmt(gov['budget_ms'])} ms budget"
            )
        return lines


def build_report(
    url: str,
    session_id: str | None,
    uplink: NumberedTrack,
    fps: float,
    streams: dict[str, StreamStats],
    source: Source,
    server_session: dict | None,
    psnr_every: int = 5,
    network: dict | None = None,
) -> ProbeReport:
    """Summarise the raw measurements."""
    seconds = 0.0
    if uplink.first_time is not None and uplink.last_time is not None:
        seconds = uplink.last_time - uplink.first_time + 1.0 / fps
    used = {rec.index for rec in uplink.sent.values() if rec.index in source.reference_psnr}
    reference = [source.reference_psnr[i] for i in used]
    skipped = server_session.get("skipped") if server_session else None
    reports = {name: stats.report() for name, stats in streams.items()}
    for name, stats in streams.items():
        # A stream that stopped before the sender did must not look alive: the gap from its last frame to the
        # last frame sent, and its frame rate over the whole run.
        last_sent, last_seen = uplink.last_time, (stats.times[-1] if stats.times else uplink.first_time)
        gap = max(0.0, last_sent - last_seen) * 1000.0 if last_sent is not None and last_seen is not None else None
        reports[name]["trailing_gap_ms"] = rounded(gap)
        reports[name]["fps_over_run"] = rounded(stats.frames / seconds) if seconds > 0 else None
    return ProbeReport(
        url=url,
        session_id=session_id,
        sent=uplink.count,
        seconds=rounded(seconds) or 0.0,
        fps=fps,
        skipped=skipped,
        streams=reports,
        psnr_reference={"bicubic_sent": rounded(finite_mean(reference)), "frames": len(reference)},
        source=source.description,
        psnr_every=psnr_every,
        server_session=server_session,
        network=network,
    )


def cpu_between(before: dict | None, after: dict | None) -> dict | None:
    """Cores the server used between two readings, and per session (the per-stream CPU cost)."""
    if not before or not after:
        return None
    wall = after["monotonic_s"] - before["monotonic_s"]
    if wall <= 0:
        return None
    cores = (after["cpu_s"] - before["cpu_s"]) / wall
    sessions = max(1, int(after.get("sessions") or 1))
    return {
        "seconds": rounded(wall),
        "cores_used": rounded(cores, 3),
        "sessions": sessions,
        "cores_per_session": rounded(cores / sessions, 3),
        "sessions_per_core": rounded(sessions / cores) if cores > 0 else None,
        "machine_cores": after.get("cores"),
    }


def clients_summary(reports: Sequence[ProbeReport]) -> dict:
    """Per-stream fps and latency of every client side by side, and their medians (the scale figures)."""
    rows = []
    for i, report in enumerate(reports):
        row: dict = {"client": i, "session_id": report.session_id, "sent": report.sent, "skipped": report.skipped}
        for name, stream in report.streams.items():
            row[name] = {
                "frames": stream["frames"],
                "fps": stream["fps"],
                "latency_ms": stream["latency_ms"],
                "psnr_y": stream.get("psnr_y"),
            }
        gov = report.governor()
        if gov:  # what this client's SR stage did under the shared load
            row["governor"] = {
                k: gov.get(k)
                for k in ("mode", "tier", "share", "generator_frames", "fast_frames", "bicubic_frames", "switches")
            }
            by_model, by_bicubic = gov.get("generator_frames") or 0, gov.get("bicubic_frames") or 0
            row["generator_share"] = rounded(by_model / (by_model + by_bicubic), 4) if by_model + by_bicubic else None
        rows.append(row)
    medians: dict[str, Any] = {}
    for name in ("sr", "raw"):
        fps = [r[name]["fps"] for r in rows if name in r]
        p95 = [r[name]["latency_ms"]["p95"] for r in rows if name in r and r[name]["latency_ms"]["p95"] is not None]
        psnr = [r[name]["psnr_y"] for r in rows if name in r and r[name]["psnr_y"] is not None]
        medians[name] = {
            "fps": rounded(percentile(fps, 50)),
            "latency_p95_ms": rounded(percentile(p95, 50)),
            "psnr_y": rounded(percentile(psnr, 50)),
        }
    shares = [r["generator_share"] for r in rows if r.get("generator_share") is not None]
    medians["generator_share"] = rounded(percentile(shares, 50), 4)
    # Client 0's sending window; the others sent over the same seconds.
    return {
        "clients": len(reports),
        "per_client": rows,
        "median": medians,
        "server_cpu": reports[0].server_cpu if reports else None,
        "probe_cpu": reports[0].probe_cpu if reports else None,
    }


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def finite_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _diff(lat: dict) -> float | None:
    first, last = lat.get("first5s_p50"), lat.get("last5s_p50")
    return None if first is None or last is None else round(last - first, 2)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _kept(margin: float | None, gain: float | None) -> float | None:
    """The share of the generator's own gain that reached the viewer."""
    return None if margin is None or not gain or gain <= 0 else round(margin / gain, 2)


def _gap(streams: dict, key: str) -> float | None:
    """SR-on's figure minus SR-off's, when both were measured."""
    on, off = streams.get("sr", {}).get(key), streams.get("raw", {}).get(key)
    return None if on is None or off is None else round(on - off, 3)


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@overload
def _finite(value: dict) -> dict: ...
@overload
def _finite(value: object) -> object: ...
def _finite(value: object) -> object:
    """JSON has no inf/NaN: such figures become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass
class StreamStats:
    """Everything measured on one returned stream."""

    name: str
    frames: int = 0
    width: int = 0
    height: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (send time, ms)
    arrival_latencies: list[float] = field(default_factory=list)  # ms, to the last RTP packet
    psnr: list[float] = field(default_factory=list)
    psnr_of: dict[int, float] = field(default_factory=dict)  # frame number -> its PSNR-Y, for paired figures
    unreadable: int = 0  # no intact frame code
    unknown: int = 0  # a code for a number never sent
    repeats: int = 0  # the same number again (a frame sent back twice)
    out_of_order: int = 0  # a number lower than one already received (frames must come back in order)
    last_number: int = -1
    seen: set[int] = field(default_factory=set)
    freezes: FreezeDetector = field(default_factory=FreezeDetector)
    vmaf_bank: FrameBank | None = None  # the measured frames and their originals, for VMAF at the end (shared)
    vmaf: dict | None = None  # {"vmaf", "vmaf_neg", "frames"} once scored

    def report(self) -> dict:
        return {
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": rounded(frame_rate(self.times)),
            "latency_ms": latency_summary(self.latencies),
            "arrival_latency_ms": {
                "p50": rounded(percentile(self.arrival_latencies, 50)),
                "p95": rounded(percentile(self.arrival_latencies, 95)),
            },
            "psnr_y": rounded(finite_mean(self.psnr)),
            "psnr_frames": len(self.psnr),
            "vmaf": self.vmaf.get("vmaf") if self.vmaf else None,
            "vmaf_neg": self.vmaf.get("vmaf_neg") if self.vmaf else None,
            "vmaf_frames": self.vmaf.get("frames", 0) if self.vmaf else 0,
            "numbered": len(self.seen),
            "unreadable": self.unreadable,
            "unknown": self.unknown,
            "repeats": self.repeats,
            "out_of_order": self.out_of_order,
            "last_number": self.last_number,
            "sizes": dict(self.sizes),
            "freezes": self.freezes.stats(),
        }


@dataclass
class ViewersReport:
    """The viewers mode's findings (``server.probe --viewers``): per phase the server's and the probe's cores
    and every viewer's figures, the server's cost per viewer, and the sender's own report."""

    url: str
    stream: str | None
    counts: list[int]
    phase_seconds: float
    settle_seconds: float
    kill: int
    kill_mode: str
    phases: list[dict]
    viewers: list[dict]
    server_cost: dict
    probe_cost: dict
    anchoring: dict
    viewer0: dict | None
    sender: dict
    sender_text: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["sender_text"]
        return _finite(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_text(self) -> str:
        kills = f", then {self.kill} vanish ({self.kill_mode})" if self.kill else ""
        lines = [
            f"viewers of stream {self.stream} at {self.url}: {' -> '.join(map(str, self.counts))}{kills};"
            f" each phase measured for {self.phase_seconds:g} s, {self.settle_seconds:g} s after its joins",
            "viewer 0 decodes both streams; the others (light) take frames as assembled from RTP, decode only"
            " keyframes, and number frames from RTP timestamps",
            "",
            "phase  viewers  joins s  server cores  probe cores  other cores  server counts  light viewers: fps sr"
            " (median/min), latency p95 sr ms (median/max), freezes, same bytes min",
        ]
        for p in self.phases:
            change = f"+{p['joined']}" + (f" ({p['failed']} failed)" if p["failed"] else "")
            if p["kind"] == "kill":
                change = f"-{p['killed']}"
            light = p.get("light") or {}
            sr = light.get("sr") or {}
            lines.append(
                f"{p['phase']:>5}  {p['viewers']:>3} {change:<5}{_fmt(p['joins_s']):>6}"
                f"  {_fmt(p['server_cores'], 3):>12}"
                f"  {_fmt(p['probe_cores'], 3):>11}  {_fmt(p['other_cores'], 3):>11}"
                f"  {_fmt(p['server_listed_viewers']):>13}"
                + (
                    f"  {_fmt(sr.get('fps_median'))}/{_fmt(sr.get('fps_min'))},"
                    f" {_fmt(sr.get('latency_p95_median_ms'))}/{_fmt(sr.get('latency_p95_max_ms'))},"
                    f" {sr.get('freezes_total')}, {_pct(sr.get('same_bytes_min'))}"
                    if sr
                    else "  -"
                )
            )
            if p["kind"] == "kill":
                dropped = p.get("server_dropped_after_s")
                lines.append(
                    f"{'':>7}the server counted the survivors only "
                    + (f"{_fmt(dropped)} s after the kills" if dropped is not None else "never, by the phase's end")
                )
        lines.append(
            "  (other cores: the machine's busy CPU, /proc/stat, less the server's and the probe's: load that was"
            " not this run's; near 0, the server's figures are its own)"
        )
        for p in self.phases:
            full = next((r for r in p["per_viewer"] if r["kind"] == "full"), None)
            rate = p.get("sr_encode") or {}
            setter = (
                f"the viewers' cap {_fmt(rate.get('relay_cap_kbps'))} kbps ({rate.get('limiting_viewers')} limiting)"
                if rate.get("relay_cap_kbps")
                else "the sender's REMB (congested)"
                if rate.get("sender_congested")
                else "the sender's link"
            )
            lag = p.get("probe_loop_lag_ms") or {}
            lines.append(
                f"  phase {p['phase']}: SR on at {_fmt(full['sr']['kbps'] if full else None, 0)} kbps as viewer 0"
                f" got it (the encode's target at the end {_fmt(rate.get('target_kbps'))} kbps, set by {setter});"
                f" the probe's event loop late by p95 {_fmt(lag.get('p95'))} / max {_fmt(lag.get('max'))} ms"
            )
        cost = self.server_cost
        if cost.get("marginal_cores_per_viewer") is not None:
            lines.append(
                f"server's cost per viewer: {_fmt(cost['marginal_cores_per_viewer'], 4)} cores"
                f" ({cost['from_viewers']} -> {cost['to_viewers']} viewers);"
                f" CPU({cost['to_viewers']}) / CPU({cost['from_viewers']}) = {_fmt(cost['ratio'], 3)}"
            )
        probe = self.probe_cost
        if probe.get("marginal_cores_per_viewer") is not None:
            lines.append(
                f"probe's own cost per viewer: {_fmt(probe['marginal_cores_per_viewer'], 4)} cores"
                f" (CPU ratio {_fmt(probe['ratio'], 3)})"
            )
        anchoring = self.anchoring
        lines.append(
            f"frame numbers from RTP timestamps ({_fmt(anchoring.get('ticks_per_frame'))} ticks a frame), checked on"
            " viewer 0 against every decoded frame: "
            + "; ".join(
                f"{name} {a.get('mismatches')} wrong of {a.get('checked')}"
                f" (ticks a frame seen {_fmt(a.get('ticks_per_frame_seen'))}, {a.get('anchors')} keyframes read)"
                for name, a in anchoring.items()
                if isinstance(a, dict)
            )
        )
        for p in self.phases:
            lines += ["", f"phase {p['phase']}: {p['viewers']} viewer(s), {_fmt(p['seconds'])} s"]
            lines.append(
                "viewer kind   SR-on size  frames sr/raw  fps sr/raw    latency p50/p95 sr ms / raw ms"
                "   freezes sr/raw  join ms  PSNR-Y sr/raw  same bytes sr/raw"
            )
            for r in p["per_viewer"]:
                sr, raw = r["sr"], r["raw"]
                note = f"  ERROR {r['error']}" if r.get("error") else ""
                lines.append(
                    f"{r['viewer']:>6} {r['kind']:<5}  {_fmt(sr.get('size')):<10}"
                    f"  {sr['frames']:>6}/{raw['frames']:<6}"
                    f"  {_fmt(sr['fps']):>5}/{_fmt(raw['fps']):<5}"
                    f"  {_fmt(sr['latency_ms']['p50']):>6}/{_fmt(sr['latency_ms']['p95']):<6}"
                    f" / {_fmt(raw['latency_ms']['p50']):>5}/{_fmt(raw['latency_ms']['p95']):<6}"
                    f"  {sr['freezes']['freezeCount']:>5}/{raw['freezes']['freezeCount']:<3}"
                    f"    {_fmt(r['join_ms']):>7}"
                    f"  {_fmt(sr['psnr_y'], 2):>6}/{_fmt(raw['psnr_y'], 2):<6}"
                    f"  {_pct(sr['same_bytes']):>6}/{_pct(raw['same_bytes'])}{note}"
                )
            full = next((r for r in p["per_viewer"] if r["kind"] == "full"), None)
            if full is not None:
                decoded = {name: full[name]["decoded_latency_ms"] for name in ("sr", "raw")}
                lines.append(
                    f"  viewer 0 after decoding: latency p50/p95 sr {_fmt(decoded['sr']['p50'])}/"
                    f"{_fmt(decoded['sr']['p95'])} ms,"
                    f" raw {_fmt(decoded['raw']['p50'])}/{_fmt(decoded['raw']['p95'])} ms"
                )
            shares = [r["sr"]["same_bytes"] for r in p["per_viewer"] if r["kind"] == "light"]
            shares = [s for s in shares if s is not None]
            if shares:
                lines.append(
                    f"  light viewers' PSNR-Y: from viewer 0, on the frames with the same bytes (same bytes on"
                    f" {_pct(min(shares))} of frames or more)"
                )
        return "\n".join(lines)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100.0 * share:.1f}%"
