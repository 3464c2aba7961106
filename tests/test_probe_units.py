"""The probe's pure parts: statistics, PSNR with the code area left out, the source, and its error paths."""

from __future__ import annotations

import asyncio
import json
import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from srtc.server.config import CLIENT_DIR
from srtc.shared import SHARED
from srtc.tools import framecode, probe, probe_cli, probe_replay, probe_report, probe_source

SAMPLES = CLIENT_DIR / "samples"
SET14 = SHARED / "data" / "benchmarks" / "Set14"


def _photo_folder(tmp_path: Path) -> Path:
    """A folder of real photographs: the page's samples, else Set14, else skip."""
    for folder in (SAMPLES, SET14):
        if folder.is_dir() and probe_source.image_files(folder):
            return folder
    pytest.skip("no photographs: neither the page's samples nor ../shared Set14 is present")


def _photo_720p() -> np.ndarray:
    for folder in (SAMPLES, SET14):
        files = probe_source.image_files(folder) if folder.is_dir() else []
        if files:
            return probe_source.cover(cv2.imread(str(files[0]), cv2.IMREAD_COLOR))
    pytest.skip("no photographs")


@pytest.fixture(scope="module")
def small_source() -> probe.Source:
    """A short source of real content (a few panned frames), cheap to build."""
    bgr = _photo_720p()
    frames = [np.roll(bgr, 11 * i, axis=1) for i in range(6)]
    return probe_source.prepare_source(frames, fps=30.0, psnr_every=2, description="test photo")


# ----------------------------------------------------------------- statistics


def test_percentile() -> None:
    values = list(range(1, 101))
    assert probe_report.percentile(values, 50) == pytest.approx(50.5)
    assert probe_report.percentile(values, 95) == pytest.approx(95.05)
    assert probe_report.percentile([7.0], 95) == 7.0
    assert probe_report.percentile([], 50) is None


def test_frame_rate_over_the_receiving_span() -> None:
    times = [10.0 + 0.1 * i for i in range(11)]  # 11 frames over 1 s
    assert probe_report.frame_rate(times) == pytest.approx(10.0)
    assert probe_report.frame_rate([1.0]) == 0.0
    assert probe_report.frame_rate([]) == 0.0
    assert probe_report.frame_rate([2.0, 2.0]) == 0.0


def test_latency_summary_windows_by_send_time() -> None:
    # 20 s of sending at 10 fps: latency 100 ms in the first half, 200 ms in the second.
    samples = [(t / 10, 100.0 if t < 100 else 200.0) for t in range(200)]
    s = probe_report.latency_summary(samples)
    assert s["first5s_p50"] == 100.0
    assert s["last5s_p50"] == 200.0
    assert s["max"] == 200.0
    assert s["p50"] == 150.0
    empty = probe_report.latency_summary([])
    assert empty["p50"] is None and empty["first5s_p50"] is None


# ----------------------------------------------------------------- PSNR


def test_psnr_known_error() -> None:
    a = np.full((72, 128), 100, np.uint8)
    b = a + np.uint8(10)  # MSE 100
    assert probe_source.psnr_y(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert probe_source.psnr_y(a, a) == math.inf


def test_psnr_excludes_the_box() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(16, 236, (720, 1280), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    box = framecode.region(1280, 720, margin=probe.CODE_MARGIN)
    damaged = b.copy()
    damaged[box[1] : box[3], box[0] : box[2]] = 255 - damaged[box[1] : box[3], box[0] : box[2]]
    clean = probe_source.psnr_y(a, b, box)
    assert probe_source.psnr_y(a, damaged, box) == pytest.approx(clean)
    assert probe_source.psnr_y(a, damaged) < clean - 10  # without the exclusion the box dominates

    # Same as an explicit mask over the pixels outside the box.
    mask = np.ones(a.shape, bool)
    mask[box[1] : box[3], box[0] : box[2]] = False
    mse = np.mean((a[mask].astype(np.float64) - b[mask]) ** 2)
    assert clean == pytest.approx(10 * math.log10(255**2 / mse))


def test_psnr_rejects_bad_input() -> None:
    a = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError):
        probe_source.psnr_y(a, np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError):
        probe_source.psnr_y(a, a, (0, 0, 10, 10))


# ----------------------------------------------------------------- the source


def test_pan_zoom_renders_real_720p_content_that_moves(tmp_path: Path) -> None:
    folder = _photo_folder(tmp_path)
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in probe_source.image_files(folder)[:2]]
    frames = list(probe_source.pan_zoom_frames(images, fps=10.0, max_seconds=2.0))
    assert len(frames) == 20
    for frame in frames:
        assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8
        assert float(frame.std()) > 20.0  # real content, not a flat or empty frame
    assert float(np.abs(frames[0].astype(np.int16) - frames[5]).mean()) > 1.0  # it pans


