// SRTC demo page, watch mode (/?watch=ID): the page is a viewer of a sender's stream. It offers two
// receive-only video m-lines to POST /streams/ID/watch, 0 = SR on (1280x720) and 1 = SR off (the sender's
// own 640x360 frames, forwarded), and shows them side by side as the sender's page does, with the figures
// the server gives a viewer (GET /viewers/{id}) and the stream (GET /streams/ID). When the sender leaves
// (GET /streams/ID answers 404, the viewer's stream_state is "ended", or the connection or the tracks end
// while the stream is gone) the page says so and stops the videos. Leave closes the viewer on the server.
//
// Plain JS, no build step. window.srtcWatch exposes the viewer's state for tests and the console.
'use strict';

(() => {
  const kit = window.srtcKit;
  if (!kit || kit.watchId === null) return;

  const { ui, isNum, fmt, fmtCount } = kit;
  const STREAM = kit.watchId;
  const POLL_MS = 1000;
  const ICE_GATHER_TIMEOUT_MS = 3000;
  const ENDED_TEXT = 'The stream has ended: its sender left.';
  const GONE = 'gone'; // what getStream() gives for a 404
  const SECRET_HEADER = 'X-Session-Secret';

  const $ = (id) => document.getElementById(id);
  const el = {
    watch: $('watch'),
    leave: $('leave'),
    tagline: document.querySelector('.tagline'),
    stream: $('watch-stream'),
    viewer: $('watch-viewer'),
    onScreen: $('on-screen'),
    input: $('wt-input'),
    sr: $('wt-sr'),
    viewers: $('wt-viewers'),
    age: $('wt-age'),
    fps: $('wt-fps'),
    kbps: $('wt-kbps'),
    frames: $('wt-frames'),
    keyframes: $('wt-keyframes'),
  };

  const state = {
    stream: STREAM,
    viewerId: null,
    phase: 'idle', // idle | connecting | connected | error | ended | stopped
    connected: false,
    ended: false,
    error: null,
    errorStatus: null, // the HTTP status of a refused watch offer (404 no such stream, 503 full, 400)
    info: null, // the last GET /streams/ID
    viewer: null, // the last GET /viewers/{id}
  };
  window.srtcWatch = state;

  let pc = null;
  let secret = null;
  let timer = null;
  let ticking = false;
  let counters = null;
  const inbound = new Map();

  const enc = encodeURIComponent;
  const secretHeaders = () => (secret ? { [SECRET_HEADER]: secret } : {});

  function setPhase(phase, text) {
    state.phase = phase;
    kit.setStatus(phase, text);
  }

  function setError(message) {
    state.error = message;
    state.connected = false;
    setPhase('error', `Error: ${message}`);
  }

  // ------------------------------------------------------------- the server

  async function postOffer(desc) {
    const resp = await fetch(`/streams/${enc(STREAM)}/watch`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ sdp: desc.sdp, type: desc.type }),
    });
    if (!resp.ok) {
      state.errorStatus = resp.status;
      throw await kit.errorFromResponse(resp);
    }
    return resp.json();
  }

  // The stream's public figures; GONE once its sender has left; null when the server did not answer.
  async function getStream() {
    try {
      const resp = await fetch(`/streams/${enc(STREAM)}`, { cache: 'no-store' });
      if (resp.status === 404) return GONE;
      return resp.ok ? await resp.json() : null;
    } catch (_) {
      return null;
    }
  }

  async function getViewer(id) {
    if (!id) return null;
    try {
      const resp = await fetch(`/viewers/${enc(id)}`, { cache: 'no-store', headers: secretHeaders() });
      return resp.ok ? await resp.json() : null;
    } catch (_) {
      return null;
    }
  }

  function deleteViewer(id, keepalive = false) {
    if (!id) return Promise.resolve();
    return fetch(`/viewers/${enc(id)}`, { method: 'DELETE', keepalive, headers: secretHeaders() })
      .catch((err) => console.warn('DELETE viewer failed:', err));
  }

  // ------------------------------------------------------------- the viewer

  function attach(peer, index, track) {
    const video = index === 0 ? ui.videoSr : index === 1 ? ui.videoRaw : null;
    if (!video || !track) return;
    const current = video.srcObject && video.srcObject.getVideoTracks()[0];
    if (current === track) return;
    track.addEventListener('ended', () => confirmEnd(peer));
    video.srcObject = new MediaStream([track]);
    video.play().catch(() => { /* autoplay: muted videos play anyway */ });
  }

  function newPeer(config) {
    const peer = new RTCPeerConnection(config);
    // Two receive-only m-lines, in the server's order: 0 = SR on, 1 = SR off.
    peer.addTransceiver('video', { direction: 'recvonly' });
    peer.addTransceiver('video', { direction: 'recvonly' });
    peer.addEventListener('track', (ev) => attach(peer, peer.getTransceivers().indexOf(ev.transceiver), ev.track));
    peer.addEventListener('connectionstatechange', () => onConnectionState(peer));
    peer.getTransceivers().forEach((t, i) => attach(peer, i, t.receiver && t.receiver.track));
    return peer;
  }

  async function watch() {
    if (pc) return;
    Object.assign(state, { viewerId: null, connected: false, ended: false, error: null, errorStatus: null });
    secret = null;
    el.watch.disabled = true;
    el.leave.disabled = false;
    setPanels('no video');
    setPhase('connecting', `Connecting: asking the server for stream ${STREAM}…`);
    const config = await kit.peerConfig();
    if (el.leave.disabled) return; // left while the page asked for the ICE servers
    const peer = newPeer(config);
    pc = peer;
    try {
      await peer.setLocalDescription(await peer.createOffer());
      await kit.waitIceGathering(peer, ICE_GATHER_TIMEOUT_MS);
      if (pc !== peer) return; // left meanwhile
      const answer = await postOffer(peer.localDescription);
      if (!answer || !answer.sdp) throw new Error('the server sent no answer');
      secret = answer.secret || null;
      if (pc !== peer) {
        deleteViewer(answer.id);
        return;
      }
      state.viewerId = answer.id || null;
      el.viewer.textContent = state.viewerId ? `viewer ${state.viewerId}` : '';
      await peer.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
      setPhase('connecting', 'Connecting: establishing the media path…');
      onConnectionState(peer);
      startPolling();
    } catch (err) {
      console.error(err);
      if (pc !== peer) return;
      const message = (err && err.message) || String(err);
      await teardown(true);
      setError(message);
    }
  }

  function onConnectionState(peer) {
    if (peer !== pc) return;
    const cs = peer.connectionState;
    if (cs === 'connected') {
      if (!state.connected) {
        state.connected = true;
        setPhase('connected', `Watching stream ${STREAM}`);
      }
    } else if (cs === 'failed' || cs === 'closed') {
      state.connected = false;
      confirmEnd(peer, () => setError('the connection to the server failed (ICE/DTLS)'));
    } else if (cs === 'disconnected') {
      state.connected = false;
      setPhase('connecting', 'Connection interrupted: reconnecting…');
      confirmEnd(peer);
    }
  }

  // The connection or a track has ended: say that the stream ended if the server says so, else `otherwise`.
  async function confirmEnd(peer, otherwise) {
    if (peer !== pc) return;
    const info = await getStream();
    if (peer !== pc) return;
    if (info === GONE) end();
    else if (otherwise) otherwise();
  }

  async function end() {
    if (state.ended) return;
    state.ended = true;
    // The server closes the viewers of a stream whose sender has left: nothing to DELETE.
    await teardown(false);
    el.watch.disabled = true; // the stream is gone for good
    el.onScreen.textContent = '—';
    for (const tile of [el.viewers, el.fps, el.kbps]) tile.textContent = '—'; // totals stay, as a record
    setPanels('stream ended');
    setPhase('ended', ENDED_TEXT);
  }

  async function leave() {
    el.leave.disabled = true;
    const id = state.viewerId;
    await teardown(true);
    setPhase('stopped', id ? `Left stream ${STREAM}` : 'Stopped');
  }

  async function teardown(notifyServer) {
    stopPolling();
    const peer = pc;
    const id = state.viewerId;
    pc = null;
    if (notifyServer && id) await deleteViewer(id);
    if (peer) {
      try { peer.close(); } catch (_) { /* already closed */ }
    }
    for (const v of [ui.videoSr, ui.videoRaw]) {
      v.pause();
      v.srcObject = null;
    }
    state.connected = false;
    state.viewerId = null;
    secret = null;
    inbound.clear();
    el.watch.disabled = false;
    el.leave.disabled = true;
    el.viewer.textContent = '';
    for (const label of [ui.resSr, ui.resRaw]) label.textContent = '—';
    for (const label of [ui.fpsSr, ui.fpsRaw]) label.textContent = '— fps';
  }

  function setPanels(text) {
    for (const p of document.querySelectorAll('.panel .placeholder')) p.textContent = text;
  }

  // ---------------------------------------------------------------- figures

  function fmtAge(s) {
    if (!isNum(s)) return '—';
    const m = Math.floor(s / 60);
    return m ? `${m} min ${Math.floor(s % 60)} s` : `${Math.floor(s)} s`;
  }

  const kbps = (v) => (isNum(v) ? fmtCount(Math.round(v)) : '—');
  const pair = (sr, raw, key, f) => `${f(sr[key])} / ${f(raw[key])}`;

  function renderStream(info) {
    state.info = info;
    const model = typeof info.model === 'string' ? info.model : info.model && info.model.name;
    if (model) ui.modelName.textContent = model;
    el.input.textContent = isNum(info.width) && info.width ? `${info.width}×${info.height}` : '—';
    el.input.title = isNum(info.fps) ? `${fmt(info.fps, 1)} fps at the SR stage` : '';
    el.viewers.textContent = fmtCount(info.viewers);
    el.age.textContent = fmtAge(info.age_s);
    if (typeof info.sr_enabled === 'boolean') {
      el.sr.textContent = info.sr_enabled ? 'on (neural)' : 'off (bicubic)';
      kit.renderSrLabels(info.sr_enabled);
    }
  }

  function renderViewer(viewer) {
    state.viewer = viewer;
    const streams = viewer.streams || {};
    const sr = streams.sr || {};
    const raw = streams.raw || {};
    el.fps.textContent = pair(sr, raw, 'fps', (v) => fmt(v, 1));
    el.kbps.textContent = pair(sr, raw, 'kbps', kbps);
    el.frames.textContent = pair(sr, raw, 'frames_out', fmtCount);
    el.keyframes.textContent = pair(sr, raw, 'keyframes', fmtCount);
    el.onScreen.textContent = `SR ${el.sr.textContent} · SR on ${kbps(sr.kbps)} kbps, encoded here · `
      + `SR off ${kbps(raw.kbps)} kbps, the sender's own, forwarded · model ${ui.modelName.textContent}`;
  }

  async function tick() {
    const peer = pc;
    if (!peer || ticking) return;
    ticking = true;
    try {
      const [info, viewer, fpsSr, fpsRaw] = await Promise.all([
        getStream(),
        getViewer(state.viewerId),
        kit.receiverFps(peer, 0, counters && counters[0], inbound),
        kit.receiverFps(peer, 1, counters && counters[1], inbound),
      ]);
      if (peer !== pc) return;
      if (info === GONE || (viewer && viewer.stream_state === 'ended')) {
        end();
        return;
      }
      if (info) renderStream(info);
      if (viewer) renderViewer(viewer);
      ui.fpsSr.textContent = `${fmt(fpsSr, 0)} fps`;
      ui.fpsRaw.textContent = `${fmt(fpsRaw, 0)} fps`;
    } finally {
      ticking = false;
    }
  }

  function startPolling() {
    stopPolling();
    counters = [new kit.FrameCounter(ui.videoSr), new kit.FrameCounter(ui.videoRaw)];
    counters.forEach((c) => c.start());
    tick();
    timer = setInterval(tick, POLL_MS);
  }

  function stopPolling() {
    if (timer) clearInterval(timer);
    timer = null;
    if (counters) counters.forEach((c) => c.stop());
    counters = null;
  }

  // ----------------------------------------------------------------- wiring

  el.watch.addEventListener('click', () => { watch(); });
  el.leave.addEventListener('click', () => { leave(); });
  window.addEventListener('pagehide', () => {
    if (state.viewerId) deleteViewer(state.viewerId, true);
  });

  document.title = `SRTC · watching stream ${STREAM}`;
  el.tagline.textContent = 'Watching a live stream: the sender\'s 640×360 video, super-resolved to 1280×720 '
    + 'by a tiny neural network, beside the video as the sender sent it.';
  el.stream.textContent = STREAM ? `stream ${STREAM}` : '—';
  ui.share.hidden = true;
  if (!STREAM) {
    el.watch.disabled = true;
    setError('the link names no stream: it should end in ?watch= and the stream\'s id');
    return;
  }
  watch();

  // Exposed for the console.
  window.srtcWatchControls = { watch, leave };
})();
