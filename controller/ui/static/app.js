// The s2strust dashboard. It follows /api/fleet/events (server-sent
// events: the view at once and whenever a host changes) and redraws;
// when the stream fails it reads /api/fleet once (which says whether the
// session is gone) and opens the stream again. Every string
// that came from the fleet goes into the page as textContent or an
// attribute value, never as markup: agents are not trusted to write HTML.
'use strict';
(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const POLL_MS = 3000;
  const DAY = 86400000;
  let selected = null; // the clicked edge, "from\u0000to"
  let latest = null;

  // el makes an HTML element; text, when given, is set as textContent.
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function $(id) { return document.getElementById(id); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
  function yesNo(b) { return b ? 'yes' : 'no'; }
  function date(s) { return s ? s.slice(0, 10) : '–'; }
  function age(ms) {
    if (ms < 0) ms = 0;
    const s = Math.round(ms / 1000);
    if (s < 90) return s + 's';
    if (s < 5400) return Math.round(s / 60) + 'm';
    if (s < 172800) return Math.round(s / 3600) + 'h';
    return Math.round(s / 86400) + 'd';
  }
  async function errorText(r) {
    try { const b = await r.json(); if (b && b.error) return b.error; } catch (e) { /* not JSON */ }
    return r.status + ' ' + r.statusText;
  }

  // login exchanges the token in the URL's fragment (#login=...) for a
  // session cookie, and takes it out of the address bar and history first.
  async function login() {
    const m = /^#login=([A-Za-z0-9_-]+)$/.exec(location.hash);
    if (!m) return;
    history.replaceState(null, '', location.pathname);
    const r = await fetch('api/login', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: m[1] }),
    });
    if (!r.ok) $('login-error').textContent = await errorText(r);
  }

  function banner(msg) {
    const b = $('banner');
    b.hidden = !msg;
    b.textContent = msg || '';
  }

  // show takes a view read from either source.
  function show(v) {
    $('login').hidden = true;
    $('main').hidden = false;
    banner(null);
    latest = v;
    render(v);
  }

  // poll reads the view once; false when not logged in.
  async function poll() {
    try {
      const r = await fetch('api/fleet', { credentials: 'same-origin', cache: 'no-store' });
      if (r.status === 401) {
        $('login').hidden = false;
        $('main').hidden = true;
        if (!$('login-error').textContent) $('login-error').textContent = await errorText(r);
        $('updated').textContent = 'not logged in';
        return false;
      }
      if (!r.ok) throw new Error(await errorText(r));
      show(await r.json());
    } catch (e) {
      banner('cannot read the fleet: ' + e.message + ' (retrying every ' + POLL_MS / 1000 + 's)');
    }
    return true;
  }

  // live follows the event stream; when it fails, one poll shows the
  // fleet (or the login) and the stream is opened again later.
  let mode = 'live';
  function live() {
    if (!window.EventSource) {
      mode = 'polled every ' + POLL_MS / 1000 + 's';
      poll().finally(() => setTimeout(live, POLL_MS));
      return;
    }
    const es = new EventSource('api/fleet/events');
    es.addEventListener('fleet', ev => { mode = 'live'; show(JSON.parse(ev.data)); });
    es.addEventListener('fleet-error', ev => {
      banner('cannot read the fleet: ' + JSON.parse(ev.data).error + ' (live; retrying)');
    });
    es.onerror = () => {
      es.close();
      mode = 'reconnecting';
      poll().finally(() => setTimeout(live, POLL_MS));
    };
  }

  function render(v) {
    renderSummary(v);
    renderGraph(v);
    renderDetail(v);
    renderHosts(v);
    renderCerts(v);
    renderRollouts(v);
    $('updated').textContent = 'updated ' + new Date(v.now).toLocaleTimeString() + ' · ' + mode;
  }

  function chip(parent, text, cls) { parent.appendChild(el('span', { class: 'chip ' + (cls || '') }, text)); }

  function renderSummary(v) {
    const s = $('summary');
    clear(s);
    const connected = v.hosts.filter(h => h.connected).length;
    const synced = v.hosts.filter(h => h.inSync && h.result === 'ack').length;
    const drifting = v.hosts.filter(h => h.drift.some(d => !d.corrected)).length;
    const good = v.edges.filter(e => e.ok).length;
    chip(s, v.hosts.length + ' hosts', '');
    chip(s, connected + ' connected', connected === v.hosts.length ? 'ok' : 'failed');
    chip(s, synced + ' in sync', synced === v.hosts.length ? 'ok' : 'pending');
    chip(s, drifting + ' drifting', drifting === 0 ? 'ok' : 'failed');
    chip(s, good + '/' + v.edges.length + ' trust edges ok', good === v.edges.length ? 'ok' : 'failed');
  }

  // ---- trust graph ----

  const NODE_W = 150, NODE_H = 54;

  function layout(deps, w, h) {
    const pos = {};
    const n = deps.length;
    const cx = w / 2, cy = h / 2;
    const rx = w / 2 - NODE_W / 2 - 20, ry = h / 2 - NODE_H / 2 - 20;
    deps.forEach((d, i) => {
      if (n === 1) { pos[d.name] = { x: cx, y: cy }; return; }
      // Start at the top and go clockwise, so three deployments make a triangle standing on its base.
      const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
      pos[d.name] = { x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) };
    });
    // Centre the drawing vertically: an odd number of nodes leaves more room below than above.
    const ys = Object.values(pos).map(p => p.y);
    const shift = cy - (Math.min(...ys) + Math.max(...ys)) / 2;
    for (const k in pos) pos[k].y += shift;
    return pos;
  }

  // toBox is where a line from the centre c towards p leaves c's box.
  function toBox(c, p) {
    const dx = p.x - c.x, dy = p.y - c.y;
    const t = Math.min((NODE_W / 2 + 4) / Math.abs(dx || 1e-9), (NODE_H / 2 + 4) / Math.abs(dy || 1e-9));
    return { x: c.x + dx * t, y: c.y + dy * t };
  }

  const SYMBOL = { ok: '✓', failed: '✗', pending: '…', disabled: '–' };
  const STATE_TEXT = { ok: 'every check and probe passed', failed: 'FAILED', pending: 'not probed yet', disabled: 'disabled: tokens refused, as declared' };

  function renderGraph(v) {
    const g = $('trust-graph');
    clear(g);
    const W = 640, H = 420;
    const defs = sv('defs');
    for (const s of ['ok', 'failed', 'pending', 'disabled']) {
      const m = sv('marker', { id: 'arrow-' + s, viewBox: '0 0 10 10', refX: '9', refY: '5', markerWidth: '12', markerHeight: '12', markerUnits: 'userSpaceOnUse', orient: 'auto' });
      m.appendChild(sv('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow state-' + s }));
      defs.appendChild(m);
    }
    g.appendChild(defs);
    if (v.deployments.length === 0) {
      g.appendChild(sv('text', { x: W / 2, y: H / 2, class: 'empty', 'text-anchor': 'middle' }, 'no topology applied yet'));
      return;
    }
    const pos = layout(v.deployments, W, H);
    const has = new Set(v.edges.map(e => e.from + '\u0000' + e.to));
    const edges = sv('g', { class: 'edges' });
    for (const e of v.edges) {
      const a = pos[e.from], b = pos[e.to];
      if (!a || !b) continue;
      // Both directions of a pair bend away from each other so both show.
      const back = has.has(e.to + '\u0000' + e.from);
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const off = back ? 40 : 0;
      const c = { x: (a.x + b.x) / 2 - (dy / len) * off, y: (a.y + b.y) / 2 + (dx / len) * off };
      const s = toBox(a, c), t = toBox(b, c);
      const key = e.from + '\u0000' + e.to;
      const grp = sv('g', {
        class: 'edge state-' + e.state + (key === selected ? ' selected' : ''),
        'data-from': e.from, 'data-to': e.to, 'data-state': e.state, tabindex: '0', role: 'button',
        'aria-label': e.from + ' to ' + e.to + ': ' + STATE_TEXT[e.state],
      });
      grp.appendChild(sv('title', {}, e.from + ' → ' + e.to + ' (' + e.partnerName + '): ' + STATE_TEXT[e.state]));
      const d = 'M' + s.x.toFixed(1) + ',' + s.y.toFixed(1) + ' Q' + c.x.toFixed(1) + ',' + c.y.toFixed(1) + ' ' + t.x.toFixed(1) + ',' + t.y.toFixed(1);
      grp.appendChild(sv('path', { d: d, class: 'hit' }));
      grp.appendChild(sv('path', { d: d, class: 'line', 'marker-end': 'url(#arrow-' + e.state + ')' }));
      const mx = 0.25 * s.x + 0.5 * c.x + 0.25 * t.x, my = 0.25 * s.y + 0.5 * c.y + 0.25 * t.y;
      const lab = sv('g', { class: 'edge-label', transform: 'translate(' + mx.toFixed(1) + ',' + my.toFixed(1) + ')' });
      lab.appendChild(sv('circle', { r: '11' }));
      lab.appendChild(sv('text', { 'text-anchor': 'middle', dy: '4' }, SYMBOL[e.state]));
      grp.appendChild(lab);
      const pick = () => { selected = key; renderGraph(latest); renderDetail(latest); };
      grp.addEventListener('click', pick);
      grp.addEventListener('keydown', ev => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); pick(); } });
      edges.appendChild(grp);
    }
    g.appendChild(edges);
    const nodes = sv('g', { class: 'nodes' });
    for (const d of v.deployments) {
      const p = pos[d.name];
      const n = sv('g', { class: 'node product-' + d.product, 'data-deployment': d.name, transform: 'translate(' + (p.x - NODE_W / 2).toFixed(1) + ',' + (p.y - NODE_H / 2).toFixed(1) + ')' });
      n.appendChild(sv('title', {}, d.name + ': ' + d.productName + (d.metadataIssuer ? ', issuer ' + d.metadataIssuer : '')));
      n.appendChild(sv('rect', { width: NODE_W, height: NODE_H, rx: '8' }));
      n.appendChild(sv('text', { x: NODE_W / 2, y: '21', class: 'name', 'text-anchor': 'middle' }, d.name));
      n.appendChild(sv('text', { x: NODE_W / 2, y: '40', class: 'meta', 'text-anchor': 'middle' }, d.product + ' · ' + d.connected + '/' + d.hosts + ' hosts up'));
      nodes.appendChild(n);
    }
    g.appendChild(nodes);
  }

  function row(tbody, label, value, cls) {
    const tr = el('tr', cls ? { class: cls } : {});
    tr.appendChild(el('th', {}, label));
    tr.appendChild(el('td', {}, value));
    tbody.appendChild(tr);
  }

  function renderDetail(v) {
    const box = $('edge-detail');
    const e = v && v.edges.find(x => x.from + '\u0000' + x.to === selected);
    clear(box);
    if (!e) {
      box.appendChild(el('p', { class: 'hint' }, 'Click an edge to see its trust row and the cause of any failure.'));
      return;
    }
    box.appendChild(el('h3', { class: 'state-' + e.state }, e.from + ' → ' + e.to));
    const t = el('table', { id: 'edge-row', 'data-from': e.from, 'data-to': e.to });
    const tb = el('tbody');
    const reg = e.registration;
    const passed = e.probes.filter(p => p.ok).length;
    row(tb, 'Result', e.ok ? (e.disabled ? 'ok (disabled: tokens refused)' : 'ok') : 'FAILED', e.ok ? 'good' : 'bad');
    row(tb, 'Registered as', reg ? reg.identity : 'missing (' + e.partnerName + ')', reg ? '' : 'bad');
    if (reg) {
      row(tb, 'ApplicationIdentifier', reg.applicationIdentifier);
      row(tb, 'Trust level', reg.trustLevel || 'n/a');
      row(tb, 'Enabled', reg.enabled ? 'True' : 'False');
      row(tb, 'Metadata URL', reg.metadataUrl || '–');
      row(tb, 'Registered realm', (reg.realm || '–') + (e.realmsMatch ? '' : ' (MISMATCH)'), e.realmsMatch ? '' : 'bad');
    }
    row(tb, 'Issuer certificate', e.issuerThumbprint || '–');
    row(tb, 'Issuer expires', date(e.issuerNotAfter));
    row(tb, 'Key in metadata', yesNo(e.keyInMetadata), e.keyInMetadata ? '' : 'bad');
    row(tb, 'Key in partner cache', yesNo(e.keyInPartnerCache), e.keyInPartnerCache ? '' : 'bad');
    row(tb, 'Realms', (e.fromRealm || '–') + ' → ' + (e.toRealm || '–'));
    row(tb, 'Max clock skew', e.maxClockSkewMs + ' ms');
    row(tb, 'Probes', passed + '/' + e.probes.length + ' passed', passed === e.probes.length && e.probes.length > 0 ? '' : 'bad');
    t.appendChild(tb);
    box.appendChild(t);
    if (e.problems.length) {
      box.appendChild(el('h4', {}, 'Cause'));
      const ul = el('ul', { class: 'problems' });
      for (const p of e.problems) ul.appendChild(el('li', {}, p));
      box.appendChild(ul);
    }
    if (e.probes.length) {
      box.appendChild(el('h4', {}, 'Probes'));
      const ul = el('ul', { class: 'probes' });
      for (const p of e.probes) {
        ul.appendChild(el('li', { class: p.ok ? 'good' : 'bad' },
          p.fromHost + ' → ' + p.targetHost + ': ' + (p.ok ? 'accepted' : 'refused ' + p.reason + (p.detail ? ' (' + p.detail + ')' : ''))));
      }
      box.appendChild(ul);
    }
  }

  // ---- hosts ----

  function renderHosts(v) {
    const tb = $('hosts').tBodies[0];
    clear(tb);
    const now = Date.parse(v.now);
    for (const h of v.hosts) {
      const tr = el('tr', { 'data-host': h.host });
      tr.appendChild(el('td', { class: 'mono' }, h.host));
      tr.appendChild(el('td', {}, h.deployment));
      tr.appendChild(el('td', {}, h.product + ' ' + h.productVersion));
      tr.appendChild(el('td', {}, h.primary ? 'primary' : ''));
      tr.appendChild(el('td', { class: h.connected ? 'good' : 'bad' }, h.connected ? '● yes' : '○ no'));
      tr.appendChild(el('td', { class: 'num' }, h.desiredVersion || '–'));
      const behind = !h.inSync && h.desiredVersion > 0;
      tr.appendChild(el('td', { class: 'num ' + (behind ? 'warn' : '') }, (h.appliedVersion || '–') + (behind ? ' (behind)' : '')));
      const open = h.drift.filter(d => !d.corrected);
      const dt = el('td', { class: open.length ? 'bad' : '' }, open.length ? open.length + ' item' + (open.length > 1 ? 's' : '') : (h.drift.length ? h.drift.length + ' corrected' : '–'));
      if (h.drift.length) dt.title = h.drift.map(d => d.item + ': ' + d.actual + ', want ' + d.expected + (d.corrected ? ' (corrected)' : '')).join('\n');
      tr.appendChild(dt);
      let res = '–', cls = '';
      if (h.result === 'ack') { res = 'ack v' + h.resultVersion; cls = 'good'; }
      if (h.result === 'nack') { res = 'NACK v' + h.resultVersion + ': ' + h.resultErrors.join('; '); cls = 'bad'; }
      tr.appendChild(el('td', { class: cls }, res + (h.monitor ? ' (monitor)' : '')));
      tr.appendChild(el('td', { class: 'num' }, h.reportClock ? age(now - Date.parse(h.reportClock)) : '–'));
      tb.appendChild(tr);
    }
    const note = $('hosts-note');
    note.hidden = !v.reportsOmitted;
    note.textContent = v.reportsOmitted ? v.reportsOmitted + ' hosts after the first ' + v.reportLimit + ' show no report age: the dashboard reads that many reports per poll' : '';
  }

  // ---- certificate expiry timeline ----

  function renderCerts(v) {
    const g = $('cert-timeline');
    clear(g);
    const tb = $('cert-table').tBodies[0];
    clear(tb);
    const now = Date.parse(v.now);
    const certs = v.certificates;
    const W = 960, L = 170, R = 30, top = 30, rowH = 26;
    const H = top + Math.max(certs.length, 1) * rowH + 30;
    g.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    if (!certs.length) {
      g.appendChild(sv('text', { x: W / 2, y: H / 2, class: 'empty', 'text-anchor': 'middle' }, 'no token-issuer certificate reported yet'));
      return;
    }
    const ends = certs.map(c => Date.parse(c.notAfter));
    const start = Math.min(now, ...ends);
    const end = Math.max(now + 365 * DAY, ...ends) + 30 * DAY;
    const x = t => L + ((t - start) / (end - start)) * (W - L - R);
    const bottom = top + certs.length * rowH;
    // Shaded: the 30 days the alert warns of, then up to 90 days.
    g.appendChild(sv('rect', { x: x(now), y: top - 6, width: Math.max(0, x(now + 30 * DAY) - x(now)), height: bottom - top + 6, class: 'zone-red' }));
    g.appendChild(sv('rect', { x: x(now + 30 * DAY), y: top - 6, width: Math.max(0, x(now + 90 * DAY) - x(now + 30 * DAY)), height: bottom - top + 6, class: 'zone-amber' }));
    for (let i = 0; i <= 6; i++) {
      const t = start + ((end - start) * i) / 6;
      g.appendChild(sv('line', { x1: x(t), x2: x(t), y1: top - 6, y2: bottom, class: 'tick' }));
      g.appendChild(sv('text', { x: x(t), y: bottom + 16, 'text-anchor': 'middle', class: 'axis' }, new Date(t).toISOString().slice(0, 10)));
    }
    g.appendChild(sv('line', { x1: x(now), x2: x(now), y1: top - 12, y2: bottom, class: 'now' }));
    g.appendChild(sv('text', { x: x(now), y: top - 14, 'text-anchor': 'middle', class: 'axis' }, 'now'));
    certs.forEach((c, i) => {
      const t = Date.parse(c.notAfter), y = top + i * rowH + rowH / 2;
      const days = Math.floor((t - now) / DAY);
      const cls = days < 30 ? 'bad' : days < 90 ? 'warn' : 'good';
      const r = sv('g', { class: 'cert ' + cls, 'data-deployment': c.deployment });
      r.appendChild(sv('title', {}, c.deployment + ': ' + c.thumbprint + ' expires ' + date(c.notAfter) + ' (' + days + ' days)'));
      r.appendChild(sv('text', { x: L - 10, y: y + 4, 'text-anchor': 'end', class: 'label' }, c.deployment));
      r.appendChild(sv('line', { x1: x(now), x2: x(t), y1: y, y2: y, class: 'bar' }));
      r.appendChild(sv('circle', { cx: x(t), cy: y, r: '6', class: 'end' }));
      // The date sits left of the marker, or right of it when that would run into the deployment's name.
      const right = x(t) < L + 180;
      r.appendChild(sv('text', { x: right ? x(t) + 12 : x(t) - 10, y: right ? y + 4 : y - 8, 'text-anchor': right ? 'start' : 'end', class: 'axis' },
        date(c.notAfter) + ' · ' + (days < 0 ? 'EXPIRED' : days + ' d')));
      g.appendChild(r);
      const tr = el('tr', { 'data-deployment': c.deployment });
      tr.appendChild(el('td', {}, c.deployment));
      tr.appendChild(el('td', { class: 'mono' }, c.thumbprint));
      tr.appendChild(el('td', {}, c.subject || '–'));
      tr.appendChild(el('td', {}, date(c.notAfter)));
      tr.appendChild(el('td', { class: 'num ' + cls }, days < 0 ? 'expired' : days));
      tr.appendChild(el('td', {}, c.hosts.length ? c.hosts.join(', ') : 'trust report'));
      tb.appendChild(tr);
    });
  }

  // seqText and versionText are the CLI's (controller/cmd): a sequence
  // number, else 'v' and the etcd version, else '-'.
  function seqText(seq, rev) { return seq > 0 ? String(seq) : rev > 0 ? 'v' + rev : '-'; }
  function versionText(rev) { return rev > 0 ? String(rev) : '-'; }

  function renderRollouts(v) {
    const box = $('rollout-list');
    clear(box);
    $('rollouts-empty').hidden = v.rollouts.length > 0;
    for (const r of v.rollouts) {
      const d = el('div', { class: 'rollout state-' + r.state, 'data-name': r.name, 'data-state': r.state });
      const live = r.state === 'running' || r.state === 'paused';
      // Revisions by sequence number, as the CLI names them, their etcd versions beside.
      d.appendChild(el('h3', {}, r.name + ': revision ' + seqText(r.fromSequence, r.fromRevision) + ' → ' + seqText(r.toSequence, r.toRevision) +
        ' (versions ' + versionText(r.fromRevision) + ' → ' + versionText(r.toRevision) + ') · ' + r.state +
        (live && r.waves.length ? ' · wave ' + (r.currentWave + 1) + ' of ' + r.waves.length : '') + (r.createdBy ? ' · by ' + r.createdBy : '')));
      if (r.reason) d.appendChild(el('p', { class: 'reason' }, r.reason));
      for (const w of r.waves) {
        const total = w.waiting + w.updating + w.passed + w.failed;
        const line = el('div', { class: 'wave' });
        line.appendChild(el('span', { class: 'wave-title' }, w.title));
        const bar = el('div', { class: 'progress' });
        for (const [k, n] of [['passed', w.passed], ['updating', w.updating], ['failed', w.failed], ['waiting', w.waiting]]) {
          if (!n) continue;
          const seg = el('span', { class: 'seg ' + k, title: n + ' ' + k });
          seg.style.flexGrow = String(n);
          bar.appendChild(seg);
        }
        line.appendChild(bar);
        line.appendChild(el('span', { class: 'wave-count' }, w.passed + '/' + total + ' passed' + (w.updating ? ', ' + w.updating + ' updating' : '') + (w.failed ? ', ' + w.failed + ' failed' : '')));
        d.appendChild(line);
        for (const c of w.causes) d.appendChild(el('p', { class: 'cause bad' }, c));
      }
      box.appendChild(d);
    }
  }

  login().catch(e => { $('login-error').textContent = 'login: ' + e.message; }).finally(live);
})();
