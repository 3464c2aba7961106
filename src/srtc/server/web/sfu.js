// SRTC demo page, SFU mode (/?sfu=JANUS_URL&room=N): the page talks to a Janus VideoRoom, not to this server.
// It publishes its source into the room and shows, side by side, its own feed as Janus forwards it (SR off)
// and the feed an SR worker publishes for it, displayed "sr:<feed id>" (SR on, 1280x720; docs/SFU.md).
// With &feed=ID it publishes nothing and watches that publisher the same way.
//
// Janus's HTTP API (plain fetch): a session, one handle per peer connection, plugin messages answered by
// an "ack" and then an event on the session's long poll, which this file reads in one loop.
//
// Plain JS, no build step. window.srtcSfu exposes the state for tests and the console.
'use strict';

(() => {
  const kit = window.srtcKit;
  if (!kit || kit.sfu === null) return;

  const { ui, setStatus } = kit;
  const JANUS = kit.sfu.url;
  const ROOM = kit.sfu.room;
  const WATCHED = kit.sfu.feed; // null: publish our own source
  const SR_PREFIX = 'sr:';
  const ROOM_POLL_MS = 1000;
  const STALE_MS = 2500; // a claim whose beat stood still this long is a dead worker's
  const KEEPALIVE_MS = 20000;
  const EVENT_TIMEOUT_MS = 15000;
  const ICE_GATHER_TIMEOUT_MS = 3000;

  const state = {
    phase: 'idle', connected: false, ownFeed: null, watched: null, srFeed: null, error: null,
  };
  window.srtcSfu = state;

  let janus = null; // {session, waiters: Map(transaction -> resolve), listeners: Map(handle -> fn), alive}
  let peers = []; // every RTCPeerConnection this page opened
  let localStream = null;
  let roomTimer = null;
  let keepaliveTimer = null;
  let subscribed = { raw: null, sr: null }; // feed id each panel shows
  let srPeer = null; // the subscription to the SR feed

  const transaction = () => Math.random().toString(36).slice(2, 12);

  // ------------------------------------------------------------------ Janus

  async function post(path, body) {
    const res = await fetch(JANUS + path, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    const reply = await res.json();
    if (reply.janus === 'error') throw new Error(`Janus: ${reply.error.reason} (${reply.error.code})`);
    return reply;
  }

  async function openSession() {
    const created = await post('', { janus: 'create', transaction: transaction() });
    janus = { session: created.data.id, waiters: new Map(), listeners: new Map(), alive: true };
    longPoll(janus);
    keepaliveTimer = setInterval(() => {
      post(`/${janus.session}`, { janus: 'keepalive', transaction: transaction() }).catch(() => {});
    }, KEEPALIVE_MS);
  }

  async function longPoll(j) {
    while (j.alive) {
      try {
        const res = await fetch(`${JANUS}/${j.session}?maxev=10&rid=${Date.now()}`);
        const body = await res.json();
        for (const ev of Array.isArray(body) ? body : [body]) dispatch(j, ev);
      } catch (err) {
        if (!j.alive) return;
        console.warn('Janus long poll failed:', err);
        await kit.sleep(1000);
      }
    }
  }

  function dispatch(j, ev) {
    if (ev.janus === 'keepalive' || ev.janus === 'ack') return;
    const waiter = ev.transaction && j.waiters.get(ev.transaction);
    if (waiter && ev.janus === 'event') {
      j.waiters.delete(ev.transaction);
      waiter(ev);
      return;
    }
    const listener = j.listeners.get(ev.sender);
    if (listener) listener(ev);
  }

  async function attach() {
    const reply = await post(`/${janus.session}`, {
      janus: 'attach', plugin: 'janus.plugin.videoroom', transaction: transaction(),
    });
    return reply.data.id;
  }

  // A plugin message whose answer is an event (join, publish, start): resolves with {data, jsep}.
  function request(handle, body, jsep) {
    const tx = transaction();
    const j = janus;
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        j.waiters.delete(tx);
        reject(new Error(`Janus did not answer "${body.request}" within ${EVENT_TIMEOUT_MS / 1000} s`));
      }, EVENT_TIMEOUT_MS);
      j.waiters.set(tx, (ev) => { clearTimeout(timer); resolve(ev); });
    });
    const message = { janus: 'message', transaction: tx, body };
    if (jsep) message.jsep = jsep;
    return post(`/${j.session}/${handle}`, message).then(() => answered).then((ev) => {
      const data = ev.plugindata && ev.plugindata.data;
      if (data && data.error) throw new Error(`Janus: ${data.error} (${data.error_code})`);
      return { data: data || {}, jsep: ev.jsep || null };
    });
  }

  // A synchronous plugin request (listparticipants): the answer comes with the POST.
  async function ask(handle, body) {
    const reply = await post(`/${janus.session}/${handle}`, { janus: 'message', transaction: transaction(), body });
    return (reply.plugindata && reply.plugindata.data) || {};
  }

  // ------------------------------------------------------------ the feeds

  async function newPeer() {
    const peer = new RTCPeerConnection(await kit.peerConfig());
    peers.push(peer);
    peer.addEventListener('connectionstatechange', () => onPeerState(peer));
    return peer;
  }

  function onPeerState(peer) {
    const s = peer.connectionState;
    if (s === 'failed') setError('a connection to Janus failed (ICE/DTLS)');
    if (peers.length && peers.every((p) => p.connectionState === 'connected') && !state.connected) {
      state.connected = true;
    }
  }

  async function publish() {
    localStream = await kit.openSource(ui.source.value);
    const track = localStream.getVideoTracks()[0];
    if (!track) throw new Error('the source has no video track');
    if ('contentHint' in track) track.contentHint = 'detail';
    ui.videoLocal.srcObject = localStream;
    ui.videoLocal.play().catch(() => {});
    const handle = await attach();
    const joined = await request(handle, { request: 'join', ptype: 'publisher', room: ROOM, display: 'srtc page' });
    state.ownFeed = joined.data.id;
    const peer = await newPeer();
    peer.addTransceiver(track, {
      direction: 'sendonly', streams: [localStream], sendEncodings: [{ maxBitrate: 2500000, maxFramerate: 30 }],
    });
    await peer.setLocalDescription(await peer.createOffer());
    await kit.waitIceGathering(peer, ICE_GATHER_TIMEOUT_MS);
    const sdp = peer.localDescription;
    const answer = await request(handle, { request: 'publish', audio: false, video: true }, {
      type: sdp.type, sdp: sdp.sdp,
    });
    if (!answer.jsep) throw new Error('Janus accepted the feed without an answer');
    await peer.setRemoteDescription(answer.jsep);
    await connected(peer, EVENT_TIMEOUT_MS); // Janus lists the feed once its media is up
    return state.ownFeed;
  }

  function connected(peer, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (peer.connectionState === 'connected') done(resolve);
        else if (peer.connectionState === 'failed') done(() => reject(new Error('the connection to Janus failed')));
      };
      const timer = setTimeout(() => done(() => reject(new Error('no connection to Janus in time'))), timeoutMs);
      const done = (then) => {
        clearTimeout(timer);
        peer.removeEventListener('connectionstatechange', check);
        then();
      };
      peer.addEventListener('connectionstatechange', check);
      check();
    });
  }

  // Subscribe to ``feed`` and play it in ``video``: Janus offers, the page answers.
  async function subscribe(feed, video) {
    const handle = await attach();
    const offer = await request(handle, { request: 'join', ptype: 'subscriber', room: ROOM, streams: [{ feed }] });
    if (!offer.jsep) throw new Error(`Janus offered nothing for feed ${feed}`);
    const peer = await newPeer();
    peer.addEventListener('track', (ev) => {
      video.srcObject = new MediaStream([ev.track]);
      video.play().catch(() => {});
    });
    await peer.setRemoteDescription(offer.jsep);
    await peer.setLocalDescription(await peer.createAnswer());
    await kit.waitIceGathering(peer, ICE_GATHER_TIMEOUT_MS);
    const sdp = peer.localDescription;
    await request(handle, { request: 'start', room: ROOM }, { type: sdp.type, sdp: sdp.sdp });
    return peer;
  }

  // The SR feed for ``original``, by the workers' own rule (docs/SFU.md): among the publishing participants
  // displayed "sr:<original>#<beat>" whose beat moved within STALE_MS (a dead worker's stays listed a while),
  // the lowest feed id.
  const beats = new Map(); // participant id -> {display, since}
  function srFeedOf(participants, original, now) {
    const live = participants.filter((p) => {
      const display = String(p.display || '');
      if (!display.startsWith(SR_PREFIX) || !p.publisher) return false;
      if (Number(display.slice(SR_PREFIX.length).split('#')[0]) !== original) return false;
      const seen = beats.get(p.id);
      if (!seen || seen.display !== display) beats.set(p.id, { display, since: now });
      return now - beats.get(p.id).since < STALE_MS;
    });
    live.sort((a, b) => a.id - b.id);
    return live.length ? live[0].id : null;
  }

  // Once a second: find the SR feed of the watched publisher, and follow it when another worker takes over.
  async function followRoom(listHandle) {
    try {
      const list = await ask(listHandle, { request: 'listparticipants', room: ROOM });
      const participants = list.participants || [];
      const sr = srFeedOf(participants, state.watched, Date.now());
      if (!participants.some((p) => p.id === state.watched)) {
        setStatus('stopped', `Feed ${state.watched} has left the room.`);
        return;
      }
      if (sr !== null && sr !== subscribed.sr) {
        subscribed.sr = sr;
        state.srFeed = sr;
        if (srPeer) srPeer.close(); // the feed a worker that died published
        srPeer = await subscribe(sr, ui.videoSr);
        setStatus('connected', `Watching feed ${state.watched} and its SR feed ${sr} in room ${ROOM}`);
      } else if (sr === null && subscribed.sr === null) {
        setStatus('connecting', `Feed ${state.watched}: waiting for an SR worker to take it…`);
      }
    } catch (err) {
      console.warn('room poll failed:', err);
    }
  }

  // ------------------------------------------------------------ the page

  function setError(message) {
    state.error = message;
    state.phase = 'error';
    setStatus('error', `Error: ${message}`);
  }

  async function start() {
    if (janus) return;
    ui.start.disabled = true;
    ui.source.disabled = true;
    ui.stop.disabled = false;
    Object.assign(state, { phase: 'connecting', error: null, connected: false, srFeed: null });
    subscribed = { raw: null, sr: null };
    try {
      setStatus('connecting', `Connecting to Janus room ${ROOM}…`);
      await openSession();
      state.watched = WATCHED !== null ? WATCHED : await publish();
      if (WATCHED === null) showShare(state.watched);
      subscribed.raw = state.watched;
      await subscribe(state.watched, ui.videoRaw);
      const listHandle = await attach();
      state.phase = 'connected';
      await followRoom(listHandle);
      roomTimer = setInterval(() => followRoom(listHandle), ROOM_POLL_MS);
    } catch (err) {
      console.error(err);
      await teardown();
      setError((err && err.message) || String(err));
    }
  }

  async function teardown() {
    clearInterval(roomTimer);
    clearInterval(keepaliveTimer);
    const j = janus;
    janus = null;
    if (j) {
      j.alive = false;
      post(`/${j.session}`, { janus: 'destroy', transaction: transaction() }).catch(() => {});
    }
    for (const peer of peers) {
      try { peer.close(); } catch (_) { /* already closed */ }
    }
    peers = [];
    srPeer = null;
    beats.clear();
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    kit.closeSource();
    for (const v of [ui.videoRaw, ui.videoSr, ui.videoLocal]) v.srcObject = null;
    state.connected = false;
    showShare(null);
    ui.start.disabled = false;
    ui.source.disabled = false;
    ui.stop.disabled = true;
  }

  async function stop() {
    await teardown();
    state.phase = 'stopped';
    setStatus('stopped', 'Stopped');
  }

  function showShare(feed) {
    ui.share.hidden = feed === null;
    const link = new URL(location.href);
    link.searchParams.set('feed', String(feed));
    ui.shareLink.value = feed === null ? '' : link.toString();
  }

  ui.start.addEventListener('click', () => { start(); });
  ui.stop.addEventListener('click', () => { stop(); });
  ui.shareCopy.addEventListener('click', () => {
    ui.shareLink.select();
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(ui.shareLink.value).catch(() => {});
  });
  window.addEventListener('pagehide', () => { teardown(); });
  kit.renderSrLabels(true);
  setStatus('idle', WATCHED === null
    ? `SFU mode: press Start to publish into Janus room ${ROOM}`
    : `SFU mode: press Start to watch feed ${WATCHED} of Janus room ${ROOM}`);
})();
