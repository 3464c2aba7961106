// SRTC demo page: ways to compare SR off and SR on closely, on the same frame.
//
// Side by side shows both streams as they play; they are not in step (SR on comes out of the generator a
// few frames after SR off arrives). The wipe and the loupe pair each SR-on frame with the SR-off frame it
// was made from: the page keeps the last SR-off frames and picks the one whose 32x18 thumbnail is closest
// to the SR-on frame's. Then
//   - wipe: one 1280x720 picture, SR off (upscaled by the browser) left of a draggable divider, SR on right;
//   - loupe: the same small region of both, enlarged 2:1 without smoothing, following the pointer over
//     either video.
//
// Plain JS, no build step. window.srtcCompare exposes what is drawn, for tests and the console.
'use strict';

(() => {
  const OUT_W = 1280;
  const OUT_H = 720;
  const THUMB_W = 32;
  const THUMB_H = 18;
  const HISTORY = 12; // SR-off frames kept for matching (0.4 s at 30 fps: more than the SR stage's delay)
  const LOUPE_SRC = 192; // output pixels across the loupe's region: the 384 px loupes show it at 2:1

  const $ = (id) => document.getElementById(id);
  const videoRaw = $('video-raw');
  const videoSr = $('video-sr');
  const tabs = Array.from(document.querySelectorAll('.view-tabs [data-view]'));
  const compareSection = document.querySelector('.compare');
  const wipeView = $('wipe-view');
  const wipeCanvas = $('wipe-canvas');
  const divider = $('wipe-divider');
  const loupeView = $('loupe-view');
  const loupeRaw = $('loupe-raw');
  const loupeSr = $('loupe-sr');
  const loupeSpot = $('loupe-spot');

  const thumbCanvas = document.createElement('canvas');
  thumbCanvas.width = THUMB_W;
  thumbCanvas.height = THUMB_H;
  const thumbCtx = thumbCanvas.getContext('2d', { willReadFrequently: true });
  const srSnapshot = document.createElement('canvas');
  srSnapshot.width = OUT_W;
  srSnapshot.height = OUT_H;

  const state = {
    view: 'side',
    split: 0.5, // the wipe divider, as a share of the width
    center: { x: OUT_W / 2, y: OUT_H / 2 }, // the loupe's centre, in output pixels
    drawn: 0, // paired frames drawn
    lastSad: null, // mean absolute thumbnail difference of the last pair (0..255)
    lastLag: null, // how many SR-off frames back the match was
  };
  window.srtcCompare = state;

  const history = []; // newest last: {canvas, thumb}
  const pool = [];

  function thumbnail(source) {
    thumbCtx.drawImage(source, 0, 0, THUMB_W, THUMB_H);
    const rgba = thumbCtx.getImageData(0, 0, THUMB_W, THUMB_H).data;
    const luma = new Uint8Array(THUMB_W * THUMB_H);
    for (let i = 0, j = 0; j < luma.length; i += 4, j += 1) {
      luma[j] = (77 * rgba[i] + 150 * rgba[i + 1] + 29 * rgba[i + 2]) >> 8;
    }
    return luma;
  }

  function keepRaw() {
    if (!videoRaw.videoWidth) return;
    const canvas = pool.pop() || document.createElement('canvas');
    canvas.width = videoRaw.videoWidth;
    canvas.height = videoRaw.videoHeight;
    canvas.getContext('2d').drawImage(videoRaw, 0, 0);
    history.push({ canvas, thumb: thumbnail(canvas) });
    while (history.length > HISTORY) pool.push(history.shift().canvas);
  }

  function match(thumb) {
    let best = null;
    let bestSad = Infinity;
    let lag = 0;
    for (let k = history.length - 1; k >= 0; k -= 1) {
      const other = history[k].thumb;
      let sad = 0;
      for (let i = 0; i < thumb.length; i += 1) sad += Math.abs(thumb[i] - other[i]);
      if (sad < bestSad) {
        bestSad = sad;
        best = history[k];
        lag = history.length - 1 - k;
      }
    }
    state.lastSad = best ? bestSad / thumb.length : null;
    state.lastLag = best ? lag : null;
    return best;
  }

  function drawWipe(raw) {
    const ctx = wipeCanvas.getContext('2d');
    const x = Math.round(state.split * OUT_W);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(raw.canvas, 0, 0, x / 2, OUT_H / 2, 0, 0, x, OUT_H);
    ctx.drawImage(srSnapshot, x, 0, OUT_W - x, OUT_H, x, 0, OUT_W - x, OUT_H);
    divider.style.left = `${state.split * 100}%`;
    divider.setAttribute('aria-valuenow', String(Math.round(state.split * 100)));
  }

  function drawLoupe(raw) {
    const half = LOUPE_SRC / 2;
    const cx = Math.min(Math.max(state.center.x, half), OUT_W - half);
    const cy = Math.min(Math.max(state.center.y, half), OUT_H - half);
    const rawCtx = loupeRaw.getContext('2d');
    const srCtx = loupeSr.getContext('2d');
    // SR off as the viewer's browser shows it: upscaled to 1280x720 with smoothing, then the region at 2:1.
    rawCtx.imageSmoothingEnabled = true;
    rawCtx.imageSmoothingQuality = 'high';
    rawCtx.drawImage(raw.canvas, (cx - half) / 2, (cy - half) / 2, LOUPE_SRC / 2, LOUPE_SRC / 2,
      0, 0, loupeRaw.width, loupeRaw.height);
    srCtx.imageSmoothingEnabled = false; // SR on's own pixels, each shown as 2x2
    srCtx.drawImage(srSnapshot, cx - half, cy - half, LOUPE_SRC, LOUPE_SRC, 0, 0, loupeSr.width, loupeSr.height);
    placeSpot(cx, cy);
  }

  function placeSpot(cx, cy) {
    const screen = videoSr.closest('.screen');
    if (!screen || !loupeSpot) return;
    if (loupeSpot.parentElement !== screen) screen.appendChild(loupeSpot);
    const box = screen.getBoundingClientRect();
    const scale = Math.min(box.width / OUT_W, box.height / OUT_H);
    loupeSpot.style.width = `${LOUPE_SRC * scale}px`;
    loupeSpot.style.height = `${LOUPE_SRC * scale}px`;
    loupeSpot.style.left = `${(box.width - OUT_W * scale) / 2 + (cx - LOUPE_SRC / 2) * scale}px`;
    loupeSpot.style.top = `${(box.height - OUT_H * scale) / 2 + (cy - LOUPE_SRC / 2) * scale}px`;
  }

  function onSrFrame() {
    if (state.view !== 'side' && videoSr.videoWidth === OUT_W && history.length) {
      srSnapshot.getContext('2d').drawImage(videoSr, 0, 0);
      const raw = match(thumbnail(srSnapshot));
      if (raw) {
        if (state.view === 'wipe') drawWipe(raw);
        else drawLoupe(raw);
        state.drawn += 1;
      }
    }
    watch(videoSr, onSrFrame);
  }

  function onRawFrame() {
    if (state.view !== 'side') keepRaw();
    watch(videoRaw, onRawFrame);
  }

  // Each new decoded frame, where the browser says so; else every animation frame.
  function watch(video, callback) {
    if (typeof video.requestVideoFrameCallback === 'function') video.requestVideoFrameCallback(callback);
    else requestAnimationFrame(callback);
  }

  function setView(view) {
    state.view = view;
    for (const tab of tabs) tab.setAttribute('aria-selected', String(tab.dataset.view === view));
    compareSection.hidden = view === 'wipe';
    wipeView.hidden = view !== 'wipe';
    loupeView.hidden = view !== 'loupe';
    if (loupeSpot) loupeSpot.hidden = view !== 'loupe';
    history.length = 0;
  }

  function splitFromPointer(ev) {
    const box = wipeCanvas.getBoundingClientRect();
    state.split = Math.min(Math.max((ev.clientX - box.left) / box.width, 0), 1);
  }

  // The pointer over either video (shown at any size) as a point of the 1280x720 output.
  function centerFromPointer(ev) {
    const video = ev.currentTarget;
    const box = video.getBoundingClientRect();
    const scale = Math.min(box.width / OUT_W, box.height / OUT_H);
    const x = (ev.clientX - box.left - (box.width - OUT_W * scale) / 2) / scale;
    const y = (ev.clientY - box.top - (box.height - OUT_H * scale) / 2) / scale;
    if (x >= 0 && y >= 0 && x <= OUT_W && y <= OUT_H) state.center = { x, y };
  }

  for (const tab of tabs) tab.addEventListener('click', () => setView(tab.dataset.view));
  let dragging = false;
  wipeCanvas.parentElement.addEventListener('pointerdown', (ev) => {
    dragging = true;
    wipeCanvas.parentElement.setPointerCapture(ev.pointerId);
    splitFromPointer(ev);
  });
  wipeCanvas.parentElement.addEventListener('pointermove', (ev) => { if (dragging) splitFromPointer(ev); });
  wipeCanvas.parentElement.addEventListener('pointerup', () => { dragging = false; });
  divider.addEventListener('keydown', (ev) => {
    const step = ev.key === 'ArrowLeft' ? -0.02 : ev.key === 'ArrowRight' ? 0.02 : 0;
    if (step) {
      state.split = Math.min(Math.max(state.split + step, 0), 1);
      ev.preventDefault();
    }
  });
  for (const video of [videoRaw, videoSr]) video.addEventListener('pointermove', centerFromPointer);

  setView('side');
  watch(videoRaw, onRawFrame);
  watch(videoSr, onSrFrame);
})();
