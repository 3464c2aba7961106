"""The probe's viewers mode (srtc.tools.probe_viewers): phases, the light viewer's frame numbering and byte
comparison on real encoded content, its receiver on a real aiortc connection, the report; and one loopback
run against the server's relay."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from srtc.tools import framecode, probe_cli, probe_replay, probe_source, probe_viewers
from srtc.tools.probe_report import ViewersReport
from srtc.tools.probe_viewers import (
    FrameLog,
    Phase,
    PhaseRun,
    Viewer,
    anchor_numbers,
    check_viewer_counts,
    cores_between,
    plan_phases,
    read_keyframes,
    same_bytes,
    signed32,
    stream_row,
    viewer_cost,
)

from .test_probe_units import _photo_720p

TICKS = 3000  # 90 kHz at 30 fps


@pytest.fixture(scope="module")
def source() -> probe_source.Source:
    """A short source of real content (a photograph panning across six frames)."""
    bgr = _photo_720p()
    frames = [np.roll(bgr, 13 * i, axis=1) for i in range(6)]
    return probe_source.prepare_source(frames, fps=30.0, psnr_every=2, description="test photo")


@pytest.fixture(scope="module")
def encoded(source: probe_source.Source) -> list[bytes]:
    """Two seconds of the numbered uplink of that content, VP8, a keyframe every 20 frames."""
    return probe_replay.pre_encode(source, fps=30.0, duration_s=2.0, kbps=800.0, keyframe_every=20)


def _log_of(encoded: list[bytes], timestamps: list[int], start: float = 100.0, name: str = "raw") -> FrameLog:
    """A FrameLog of the encoded frames as if they arrived 1/30 s apart with these RTP timestamps."""
    log = FrameLog(name)
    for i, (data, timestamp) in enumerate(zip(encoded, timestamps)):
        log.add("VP8", data, timestamp, probe_replay.is_vp8_keyframe(data), start + i / 30)
    return log


# ----------------------------------------------------------------- phases and arguments


def test_phases_add_viewers_and_the_last_one_kills_the_newest() -> None:
    phases = plan_phases([1, 5, 20], kill=5)
    assert [p.viewers for p in phases] == [1, 5, 20, 15]
    assert phases[0].join == (0,) and phases[1].join == (1, 2, 3, 4) and phases[2].join == tuple(range(5, 20))
    assert phases[3].kill == tuple(range(15, 20)) and phases[3].join == () and phases[3].kind == "kill"
    assert [p.index for p in phases] == [1, 2, 3, 4]
    assert plan_phases([3]) == [Phase(1, 3, join=(0, 1, 2))]


@pytest.mark.parametrize(
    ("counts", "kill", "message"),
    [
        ([], 0, "at least one count"),
        ([0, 5], 0, "positive integers"),
        ([-1, 5], 0, "positive integers"),
        ([5, 1], 0, "must increase"),
        ([1, 5, 5], 0, "must increase"),
        ([1, 5], 5, "less than the most viewers"),
        ([1, 5], -1, "must be positive"),
        ([1, 1000], 0, "at most"),
    ],
)
def test_viewer_counts_that_cannot_run_say_why(counts: list[int], kill: int, message: str) -> None:
    assert message in (check_viewer_counts(counts, kill) or "")
    with pytest.raises(ValueError, match=message):
        plan_phases(counts, kill)


def test_the_cli_rejects_bad_viewer_counts(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--viewers", "5", "1"], "must increase"),
        (["--viewers", "0", "3"], "positive integers"),
        (["--viewers", "1", "x"], "invalid int value"),
        (["--viewers", "1", "3", "--kill-viewers", "3"], "less than the most viewers"),
        (["--kill-viewers", "2"], "at least one count"),
        (["--viewers", "1", "--clients", "2"], "one sender"),
        (["--viewers", "1", "--phase-seconds", "0"], "--phase-seconds"),
    ):
        with pytest.raises(SystemExit) as exc:
            probe_cli.parse_args(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err, argv
    args = probe_cli.parse_args(["--viewers", "1", "5", "20", "--phase-seconds", "20", "--kill-viewers", "5"])
    assert args.viewers == [1, 5, 20] and args.kill_viewers == 5 and args.kill_mode == "close"


def test_cores_per_phase_and_per_viewer() -> None:
    before = {"cpu_s": 100.0, "monotonic_s": 1000.0}
    assert cores_between(before, {"cpu_s": 110.0, "monotonic_s": 1020.0}) == pytest.approx(0.5)
    assert cores_between(before, None) is None
    assert cores_between(before, {"cpu_s": 100.0, "monotonic_s": 1000.0}) is None  # no time passed
    cost = viewer_cost([(1, 0.60), (5, 0.70), (20, 0.98)])
    assert cost["marginal_cores_per_viewer"] == pytest.approx((0.98 - 0.60) / 19, abs=1e-4)
    assert cost["ratio"] == pytest.approx(0.98 / 0.60, abs=1e-3)
    assert (cost["from_viewers"], cost["to_viewers"]) == (1, 20)
    assert viewer_cost([(1, 0.6)])["marginal_cores_per_viewer"] is None  # one phase: no slope
    assert viewer_cost([(1, None), (5, 0.7), (20, 0.9)])["from_viewers"] == 5  # a phase without readings is left out
    assert viewer_cost([(1, 0.0), (5, 0.2)])["ratio"] is None


def test_the_uplink_lasts_for_every_phase_and_its_joins() -> None:
    phases = plan_phases([1, 5, 20], kill=5)
    assert probe_viewers.uplink_seconds(phases, 20.0, 3.0, 20.0) >= 4 * (20 + 3 + 20)


# ----------------------------------------------------------------- numbering frames from RTP timestamps


def test_signed32_takes_the_short_way_round() -> None:
    assert signed32(3000) == 3000
    assert signed32(-3000) == -3000
    assert signed32(1000 - ((1 << 32) - 2000)) == 3000  # from just before the wrap to just after it
    assert signed32((1 << 32) - 1) == -1
    assert signed32(1 << 31) == -(1 << 31)


def test_frame_numbers_follow_rtp_timestamps_across_the_32_bit_wrap() -> None:
    numbers = [40, 41, 42, 44, 45, 46, 47, 50, 51, 52]  # gaps: frames the server skipped
    base = (1 << 32) - 4 * TICKS - 17  # the RTP clock wraps after frame 44
    timestamps = [(base + (n - 40) * TICKS) % (1 << 32) for n in numbers]
    assert timestamps[4] < timestamps[3]  # it did wrap
    assert anchor_numbers(timestamps, {0: 40}, TICKS) == numbers
    assert anchor_numbers(timestamps, {6: 47}, TICKS) == numbers  # frames before the first anchor count back
    jittered = [(t + j) % (1 << 32) for t, j in zip(timestamps, [0, 300, -400, 900, -1400, 0, 1200, 5, -5, 0])]
    assert anchor_numbers(jittered, {0: 40}, TICKS) == numbers  # within half a frame, timestamps still round right
    assert anchor_numbers(timestamps, {}, TICKS) == [None] * len(numbers)


def test_a_later_anchor_takes_over_where_the_timestamps_jump() -> None:
    # The stream restarts at frame 50 with a new timestamp origin (say a new SSRC): the keyframe there re-anchors.
    timestamps = [1000 + i * TICKS for i in range(5)] + [777_777 + i * TICKS for i in range(5)]
    numbers = anchor_numbers(timestamps, {0: 10, 5: 50}, TICKS)
    assert numbers == [10, 11, 12, 13, 14, 50, 51, 52, 53, 54]
    wrapped = anchor_numbers([0, TICKS], {0: framecode.MODULUS - 1}, TICKS)
    assert wrapped == [framecode.MODULUS - 1, 0]  # frame numbers wrap as framecode's do


def test_keyframes_alone_number_every_frame_of_a_real_stream(encoded: list[bytes]) -> None:
    base = (1 << 32) - 7 * TICKS  # wraps at frame 7
    log = _log_of(encoded, [(base + i * TICKS) % (1 << 32) for i in range(len(encoded))])
    assert sorted(log.keyframes) == [0, 20, 40] and log.keyframe_count == 3
    assert read_keyframes(log) == {0: 0, 20: 20, 40: 40}  # decoded alone, the number drawn in each
    assert log.picture == "640x360"
    log.numbers = anchor_numbers(log.timestamps, read_keyframes(log), TICKS)
    assert log.numbers == list(range(len(encoded)))
    assert log.crcs == [zlib.crc32(d) for d in encoded] and log.sizes == [len(d) for d in encoded]


def test_only_the_newest_keyframes_are_kept(encoded: list[bytes]) -> None:
    log = FrameLog("sr", keep=2)
    for i, data in enumerate(encoded):
        log.add("VP8", data, i * TICKS, probe_replay.is_vp8_keyframe(data), float(i))
    assert sorted(log.keyframes) == [20, 40] and log.keyframe_count == 3
    assert anchor_numbers(log.timestamps, read_keyframes(log), TICKS) == list(range(len(encoded)))


# ----------------------------------------------------------------- same bytes, and the figures of a phase


def test_same_bytes_compares_frames_of_the_same_number() -> None:
    reference = {1: 0xAA, 2: 0xBB, 3: 0xCC, 4: 0xDD}
    assert same_bytes({1: 0xAA, 2: 0xBB, 3: 0xCC}, reference) == (3, 3)
    assert same_bytes({2: 0xBB, 3: 0x00, 9: 0x99}, reference) == (1, 2)  # 9: viewer 0 never got it
    assert same_bytes({}, reference) == (0, 0)


def test_a_light_viewers_row_over_a_phase(source: probe_source.Source, encoded: list[bytes]) -> None:
    count = len(encoded)
    sent = {n: probe_source.SentFrame(time=100.0 + n / 30 - 0.025, index=n % 6) for n in range(count)}
    log = _log_of(encoded, [5000 + n * TICKS for n in range(count)])
    log.numbers = list(range(count))
    reference = {n: zlib.crc32(encoded[n]) for n in range(count)}
    reference[7] ^= 1  # viewer 0 got other bytes for frame 7
    del reference[8]  # and never got frame 8
    psnr_of = {n: 30.0 + n for n in range(0, count, 2)}
    window = (100.0 + 2 / 30 - 1e-6, 100.0 + 52 / 30 - 1e-6)  # frames 2..51 arrive in it
    row = stream_row(log, window, sent, reference, psnr_of)
    assert row["frames"] == row["numbered"] == 50
    assert row["fps"] == pytest.approx(30.0, abs=0.01)
    assert row["latency_ms"]["p50"] == pytest.approx(25.0, abs=0.01)
    assert row["same_bytes_frames"] == 49 and row["same_bytes"] == pytest.approx(48 / 49, abs=1e-4)
    # PSNR-Y: viewer 0's, on the even frames 2..50 with the same bytes (8 is not vouched for)
    scored = [30.0 + n for n in range(2, 52, 2) if n != 8]
    assert row["psnr_frames"] == len(scored) and row["psnr_y"] == pytest.approx(np.mean(scored), abs=0.01)
    assert row["freezes"]["freezeCount"] == 0
    full = stream_row(log, window, sent, None, psnr_of)  # viewer 0 itself: every frame is its own
    assert full["same_bytes"] is None and full["psnr_frames"] == 25


def test_a_phase_report_of_a_full_and_a_light_viewer(source: probe_source.Source, encoded: list[bytes]) -> None:
    """The whole analysis on logs of real frames: viewer 0's numbers checked against its decoded ones, the light
    viewer's from its keyframes, bytes compared, and the report's JSON and text."""
    count = len(encoded)
    sent = {n: probe_source.SentFrame(time=100.0 + n / 30 - 0.02, index=n % 6) for n in range(count)}
    viewers = [Viewer(0, full=True), Viewer(1, full=False)]
    for offset, viewer in zip((123, (1 << 32) - 9 * TICKS), viewers):
        viewer.phase, viewer.posted_at = 1, 99.9
        for name in ("sr", "raw"):
            viewer.logs[name] = _log_of(encoded, [(offset + n * TICKS) % (1 << 32) for n in range(count)], name=name)
    for name in ("sr", "raw"):
        viewers[0].decoded[name] = {(123 + n * TICKS) % (1 << 32): n for n in range(count)}
        viewers[0].stats[name].psnr_of = {n: 35.0 for n in range(count)}
    viewers[1].logs["sr"].crcs[10] ^= 1  # one frame of other bytes
    checks = probe_viewers.number_frames(viewers[0], TICKS)
    assert checks["sr"]["checked"] == count and checks["sr"]["mismatches"] == 0 and checks["sr"]["anchors"] == 3
    probe_viewers.number_frames(viewers[1], TICKS)
    assert viewers[1].logs["sr"].numbers == list(range(count))
    run = PhaseRun(Phase(1, 2, join=(0, 1)), started=99.0, start=100.0, end=102.0, joined=2)
    run.server = ({"cpu_s": 10.0, "monotonic_s": 100.0}, {"cpu_s": 11.0, "monotonic_s": 102.0})
    run.probe = ({"cpu_s": 5.0, "monotonic_s": 100.0}, {"cpu_s": 5.2, "monotonic_s": 102.0})
    report = probe_viewers.phase_report(run, viewers, sent)
    assert report["server_cores"] == pytest.approx(0.5) and report["probe_cores"] == pytest.approx(0.1)
    light = report["per_viewer"][1]
    assert light["kind"] == "light" and light["join_ms"] == pytest.approx(100.0, abs=0.01)
    assert light["sr"]["same_bytes"] == pytest.approx(1 - 1 / count, abs=1e-4) and light["raw"]["same_bytes"] == 1.0
    assert light["sr"]["psnr_y"] == pytest.approx(35.0) and light["sr"]["psnr_frames"] == count - 1
    assert light["sr"]["latency_ms"]["p50"] == pytest.approx(20.0, abs=0.01)
    assert report["light"]["sr"]["same_bytes_min"] == light["sr"]["same_bytes"]
    full = ViewersReport(
        url="http://x",
        stream="s",
        counts=[2],
        phase_seconds=2.0,
        settle_seconds=0.0,
        kill=0,
        kill_mode="close",
        phases=[report],
        viewers=[],
        server_cost=viewer_cost([(2, 0.5)]),
        probe_cost=viewer_cost([(2, 0.1)]),
        anchoring={"ticks_per_frame": 3000.0, "sr": checks["sr"], "raw": checks["raw"]},
        viewer0=None,
        sender={},
    )
    data = json.loads(full.to_json())
    assert data["phases"][0]["per_viewer"][1]["sr"]["same_bytes"] == light["sr"]["same_bytes"]
    text = full.to_text()
    assert "same bytes on 98.3% of frames" in text and "from viewer 0" in text
    assert "sr 0 wrong of 60" in text


# ----------------------------------------------------------------- the light receiver on a real connection


async def test_a_light_receiver_logs_every_frame_as_sent_and_decodes_none(
    source: probe_source.Source, encoded: list[bytes]
) -> None:
    """A replayed uplink of real content over a real aiortc connection: the light receiver logs each frame with
    the very bytes that were sent, numbers them all from its keyframes, and aiortc's decoder gets nothing."""
    track = probe_replay.ReplayTrack(source, fps=30.0, duration_s=2.0, encoded=encoded)
    track.steady_pts = True
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender.addTransceiver(track, direction="sendonly")
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        transceiver = receiver.getTransceivers()[0]
        light = probe_viewers.attach_light(transceiver.receiver)
        log = FrameLog("raw")
        light.on_frame(log.listener())
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        await asyncio.wait_for(track.done.wait(), 20)
        deadline = time.monotonic() + 3
        while len(log) < len(encoded) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        decoder_queue = transceiver.receiver._RTCRtpReceiver__decoder_queue
        assert decoder_queue.qsize() == 0 and transceiver.receiver.track._queue.qsize() == 0
    finally:
        await sender.close()
        await receiver.close()
    assert len(log) == len(encoded)
    assert log.crcs == [zlib.crc32(d) for d in encoded], "the bytes as sent, in order"
    anchors = read_keyframes(log)
    assert anchors == {0: 0, 20: 20, 40: 40}
    assert anchor_numbers(log.timestamps, anchors, TICKS) == list(range(len(encoded)))
    assert np.all(np.diff(log.arrivals) >= 0)