def test_load_source_from_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = _photo_folder(tmp_path)
    for path in probe_source.image_files(src)[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    source = probe_source.load_source(folder, fps=5.0, psnr_every=5)
    assert len(source.sent) == round(probe_source.MAX_SOURCE_SECONDS * 5)
    assert all(f.shape == (540, 640) for f in source.sent)
    assert float(source.sent[0][:360].std()) > 15.0
    assert sorted(source.originals) == list(range(0, len(source.sent), 5))
    assert all(o.shape == (720, 1280) for o in source.originals.values())


@pytest.mark.skipif(not probe_source.DEFAULT_VIDEO.is_file(), reason="../shared video is absent")
def test_default_video_source_skips_the_fade_in() -> None:
    frames, fps = probe_source.video_frames(probe_source.DEFAULT_VIDEO, max_seconds=0.5)
    frames = list(frames)
    assert fps == pytest.approx(24.0)
    assert len(frames) == 12
    assert all(f.shape == (720, 1280, 3) for f in frames)
    assert float(frames[0].std()) >= probe_source.MIN_CONTENT_STD * 0.8  # not the black lead-in


def test_prepare_source(small_source: probe.Source) -> None:
    assert len(small_source.sent) == 6
    assert sorted(small_source.originals) == [0, 2, 4]
    for index, value in small_source.reference_psnr.items():
        assert 25.0 < value < 60.0, index  # bicubic 2x of a real photo: neither perfect nor broken
        y = small_source.originals[index]
        assert 16 <= int(y.min()) and int(y.max()) <= 235  # limited-range luma
    assert small_source.index_for(0.0) == 0
    assert small_source.index_for(1 / 30) == 1
    assert small_source.index_for(6 / 30) == 0  # loops


def test_cover_fills_without_bars() -> None:
    img = np.random.default_rng(0).integers(0, 255, (300, 451, 3), dtype=np.uint8)
    out = probe_source.cover(img)
    assert out.shape == (720, 1280, 3)


# ----------------------------------------------------------------- sending and measuring


async def test_numbered_track_numbers_and_clock(small_source: probe.Source) -> None:
    track = probe_source.NumberedTrack(small_source, fps=50.0, duration_s=10.0)
    frames = [await track.recv() for _ in range(4)]
    assert [f.time_base for f in frames] == [Fraction(1, 90000)] * 4
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[3] == pytest.approx(3 * 90000 / 50, abs=900)  # paced at fps, within 10 ms
    for number, frame in enumerate(frames):
        y = probe.luma_plane(frame)
        assert (frame.width, frame.height) == (640, 360)
        assert framecode.read(y) == number
        assert number in track.sent
    assert track.count == 4
    track.stop()


def test_the_pre_encoded_uplink_decodes_to_the_numbered_frames(small_source: probe.Source) -> None:
    encoded = probe_replay.pre_encode(small_source, fps=30.0, duration_s=0.5, kbps=800.0)
    assert len(encoded) == 15
    decoder = av.CodecContext.create("libvpx", "r")
    numbers = []
    for data in encoded:
        for frame in decoder.decode(av.Packet(data)):
            assert (frame.width, frame.height) == (640, 360)
            numbers.append(framecode.read(probe.luma_plane(frame)))
    assert numbers == list(range(15))
    kbps = sum(map(len, encoded)) * 8 / 0.5 / 1000
    assert 200 < kbps < 2000, kbps  # near the rate asked for (the first keyframe weighs in a short clip)


async def test_the_replay_track_sends_packets_until_a_keyframe_request_then_frames(small_source) -> None:
    encoded = probe_replay.pre_encode(small_source, fps=50.0, duration_s=1.0, kbps=800.0)
    track = probe_replay.ReplayTrack(small_source, fps=50.0, duration_s=1.0, encoded=encoded)
    first = [await track.recv() for _ in range(3)]
    assert all(isinstance(p, av.Packet) for p in first) and bytes(first[1]) == encoded[1]
    assert sorted(track.sent) == [0, 1, 2] and track.live_from_s is None
    track.request_keyframe()
    live = await track.recv()
    assert isinstance(live, av.VideoFrame) and framecode.read(probe.luma_plane(live)) == 3, "numbers run on"
    assert track.live_from_s is not None and live.pts > first[-1].pts
    track.stop()


async def test_a_replay_with_keyframes_goes_live_on_a_request_only_until_its_next_keyframe(small_source) -> None:
    """The viewers mode's uplink: a keyframe request makes a few frames live (the first a keyframe), and the
    replay resumes at its next pre-encoded keyframe; pts follow the frame numbers (steady_pts)."""
    encoded = probe_replay.pre_encode(small_source, fps=50.0, duration_s=1.0, kbps=800.0, keyframe_every=5)
    assert [i for i, d in enumerate(encoded) if probe_replay.is_vp8_keyframe(d)] == list(range(0, 50, 5))
    track = probe_replay.ReplayTrack(small_source, fps=50.0, duration_s=1.0, encoded=encoded)
    track.steady_pts = True
    sent = [await track.recv() for _ in range(3)]
    track.request_keyframe()
    sent += [await track.recv() for _ in range(3)]  # frames 3 and 4 live, 5 the replay's keyframe
    assert [type(p).__name__ for p in sent] == ["Packet"] * 3 + ["VideoFrame"] * 2 + ["Packet"]
    live = sent[3]
    assert live.pict_type == av.video.frame.PictureType.I, "the first live frame after replayed ones is a keyframe"
    assert framecode.read(probe.luma_plane(live)) == 3 and framecode.read(probe.luma_plane(sent[4])) == 4
    assert bytes(sent[5]) == encoded[5]
    assert [p.pts for p in sent] == [n * 1800 for n in range(6)]  # 90 kHz / 50 fps, whenever each went out
    track.request_keyframe()  # the very next replayed frame is not a keyframe: live again until frame 10
    assert not track.replaying()
    sent = [await track.recv() for _ in range(5)]
    assert [type(p).__name__ for p in sent] == ["VideoFrame"] * 4 + ["Packet"]
    assert (track.keyframe_requests, track.live_frames) == (2, 6) and track.live_from_s is not None
    track.stop()


def _with_code(source: probe.Source, index: int, number: int) -> np.ndarray:
    y = source.sent[index][:360].copy()
    framecode.embed(y, number)
    return y


def test_measure_frame_sr_and_raw(small_source: probe.Source) -> None:
    sent = {7: probe_source.SentFrame(time=100.0, index=2), 8: probe_source.SentFrame(time=100.1, index=3)}
    raw, sr = probe_report.StreamStats("raw"), probe_report.StreamStats("sr")
    y7 = _with_code(small_source, 2, 7)
    probe.measure_frame(raw, y7, 100.05, sent, small_source)
    up = cv2.resize(y7, (1280, 720), interpolation=cv2.INTER_CUBIC)
    probe.measure_frame(sr, up, 100.08, sent, small_source)
    assert raw.latencies == [(100.0, pytest.approx(50.0))]
    assert sr.latencies == [(100.0, pytest.approx(80.0))]
    # Both are bicubic of the sent frame: the ideal reference figure.
    assert raw.psnr[0] == pytest.approx(small_source.reference_psnr[2], abs=0.05)
    assert sr.psnr[0] == pytest.approx(raw.psnr[0], abs=1e-6)
    # Source frame 3 has no original kept (every 2nd): latency yes, PSNR no.
    probe.measure_frame(raw, _with_code(small_source, 3, 8), 100.2, sent, small_source)
    assert len(raw.latencies) == 2 and len(raw.psnr) == 1
    # Again the same number, a frame without a code, and a number never sent.
    probe.measure_frame(raw, y7, 100.3, sent, small_source)
    probe.measure_frame(raw, small_source.sent[0][:360], 100.4, sent, small_source)
    probe.measure_frame(raw, _with_code(small_source, 0, 999), 100.5, sent, small_source)
    report = raw.report()
    assert (report["frames"], report["repeats"], report["unreadable"], report["unknown"]) == (5, 1, 1, 1)
    assert (report["width"], report["height"]) == (640, 360)
    assert report["fps"] == pytest.approx(4 / 0.45, abs=0.01)


def test_frames_scored_after_the_run_score_as_at_once_and_thin_evenly(small_source: probe.Source) -> None:
    sent = {n: probe_source.SentFrame(time=100.0 + n / 30, index=(n * 2) % 6) for n in range(40)}
    now, later = probe_report.StreamStats("raw"), probe_report.StreamStats("raw")
    kept = probe.LaterScores()
    for n in range(40):
        y = _with_code(small_source, sent[n].index, n)
        probe.measure_frame(now, y, 100.05 + n / 30, sent, small_source)
        probe.measure_frame(later, y, 100.05 + n / 30, sent, small_source, later=kept)
    assert later.psnr == [] and len(later.latencies) == 40, "timing now, scores later"
    kept.score({"raw": later}, small_source, None)
    assert later.psnr_of == pytest.approx(now.psnr_of) and len(later.psnr) == 40
    # a budget of 10 frames: the kept numbers thin to every 4th, evenly over the run, the same on each stream
    frame_bytes = 360 * 640
    small = probe.LaterScores(limit_bytes=10 * frame_bytes)
    for n in range(40):
        for name in ("raw", "sr"):
            small.keep(name, n, _with_code(small_source, sent[n].index, n), sent[n].index)
    assert small.stride == 8 and small.bytes <= 10 * frame_bytes
    streams = {name: probe_report.StreamStats(name) for name in ("raw", "sr")}
    small.score(streams, small_source, None)
    assert sorted(streams["raw"].psnr_of) == sorted(streams["sr"].psnr_of) == [0, 8, 16, 24, 32]


def test_report_json_shape(small_source: probe.Source) -> None:
    stats = probe_report.StreamStats("sr")
    stats.psnr.append(math.inf)
    report = probe.ProbeReport(
        url="http://x",
        session_id="abc",
        sent=10,
        seconds=1.0,
        fps=30.0,
        skipped=2,
        streams={"sr": stats.report(), "raw": probe_report.StreamStats("raw").report()},
        psnr_reference={"bicubic_sent": 40.0, "frames": 2},
        source="test",
    )
    data = json.loads(report.to_json())
    assert data["sent"] == 10 and data["seconds"] == 1.0 and data["skipped"] == 2
    for name in ("sr", "raw"):
        stream = data["streams"][name]
        for key in ("frames", "width", "height", "fps", "latency_ms", "psnr_y"):
            assert key in stream
        assert set(stream["latency_ms"]) >= {"p50", "p95", "max", "first5s_p50", "last5s_p50"}
    assert data["streams"]["sr"]["psnr_y"] is None  # inf is not JSON
    assert data["targets"]["sr_fps_ge_20"] is False
    assert "SR-on" in report.to_text()


# ----------------------------------------------------------------- error paths


async def test_unreachable_server_is_a_clear_error(small_source: probe.Source) -> None:
    with pytest.raises(probe.ProbeError, match="cannot reach the server"):
        await probe.run_probe("http://127.0.0.1:9", 1.0, source=small_source, connect_timeout_s=2.0)


async def test_4xx_answer_is_a_clear_error(small_source: probe.Source) -> None:
    async def offer(request: web.Request) -> web.Response:
        return web.json_response({"error": "the offer has 2 video m-lines"}, status=400)

    app = web.Application()
    app.router.add_post("/offer", offer)
    async with TestServer(app) as server:
        with pytest.raises(probe.ProbeError, match="400.*2 video m-lines"):
            await probe.run_probe(str(server.make_url("/")), 1.0, source=small_source, connect_timeout_s=2.0)


async def test_session_deleted_when_the_answer_is_unusable(small_source: probe.Source) -> None:
    deleted: list[str] = []

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["type"] == "offer" and body["sr"] is True
        directions = [
            line[2:] for line in body["sdp"].splitlines() if line in ("a=sendonly", "a=recvonly", "a=sendrecv")
        ]
        assert directions == ["sendonly", "recvonly", "recvonly"]  # uplink, SR on, SR off
        return web.json_response({"sdp": "v=0\r\nbroken", "type": "answer", "id": "s1"})

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.match_info["id"])
        return web.json_response({"closed": True})

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_delete("/sessions/{id}", delete)
    async with TestServer(app) as server:
        with pytest.raises(probe.ProbeError, match="answer cannot be applied"):
            await asyncio.wait_for(
                probe.run_probe(str(server.make_url("/")), 1.0, source=small_source, connect_timeout_s=2.0), 30
            )
    assert deleted == ["s1"]


