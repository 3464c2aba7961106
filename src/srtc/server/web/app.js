// SRTC demo page: sends a 640x360 video (camera or a sample animation) to the
// receiver over WebRTC and shows the two streams it sends back side by side:
// SR-off (as received, 640x360) and SR-on (super-resolved, 1280x720).
// Opened as /?watch=ID the page is a viewer of that sender's stream instead
// (watch.js), and as /?sfu=JANUS_URL&room=N it publishes to and watches a Janus
// room (sfu.js); this file then only lends them the helpers in window.srtcKit.
//
// Plain JS, no build step, no external resources.
'use strict';

(() => {
  const WIDTH = 640;
  const HEIGHT = 360;
  const FPS = 30;
  const STATS_INTERVAL_MS = 1000;
  const ICE_GATHER_TIMEOUT_MS = 3000;
  const LIVE_LIST_INTERVAL_MS = 5000;
  const PARAMS = new URLSearchParams(location.search);
  const WATCH_ID = PARAMS.get('watch');
  // SFU mode (sfu.js): the page talks to a Janus room instead of this server.
  const SFU = PARAMS.get('sfu') ? {
    url: PARAMS.get('sfu').replace(/\/+$/, ''),
    room: Number(PARAMS.get('room') || 1234),
    feed: PARAMS.get('feed') ? Number(PARAMS.get('feed')) : null,
  } : null;
  const SAMPLES = [
    '/static/samples/astronaut.jpg',
    '/static/samples/coffee.jpg',
    '/static/samples/chelsea.jpg',
    '/static/samples/rocket.jpg',
    '/static/samples/hubble_deep_field.jpg',
  ];

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $('start'),
    stop: $('stop'),
    source: $('source'),
    srToggle: $('sr-toggle'),
    status: $('status'),
    videoRaw: $('video-raw'),
    videoSr: $('video-sr'),
    videoLocal: $('video-local'),
    resRaw: $('res-raw'),
    resSr: $('res-sr'),
    fpsRaw: $('fps-raw'),
    fpsSr: $('fps-sr'),
    srTitle: $('sr-title'),
    srSub: $('sr-sub'),
    uplinkInfo: $('uplink-info'),
    sessionId: $('session-id'),
    modelName: $('model-name'),
    share: $('share'),
    shareLink: $('share-link'),
    shareCopy: $('share-copy'),
    shareStatus: $('share-status'),
    live: $('live-streams'),
    liveList: $('live-list'),
    st: {
      p50: $('st-p50'),
      p95: $('st-p95'),
      fps: $('st-fps'),
      frames: $('st-frames'),
      skipped: $('st-skipped'),
      res: $('st-res'),
      sr: $('st-sr'),
      params: $('st-params'),
    },
  };

  // State exposed for tests and for poking around in the console.
  const state = {
    connected: false,
    sessionId: null,
    streamId: null, // what viewers watch: /?watch=streamId
    error: null,
    phase: 'idle', // idle | connecting | connected | error | stopped
    srEnabled: ui.srToggle.checked,
    serverStats: null,
  };
  window.srtcState = state;

  // ---------------------------------------------------------------- helpers

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const fmt = (v, digits = 0) => (isNum(v) ? v.toFixed(digits) : '—');
  const fmtRes = (o) => (o && isNum(o.width) && isNum(o.height) ? `${o.width}×${o.height}` : '—');
  const fmtCount = (v) => {
    if (!isNum(v)) return '—';
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
    if (v >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
    return String(Math.round(v));
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function setStatus(phase, text) {
    state.phase = phase;
    ui.status.dataset.state = phase;
    ui.status.textContent = text;
    document.body.dataset.phase = phase;
  }

  function setError(message) {
    state.error = message;
    state.connected = false;
    setStatus('error', `Error: ${message}`);
  }

  async function errorFromResponse(resp) {
    let message = `${resp.status} ${resp.statusText}`.trim();
    try {
      const text = await resp.text();
      try {
        const body = JSON.parse(text);
        if (body && body.error) message = String(body.error);
      } catch (_) {
        if (text) message += `: ${text.slice(0, 200)}`;
      }
    } catch (_) { /* keep the status line */ }
    return new Error(message);
  }

  // A session's routes need the secret the answer to its offer carried (only this page may change or end it).
  const secretHeaders = () => (state.sessionSecret ? { 'X-Session-Secret': state.sessionSecret } : {});

  async function postJson(url, body) {
    const resp = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...secretHeaders() },
      body: JSON.stringify(body),
    });
    if (!resp.ok) throw await errorFromResponse(resp);
    return resp.json();
  }

  // ----------------------------------------------------- sample video source

  // A 640x360 canvas animation over photographs: slow pan and zoom
  // (Ken Burns), cross-fading from one photograph to the next.
  class SampleSource {
    constructor(urls, width, height, fps) {
      this.urls = urls;
      this.width = width;
      this.height = height;
      this.fps = fps;
      this.images = [];
      this.canvas = null;
      this.stream = null;
      this.running = false;
      this.t0 = 0;
      this.slide = 7000; // ms each photograph is on screen (fade included)
      this.fade = 1500; // ms cross-fade
      this.timer = null;
      this.raf = null;
    }

    static loadImage(url) {
      return new Promise((resolve) => {
        const img = new Image();
        img.decoding = 'async';
        img.onload = () => resolve(img);
        img.onerror = () => resolve(null);
        img.src = url;
      });
    }

    // Deterministic pan/zoom path for photograph i.
    static path(i) {
      const paths = [
        { z0: 1.0, z1: 1.3, p0: [0.5, 0.2], p1: [0.45, 0.35] },
        { z0: 1.25, z1: 1.0, p0: [0.2, 0.6], p1: [0.7, 0.5] },
        { z0: 1.0, z1: 1.35, p0: [0.3, 0.5], p1: [0.55, 0.35] },
        { z0: 1.2, z1: 1.05, p0: [0.8, 0.3], p1: [0.35, 0.6] },
        { z0: 1.0, z1: 1.4, p0: [0.5, 0.5], p1: [0.6, 0.45] },
      ];
      return paths[i % paths.length];
    }

    async start() {
      const loaded = await Promise.all(this.urls.map(SampleSource.loadImage));
      this.images = loaded.filter(Boolean);
      if (!this.images.length) throw new Error('could not load the sample photographs');
      this.canvas = document.createElement('canvas');
      this.canvas.width = this.width;
      this.canvas.height = this.height;
      this.ctx = this.canvas.getContext('2d', { alpha: false });
      this.ctx.imageSmoothingEnabled = true;
      this.ctx.imageSmoothingQuality = 'high';
      this.running = true;
      this.t0 = performance.now();
      this.draw(this.t0);
      this.stream = this.canvas.captureStream(this.fps);
      this.loop();
      return this.stream;
    }

    loop() {
      if (!this.running) return;
      const next = () => {
        this.raf = null;
        this.timer = null;
        if (!this.running) return;
        this.draw(performance.now());
        this.loop();
      };
      // requestAnimationFrame stops in hidden tabs; keep the stream going.
      if (document.hidden) this.timer = setTimeout(next, 1000 / this.fps);
      else this.raf = requestAnimationFrame(next);
    }

    drawImage(img, index, progress, alpha) {
      const { width: W, height: H, ctx } = this;
      const p = SampleSource.path(index);
      const e = progress < 0 ? 0 : progress > 1 ? 1 : progress;
      const ease = e * e * (3 - 2 * e);
      const zoom = p.z0 + (p.z1 - p.z0) * ease;
      const px = p.p0[0] + (p.p1[0] - p.p0[0]) * ease;
      const py = p.p0[1] + (p.p1[1] - p.p0[1]) * ease;
      const cover = Math.max(W / img.naturalWidth, H / img.naturalHeight);
      const s = cover * zoom;
      const dw = img.naturalWidth * s;
      const dh = img.naturalHeight * s;
      ctx.globalAlpha = alpha;
      ctx.drawImage(img, (W - dw) * px, (H - dh) * py, dw, dh);
    }

    draw(now) {
      const t = now - this.t0;
      const n = this.images.length;
      const step = this.slide - this.fade;
      const k = Math.floor(t / step);
      const local = t - k * step;
      const cur = k % n;
      const prev = (k - 1 + n) % n;
      const ctx = this.ctx;
      ctx.globalAlpha = 1;
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, this.width, this.height);
      // Photograph k runs from k*step to k*step + slide; the first `fade`
      // ms of it overlap the end of photograph k-1.
      if (k > 0 && local < this.fade && n > 1) {
        this.drawImage(this.images[prev], prev, (local + step) / this.slide, 1);
        this.drawImage(this.images[cur], cur, local / this.slide, local / this.fade);
      } else {
        this.drawImage(this.images[cur], cur, local / this.slide, 1);
      }
      ctx.globalAlpha = 1;
    }

    stop() {
      this.running = false;
      if (this.raf) cancelAnimationFrame(this.raf);
      if (this.timer) clearTimeout(this.timer);
      if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
      this.stream = null;
    }
  }

  // ------------------------------------------------------------ frame rates

  // Counts presented frames of a <video> with requestVideoFrameCallback;
  // used when the receiver's stats have no framesPerSecond.
  class FrameCounter {
    constructor(video) {
      this.video = video;
      this.count = 0;
      this.last = performance.now();
      this.fps = null;
      this.active = false;
      this.supported = 'requestVideoFrameCallback' in HTMLVideoElement.prototype;
    }

    start() {
      if (!this.supported || this.active) return;
      this.active = true;
      const cb = () => {
        if (!this.active) return;
        this.count += 1;
        this.video.requestVideoFrameCallback(cb);
      };
      this.video.requestVideoFrameCallback(cb);
    }

    sample() {
      const now = performance.now();
      const dt = (now - this.last) / 1000;
      if (dt > 0.25) {
        this.fps = this.count / dt;
        this.count = 0;
        this.last = now;
      }
      return this.fps;
    }

    stop() {
      this.active = false;
      this.fps = null;
      this.count = 0;
    }
  }

  // --------------------------------------------------------------- session

  let pc = null;
  let localStream = null;
  let sample = null;
  let statsTimer = null;
  let counters = null;
  const lastInbound = new Map();

  // The peer connection's settings: the server's STUN/TURN servers with fresh credentials (GET /ice-servers;
  // none on loopback), and relay-only ICE with ?relay=1, which checks a TURN setup end to end.
  async function peerConfig() {
    let iceServers = [];
    try {
      const res = await fetch('/ice-servers', { cache: 'no-store' });
      if (res.ok) iceServers = (await res.json()).iceServers || [];
    } catch (err) {
      console.warn('no ICE servers from the server:', err);
    }
    const relayOnly = new URLSearchParams(location.search).get('relay') === '1';
    return { iceServers, iceTransportPolicy: relayOnly ? 'relay' : 'all' };
  }

  function waitIceGathering(peer, timeoutMs) {
    if (peer.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        peer.removeEventListener('icegatheringstatechange', check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => {
        if (peer.iceGatheringState === 'complete') done();
      };
      const timer = setTimeout(done, timeoutMs);
      peer.addEventListener('icegatheringstatechange', check);
    });
  }

  async function openSource(kind) {
    if (kind === 'camera') {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error('this browser has no camera access here (needs https or localhost)');
      }
      return navigator.mediaDevices.getUserMedia({
        video: { width: WIDTH, height: HEIGHT, frameRate: { ideal: FPS } },
        audio: false,
      });
    }
    sample = new SampleSource(SAMPLES, WIDTH, HEIGHT, FPS);
    return sample.start();
  }

  // Stop the sample animation, if one runs (the tracks themselves are stopped by whoever holds the stream).
  function closeSource() {
    if (sample) sample.stop();
    sample = null;
  }

  function attachTrack(index, track) {
    const video = index === 1 ? ui.videoSr : index === 2 ? ui.videoRaw : null;
    if (!video || !track) return;
    const current = video.srcObject && video.srcObject.getVideoTracks()[0];
    if (current === track) return;
    video.srcObject = new MediaStream([track]);
    video.play().catch(() => { /* autoplay: muted videos play anyway */ });
  }

  async function start() {
    if (pc) return;
    state.error = null;
    state.connected = false;
    state.sessionId = null;
    state.sessionSecret = null;
    ui.start.disabled = true;
    ui.source.disabled = true;
    ui.stop.disabled = false;
    setStatus('connecting', 'Connecting: opening the source…');

    try {
      localStream = await openSource(ui.source.value);
      const track = localStream.getVideoTracks()[0];
      if (!track) throw new Error('the source has no video track');
      if ('contentHint' in track) track.contentHint = 'detail';
      ui.videoLocal.srcObject = localStream;
      ui.videoLocal.play().catch(() => {});

      setStatus('connecting', 'Connecting: negotiating with the receiver…');
      pc = new RTCPeerConnection(await peerConfig());
      const peer = pc;

      // Exactly three transceivers, in this order (the server's contract):
      // 0 = uplink (sendonly), 1 = SR-on back (recvonly), 2 = SR-off back.
      const up = pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [localStream],
        sendEncodings: [{ maxBitrate: 2500000, maxFramerate: FPS }],
      });
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });

      try {
        const params = up.sender.getParameters();
        params.degradationPreference = 'maintain-resolution';
        if (params.encodings && params.encodings.length) {
          params.encodings[0].maxBitrate = 2500000;
          params.encodings[0].maxFramerate = FPS;
        }
        await up.sender.setParameters(params);
      } catch (err) {
        console.warn('setParameters(degradationPreference) failed:', err);
      }

      pc.addEventListener('track', (ev) => {
        attachTrack(peer.getTransceivers().indexOf(ev.transceiver), ev.track);
      });
      pc.addEventListener('connectionstatechange', () => onConnectionState(peer));
      pc.addEventListener('iceconnectionstatechange', () => onConnectionState(peer));

      // The receiver tracks exist from the start in Unified Plan; attach
      // them by transceiver index so arrival order never matters.
      pc.getTransceivers().forEach((t, i) => attachTrack(i, t.receiver && t.receiver.track));

      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc, ICE_GATHER_TIMEOUT_MS);
      if (pc !== peer) return; // stopped meanwhile

      const answer = await postJson('/offer', {
        sdp: pc.localDescription.sdp,
        type: pc.localDescription.type,
        sr: ui.srToggle.checked,
      });
      if (pc !== peer) return;
      if (!answer || !answer.sdp) throw new Error('the receiver sent no answer');
      state.sessionId = answer.id || null;
      state.sessionSecret = answer.secret || null;
      state.streamId = answer.stream || null;
      state.srEnabled = ui.srToggle.checked;
      showShare(state.streamId);
      pollLiveStreams();
      ui.sessionId.textContent = state.sessionId ? `session ${state.sessionId}` : 'session ?';
      await pc.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
      setStatus('connecting', 'Connecting: establishing the media path…');
      onConnectionState(pc);
      startStats();
    } catch (err) {
      console.error(err);
      const message = (err && err.message) || String(err);
      await teardown(false);
      setError(message);
    }
  }

  function onConnectionState(peer) {
    if (peer !== pc) return;
    const cs = peer.connectionState;
    const ice = peer.iceConnectionState;
    if (cs === 'connected' || (cs === undefined && (ice === 'connected' || ice === 'completed'))) {
      if (!state.connected) {
        state.connected = true;
        state.error = null;
        setStatus('connected', 'Connected: streaming');
      }
    } else if (cs === 'failed' || ice === 'failed') {
      setError('the connection to the receiver failed (ICE/DTLS)');
    } else if (cs === 'disconnected') {
      state.connected = false;
      setStatus('connecting', 'Connection interrupted: reconnecting…');
    } else if (cs === 'closed') {
      state.connected = false;
    }
  }

  async function teardown(notifyServer) {
    stopStats();
    const id = state.sessionId;
    const peer = pc;
    pc = null;
    if (notifyServer && id) {
      try {
        await fetch(`/sessions/${encodeURIComponent(id)}`, { method: 'DELETE', headers: secretHeaders() });
      } catch (err) {
        console.warn('DELETE session failed:', err);
      }
    }
    if (peer) {
      try { peer.close(); } catch (_) { /* already closed */ }
    }
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    if (sample) sample.stop();
    sample = null;
    for (const v of [ui.videoRaw, ui.videoSr, ui.videoLocal]) v.srcObject = null;
    state.connected = false;
    state.sessionId = null;
    state.sessionSecret = null;
    state.streamId = null;
    showShare(null);
    lastInbound.clear();
    ui.start.disabled = false;
    ui.source.disabled = false;
    ui.stop.disabled = true;
    ui.sessionId.textContent = 'no session';
    ui.uplinkInfo.textContent = '—';
    resetLabels();
  }

  async function stop() {
    ui.stop.disabled = true;
    await teardown(true);
    state.error = null;
    setStatus('stopped', 'Stopped');
  }

  async function onSrToggle() {
    const enabled = ui.srToggle.checked;
    renderSrLabels(enabled);
    if (!state.sessionId) {
      state.srEnabled = enabled;
      return;
    }
    ui.srToggle.disabled = true;
    try {
      const res = await postJson(`/sessions/${encodeURIComponent(state.sessionId)}/sr`, { enabled });
      state.srEnabled = res && typeof res.sr_enabled === 'boolean' ? res.sr_enabled : enabled;
      ui.srToggle.checked = state.srEnabled;
      renderSrLabels(state.srEnabled);
    } catch (err) {
      ui.srToggle.checked = !enabled;
      renderSrLabels(!enabled);
      state.error = err.message;
      ui.status.textContent = `SR switch failed: ${err.message}`;
    } finally {
      ui.srToggle.disabled = false;
    }
  }

  function renderSrLabels(enabled) {
    ui.srTitle.textContent = enabled ? 'SR on' : 'SR off';
    ui.srSub.textContent = enabled ? 'neural 2×' : 'bicubic 2×';
    document.body.dataset.sr = enabled ? 'on' : 'off';
  }

  // ---------------------------------------------------- viewers: link, list

  const watchUrl = (stream) => `${location.origin}/?watch=${encodeURIComponent(stream)}`;

  // The link to this sender's stream, once the server has named it; hidden without one.
  function showShare(stream) {
    ui.share.hidden = !stream;
    ui.share.dataset.stream = stream || '';
    ui.shareLink.value = stream ? watchUrl(stream) : '';
    ui.shareStatus.textContent = '';
    ui.shareStatus.dataset.state = '';
  }

  async function copyShareLink() {
    const link = ui.shareLink.value;
    if (!link) return;
    try {
      if (!navigator.clipboard || !window.isSecureContext) throw new Error('no clipboard here');
      await navigator.clipboard.writeText(link);
      ui.shareStatus.textContent = 'copied';
      ui.shareStatus.dataset.state = 'ok';
    } catch (_) {
      // Without clipboard access (plain http off localhost, or refused), leave the link selected to copy by hand.
      ui.shareLink.focus();
      ui.shareLink.select();
      ui.shareStatus.textContent = 'select the link and copy it (Ctrl+C)';
      ui.shareStatus.dataset.state = '';
    }
  }

  function liveItem(stream) {
    const li = document.createElement('li');
    const a = document.createElement('a');
    a.href = watchUrl(stream.id);
    a.target = '_blank';
    a.rel = 'noopener';
    a.textContent = `watch ${stream.id}`;
    li.appendChild(a);
    const viewers = isNum(stream.viewers) ? ` · ${stream.viewers} watching` : '';
    // A stream reports 0x0 until its first frame: say nothing of its size until then.
    const size = stream.width > 0 && stream.height > 0 ? ` ${fmtRes(stream)}` : ' starting';
    li.appendChild(document.createTextNode(`${size}${viewers}`));
    if (stream.id === state.streamId) {
      const mine = document.createElement('span');
      mine.className = 'mine';
      mine.textContent = ' (yours)';
      li.appendChild(mine);
    }
    return li;
  }

  // GET /streams names the streams only to the operator (the server's own machine); others see none here.
  async function pollLiveStreams() {
    try {
      const resp = await fetch('/streams', { cache: 'no-store' });
      const body = resp.ok ? await resp.json() : null;
      const streams = body && Array.isArray(body.streams) ? body.streams.filter((s) => s && s.id) : [];
      ui.liveList.replaceChildren(...streams.map(liveItem));
      ui.live.hidden = streams.length === 0;
    } catch (_) {
      ui.live.hidden = true;
    }
  }

  // ----------------------------------------------------------------- stats

  function resetLabels() {
    for (const el of [ui.resRaw, ui.resSr]) el.textContent = '—';
    for (const el of [ui.fpsRaw, ui.fpsSr]) el.textContent = '— fps';
    if (counters) counters.forEach((c) => c.stop());
    counters = null;
  }

  function updateResolution(video, el) {
    el.textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : '—';
  }

  async function receiverFps(peer, index, counter, memo = lastInbound) {
    let fps = null;
    try {
      const t = peer.getTransceivers()[index];
      const report = await t.receiver.getStats();
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind === 'audio') return;
        if (isNum(s.framesPerSecond)) {
          fps = s.framesPerSecond;
        } else if (isNum(s.framesDecoded)) {
          const prev = memo.get(index);
          if (prev && s.timestamp > prev.timestamp) {
            fps = ((s.framesDecoded - prev.frames) * 1000) / (s.timestamp - prev.timestamp);
          }
          memo.set(index, { frames: s.framesDecoded, timestamp: s.timestamp });
        }
      });
    } catch (_) { /* stats are best effort */ }
    const counted = counter ? counter.sample() : null;
    return isNum(fps) ? fps : counted;
  }

  async function uplinkInfo(peer) {
    try {
      const report = await peer.getTransceivers()[0].sender.getStats();
      let out = null;
      report.forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind !== 'audio') out = s;
      });
      if (!out) return '—';
      const res = isNum(out.frameWidth) ? `${out.frameWidth}×${out.frameHeight}` : '—';
      const fps = isNum(out.framesPerSecond) ? `${out.framesPerSecond.toFixed(0)} fps` : '— fps';
      const limit = out.qualityLimitationReason && out.qualityLimitationReason !== 'none'
        ? ` · limited: ${out.qualityLimitationReason}` : '';
      return `${res} · ${fps}${limit}`;
    } catch (_) {
      return '—';
    }
  }

  async function pollServer() {
    try {
      // Its own session's figures need its id and secret; without a session the page gets the totals.
      const query = state.sessionId ? `?id=${encodeURIComponent(state.sessionId)}` : '';
      const resp = await fetch(`/stats${query}`, { cache: 'no-store', headers: secretHeaders() });
      if (!resp.ok) return;
      const body = await resp.json();
      state.serverStats = body;
      renderServer(body);
    } catch (_) { /* the server may be busy; try again next tick */ }
  }

  function renderServer(body) {
    const model = (body && body.model) || {};
    if (model.name) ui.modelName.textContent = model.name;
    ui.st.params.textContent = fmtCount(model.params);
    const sessions = Array.isArray(body && body.sessions) ? body.sessions : [];
    const mine = sessions.find((s) => s && s.id === state.sessionId);
    if (!mine) {
      for (const k of ['p50', 'p95', 'fps', 'frames', 'skipped', 'sr']) ui.st[k].textContent = '—';
      ui.st.res.textContent = '';
      return;
    }
    const ms = mine.sr_ms || {};
    ui.st.p50.textContent = isNum(ms.p50) ? `${ms.p50.toFixed(1)} ms` : '—';
    ui.st.p95.textContent = isNum(ms.p95) ? `${ms.p95.toFixed(1)} ms` : '—';
    ui.st.fps.textContent = `${fmt(mine.fps_in, 1)} / ${fmt(mine.fps_out, 1)}`;
    ui.st.frames.textContent = `${fmtCount(mine.frames_in)} / ${fmtCount(mine.frames_out)}`;
    ui.st.skipped.textContent = fmtCount(mine.skipped);
    ui.st.res.textContent = `${fmtRes(mine.input)} → ${fmtRes(mine.output)}`;
    ui.st.sr.textContent = srMode(mine);
    document.getElementById('st-budget').textContent = budgetLine(mine.budget_ms);
    const fz = mine.freezes_in || {};
    document.getElementById('st-freezes').textContent = isNum(fz.freezeCount)
      ? `${fz.freezeCount} (${fmt(fz.totalFreezesDuration, 1)} s)` : '—';
    const rx = mine.receiver || {};
    document.getElementById('st-nack').textContent = isNum(rx.nackCount) ? `${rx.nackCount} / ${fmtCount(rx.pliCount)}` : '—';
    const rates = returnKbps(mine);
    document.getElementById('st-return').textContent = `${rates.sr} / ${rates.raw}`;
    const modelName = (body.model && body.model.name) || '—';
    document.getElementById('on-screen').textContent =
      `SR ${ui.st.sr.textContent} · SR on ${rates.sr} kbps, encoded here · ` +
      `SR off ${rates.raw} kbps, ${rates.rawMode} · model ${modelName}`;
  }

  // What each returned stream sends: SR on is encoded at the viewer link's rate (srtc/server/return_rate.py);
  // SR off is the sender's own encode, forwarded (srtc/server/forward.py), or re-encoded where it cannot be.
  function returnKbps(session) {
    const encoded = session.return_bitrate || {};
    const raw = (session.streams && session.streams.raw) || {};
    const kbps = (v) => (isNum(v) ? fmtCount(Math.round(v)) : '—');
    const forwarded = raw.mode === 'forwarded';
    return {
      sr: kbps(encoded.sr && encoded.sr.target_kbps),
      raw: forwarded ? kbps(raw.kbps) : kbps(encoded.raw && encoded.raw.target_kbps),
      rawMode: forwarded ? 'forwarded as sent' : 're-encoded',
    };
  }

  // SR on, and how much of it the generator does: under load the server sends bicubic on some frames.
  function srMode(session) {
    const el = document.getElementById('st-sr');
    el.title = '';
    if (typeof session.sr_enabled !== 'boolean') return '—';
    if (!session.sr_enabled) return 'off (bicubic)';
    const gov = session.governor;
    if (!gov || gov.mode === 'generator') return 'on (neural)';
    // Under load the server first runs a faster build of the generator (int8), then sends bicubic on some
    // frames rather than fall behind (srtc/server/governor.py).
    const fast = gov.tier === 'fast';
    const model = fast ? `the fast model (${session.fast_upscaler || 'int8'})` : 'the generator';
    const ms = fast ? gov.fast_ms_p50 : gov.generator_ms_p50;
    el.title = `${fast ? `The full generator takes ${fmt(gov.generator_ms_p50, 1)} ms a frame, so ` : ''}`
      + `${model} takes ${fmt(ms, 1)} ms a frame against a ${fmt(gov.budget_ms, 1)} ms budget: `
      + `${Math.round(gov.share * 100)}% of frames go through it${gov.share < 1 ? ', the rest get bicubic' : ''}.`;
    // Short enough for the tile (about 11 characters); the tooltip above says which model and why.
    if (gov.mode === 'fast') return 'on (int8)';
    return `on (${Math.round(gov.share * 100)}%)`;
  }

  const BUDGET_STAGES = ['receive', 'decode', 'wait', 'sr', 'encode', 'send'];

  function budgetLine(budget) {
    if (!budget || !budget.total || !isNum(budget.total.p50)) return 'latency budget: —';
    const parts = BUDGET_STAGES.filter((s) => budget[s] && isNum(budget[s].p50))
      .map((s) => `${s} ${budget[s].p50.toFixed(1)}`);
    return `latency budget, p50 ms: ${parts.join(' · ')} = ${budget.total.p50.toFixed(1)} (p95 ${fmt(budget.total.p95, 0)})`;
  }

  async function tick() {
    const peer = pc;
    if (!peer) return;
    updateResolution(ui.videoRaw, ui.resRaw);
    updateResolution(ui.videoSr, ui.resSr);
    const [fpsSr, fpsRaw, up] = await Promise.all([
      receiverFps(peer, 1, counters && counters[0]),
      receiverFps(peer, 2, counters && counters[1]),
      uplinkInfo(peer),
      pollServer(),
    ]);
    if (peer !== pc) return;
    ui.fpsSr.textContent = `${fmt(fpsSr, 0)} fps`;
    ui.fpsRaw.textContent = `${fmt(fpsRaw, 0)} fps`;
    ui.uplinkInfo.textContent = up;
  }

  function startStats() {
    stopStats();
    counters = [new FrameCounter(ui.videoSr), new FrameCounter(ui.videoRaw)];
    counters.forEach((c) => c.start());
    tick();
    statsTimer = setInterval(tick, STATS_INTERVAL_MS);
  }

  function stopStats() {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
  }

  // ----------------------------------------------------------------- wiring

  // Both modes: the returned videos' labels and placeholders.
  ui.videoRaw.addEventListener('resize', () => updateResolution(ui.videoRaw, ui.resRaw));
  ui.videoSr.addEventListener('resize', () => updateResolution(ui.videoSr, ui.resSr));
  for (const v of [ui.videoRaw, ui.videoSr]) {
    v.addEventListener('playing', () => v.closest('.panel').classList.add('live'));
    v.addEventListener('emptied', () => v.closest('.panel').classList.remove('live'));
  }

  // Helpers the viewer (watch.js) shares with the sender.
  window.srtcKit = {
    ui, isNum, fmt, fmtCount, fmtRes, sleep, setStatus, errorFromResponse, waitIceGathering, peerConfig,
    FrameCounter, receiverFps, renderSrLabels, openSource, closeSource, watchId: WATCH_ID, sfu: SFU,
  };
  document.body.dataset.mode = WATCH_ID !== null ? 'watch' : SFU !== null ? 'sfu' : 'send';
  // Show the model name before the first session, if the server is up.
  pollServer();
  if (WATCH_ID !== null || SFU !== null) return; // watch.js or sfu.js runs the page

  ui.start.addEventListener('click', () => { start(); });
  ui.stop.addEventListener('click', () => { stop(); });
  ui.srToggle.addEventListener('change', () => { onSrToggle(); });
  ui.shareCopy.addEventListener('click', () => { copyShareLink(); });
  window.addEventListener('pagehide', () => {
    if (state.sessionId) {
      fetch(`/sessions/${encodeURIComponent(state.sessionId)}`,
        { method: 'DELETE', keepalive: true, headers: secretHeaders() })
        .catch(() => {});
    }
  });

  renderSrLabels(ui.srToggle.checked);
  setStatus('idle', 'Idle: press Start');
  pollLiveStreams();
  setInterval(pollLiveStreams, LIVE_LIST_INTERVAL_MS);

  // Exposed for debugging from the console.
  window.srtc = { start, stop, sleep, peer: () => pc };
})();
