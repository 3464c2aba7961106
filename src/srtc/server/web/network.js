// The simulated network card: shows GET /network once a second and applies the form with POST /network.
// Loss is entered in percent on the page and sent as a fraction; the server validates every field and
// answers 400 with the field and its range, which is shown next to the Apply button.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const form = $('net-form');
  const status = $('net-status');
  const fields = { loss: $('net-loss'), burst: $('net-burst'), kbps: $('net-kbps'), delay_ms: $('net-delay'), jitter_ms: $('net-jitter') };
  let edited = false;  // while the user edits, polling does not overwrite the form

  const num = (v) => typeof v === 'number' && Number.isFinite(v);
  const count = (v) => (num(v) ? v.toLocaleString('en-US') : '—');

  function fill(settings) {
    if (edited || !settings) return;
    fields.loss.value = num(settings.loss) ? +(settings.loss * 100).toFixed(2) : 0;
    fields.burst.value = settings.burst ?? 1;
    fields.kbps.value = settings.kbps ?? 0;
    fields.delay_ms.value = settings.delay_ms ?? 0;
    fields.jitter_ms.value = settings.jitter_ms ?? 0;
  }

  function render(body) {
    fill(body.settings);
    const rtp = (body.classes && body.classes.rtp) || {};
    const c = body.counters || {};
    $('net-lost').textContent = num(rtp.packets) ? `${count(c.lost_packets)} / ${count(rtp.packets)}` : '—';
    $('net-qdrop').textContent = count(c.queue_dropped_packets);
    const q = body.queue_delay_ms || {};
    $('net-qdelay').textContent = num(q.p95) ? `${q.p95.toFixed(1)} ms` : '—';
    $('net-bytes').textContent = num(c.delivered_bytes) ? `${(c.delivered_bytes / 1e6).toFixed(1)} MB` : '—';
  }

  async function poll() {
    try {
      const resp = await fetch('/network', { cache: 'no-store' });
      if (resp.ok) render(await resp.json());
    } catch (_) { /* the server may be restarting; try again next second */ }
  }

  async function apply(event) {
    event.preventDefault();
    const body = {
      loss: Number(fields.loss.value) / 100,
      burst: Number(fields.burst.value),
      kbps: Number(fields.kbps.value),
      delay_ms: Number(fields.delay_ms.value),
      jitter_ms: Number(fields.jitter_ms.value),
    };
    status.textContent = 'applying…';
    try {
      const resp = await fetch('/network', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      const answer = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        status.textContent = answer.error || `error ${resp.status}`;
        status.dataset.state = 'error';
        return;
      }
      status.textContent = 'applied';
      status.dataset.state = 'ok';
      edited = false;
      render(answer);
    } catch (err) {
      status.textContent = `network error: ${err}`;
      status.dataset.state = 'error';
    }
  }

  form.addEventListener('input', () => { edited = true; status.textContent = ''; });
  form.addEventListener('submit', apply);
  poll();
  setInterval(poll, 1000);
})();