# ----------------------------------------------------------------- against the server's relay


async def test_viewers_of_a_relayed_stream_get_the_same_720p_bytes(upscaler, default_model_path) -> None:
    """The probe's viewers mode against the server in this process: 1 viewer, then 3, then one vanishes; every
    viewer gets SR on at 1280x720 at more than 15 fps, and the light viewers get the bytes viewer 0 got."""
    from srtc.server.app import create_app
    from srtc.server.config import ServerConfig
    from srtc.server.registry import describe

    from .conftest import serving

    source = probe_source.load_source(None, 30.0, 5)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url:
        report = await asyncio.wait_for(
            probe_viewers.run_viewers(url, [1, 3], phase_s=6.0, settle_s=2.0, kill=1, source=source, uplink="replay"),
            90,
        )
    assert report.stream and [p["viewers"] for p in report.phases] == [1, 3, 2]
    for phase in report.phases:
        assert phase["failed"] == 0 and len(phase["per_viewer"]) == phase["viewers"]
        assert phase["server_listed_viewers"] == phase["viewers"]
        for row in phase["per_viewer"]:
            sr = row["sr"]
            assert row["error"] is None and sr["size"] == "1280x720", row
            assert sr["fps"] > 15 and row["raw"]["fps"] > 15, row
            assert sr["latency_ms"]["p95"] is not None and row["join_ms"] is not None
            if row["kind"] == "light":
                assert sr["same_bytes"] > 0.9 and row["raw"]["same_bytes"] > 0.9, row
                assert sr["psnr_y"] is not None and sr["psnr_y"] > 25, row
    assert [r["kind"] for r in report.phases[1]["per_viewer"]] == ["full", "light", "light"]
    assert [r["viewer"] for r in report.phases[2]["per_viewer"]] == [0, 1]  # viewer 2 vanished, the others watch on
    assert report.phases[2]["server_dropped_after_s"] is not None
    for name in ("sr", "raw"):  # light numbering checked on viewer 0's every decoded frame
        check = report.anchoring[name]
        assert check["checked"] > 100 and check["mismatches"] <= 0.01 * check["checked"], check
    assert report.sender["streams"]["sr"]["width"] == 1280
    assert report.server_cost["to_viewers"] == 3