async def test_arrival_watch_maps_pts_back_to_the_marker_packet() -> None:
    class Packet:
        def __init__(self, timestamp: int, marker: int) -> None:
            self.timestamp, self.marker = timestamp, marker

    class Mapper:
        _origin = 4_294_967_000  # the RTP clock wraps between the first frame and the next

    class Receiver:
        def __init__(self) -> None:
            self.handled: list[int] = []
            self._RTCRtpReceiver__timestamp_mapper = Mapper()

        async def _handle_rtp_packet(self, packet: Packet, arrival_time_ms: int) -> None:
            self.handled.append(packet.timestamp)

    receiver = Receiver()
    watch = probe.ArrivalWatch(receiver)
    second = (Mapper._origin + 3000) % (1 << 32)
    for packet in (Packet(Mapper._origin, 0), Packet(Mapper._origin, 1), Packet(second, 1)):
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
    assert len(receiver.handled) == 3  # every packet still reaches aiortc
    assert watch.arrival_of(0) is not None
    assert watch.arrival_of(3000) is not None
    assert watch.arrival_of(3000) is None  # each frame once
    assert watch.arrival_of(None) is None


async def test_numbered_track_stops_after_its_duration(small_source: probe.Source) -> None:
    track = probe_source.NumberedTrack(small_source, fps=50.0, duration_s=0.1)
    for _ in range(5):
        await track.recv()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(track.recv(), 0.2)
    assert track.done.is_set() and track.count == 5


