// soar live map: initial aircraft from /api/aircraft, then live fixes over /api/live for the
// 1x1 degree squares of the visible area. Exposes window.soar for tests and debugging.
"use strict";

(function () {
  const TRAIL_POINTS = 40;
  const STALE_MS = 5 * 60 * 1000;
  const MAX_SQUARES = 400;

  // Icons point north; the marker rotates them by the track. 32x32 viewBox.
  const SHAPES = {
    glider: '<path d="M16 6 L17 13 L31 15 L31 16.5 L17 16.5 L16.6 25 L20 26 L20 27.2 L12 27.2 L12 26 L15.4 25 L15 16.5 L1 16.5 L1 15 L15 13 Z"/>',
    tow: '<path d="M16 3 L17.6 9 L29 12 L29 14.6 L17.6 14 L17 23 L21 24.5 L21 26.5 L11 26.5 L11 24.5 L15 23 L14.4 14 L3 14.6 L3 12 L14.4 9 Z"/><rect x="11" y="2" width="10" height="1.4"/>',
    plane: '<path d="M16 3 L17.6 9 L29 12 L29 14.6 L17.6 14 L17 23 L21 24.5 L21 26.5 L11 26.5 L11 24.5 L15 23 L14.4 14 L3 14.6 L3 12 L14.4 9 Z"/>',
    jet: '<path d="M16 2 C17.4 2 17.8 5 17.8 8 L17.8 12 L30 19 L30 21.5 L17.8 17.5 L17.4 25 L21.5 28 L21.5 30 L16 28.6 L10.5 30 L10.5 28 L14.6 25 L14.2 17.5 L2 21.5 L2 19 L14.2 12 L14.2 8 C14.2 5 14.6 2 16 2 Z"/>',
    helicopter: '<circle cx="16" cy="14" r="5.5"/><rect x="15" y="18" width="2" height="11"/><rect x="12" y="27" width="8" height="2"/><path d="M3 5 L29 23 L28 24.5 L2 6.5 Z M29 5 L3 23 L4 24.5 L30 6.5 Z" opacity=".7"/>',
    paraglider: '<path d="M3 12 C8 5 24 5 29 12 L27 13.5 C22 9 10 9 5 13.5 Z"/><path d="M6 13 L15 25 M26 13 L17 25" stroke="currentColor" stroke-width="1" fill="none"/><circle cx="16" cy="26" r="2.6"/>',
    balloon: '<path d="M16 3 C23 3 26 8 26 13 C26 19 19 22 17.5 24 L14.5 24 C13 22 6 19 6 13 C6 8 9 3 16 3 Z"/><rect x="13" y="25" width="6" height="4" rx="1"/>',
    drone: '<rect x="13" y="13" width="6" height="6" rx="1.5"/><path d="M8 8 L24 24 M24 8 L8 24" stroke="currentColor" stroke-width="2.2"/><circle cx="7" cy="7" r="4" opacity=".8"/><circle cx="25" cy="7" r="4" opacity=".8"/><circle cx="7" cy="25" r="4" opacity=".8"/><circle cx="25" cy="25" r="4" opacity=".8"/>',
    other: '<path d="M16 4 L25 27 L16 22 L7 27 Z"/>',
  };
  const COLORS = {
    glider: "#d9480f", tow: "#1864ab", plane: "#1864ab", jet: "#5f3dc4", helicopter: "#2b8a3e",
    paraglider: "#e64980", balloon: "#f08c00", drone: "#495057", other: "#495057",
  };
  const LABELS = {
    glider: "Glider", tow: "Tow plane", plane: "Powered", jet: "Jet / airliner",
    helicopter: "Helicopter", paraglider: "Para/hang glider", balloon: "Balloon", drone: "Drone",
  };

  function shapeOf(ac) {
    switch (ac.aircraft_type) {
      case "glider": return "glider";
      case "tow_plane": return "tow";
      case "helicopter": return "helicopter";
      case "paraglider": case "hang_glider": case "parachute": return "paraglider";
      case "balloon": case "airship": return "balloon";
      case "uav": return "drone";
      case "jet": return "jet";
      case "powered": case "drop_plane": return "plane";
    }
    // ADS-B / SBS without an OGN type: fast and high is an airliner.
    if (ac.protocol === "beast" || ac.protocol === "sbs" || ac.address_type === "icao") {
      if ((ac.altitude_ft || 0) > 15000 || (ac.ground_speed_kt || 0) > 200) return "jet";
      return "plane";
    }
    return "other";
  }

  function svg(shape, color) {
    return '<svg viewBox="0 0 32 32" style="color:' + color + '" fill="' + color + '" stroke="#fff" stroke-width=".8">' + SHAPES[shape] + "</svg>";
  }

  function esc(text) {
    return String(text == null ? "" : text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function labelOf(ac) {
    const main = ac.competition_number || ac.registration || ac.callsign || ac.address || String(ac.id);
    const second = ac.competition_number ? ac.registration || ac.callsign : (ac.registration ? ac.callsign : null);
    const alt = ac.altitude_ft == null ? "" : Math.round(ac.altitude_ft / 100) * 100 + " ft";
    return esc(main) + (second && second !== main ? "<small>" + esc(second) + "</small>" : "") + (alt ? "<small>" + alt + "</small>" : "");
  }

  // -- map ---------------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const start = (params.get("center") || "").split(",").map(Number);
  const map = L.map("map", { zoomControl: true, worldCopyJump: true }).setView(
    start.length === 2 && start.every(Number.isFinite) ? start : [47.0, 8.0],
    Number(params.get("zoom")) || 7,
  );
  const tiles = params.get("tiles") || "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
  if (tiles !== "none") {
    L.tileLayer(tiles, { maxZoom: 18, attribution: "&copy; OpenStreetMap contributors" }).addTo(map);
  }
  // A degree grid: orientation even without tiles, and it shows the live squares.
  const grid = L.layerGroup().addTo(map);
  function drawGrid() {
    grid.clearLayers();
    const b = map.getBounds();
    if (map.getZoom() < 5) return;
    const style = { color: "#7a8ea3", weight: 0.6, opacity: 0.6, interactive: false };
    for (let lat = Math.floor(b.getSouth()); lat <= Math.ceil(b.getNorth()); lat++) {
      L.polyline([[lat, b.getWest() - 1], [lat, b.getEast() + 1]], style).addTo(grid);
    }
    for (let lon = Math.floor(b.getWest()); lon <= Math.ceil(b.getEast()); lon++) {
      L.polyline([[b.getSouth() - 1, lon], [b.getNorth() + 1, lon]], style).addTo(grid);
    }
  }

  const trails = L.layerGroup().addTo(map);
  const aircraft = new Map(); // id -> {data, marker, trail, points, seen}
  let selected = null;

  function iconFor(ac, isSelected) {
    const shape = shapeOf(ac);
    const rotation = ac.track_deg == null ? 0 : ac.track_deg;
    return L.divIcon({
      className: "ac-icon" + (isSelected ? " selected" : ""),
      iconSize: [36, 36],
      iconAnchor: [18, 18],
      html: '<div class="glyph" style="transform: rotate(' + rotation + 'deg)">' + svg(shape, COLORS[shape]) + "</div>" +
        '<div class="ac-label">' + labelOf(ac) + "</div>",
    });
  }

  function upsert(ac, fromLive) {
    if (ac.lat == null || ac.lon == null) return;
    let entry = aircraft.get(ac.id);
    if (!entry) {
      const marker = L.marker([ac.lat, ac.lon], { icon: iconFor(ac, false), riseOnHover: true });
      marker.on("click", () => select(ac.id));
      marker.addTo(map);
      const shape = shapeOf(ac);
      const trail = L.polyline([], { color: COLORS[shape], weight: 2, opacity: 0.7, interactive: false }).addTo(trails);
      entry = { data: {}, marker: marker, trail: trail, points: [], seen: 0, moves: 0 };
      aircraft.set(ac.id, entry);
    }
    const previous = entry.data;
    // keep identity fields a later message may omit
    entry.data = Object.assign({}, previous, ac);
    for (const key of ["registration", "competition_number", "model"]) {
      if (ac[key] == null && previous[key] != null) entry.data[key] = previous[key];
    }
    entry.seen = Date.now();
    const last = entry.points[entry.points.length - 1];
    if (!last || last[0] !== ac.lat || last[1] !== ac.lon) {
      if (last) entry.moves++;
      entry.points.push([ac.lat, ac.lon]);
      if (entry.points.length > TRAIL_POINTS) entry.points.shift();
      entry.trail.setLatLngs(entry.points);
    }
    entry.marker.setLatLng([ac.lat, ac.lon]);
    entry.marker.setIcon(iconFor(entry.data, selected === ac.id));
    if (selected === ac.id) renderPanel(entry.data, KEEP);
    if (fromLive) stats.fixes++;
  }

  // Labels only when they can be read: few aircraft in view, or zoomed in.
  function updateLabels() {
    const b = map.getBounds();
    let inView = 0;
    for (const entry of aircraft.values()) if (b.contains(entry.marker.getLatLng())) inView++;
    map.getContainer().classList.toggle("labels-off", map.getZoom() < 10 && inView > 60);
  }

  function prune() {
    const now = Date.now();
    for (const [id, entry] of aircraft) {
      if (now - entry.seen > STALE_MS && id !== selected) {
        map.removeLayer(entry.marker);
        trails.removeLayer(entry.trail);
        aircraft.delete(id);
      }
    }
    document.getElementById("count").textContent = aircraft.size + " aircraft";
  }

  // -- details panel ---------------------------------------------------------------------
  const panel = document.getElementById("panel");
  const panelBody = document.getElementById("panel-body");
  document.getElementById("panel-close").onclick = () => { panel.style.display = "none"; unselect(); };

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toISOString().substring(11, 16) + " UTC";
  }
  function fmtDuration(seconds) {
    if (seconds == null) return "—";
    const m = Math.round(seconds / 60);
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0");
  }
  function num(v, unit, digits) {
    return v == null ? "—" : Number(v).toFixed(digits || 0) + " " + unit;
  }

  const KEEP = {};
  const LOADING = {};
  let currentFlight = null;
  function renderPanel(ac, flight) {
    if (flight !== KEEP) currentFlight = flight;
    const shape = shapeOf(ac);
    const title = ac.registration || ac.callsign || ac.address || ac.id;
    let html = "<h2>" + esc(title) + (ac.competition_number ? ' <span class="cn">' + esc(ac.competition_number) + "</span>" : "") + "</h2>" +
      '<div class="sub">' + esc(ac.model || LABELS[shape] || "Aircraft") + " · " + esc((ac.address_type || "").toUpperCase()) + " " + esc(ac.address || "") + "</div>" +
      "<dl>" +
      "<dt>Altitude</dt><dd>" + num(ac.altitude_ft, "ft") + "</dd>" +
      "<dt>Speed</dt><dd>" + num(ac.ground_speed_kt, "kt") + "</dd>" +
      "<dt>Track</dt><dd>" + num(ac.track_deg, "°") + "</dd>" +
      "<dt>Climb</dt><dd>" + (ac.climb_fpm == null ? "—" : (ac.climb_fpm / 196.85).toFixed(1) + " m/s") + "</dd>" +
      "<dt>Callsign</dt><dd>" + esc(ac.callsign || "—") + "</dd>" +
      "<dt>Last fix</dt><dd>" + (ac.time_us ? fmtTime(new Date(ac.time_us / 1000).toISOString()) : fmtTime(ac.time)) + "</dd>" +
      "</dl>";
    const f = currentFlight;
    if (f && f !== LOADING) {
      html += "<h3>Current flight</h3><dl>" +
        "<dt>Takeoff</dt><dd>" + fmtTime(f.takeoff) + (f.departure_airport ? " · " + esc(f.departure_airport) : "") + "</dd>" +
        "<dt>Airborne</dt><dd>" + (f.takeoff ? fmtDuration((Date.now() - new Date(f.takeoff)) / 1000) : "first seen airborne") + "</dd>" +
        (f.tow ? "<dt>Tow</dt><dd>" + esc(f.tow.registration || "") + (f.tow.release_height_ft ? " · " + Math.round(f.tow.release_height_ft) + " ft" : "") + "</dd>" : "") +
        "</dl>" +
        '<div class="links"><a href="/api/flights/' + f.id + '.igc">IGC</a><a href="/api/flights/' + f.id + '.kml">KML</a><a href="/api/flights/' + f.id + '/track.geojson">GeoJSON</a></div>';
    } else if (f === LOADING) {
      html += "<h3>Current flight</h3><div class='sub'>loading…</div>";
    } else {
      html += "<h3>Current flight</h3><div class='sub'>none recorded</div>";
    }
    panelBody.innerHTML = html;
    panel.style.display = "block";
  }

  function unselect() {
    const prev = aircraft.get(selected);
    selected = null;
    if (prev) prev.marker.setIcon(iconFor(prev.data, false));
  }

  function select(id) {
    unselect();
    selected = id;
    const entry = aircraft.get(id);
    if (!entry) return;
    entry.marker.setIcon(iconFor(entry.data, true));
    renderPanel(entry.data, LOADING);
    fetch("/api/aircraft/" + id).then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (selected !== id) return;
      if (body) {
        for (const key of ["registration", "competition_number", "model", "category"]) {
          if (body[key] != null) entry.data[key] = body[key];
        }
      }
      renderPanel(entry.data, body ? body.current_flight : null);
    }).catch(() => renderPanel(entry.data, null));
  }
  map.on("click", () => { panel.style.display = "none"; unselect(); });

  // -- initial load ------------------------------------------------------------------------
  function clampedBounds() {
    const b = map.getBounds();
    const west = Math.max(-180, b.getWest()), east = Math.min(180, b.getEast());
    return {
      north: Math.min(90, b.getNorth()), south: Math.max(-90, b.getSouth()),
      east: east, west: west,
    };
  }
  function loadInitial() {
    const b = clampedBounds();
    const since = new Date(Date.now() - 3600 * 1000).toISOString();
    const url = "/api/aircraft?bbox=" + [b.west, b.south, b.east, b.north].map((v) => v.toFixed(4)).join(",") +
      "&limit=1000&seen_after=" + encodeURIComponent(since);
    fetch(url).then((r) => (r.ok ? r.json() : { aircraft: [] })).then((body) => {
      for (const a of body.aircraft) {
        if (!a.last_fix) continue;
        upsert(Object.assign({}, a, a.last_fix, { time: a.last_fix.time }), false);
      }
      prune();
    }).catch(() => {});
  }

  // -- live --------------------------------------------------------------------------------
  const stats = { fixes: 0, messages: 0, connected: false };
  let socket = null;
  let subscribed = null;
  let retry = 1000;

  function squares(b) {
    const lats = Math.floor(b.north) - Math.floor(b.south) + 1;
    const lons = Math.floor(b.east) - Math.floor(b.west) + 1;
    return lats * lons;
  }

  function setStatus(on, text) {
    stats.connected = on;
    document.getElementById("live-dot").className = "dot " + (on ? "on" : "off");
    document.getElementById("live-text").textContent = text;
  }

  function updateSubscription() {
    const notice = document.getElementById("notice");
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const b = clampedBounds();
    const tooLarge = squares(b) > MAX_SQUARES;
    notice.style.display = tooLarge ? "block" : "none";
    if (subscribed) {
      socket.send(JSON.stringify({ type: "area_bulk", action: "unsubscribe", bounds: subscribed }));
      subscribed = null;
    }
    if (!tooLarge) {
      socket.send(JSON.stringify({ type: "area_bulk", action: "subscribe", bounds: b }));
      subscribed = b;
    }
  }

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/live";
    socket = new WebSocket(url);
    socket.onopen = () => { retry = 1000; };
    socket.onmessage = (event) => {
      stats.messages++;
      let msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "fix") upsert(msg, true);
      else if (msg.type === "fixes") { for (const f of msg.fixes) upsert(f, true); }
      else if (msg.type === "connection_status") {
        if (msg.status === "connected") {
          // many fixes per message: a busy sky would otherwise cost one message per fix
          socket.send(JSON.stringify({ type: "options", batch: true }));
          setStatus(true, "live"); subscribed = null; updateSubscription();
        }
        else setStatus(false, "live unavailable");
      } else if (msg.type === "error") console.warn("live:", msg.error);
    };
    socket.onclose = () => {
      setStatus(false, "reconnecting…");
      subscribed = null;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }

  map.on("moveend", () => { drawGrid(); updateSubscription(); loadInitial(); updateLabels(); });
  drawGrid();
  loadInitial();
  connect();
  setInterval(prune, 5000);
  setInterval(() => {
    document.getElementById("count").textContent = aircraft.size + " aircraft";
    updateLabels();
  }, 1000);

  // legend
  document.getElementById("legend").innerHTML = Object.keys(LABELS).map(
    (k) => "<span>" + svg(k, COLORS[k]) + LABELS[k] + "</span>").join("");

  window.soar = { map: map, aircraft: aircraft, stats: stats, select: select };
})();
