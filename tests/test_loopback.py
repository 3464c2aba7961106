"""Loopback, in-process: the probe's aiortc client against the real app over 127.0.0.1.

Both returned streams carry the frames the client sent, identified by the numbers embedded in their
pixels: SR on at exactly twice the size, in increasing order, every code intact after two encodes.
"""

from __future__ import annotations

import asyncio

from srtc.server.app import SESSIONS, create_app
from srtc.server.config import ServerConfig
from srtc.server.registry import describe
from srtc.tools import probe as probe_module
from srtc.tools.probe import FULL_H, FULL_W, run_clients, run_probe
from srtc.tools.probe_report import clients_summary

from .conftest import serving, shared_or_skip


async def test_frames_come_back_twice_the_size_with_their_numbers_in_order(upscaler, default_model_path):
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await run_probe(url, seconds=4.0, fps=15.0, psnr_every=3)
        sr, raw = report.streams["sr"], report.streams["raw"]
        assert report.sent == 60
        assert (sr["width"], sr["height"]) == (FULL_W, FULL_H)
        assert (raw["width"], raw["height"]) == (FULL_W // 2, FULL_H // 2)
        assert sr["sizes"] == {f"{FULL_W}x{FULL_H}": sr["frames"]}
        for stream in (sr, raw):
            assert stream["numbered"] >= 20, stream  # most frames came back with a readable number
            assert stream["out_of_order"] == 0 and stream["repeats"] == 0 and stream["unknown"] == 0
            assert stream["unreadable"] <= 2
        assert report.skipped is not None and report.skipped >= 0
        # Both streams show the same pictures as the 720p originals (a wrong frame or a garbled plane scores
        # far lower); which is better is test_sr_on_as_received_beats_forwarded_sr_off's business.
        assert sr["psnr_y"] > 30 and raw["psnr_y"] > 30
        # SR off is the client's own encode, forwarded: every frame the server released, none re-encoded.
        forwarded = report.server_session["streams"]["raw"]
        assert forwarded["mode"] == "forwarded" and forwarded["codec"] == "VP8", forwarded
        assert forwarded["frames_out"] >= raw["frames"] and forwarded["keyframes"] >= 1 and forwarded["dropped"] == 0
        # The SR stream is the one encoded stream, at 720p, within the viewer link (srtc/server/return_rate.py).
        rates = report.server_session["return_bitrate"]
        assert set(rates) == {"sr"} and (rates["sr"]["width"], rates["sr"]["height"]) == (FULL_W, FULL_H), rates
        assert rates["sr"]["max_kbps"] <= ServerConfig().viewer_kbps
        # The server timed every stage of the SR stream (the resilient receiver logs the receive side).
        budget = report.budget()
        stages = budget["sr"]
        assert all(stages[s]["p50"] is not None and stages[s]["p50"] >= 0 for s in stages), stages
        assert stages["total"]["p50"] >= stages["encode"]["p50"] and stages["sr"]["p50"] > 0
        # The server's CPU while the probe sent: real work, bounded by the machine.
        cpu = report.server_cpu
        assert cpu is not None and 0 < cpu["cores_used"] <= cpu["machine_cores"] + 0.5, cpu
        assert cpu["sessions"] == 1 and cpu["cores_per_session"] == cpu["cores_used"]
        # Every frame sent was upscaled by one of the two paths (plus at most the one being upscaled ahead).
        governed = report.governor()["generator_frames"] + report.governor()["bicubic_frames"]
        assert 0 <= governed - sr_sent(report) <= 1
        await asyncio.sleep(0.2)
        assert app[SESSIONS] == {}, "the probe deletes its session; the server must forget it"


async def test_sr_on_as_received_beats_forwarded_sr_off_by_more_than_bicubic_can(upscaler, default_model_path):
    """What the viewer gets: the SR stream as received against SR off as the sender encoded it (forwarded,
    upscaled by bicubic at the viewer), on real footage. The same run with SR switched off at the server
    (bicubic, then the same return encode) is the control: bicubic cannot beat the forwarded stream, so
    the margin the generator adds over the control is the SR's own. The clip is the one the default model
    never saw in training."""
    clip = shared_or_skip("data", "video", "bbb_bunny_720p25_5s.mp4")
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    margins, vmaf_neg = {}, {}
    async with serving(app) as url:
        for sr_on in (True, False):
            report = await run_probe(
                url,
                seconds=6.0,
                fps=15.0,
                psnr_every=2,
                sr=sr_on,
                vmaf=True,
                generator=upscaler if sr_on else None,
                source=clip,
            )
            sr, raw = report.streams["sr"], report.streams["raw"]
            assert sr["psnr_y"] is not None and raw["psnr_y"] is not None and sr["frames"] >= 60, (sr, raw)
            margins[sr_on] = sr["psnr_y"] - raw["psnr_y"]
            vmaf_neg[sr_on] = sr["vmaf_neg"] - raw["vmaf_neg"]
            session = report.server_session["streams"]["sr"]
            assert session["errors"] == 0
            if sr_on:
                governor = report.governor()
                assert governor["generator_frames"] >= 0.9 * sr_sent(report), governor  # the model, not bicubic
                # The same model run by the probe on SR off as received: its own gain, and a return encode
                # transparent enough (against the generator's output) to keep most of it.
                gain = report.generator_gain
                assert gain["frames"] >= 20 and gain["gain_db"] > 0.05 and gain["encode_frames"] >= 10, gain
                assert gain["return_encode_psnr_y"] > 42, gain
    assert margins[False] < 0.05, margins  # bicubic through the return encode: no better than forwarded
    assert margins[True] > margins[False] + 0.1, margins  # the acceptance margin on this clip
    assert vmaf_neg[True] > vmaf_neg[False] + 1.0, vmaf_neg  # perceptually too, without credit for sharpening


def sr_sent(report) -> int:
    """Frames the server's SR track sent (its own count, from /stats)."""
    return report.server_session["streams"]["sr"]["frames_out"]


async def test_two_concurrent_clients_each_get_their_own_streams(upscaler, default_model_path):
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        reports = await run_clients(url, seconds=3.0, clients=2, fps=10.0, psnr_every=5)
    assert len({r.session_id for r in reports}) == 2
    summary = clients_summary(reports)
    assert summary["clients"] == 2 and len(summary["per_client"]) == 2
    for report in reports:
        assert report.streams["sr"]["width"] == FULL_W and report.streams["sr"]["numbered"] >= 10
        assert report.streams["sr"]["out_of_order"] == 0
    assert summary["median"]["sr"]["fps"] > 0


async def test_a_frame_that_fails_on_the_return_path_costs_that_frame_not_the_stream(
    upscaler, default_model_path, monkeypatch
):
    """Fault injection: the SR track raises on two frames mid-stream. aiortc's sender would stop the stream
    for good; the server skips those frames, asks for a keyframe, counts them, and the stream goes on."""
    from srtc.server.sr_track import SuperResolutionTrack

    real_recv = SuperResolutionTrack.recv
    calls = {"n": 0}

    async def failing_recv(self):
        calls["n"] += 1
        if calls["n"] in (20, 21):
            raise RuntimeError("injected failure on the return path")
        return await real_recv(self)

    monkeypatch.setattr(SuperResolutionTrack, "recv", failing_recv)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await run_probe(url, seconds=4.0, fps=15.0, psnr_every=5)
    sr = report.streams["sr"]
    assert calls["n"] > 40, calls  # the stream went on well past the failures
    assert sr["numbered"] >= 40 and sr["trailing_gap_ms"] <= 1000, sr
    assert sr["freezes"]["longestGapMs"] <= 1000, sr["freezes"]  # each failure cost at most a second
    assert report.server_session["return_errors"]["sr"]["frame_errors"] == 2
    assert "injected" in report.server_session["return_errors"]["sr"]["last_frame_error"]


async def test_a_decoder_exception_mid_stream_costs_frames_not_the_stream(upscaler, default_model_path, monkeypatch):
    """Fault injection: every VP8 decoder (the server's uplink and the probe's two) raises a plain
    exception on its 30th and 31st frame. aiortc's decoder thread survives only FFmpeg errors; here the
    error costs those frames, the receiver asks for a keyframe, and every stream goes on."""
    from aiortc.codecs.vpx import Vp8Decoder

    real_decode = Vp8Decoder.decode
    calls: dict[int, int] = {}

    def failing_decode(self, encoded_frame):
        calls[id(self)] = n = calls.get(id(self), 0) + 1
        if n in (30, 31):
            raise RuntimeError("injected decoder failure")
        return real_decode(self, encoded_frame)

    monkeypatch.setattr(Vp8Decoder, "decode", failing_decode)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await run_probe(url, seconds=4.0, fps=15.0, psnr_every=5)
    assert len(calls) >= 2 and all(n > 40 for n in calls.values()), calls  # each decoder went on
    receiver = report.server_session["receiver"]
    assert receiver["decodeErrors"] == 2 and receiver["pliCount"] >= 1, receiver
    assert receiver["keyframesReceived"] >= 2, "the keyframe asked for arrived and decoding resumed"
    for name in ("sr", "raw"):
        stream = report.streams[name]
        assert stream["numbered"] >= 40 and stream["trailing_gap_ms"] <= 1000, (name, stream)
        assert stream["freezes"]["longestGapMs"] <= 1000, (name, stream["freezes"])  # at most a second lost


async def test_a_return_stream_that_stops_is_restarted_within_a_second(upscaler, default_model_path, monkeypatch):
    """Fault injection: the SR track ends by mistake once (aiortc's sender loop exits) and later hangs in
    recv() for good. Each time the watchdog sees input flowing and nothing sent, restarts the stream on a
    fresh track within a second, continuing its sequence numbers, and counts it."""
    from aiortc.mediastreams import MediaStreamError

    from srtc.server.sr_track import SuperResolutionTrack

    real_recv = SuperResolutionTrack.recv
    calls = {"n": 0}

    async def stopping_recv(self):
        calls["n"] += 1
        if calls["n"] == 20:
            raise MediaStreamError  # the sender loop takes this for the end of the track
        if calls["n"] == 45:
            await asyncio.Event().wait()  # never returns
        return await real_recv(self)

    monkeypatch.setattr(SuperResolutionTrack, "recv", stopping_recv)
    attached = []  # the probe's receivers, to see the restarted stream as a viewer's jitter buffer does
    real_attach = probe_module.attach_resilient

    def recording_attach(*args, **kwargs):
        attached.append(real_attach(*args, **kwargs))
        return attached[-1]

    monkeypatch.setattr(probe_module, "attach_resilient", recording_attach)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await run_probe(url, seconds=5.0, fps=15.0, psnr_every=5)
    sr, raw = report.streams["sr"], report.streams["raw"]
    for receiver in attached:  # the sequence numbers ran on: no reset, nothing taken for old duplicates
        stats = receiver.stats()
        assert stats["resets"] == 0 and stats["packetsDuplicated"] + stats["packetsLate"] <= 5, stats
    assert calls["n"] > 50, calls  # the stream went on after both (75 frames sent; each stop costs ~8)
    assert report.server_session["return_restarts"] == {"sr": 2, "raw": 0}
    assert sr["numbered"] >= 45 and sr["trailing_gap_ms"] <= 1000, sr
    assert sr["freezes"]["longestGapMs"] <= 1000, sr["freezes"]  # each stop cost at most a second
    assert sr["out_of_order"] == 0 and sr["unreadable"] == 0
    assert raw["freezes"]["longestGapMs"] < 500, "the other stream is not disturbed"


async def test_a_replayed_uplink_is_measured_like_a_live_one(upscaler, default_model_path):
    """The probe's cheap mode: the uplink encoded once before the run. On a clean link it stays a replay
    (nothing asks for a keyframe), and both streams come back numbered, in order, at their sizes."""
    from srtc.tools.probe_replay import pre_encode
    from srtc.tools.probe_source import load_source

    source = load_source(None, fps=15.0, psnr_every=5)
    replay = pre_encode(source, fps=15.0, duration_s=3.0, kbps=800.0)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await run_probe(url, seconds=3.0, source=source, fps=15.0, psnr_every=5, replay=replay)
    assert report.network["uplink"]["mode"] == "replay" and report.network["uplink"]["live_from_s"] is None
    assert 400 < report.network["uplink"]["encoded_kbps"] < 1600
    for name, size in (("sr", (FULL_W, FULL_H)), ("raw", (FULL_W // 2, FULL_H // 2))):
        stream = report.streams[name]
        assert stream["numbered"] >= 38 and stream["out_of_order"] == 0, (name, stream)
        assert (stream["width"], stream["height"]) == size
        assert stream["psnr_y"] > 30, (name, stream["psnr_y"])
    assert report.probe_cpu is not None and report.probe_cpu["cores_used"] > 0


async def test_a_stopped_sr_off_stream_is_restarted_forwarded_or_re_encoded(upscaler, default_model_path, monkeypatch):
    """The watchdog on the other stream: SR off, forwarded (the resilient receiver) or re-encoded (aiortc's stock
    receiver), hangs in recv() once; it is restarted on a fresh track and the viewer's picture goes on."""
    from srtc.server.forward import ForwardTrack
    from srtc.server.sr_track import RawTrack

    for track_class, config in (
        (ForwardTrack, ServerConfig(port=0)),
        (RawTrack, ServerConfig(port=0, resilient_receiver=False)),
    ):
        real_recv = track_class.recv
        calls = {"n": 0}

        async def hanging_recv(self, real_recv=real_recv, calls=calls):
            calls["n"] += 1
            if calls["n"] == 20:
                await asyncio.Event().wait()  # never returns
            return await real_recv(self)

        monkeypatch.setattr(track_class, "recv", hanging_recv)
        app = create_app(config, upscaler, describe(str(default_model_path)))
        async with serving(app) as url:
            report = await run_probe(url, seconds=4.0, fps=15.0, psnr_every=5)
        raw = report.streams["raw"]
        assert report.server_session["return_restarts"] == {"sr": 0, "raw": 1}, track_class.__name__
        assert calls["n"] > 40 and raw["numbered"] >= 40, (track_class.__name__, calls, raw)
        assert raw["freezes"]["longestGapMs"] <= 1000 and raw["trailing_gap_ms"] <= 1000, raw["freezes"]
        assert raw["out_of_order"] == 0
        monkeypatch.undo()
