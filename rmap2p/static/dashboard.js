// rmap2p dashboard: follows /api/events (Server-Sent Events) and redraws from each snapshot.
// Everything in a snapshot comes from peers, so it is inserted as text (textContent), never as HTML.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STALE_AFTER_MS = 5000;
  let lastUpdate = 0;
  let renders = 0;

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function pct(x) { return Math.max(0, Math.min(100, Math.round(x))); }

  function ago(ts) {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function setConn(state, text) {
    const c = $("conn");
    c.className = "conn conn-" + state;
    c.textContent = text;
    document.body.dataset.conn = state;
  }

  // ------------------------------------------------------------ sections

  function renderHeader(s) {
    const n = s.node;
    $("served-by").textContent = "served by " + n.name + " (" + n.worker_type + ", " + n.http + ") · cluster " + n.cluster;
    const c = s.counts;
    $("n-alive").textContent = c.alive;
    $("n-suspect").textContent = c.suspect;
    $("n-dead").textContent = c.dead + c.left;
    const sum = s.gaps.summary;
    $("n-covered").textContent = sum.covered + "/" + sum.total_services;
    const rps = s.requests.served_per_s;
    $("n-rps").textContent = rps === null || rps === undefined ? "–" : rps;
    $("n-term").textContent = s.leaders.term;
    const box = $("headline-box");
    $("headline").textContent = s.headline;
    box.classList.toggle("has-critical", s.needs.some((x) => x.status === "critical"));
    box.classList.toggle("has-warning", !s.needs.some((x) => x.status === "critical") && s.needs.length > 0);
  }

  function renderNeeds(s) {
    const ul = $("needs");
    clear(ul);
    if (s.needs.length === 0) {
      ul.appendChild(el("li", "none", "Nothing: every service has a spare."));
      return;
    }
    for (const need of s.needs) {
      const li = el("li", need.status, need.text);
      li.dataset.service = need.service;
      ul.appendChild(li);
    }
  }

  function nameOf(s, id) {
    const m = s.members.find((x) => x.worker_id === id);
    return m ? m.name + " (" + id.slice(0, 8) + ")" : id;
  }

  function renderLeaders(s) {
    const l = s.leaders;
    const p = $("leaders");
    if (!l.coordinators.length) {
      const edges = s.members.some((m) => m.worker_type === "edge" && (m.status === "alive" || m.status === "suspect"));
      p.textContent = "No coordinator leader: " + (edges ? "no edge node runs the coordinator service" : "the pool has no edge node") +
        " (term " + l.term + ").";
      return;
    }
    const primary = l.primary ? nameOf(s, l.primary) : "none (no quorum of edge nodes)";
    p.textContent = "Primary: " + primary + " · leaders: " + l.coordinators.map((id) => nameOf(s, id)).join(", ") +
      " · term " + l.term + (l.quorum ? "" : " · no quorum");
  }

  function renderPicture(s) {
    const pic = $("picture");
    clear(pic);
    const members = s.members;
    const n = members.length;
    const cx = 200, cy = 150;
    const radius = n <= 1 ? 0 : Math.min(115, 60 + n * 8);
    const r = n > 60 ? 4 : n > 24 ? 7 : 14;
    pic.appendChild(svg("circle", { class: "hub", cx, cy, r: Math.max(radius, 30) }));
    const pos = members.map((m, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      return [cx + radius * Math.cos(a), cy + radius * Math.sin(a)];
    });
    const me = members.findIndex((m) => m.self);
    if (me >= 0) {
      members.forEach((m, i) => {
        if (i !== me && (m.status === "alive" || m.status === "suspect")) {
          pic.appendChild(svg("line", { class: "link", x1: pos[me][0], y1: pos[me][1], x2: pos[i][0], y2: pos[i][1] }));
        }
      });
    }
    members.forEach((m, i) => {
      const [x, y] = pos[i];
      const g = svg("g", { "data-node-id": m.worker_id });
      const title = svg("title");
      title.textContent = m.name + " · " + m.worker_type + " · " + m.status;
      g.appendChild(title);
      g.appendChild(svg("circle", { class: "node st-" + m.status, cx: x, cy: y, r }));
      if (m.leader) g.appendChild(svg("circle", { class: "leader", cx: x, cy: y, r: r + 5 }));
      if (m.self) g.appendChild(svg("circle", { class: "self", cx: x, cy: y, r: r + 2.5 }));
      if (r >= 10) {
        const t = svg("text", { class: "type", x, y: y + 3 });
        t.textContent = (m.worker_type || "?").slice(0, 3).toUpperCase();
        g.appendChild(t);
      }
      if (n <= 24) {
        const below = y >= cy || n === 1;
        const label = svg("text", { x, y: below ? y + r + 13 : y - r - 6 });
        label.textContent = m.name.length > 16 ? m.name.slice(0, 15) + "…" : m.name;
        g.appendChild(label);
      }
      pic.appendChild(g);
    });
  }

  function row(dl, term, value) {
    dl.appendChild(el("dt", null, term));
    const dd = el("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    dl.appendChild(dd);
    return dd;
  }

  function loadCell(m) {
    const wrap = el("div");
    const cpu = pct(m.current_load * 100);
    wrap.appendChild(el("span", null, "CPU " + cpu + "% · mem " + pct(m.memory_percent) + "%" +
      (m.worker_type === "gpu" || m.gpu_utilization > 0 ? " · GPU " + pct(m.gpu_utilization) + "%" : "")));
    const bar = el("div", "bar");
    const fill = el("span");
    fill.style.width = cpu + "%";
    bar.appendChild(fill);
    wrap.appendChild(bar);
    return wrap;
  }

  // "direct", or the edges that carry a member behind NAT (their names where this node knows them).
  function reachText(m, s) {
    if (m.reach !== "relayed" || !m.relays || m.relays.length === 0) return "direct";
    return "relayed via " + m.relays.map((id) => nameOf(s, id)).join(", ");
  }

  // "llm-inference 42 %": one service still loading its model and how far (as its node gossips it).
  function loadingText(service, progress) { return service + " " + progress + " %"; }

  function loadingCell(m) {
    const wrap = el("div");
    for (const l of m.loading) {
      const chip = el("span", "svc loading", loadingText(l.service, l.progress));
      chip.dataset.service = l.service;
      wrap.appendChild(chip);
    }
    return wrap;
  }

  function memberCard(m, s) {
    const card = el("article", "member st-" + m.status);
    card.dataset.member = "";
    card.dataset.nodeId = m.worker_id;
    card.dataset.name = m.name;
    card.dataset.status = m.status;
    const top = el("div", "top");
    top.appendChild(el("span", "name", m.name));
    const badges = el("span");
    badges.appendChild(el("span", "badge status st-" + m.status, m.status));
    badges.appendChild(el("span", "badge type t-" + m.worker_type, m.worker_type));
    top.appendChild(badges);
    card.appendChild(top);
    const tags = el("div");
    tags.appendChild(el("span", "id", m.worker_id + " "));
    if (m.self) tags.appendChild(el("span", "badge plain", "this node"));
    if (m.reach === "relayed") tags.appendChild(el("span", "badge plain relayed", "relayed"));
    if (m.primary) tags.appendChild(el("span", "badge plain", "primary"));
    else if (m.leader) tags.appendChild(el("span", "badge plain", "leader"));
    card.appendChild(tags);

    const dl = el("dl");
    if (m.status !== "alive" && m.status_since) row(dl, "since", ago(m.status_since));
    row(dl, "load", loadCell(m));
    row(dl, "requests", m.active_requests + " active" +
      (m.self && s.requests.served_per_s !== null && s.requests.served_per_s !== undefined ? " · " + s.requests.served_per_s + "/s" : ""));
    const svcs = el("div");
    if (m.services.length === 0) svcs.textContent = "none";
    for (const sv of m.services) {
      const chip = el("span", "svc h-" + (sv.health || "unknown"), sv.name + (sv.port ? " :" + sv.port : "") + (sv.health ? " · " + sv.health : ""));
      if (sv.endpoint) chip.title = sv.endpoint;
      svcs.appendChild(chip);
    }
    row(dl, "services", svcs);
    row(dl, "models", m.loaded_models.length ? m.loaded_models.join(", ") : "none loaded");
    if (m.loading && m.loading.length) row(dl, "loading", loadingCell(m));
    if (m.specialization) row(dl, "prefers", m.specialization);
    row(dl, "reach", reachText(m, s));
    row(dl, "gossip", m.address);
    row(dl, "http", m.http || "–");
    card.appendChild(dl);
    return card;
  }

  function renderLoading(s) {
    const ul = $("loading");
    clear(ul);
    const loading = s.loading || [];
    if (loading.length === 0) {
      ul.appendChild(el("li", "none", "No model is loading."));
      return;
    }
    for (const entry of loading) {
      const li = el("li", null, entry.service + ": " +
        entry.nodes.map((n) => n.name + " " + n.progress + " %").join(", "));
      li.dataset.service = entry.service;
      ul.appendChild(li);
    }
  }

  function renderMembers(s) {
    const box = $("members");
    clear(box);
    for (const m of s.members) box.appendChild(memberCard(m, s));
  }

  function render(s) {
    if (s.status !== "ok") return;
    renderHeader(s);
    renderNeeds(s);
    renderLeaders(s);
    renderLoading(s);
    renderPicture(s);
    renderMembers(s);
    lastUpdate = Date.now();
    renders += 1;
    document.body.dataset.renders = String(renders);
    $("updated").textContent = "updated " + new Date(s.generated_at * 1000).toLocaleTimeString();
  }

  // ------------------------------------------------------------ the stream

  function connect() {
    if (!window.EventSource) {
      setConn("lost", "this browser has no EventSource");
      return;
    }
    const es = new EventSource("/api/events");
    es.onopen = () => setConn("live", "live");
    es.onmessage = (ev) => {
      try {
        render(JSON.parse(ev.data));
        setConn("live", "live");
      } catch (err) {
        setConn("lost", "bad snapshot: " + err);
      }
    };
    // EventSource reconnects by itself (the server asks for 2 s); keep the last picture meanwhile.
    es.onerror = () => setConn("lost", "node unreachable, retrying…");
  }

  setInterval(() => {
    if (lastUpdate && Date.now() - lastUpdate > STALE_AFTER_MS && document.body.dataset.conn === "live") {
      setConn("wait", "no update for " + Math.round((Date.now() - lastUpdate) / 1000) + " s");
    }
  }, 1000);

  document.addEventListener("DOMContentLoaded", connect);
})();