def test_recovery_after_a_network_change() -> None:
    # 30 fps, a 600 ms hole just after the change at t=10, then steady again.
    times = [i / 30 for i in range(300)] + [10.6 + i / 30 for i in range(60)]
    rec = probe_report.recovery_after(times, change_at=10.0, fps=30)
    assert rec["recovery_ms"] == pytest.approx(600.0, abs=1)
    assert rec["fps_from_1s_after"] == pytest.approx(30.0, abs=0.5)
    later = [i / 30 for i in range(320)] + [11.5 + i / 30 for i in range(60)]  # a hole after the change
    rec = probe_report.recovery_after(later, change_at=10.0, fps=30)
    assert rec["recovery_ms"] == pytest.approx(1500.0, abs=1)
    assert rec["last_gaps"] == [[pytest.approx(1.5), pytest.approx(1500.0 - 319 / 30 * 1000 + 10_000, abs=1)]]
    steady = probe_report.recovery_after([i / 30 for i in range(600)], change_at=10.0, fps=30)
    assert steady["recovery_ms"] == pytest.approx(0.0, abs=34) and steady["last_gaps"] == []


# ----------------------------------------------------------------- bad sources


def test_a_missing_or_empty_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(probe_source.SourceError, match="source not found"):
        probe_source.load_source(tmp_path / "nothing.webm", fps=30.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(probe_source.SourceError, match="no readable JPEG/PNG images"):
        probe_source.load_source(tmp_path / "empty", fps=30.0)
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    with pytest.raises(probe_source.SourceError, match="cannot open video source"):
        probe_source.load_source(broken, fps=30.0)


def test_the_cli_reports_a_bad_source_and_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = probe_cli.main(["--url", "http://127.0.0.1:9", "--seconds", "1", "--source", str(tmp_path / "none.mp4")])
    assert code == 2
    assert any("source not found" in r.getMessage() for r in caplog.records)


def test_a_stream_that_stops_before_the_sender_is_reported_dead(small_source: probe.Source) -> None:
    """A stream alive at 30 fps for its first half and silent after: its trailing gap and its frame rate over
    the run say so, and the targets fail, where the frame rate over its own span alone would pass."""
    from srtc.tools.probe_report import build_report

    uplink = probe_source.NumberedTrack(small_source, fps=30.0, duration_s=20.0)
    uplink.first_time, uplink.last_time, uplink.count = 100.0, 120.0, 600
    streams = {name: probe_report.StreamStats(name) for name in ("sr", "raw")}
    for i in range(600):
        t = 100.0 + i / 30.0
        streams["raw"].times.append(t)
        streams["raw"].frames += 1
        if t < 110.0:
            streams["sr"].times.append(t)
            streams["sr"].frames += 1
            streams["sr"].width, streams["sr"].height = 1280, 720
    report = build_report("http://x", "abc", uplink, 30.0, streams, small_source, None)
    sr, raw = report.streams["sr"], report.streams["raw"]
    assert sr["fps"] > 25  # alive while it lived
    assert 9500 < sr["trailing_gap_ms"] < 10500 and sr["fps_over_run"] < 16
    assert raw["trailing_gap_ms"] < 100
    targets = report.targets()
    assert targets["sr_alive_to_the_end"] is False and targets["sr_fps_ge_20"] is False
