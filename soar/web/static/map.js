// soar live map. Live: aircraft from /api/aircraft, the last minutes of trails from
// /map/data/trails, then live fixes over /api/live for the 1x1 degree squares in view.
// Replay (?replay=<ISO start>&speed=<factor>): fixes of a past window from /map/data/replay,
// played on a replay clock through the same upsert() as live fixes.
// The map state (centre, zoom, selection, follow, filters, units, time zone) lives in the URL.
// window.soar exposes the page state for tests and debugging.
"use strict";

(function () {
  const MAX_SQUARES = 400;
  const MAX_ROWS = 400; // list rows rendered at once; the summary says how many match
  const FEET_PER_METRE = 3.28084;

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
    other: "Other",
  };
  const FEED_NAMES = { ogn: "OGN", beast: "ADS-B", sbs: "SBS" };
  const FEED_TEXT = {
    connected: "connected", reconnecting: "reconnecting", down: "down", finished: "finished",
    not_configured: "not configured", unknown: "unknown",
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

  // -- URL state -----------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  function list(name) {
    const text = params.get(name);
    return text ? text.split(",").map((s) => s.trim()).filter(Boolean) : [];
  }
  function truthy(name) {
    const v = (params.get(name) || "").toLowerCase();
    return v === "1" || v === "true" || v === "yes" || v === "on";
  }
  function numberParam(name) {
    const text = params.get(name);
    if (text === null || text === "") return null;
    const v = Number(text);
    return Number.isFinite(v) ? v : null;
  }

  const state = {
    icao: (params.get("icao") || "").toUpperCase() || null,
    reg: params.get("reg") || null,
    follow: false,
    query: params.get("q") || "",
    inView: truthy("inview"),
    types: new Set(list("type")),
    protocols: new Set(list("proto")),
    altMin: numberParam("alt_min"), // feet: the URL is unit-independent
    altMax: numberParam("alt_max"),
    ground: ["air", "ground"].includes(params.get("ground")) ? params.get("ground") : "",
    sort: params.get("sort") || "seen",
    desc: truthy("desc"),
    units: ["metric", "imperial", "aviation"].includes(params.get("units")) ? params.get("units") : "metric",
    tz: null, // null: the browser's time zone
    layers: new Set(params.has("layers") ? list("layers") : ["trails", "airfields", "receivers"]),
  };
  // ?follow=1 follows the selection; ?follow=<hex> selects that aircraft and follows it.
  const followParam = params.get("follow");
  if (followParam) {
    if (/^[0-9a-f]{6}$/i.test(followParam)) { state.icao = followParam.toUpperCase(); state.follow = true; }
    else state.follow = truthy("follow");
  }
  const tzParam = params.get("tz");
  if (tzParam) {
    if (tzParam.toUpperCase() === "UTC") state.tz = "UTC";
    else {
      try { new Intl.DateTimeFormat("en", { timeZone: tzParam }); state.tz = tzParam; } catch (e) { state.tz = null; }
    }
  }
  const replayParam = params.get("replay");
  const replayStart = replayParam ? Date.parse(replayParam) : NaN;
  const replaySpeedParam = numberParam("speed");

  // Server config, overridable in the URL (?inactive=<s>&remove=<s>&trail=<min>).
  const config = { inactive_after_s: 120, remove_after_s: 600, trail_minutes: 10, receiver_online_s: 900 };

  // -- units and times -----------------------------------------------------------------------
  const UNITS = {
    metric: { alt: "m", altF: 1 / FEET_PER_METRE, speed: "km/h", speedF: 1.852, climb: "m/s", climbF: 1 / 196.85, climbDigits: 1, dist: "km", distF: 1 / 1000 },
    imperial: { alt: "ft", altF: 1, speed: "mph", speedF: 1.15078, climb: "ft/min", climbF: 1, climbDigits: 0, dist: "mi", distF: 1 / 1609.344 },
    aviation: { alt: "ft", altF: 1, speed: "kt", speedF: 1, climb: "ft/min", climbF: 1, climbDigits: 0, dist: "NM", distF: 1 / 1852 },
  };
  function u() { return UNITS[state.units]; }
  function fmtAlt(ft, withUnit) {
    if (ft == null) return "—";
    return Math.round(ft * u().altF).toLocaleString("en") + (withUnit === false ? "" : " " + u().alt);
  }
  function fmtSpeed(kt, withUnit) {
    if (kt == null) return "—";
    return Math.round(kt * u().speedF) + (withUnit === false ? "" : " " + u().speed);
  }
  function fmtClimb(fpm, withUnit) {
    if (fpm == null) return "—";
    const v = fpm * u().climbF;
    return (v > 0 ? "+" : "") + v.toFixed(u().climbDigits) + (withUnit === false ? "" : " " + u().climb);
  }
  function fmtDist(m, withUnit) {
    if (m == null) return "—";
    const v = m * u().distF;
    return (v < 10 ? v.toFixed(1) : Math.round(v)) + (withUnit === false ? "" : " " + u().dist);
  }
  function timeFormat(withSeconds) {
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (withSeconds) opts.second = "2-digit";
    if (state.tz) opts.timeZone = state.tz;
    return new Intl.DateTimeFormat("en-GB", opts);
  }
  function tzLabel() {
    if (state.tz === "UTC") return "UTC";
    const parts = new Intl.DateTimeFormat("en-GB", { timeZoneName: "short", timeZone: state.tz || undefined }).formatToParts(new Date());
    const name = parts.find((p) => p.type === "timeZoneName");
    return name ? name.value : "";
  }
  function fmtClock(ms, withSeconds) {
    if (ms == null || !Number.isFinite(ms)) return "—";
    return timeFormat(withSeconds).format(new Date(ms)) + " " + tzLabel();
  }
  function fmtAge(ms) {
    if (ms == null) return "—";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h";
  }
  function fmtDuration(seconds) {
    if (seconds == null) return "—";
    const m = Math.round(seconds / 60);
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0");
  }

  // Trails are coloured by altitude (as tar1090 does): hue from orange on the ground through
  // green and blue to magenta at 40,000 ft.
  function altColor(ft) {
    if (ft == null) return "#868e96";
    const stops = [[0, 20], [500, 30], [1000, 40], [2000, 60], [4000, 100], [6000, 140], [10000, 180], [20000, 220], [30000, 270], [40000, 300]];
    const f = Math.max(0, ft);
    let hue = stops[stops.length - 1][1];
    for (let i = 1; i < stops.length; i++) {
      if (f <= stops[i][0]) {
        const [a, ha] = stops[i - 1], [b, hb] = stops[i];
        hue = ha + (hb - ha) * (f - a) / (b - a);
        break;
      }
    }
    // quantised, so a trail is a few runs of one colour rather than one line per segment
    return "hsl(" + Math.round(hue / 10) * 10 + ",85%,42%)";
  }

  // -- clock -----------------------------------------------------------------------------------
  // Live: the browser's clock (plus a skew tests may set); replay: the replay clock.
  let skewMs = 0;
  const replay = {
    active: Number.isFinite(replayStart), start: replayStart, time: replayStart,
    speed: replaySpeedParam && replaySpeedParam > 0 ? Math.min(replaySpeedParam, 1000) : 1,
    playing: true, queue: [], cursor: null, end: null, exhausted: false, loading: false, applied: 0,
  };
  function now() { return replay.active ? replay.time : Date.now() + skewMs; }

  // -- map -------------------------------------------------------------------------------------
  const legacyCenter = (params.get("center") || "").split(",").map(Number);
  const lat0 = numberParam("lat"), lon0 = numberParam("lon");
  const startCenter = lat0 != null && lon0 != null ? [lat0, lon0]
    : (legacyCenter.length === 2 && legacyCenter.every(Number.isFinite) ? legacyCenter : [47.0, 8.0]);
  const map = L.map("map", { zoomControl: true, worldCopyJump: true }).setView(
    startCenter, numberParam("zoom") || 7);
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

  const layers = {
    trails: L.layerGroup(),
    receivers: L.layerGroup(),
    airfields: L.layerGroup(),
  };
  const selectedTrack = L.layerGroup().addTo(map);
  for (const [name, layer] of Object.entries(layers)) if (state.layers.has(name)) layer.addTo(map);
  L.control.layers(null, { "Trails": layers.trails, "Receivers": layers.receivers, "Airfields": layers.airfields },
    { position: "topright" }).addTo(map);
  map.on("overlayadd overlayremove", (e) => {
    for (const [name, layer] of Object.entries(layers)) {
      if (layer === e.layer) { if (e.type === "overlayadd") state.layers.add(name); else state.layers.delete(name); }
    }
    loadLayers();
    writeUrl();
  });

  // -- aircraft ----------------------------------------------------------------------------
  const aircraft = new Map(); // id -> entry
  const pendingTrails = new Map(); // id -> points loaded before the aircraft itself
  let selected = null;
  const stats = { fixes: 0, messages: 0, connected: false, replayed: 0, trailPoints: 0, removed: 0 };

  function labelOf(ac) {
    const main = ac.competition_number || ac.registration || ac.callsign || ac.address || String(ac.id);
    const second = ac.competition_number ? ac.registration || ac.callsign : (ac.registration ? ac.callsign : null);
    const alt = ac.altitude_ft == null ? "" : fmtAlt(ac.altitude_ft);
    return esc(main) + (second && second !== main ? "<small>" + esc(second) + "</small>" : "") + (alt ? "<small>" + alt + "</small>" : "");
  }

  function iconFor(entry) {
    const ac = entry.data;
    const shape = shapeOf(ac);
    const rotation = ac.track_deg == null ? 0 : ac.track_deg;
    const classes = ["ac-icon"];
    if (selected === ac.id) classes.push("selected");
    if (entry.inactive) classes.push("inactive");
    if (!entry.visible) classes.push("filtered");
    return L.divIcon({
      className: classes.join(" "),
      iconSize: [36, 36],
      iconAnchor: [18, 18],
      html: '<div class="glyph" style="transform: rotate(' + rotation + 'deg)">' + svg(shape, COLORS[shape]) + "</div>" +
        '<div class="ac-label">' + labelOf(ac) + "</div>",
    });
  }
  // A marker's look changes on every fix: patch its element in place (a new icon would rebuild
  // the element, which a replay of thousands of fixes a second cannot afford).
  function refreshIcon(entry) {
    const el = entry.marker.getElement();
    const ac = entry.data;
    const shape = shapeOf(ac);
    if (!el || el.dataset.shape !== shape) {
      entry.marker.setIcon(iconFor(entry));
      const fresh = entry.marker.getElement();
      if (fresh) fresh.dataset.shape = shape;
      return;
    }
    el.classList.toggle("selected", selected === ac.id);
    el.classList.toggle("inactive", !!entry.inactive);
    el.classList.toggle("filtered", !entry.visible);
    const rotate = "rotate(" + (ac.track_deg == null ? 0 : ac.track_deg) + "deg)";
    const glyph = el.firstChild;
    if (glyph.style.transform !== rotate) glyph.style.transform = rotate;
    const label = labelOf(ac);
    if (entry.label !== label) { el.lastChild.innerHTML = label; entry.label = label; }
  }

  // A trail: runs of one altitude colour, each a polyline; the newest run grows in place.
  function trailAppend(entry, point) {
    const [t, lat, lon, alt] = point;
    const last = entry.points[entry.points.length - 1];
    if (last && last[0] === t) return;
    if (last && t < last[0]) {
      // an older point (history after live): insert it and redraw the whole trail
      entry.points.push(point);
      entry.points.sort((a, b) => a[0] - b[0]);
      trailRedraw(entry);
      return;
    }
    entry.points.push(point);
    const color = altColor(alt);
    if (entry.run && entry.run.color === color) {
      entry.run.line.addLatLng([lat, lon]);
    } else {
      const latlngs = last ? [[last[1], last[2]], [lat, lon]] : [[lat, lon]];
      const line = L.polyline(latlngs, { color: color, weight: 2.5, opacity: 0.85, interactive: false });
      entry.trail.addLayer(line);
      entry.run = { color: color, line: line };
    }
    trimTrail(entry);
  }
  function trailRedraw(entry) {
    const points = entry.points;
    entry.points = [];
    entry.run = null;
    entry.trail.clearLayers();
    for (const p of points) trailAppend(entry, p);
  }
  function trimTrail(entry) {
    // Trails show the configured minutes before the aircraft's newest fix (on its own clock:
    // a capture streamed on the capture's clock keeps its trails too).
    const newest = entry.points[entry.points.length - 1][0];
    const cutoff = newest - Math.max(config.trail_minutes, 1) * 60000;
    if (entry.points.length > 2 && entry.points[0][0] < cutoff - 60000) {
      entry.points = entry.points.filter((p) => p[0] >= cutoff);
      trailRedraw(entry);
    }
  }

  function fixTime(ac) {
    if (ac.time_us != null) return ac.time_us / 1000;
    if (ac.time) return Date.parse(ac.time);
    return now();
  }

  function upsert(ac, source) {
    if (ac.lat == null || ac.lon == null || ac.id == null) return;
    let entry = aircraft.get(ac.id);
    if (!entry) {
      entry = { data: {}, marker: null, trail: L.layerGroup().addTo(layers.trails), points: [], run: null,
        lastFix: 0, freshAt: 0, inactive: false, visible: true };
      entry.marker = L.marker([ac.lat, ac.lon], { icon: L.divIcon({ className: "ac-icon" }), riseOnHover: true });
      entry.marker.on("click", (e) => { L.DomEvent.stopPropagation(e); select(ac.id); });
      entry.marker.addTo(map);
      aircraft.set(ac.id, entry);
      const pending = pendingTrails.get(ac.id);
      if (pending) { pendingTrails.delete(ac.id); for (const p of pending) trailAppend(entry, p); }
    }
    const t = fixTime(ac);
    if (t < entry.lastFix) {
      // an older fix than the one shown (history or a late delivery): trail only
      trailAppend(entry, [t, ac.lat, ac.lon, ac.altitude_ft]);
      return;
    }
    const previous = entry.data;
    entry.data = Object.assign({}, previous, ac);
    // keep identity a later message may omit; motion fields are the newest fix's alone
    for (const key of ["registration", "competition_number", "model", "aircraft_type", "category"]) {
      if (ac[key] == null && previous[key] != null) entry.data[key] = previous[key];
    }
    if (!("agl_ft" in ac)) entry.data.agl_ft = null;
    if (!("on_ground" in ac)) entry.data.on_ground = null;
    entry.lastFix = t;
    // Freshness runs on the clock of the page: a live fix is as old as its delivery delay
    // when it arrives (so a capture streamed on its own clock is fresh, and a browser clock
    // that is off does not age everything); a loaded or replayed one is as old as its time.
    entry.freshAt = source === "live"
      ? now() - Math.max(0, ac.received_us != null && ac.time_us != null ? (ac.received_us - ac.time_us) / 1000 : 0)
      : t;
    trailAppend(entry, [t, ac.lat, ac.lon, ac.altitude_ft]);
    entry.marker.setLatLng([ac.lat, ac.lon]);
    entry.inactive = now() - entry.freshAt > config.inactive_after_s * 1000;
    setVisible(entry, passes(entry) || selected === ac.id);
    refreshIcon(entry);
    if (selected === ac.id) {
      selectedAppend([t, ac.lat, ac.lon, ac.altitude_ft, null]);
      renderPanel(KEEP);
      if (state.follow) map.panTo([ac.lat, ac.lon], { animate: false });
    }
    if (source === "live") stats.fixes++;
    else if (source === "replay") stats.replayed++;
    maybeSelectFromUrl(entry);
    listDirty = true;
  }

  function remove(id) {
    const entry = aircraft.get(id);
    if (!entry) return;
    map.removeLayer(entry.marker);
    layers.trails.removeLayer(entry.trail);
    aircraft.delete(id);
    stats.removed++;
    if (selected === id) { selectedTrack.clearLayers(); }
    listDirty = true;
  }

  // Freshness: no fix for inactive_after → drawn inactive; for remove_after → removed.
  function sweep() {
    const t = now();
    for (const [id, entry] of aircraft) {
      const age = t - entry.freshAt;
      // the selected aircraft stays (drawn inactive): someone is looking at it
      if (age > config.remove_after_s * 1000 && id !== selected) { remove(id); continue; }
      const inactive = age > config.inactive_after_s * 1000;
      if (inactive !== entry.inactive) { entry.inactive = inactive; refreshIcon(entry); listDirty = true; }
    }
    document.getElementById("count").textContent = aircraft.size + " aircraft";
  }

  // -- filters and search ----------------------------------------------------------------------
  function airborne(ac) {
    if (ac.on_ground === true) return false;
    if (ac.on_ground === false) return true;
    // the flight machine's rule for OGN: 25 kt or 250 ft above ground
    if ((ac.ground_speed_kt || 0) >= 25) return true;
    if (ac.agl_ft != null) return ac.agl_ft >= 250;
    return false;
  }
  function matchesQuery(ac, q) {
    if (!q) return true;
    const needle = q.trim().toUpperCase();
    if (!needle) return true;
    for (const value of [ac.address, ac.registration, ac.callsign, ac.competition_number]) {
      if (value && String(value).toUpperCase().includes(needle)) return true;
    }
    return false;
  }
  function passes(entry) {
    const ac = entry.data;
    if (!matchesQuery(ac, state.query)) return false;
    if (state.types.size && !state.types.has(shapeOf(ac))) return false;
    if (state.protocols.size && !state.protocols.has(ac.protocol)) return false;
    if (state.altMin != null && (ac.altitude_ft == null || ac.altitude_ft < state.altMin)) return false;
    if (state.altMax != null && (ac.altitude_ft == null || ac.altitude_ft > state.altMax)) return false;
    if (state.ground === "air" && !airborne(ac)) return false;
    if (state.ground === "ground" && airborne(ac)) return false;
    return true;
  }
  function setVisible(entry, visible) {
    if (visible === entry.visible) return false;
    entry.visible = visible;
    if (visible) layers.trails.addLayer(entry.trail); else layers.trails.removeLayer(entry.trail);
    return true;
  }
  function applyFilters() {
    for (const entry of aircraft.values()) {
      if (setVisible(entry, passes(entry) || selected === entry.data.id)) refreshIcon(entry);
    }
    renderList();
    writeUrl();
  }

  // -- the aircraft list ---------------------------------------------------------------------
  let listDirty = true;
  const SORTS = {
    name: (e) => (e.data.registration || e.data.callsign || e.data.address || "").toUpperCase(),
    cn: (e) => (e.data.competition_number || "").toUpperCase(),
    type: (e) => LABELS[shapeOf(e.data)],
    alt: (e) => e.data.altitude_ft,
    agl: (e) => e.data.agl_ft,
    speed: (e) => e.data.ground_speed_kt,
    climb: (e) => e.data.climb_fpm,
    dist: (e) => distanceFromCentre(e),
    seen: (e) => now() - e.freshAt,
  };
  function distanceFromCentre(entry) {
    return map.getCenter().distanceTo(entry.marker.getLatLng());
  }
  function listEntries() {
    const b = map.getBounds();
    const key = SORTS[state.sort] || SORTS.seen;
    const rows = [];
    for (const entry of aircraft.values()) {
      if (!entry.visible) continue;
      if (state.inView && !b.contains(entry.marker.getLatLng())) continue;
      rows.push([key(entry), entry]);
    }
    const dir = state.desc ? -1 : 1;
    rows.sort((a, b2) => {
      const x = a[0], y = b2[0];
      // unknown values last, whatever the direction
      if (x == null || x === "") return (y == null || y === "") ? 0 : 1;
      if (y == null || y === "") return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    return rows.map((r) => r[1]);
  }
  function renderList() {
    listDirty = false;
    const entries = listEntries();
    const body = document.querySelector("#aclist tbody");
    const t = now();
    const html = [];
    for (const entry of entries.slice(0, MAX_ROWS)) {
      const ac = entry.data;
      const name = ac.registration || ac.callsign || ac.address || String(ac.id);
      const second = ac.registration && ac.callsign && ac.callsign !== ac.registration ? ac.callsign : "";
      const classes = [];
      if (selected === ac.id) classes.push("selected");
      if (entry.inactive) classes.push("inactive");
      html.push('<tr data-id="' + ac.id + '" class="' + classes.join(" ") + '">' +
        '<td class="name">' + esc(name) + (second ? "<small>" + esc(second) + "</small>" : "") + "</td>" +
        "<td>" + esc(ac.competition_number || "") + "</td>" +
        "<td>" + esc(ac.model || LABELS[shapeOf(ac)]) + "</td>" +
        '<td class="num">' + fmtAlt(ac.altitude_ft, false) + "</td>" +
        '<td class="num">' + fmtAlt(ac.agl_ft, false) + "</td>" +
        '<td class="num">' + fmtSpeed(ac.ground_speed_kt, false) + "</td>" +
        '<td class="num">' + fmtClimb(ac.climb_fpm, false) + "</td>" +
        '<td class="num">' + fmtDist(distanceFromCentre(entry), false) + "</td>" +
        '<td class="num">' + fmtAge(t - entry.freshAt) + "</td></tr>");
    }
    body.innerHTML = html.join("");
    stats.listed = entries.length;
    const total = aircraft.size;
    document.getElementById("list-summary").textContent = entries.length + " of " + total + " aircraft" +
      (entries.length > MAX_ROWS ? " (first " + MAX_ROWS + " listed)" : "") +
      " · alt " + u().alt + ", speed " + u().speed + ", climb " + u().climb + ", dist " + u().dist;
    for (const th of document.querySelectorAll("#aclist th")) {
      th.classList.toggle("sorted", th.dataset.sort === state.sort);
      th.classList.toggle("desc", th.dataset.sort === state.sort && state.desc);
    }
  }
  document.querySelector("#aclist thead").addEventListener("click", (e) => {
    const th = e.target.closest("th");
    if (!th) return;
    if (state.sort === th.dataset.sort) state.desc = !state.desc;
    else { state.sort = th.dataset.sort; state.desc = ["alt", "agl", "speed", "climb"].includes(state.sort); }
    listDirty = true; renderList(); writeUrl();
  });
  document.querySelector("#aclist tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    const id = Number(tr.dataset.id);
    select(id, { centre: true });
  });

  // -- details panel ---------------------------------------------------------------------------
  const panel = document.getElementById("panel");
  const panelBody = document.getElementById("panel-body");
  document.getElementById("panel-close").onclick = () => unselect();
  const KEEP = {};
  const LOADING = {};
  let currentFlight = null;
  let selectedPoints = []; // [t, lat, lon, alt, ground] of the selected aircraft's flight
  let trackRun = null;

  function renderPanel(flight) {
    const entry = aircraft.get(selected);
    if (!entry) return;
    if (flight !== KEEP) currentFlight = flight;
    const ac = entry.data;
    const shape = shapeOf(ac);
    const title = ac.registration || ac.callsign || ac.address || ac.id;
    let html = "<h2>" + esc(title) + (ac.competition_number ? ' <span class="cn">' + esc(ac.competition_number) + "</span>" : "") + "</h2>" +
      '<div class="sub">' + esc(ac.model || LABELS[shape] || "Aircraft") + " · " + esc((ac.address_type || "").toUpperCase()) + " " + esc(ac.address || "") +
      (ac.protocol ? " · " + esc(FEED_NAMES[ac.protocol] || ac.protocol) : "") + "</div>" +
      "<dl>" +
      "<dt>Altitude</dt><dd>" + fmtAlt(ac.altitude_ft) + "</dd>" +
      "<dt>AGL</dt><dd>" + fmtAlt(ac.agl_ft) + "</dd>" +
      "<dt>Speed</dt><dd>" + fmtSpeed(ac.ground_speed_kt) + "</dd>" +
      "<dt>Track</dt><dd>" + (ac.track_deg == null ? "—" : Math.round(ac.track_deg) + "°") + "</dd>" +
      "<dt>Climb</dt><dd>" + fmtClimb(ac.climb_fpm) + "</dd>" +
      "<dt>Callsign</dt><dd>" + esc(ac.callsign || "—") + "</dd>" +
      "<dt>Last fix</dt><dd>" + fmtClock(entry.lastFix, true) + (entry.inactive ? " (inactive)" : "") + "</dd>" +
      "</dl>";
    const f = currentFlight;
    if (f && f !== LOADING) {
      const takeoff = f.takeoff ? Date.parse(f.takeoff) : null;
      html += "<h3>" + (f.open ? "Current flight" : "Last flight") + "</h3><dl>" +
        "<dt>Takeoff</dt><dd>" + (takeoff ? fmtClock(takeoff) : "—") + (f.departure_airport ? " · " + esc(f.departure_airport) : "") + "</dd>" +
        "<dt>Airborne</dt><dd>" + (takeoff ? fmtDuration((entry.lastFix - takeoff) / 1000) : "first seen airborne") + "</dd>" +
        "</dl>" +
        '<div class="links"><a href="/api/flights/' + f.id + '.igc">IGC</a><a href="/api/flights/' + f.id + '.kml">KML</a><a href="/api/flights/' + f.id + '/track.geojson">GeoJSON</a></div>';
    } else if (f === LOADING) {
      html += "<h3>Current flight</h3><div class='sub'>loading…</div>";
    } else {
      html += "<h3>Current flight</h3><div class='sub'>none recorded</div>";
    }
    panelBody.innerHTML = html;
    panel.style.display = "block";
    const followButton = document.getElementById("follow");
    followButton.setAttribute("aria-pressed", state.follow ? "true" : "false");
    followButton.textContent = state.follow ? "Following" : "Follow";
  }

  function selectedAppend(point) {
    const last = selectedPoints[selectedPoints.length - 1];
    if (last && point[0] <= last[0]) return;
    selectedPoints.push(point);
    const color = altColor(point[3]);
    if (trackRun && trackRun.color === color) trackRun.line.addLatLng([point[1], point[2]]);
    else {
      const latlngs = last ? [[last[1], last[2]], [point[1], point[2]]] : [[point[1], point[2]]];
      const line = L.polyline(latlngs, { color: color, weight: 4, opacity: 0.9, interactive: false }).addTo(selectedTrack);
      trackRun = { color: color, line: line };
    }
    drawBarogram();
  }

  function drawBarogram() {
    const canvas = document.getElementById("barogram");
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const pad = { l: 70, r: 10, t: 12, b: 34 };
    ctx.clearRect(0, 0, W, H);
    ctx.font = "20px system-ui, sans-serif";
    ctx.fillStyle = "#5b6b7b";
    const pts = selectedPoints.filter((p) => p[3] != null);
    if (pts.length < 2) { ctx.fillText("no altitude yet", pad.l, H / 2); return; }
    const t0 = pts[0][0], t1 = pts[pts.length - 1][0] || t0 + 1;
    let lo = Infinity, hi = -Infinity;
    for (const p of pts) {
      lo = Math.min(lo, p[3], p[4] == null ? Infinity : p[4]);
      hi = Math.max(hi, p[3]);
    }
    lo = Math.min(0, lo); hi = Math.max(hi, lo + 100);
    const x = (t) => pad.l + (W - pad.l - pad.r) * (t - t0) / Math.max(1, t1 - t0);
    const y = (ft) => H - pad.b - (H - pad.t - pad.b) * (ft - lo) / (hi - lo);
    // ground elevation, where known, filled
    ctx.fillStyle = "#b08968";
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        ctx.beginPath();
        ctx.moveTo(x(run[0][0]), y(lo));
        for (const p of run) ctx.lineTo(x(p[0]), y(p[4]));
        ctx.lineTo(x(run[run.length - 1][0]), y(lo));
        ctx.closePath(); ctx.fill();
      }
      run = [];
    };
    for (const p of pts) { if (p[4] == null) flush(); else run.push(p); }
    flush();
    // altitude
    ctx.strokeStyle = "#1864ab"; ctx.lineWidth = 3;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[3])) : ctx.moveTo(x(p[0]), y(p[3]))));
    ctx.stroke();
    // axes: altitude in the chosen unit, times in the chosen zone
    ctx.fillStyle = "#5b6b7b"; ctx.strokeStyle = "#dfe5eb"; ctx.lineWidth = 1;
    for (const ft of [lo, (lo + hi) / 2, hi]) {
      ctx.fillText(fmtAlt(ft), 2, y(ft) + 6);
      ctx.beginPath(); ctx.moveTo(pad.l, y(ft)); ctx.lineTo(W - pad.r, y(ft)); ctx.stroke();
    }
    const fmt = timeFormat(false);
    ctx.fillText(fmt.format(new Date(t0)), pad.l, H - 8);
    const end = fmt.format(new Date(t1));
    ctx.fillText(end, W - pad.r - ctx.measureText(end).width, H - 8);
  }

  function unselect() {
    const prev = aircraft.get(selected);
    selected = null;
    state.follow = false;
    selectedPoints = []; trackRun = null;
    selectedTrack.clearLayers();
    panel.style.display = "none";
    if (prev) { setVisible(prev, passes(prev)); refreshIcon(prev); }
    listDirty = true;
    writeUrl();
  }

  function select(id, options) {
    const entry = aircraft.get(id);
    if (!entry) return false;
    if (selected !== id) {
      const prev = aircraft.get(selected);
      selected = id;
      if (prev) { setVisible(prev, passes(prev)); refreshIcon(prev); }
      selectedPoints = []; trackRun = null;
      selectedTrack.clearLayers();
      loadTrack(id);
    }
    if (options && options.follow != null) state.follow = options.follow;
    setVisible(entry, true);
    refreshIcon(entry);
    if ((options && options.centre) || state.follow) map.panTo(entry.marker.getLatLng(), { animate: false });
    renderPanel(currentFlight && selected === id ? KEEP : LOADING);
    listDirty = true;
    writeUrl();
    return true;
  }

  function loadTrack(id) {
    fetch("/map/data/track/" + id).then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (selected !== id) return;
      const entry = aircraft.get(id);
      if (!entry) return;
      const live = selectedPoints;
      selectedPoints = []; trackRun = null;
      selectedTrack.clearLayers();
      const cut = replay.active ? replay.time : Infinity;
      if (body) for (const p of body.fixes) if (p[0] <= cut) selectedAppend(p);
      // the track may know a newer position than the aircraft row the map was loaded from
      const newest = selectedPoints[selectedPoints.length - 1];
      if (newest && newest[0] > entry.lastFix) {
        upsert({ id: id, time_us: newest[0] * 1000, lat: newest[1], lon: newest[2], altitude_ft: newest[3],
          agl_ft: newest[3] != null && newest[4] != null ? newest[3] - newest[4] : null }, "load");
      }
      for (const p of live) selectedAppend(p);
      drawBarogram();
      renderPanel(body ? body.flight : null);
    }).catch(() => renderPanel(null));
  }

  document.getElementById("follow").onclick = () => {
    state.follow = !state.follow;
    if (state.follow && selected != null) {
      const entry = aircraft.get(selected);
      if (entry) map.panTo(entry.marker.getLatLng(), { animate: false });
    }
    renderPanel(KEEP);
    writeUrl();
  };
  // Dragging the map is the user taking over: stop following.
  map.on("dragstart", () => { if (state.follow) { state.follow = false; renderPanel(KEEP); writeUrl(); } });
  map.on("click", () => unselect());

  // ?icao= / ?reg= / ?follow=<hex>: select the aircraft as soon as it is on the map.
  let urlSelection = !!(state.icao || state.reg);
  function maybeSelectFromUrl(entry) {
    if (!urlSelection) return;
    const ac = entry.data;
    const hit = (state.icao && (ac.address || "").toUpperCase() === state.icao) ||
      (state.reg && (ac.registration || "").toUpperCase() === state.reg.toUpperCase());
    if (hit) {
      urlSelection = false;
      select(ac.id, { centre: !(lat0 != null && lon0 != null), follow: state.follow });
    }
  }
  // An aircraft given by hex or registration but not in view: ask the API where it is and go
  // there (its newest sighting); an older API without those lookups: try its ids by address.
  function locateFromUrl() {
    if (!urlSelection || (lat0 != null && lon0 != null)) return;
    const query = state.icao ? "address=" + encodeURIComponent(state.icao)
      : "registration=" + encodeURIComponent(state.reg);
    const goTo = (found) => {
      if (!found || !found.last_fix || !urlSelection) return false;
      map.setView([found.last_fix.lat, found.last_fix.lon], Math.max(map.getZoom(), 9));
      upsert(Object.assign({}, found, found.last_fix), "load");
      return true;
    };
    fetch("/api/aircraft?" + query).then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (body) {
        const seen = body.aircraft.filter((a) => a.last_fix)
          .sort((a, b) => Date.parse(b.last_fix.time) - Date.parse(a.last_fix.time));
        goTo(seen[0]);
        return;
      }
      if (!state.icao || !/^[0-9A-F]{6}$/.test(state.icao)) return;
      const address = parseInt(state.icao, 16);
      const ids = [1, 2, 3, 0].map((type) => type * 16777216 + address);
      (function next(i) {
        if (i >= ids.length) return;
        fetch("/api/aircraft/" + ids[i]).then((r) => (r.ok ? r.json() : null))
          .then((one) => { if (!goTo(one)) next(i + 1); }).catch(() => next(i + 1));
      })(0);
    }).catch(() => {});
  }

  // -- URL -------------------------------------------------------------------------------------
  let urlTimer = null;
  function writeUrl() {
    clearTimeout(urlTimer);
    urlTimer = setTimeout(() => {
      const p = new URLSearchParams();
      const c = map.getCenter();
      p.set("lat", c.lat.toFixed(4)); p.set("lon", c.lng.toFixed(4)); p.set("zoom", String(map.getZoom()));
      const entry = aircraft.get(selected);
      if (entry && entry.data.address) p.set("icao", entry.data.address);
      else if (state.icao && urlSelection) p.set("icao", state.icao);
      if (state.reg && urlSelection) p.set("reg", state.reg);
      if (state.follow && selected != null) p.set("follow", "1");
      if (state.query) p.set("q", state.query);
      if (state.inView) p.set("inview", "1");
      if (state.types.size) p.set("type", [...state.types].join(","));
      if (state.protocols.size) p.set("proto", [...state.protocols].join(","));
      if (state.altMin != null) p.set("alt_min", String(Math.round(state.altMin)));
      if (state.altMax != null) p.set("alt_max", String(Math.round(state.altMax)));
      if (state.ground) p.set("ground", state.ground);
      if (state.sort !== "seen" || state.desc) { p.set("sort", state.sort); if (state.desc) p.set("desc", "1"); }
      if (state.units !== "metric") p.set("units", state.units);
      if (state.tz) p.set("tz", state.tz);
      const layerList = [...state.layers].sort().join(",");
      if (layerList !== "airfields,receivers,trails") p.set("layers", layerList);
      for (const keep of ["tiles", "inactive", "remove", "trail", "replay_end"]) if (params.has(keep)) p.set(keep, params.get(keep));
      if (replay.active) { p.set("replay", new Date(replay.start).toISOString()); p.set("speed", String(replay.speed)); }
      history.replaceState(null, "", location.pathname + "?" + p.toString());
    }, 100);
  }

  // -- controls ------------------------------------------------------------------------------
  const search = document.getElementById("search");
  search.value = state.query;
  search.addEventListener("input", () => { state.query = search.value; applyFilters(); renderList(); });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const first = listEntries()[0];
    if (first) select(first.data.id, { centre: true });
  });
  const inView = document.getElementById("inview");
  inView.checked = state.inView;
  inView.onchange = () => { state.inView = inView.checked; listDirty = true; renderList(); writeUrl(); };
  const filtersBox = document.getElementById("filters");
  document.getElementById("filters-toggle").onclick = () => { filtersBox.hidden = !filtersBox.hidden; };
  const typeBox = document.getElementById("f-type");
  typeBox.insertAdjacentHTML("beforeend", Object.keys(LABELS).map((k) =>
    '<label><input type="checkbox" value="' + k + '"> ' + LABELS[k] + "</label>").join(""));
  for (const box of typeBox.querySelectorAll("input")) {
    box.checked = state.types.has(box.value);
    box.onchange = () => { if (box.checked) state.types.add(box.value); else state.types.delete(box.value); applyFilters(); };
  }
  for (const box of document.querySelectorAll("#f-proto input")) {
    box.checked = state.protocols.has(box.value);
    box.onchange = () => { if (box.checked) state.protocols.add(box.value); else state.protocols.delete(box.value); applyFilters(); };
  }
  const altMin = document.getElementById("f-alt-min"), altMax = document.getElementById("f-alt-max");
  function showAltInputs() {
    altMin.value = state.altMin == null ? "" : Math.round(state.altMin * u().altF);
    altMax.value = state.altMax == null ? "" : Math.round(state.altMax * u().altF);
    for (const el of document.querySelectorAll(".unit-alt")) el.textContent = u().alt;
  }
  function readAlt(input) { return input.value === "" ? null : Number(input.value) / u().altF; }
  altMin.onchange = () => { state.altMin = readAlt(altMin); applyFilters(); };
  altMax.onchange = () => { state.altMax = readAlt(altMax); applyFilters(); };
  const groundSelect = document.getElementById("f-ground");
  groundSelect.value = state.ground;
  groundSelect.onchange = () => { state.ground = groundSelect.value; applyFilters(); };
  if (state.types.size || state.protocols.size || state.altMin != null || state.altMax != null || state.ground) filtersBox.hidden = false;
  document.getElementById("filters-clear").onclick = () => {
    state.types.clear(); state.protocols.clear(); state.altMin = state.altMax = null; state.ground = "";
    for (const box of filtersBox.querySelectorAll("input[type=checkbox]")) box.checked = false;
    groundSelect.value = ""; showAltInputs(); applyFilters();
  };
  const unitsSelect = document.getElementById("units");
  unitsSelect.value = state.units;
  unitsSelect.onchange = () => { setUnits(unitsSelect.value); };
  function setUnits(units) {
    state.units = units; unitsSelect.value = units; showAltInputs();
    for (const entry of aircraft.values()) refreshIcon(entry);
    if (selected != null) { renderPanel(KEEP); drawBarogram(); }
    listDirty = true; renderList(); writeUrl();
  }
  const utcBox = document.getElementById("utc");
  utcBox.checked = state.tz === "UTC";
  utcBox.onchange = () => {
    state.tz = utcBox.checked ? "UTC" : null;
    if (selected != null) { renderPanel(KEEP); drawBarogram(); }
    showReplayClock(); writeUrl();
  };
  showAltInputs();
  const sidebar = document.getElementById("sidebar");
  document.getElementById("sidebar-toggle").onclick = () => sidebar.classList.toggle("open");
  // The flight log opens on the same time zone.
  function flightsLink() {
    const zone = state.tz || Intl.DateTimeFormat().resolvedOptions().timeZone;
    document.getElementById("flights-link").href = "/flights" + (zone ? "?tz=" + encodeURIComponent(zone) : "");
  }

  // -- loading ---------------------------------------------------------------------------------
  function clampedBounds() {
    const b = map.getBounds();
    return {
      north: Math.min(90, b.getNorth()), south: Math.max(-90, b.getSouth()),
      east: Math.min(180, b.getEast()), west: Math.max(-180, b.getWest()),
    };
  }
  function bboxParam() {
    const b = clampedBounds();
    return [b.west, b.south, b.east, b.north].map((v) => v.toFixed(4)).join(",");
  }
  function loadInitial() {
    if (replay.active) return;
    const since = new Date(now() - config.remove_after_s * 1000).toISOString();
    const url = "/api/aircraft?bbox=" + bboxParam() + "&limit=1000&seen_after=" + encodeURIComponent(since);
    return fetch(url).then((r) => (r.ok ? r.json() : { aircraft: [] })).then((body) => {
      for (const a of body.aircraft) {
        if (!a.last_fix) continue;
        upsert(Object.assign({}, a, a.last_fix, { time: a.last_fix.time }), "load");
      }
      sweep();
      stats.loaded = true;
    }).catch(() => {});
  }
  // History: the last trail_minutes of the aircraft in view (before the replay start in replay).
  const trailAreas = [];
  function loadTrails() {
    if (!state.layers.has("trails") || config.trail_minutes <= 0) return Promise.resolve();
    const b = clampedBounds();
    if (trailAreas.some((a) => a.north >= b.north && a.south <= b.south && a.east >= b.east && a.west <= b.west)) {
      return Promise.resolve();
    }
    trailAreas.push(b);
    let url = "/map/data/trails?bbox=" + bboxParam() + "&minutes=" + config.trail_minutes;
    if (replay.active) url += "&until=" + encodeURIComponent(new Date(replay.start).toISOString());
    return fetch(url).then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (!body) return;
      for (const [id, points] of Object.entries(body.trails)) {
        const key = Number(id);
        stats.trailPoints += points.length;
        const entry = aircraft.get(key);
        if (entry) for (const p of points) trailAppend(entry, p);
        else pendingTrails.set(key, points);
      }
      stats.trailsLoaded = (stats.trailsLoaded || 0) + 1;
    }).catch(() => {});
  }

  let receiversLoadedFor = null, airfieldsLoadedFor = null;
  function loadLayers() {
    const zoom = map.getZoom();
    const key = bboxParam() + "/" + zoom;
    if (state.layers.has("receivers") && zoom >= 6 && receiversLoadedFor !== key) {
      receiversLoadedFor = key;
      fetch("/map/data/receivers?bbox=" + bboxParam()).then((r) => (r.ok ? r.json() : null)).then((body) => {
        if (!body) return;
        layers.receivers.clearLayers();
        for (const rx of body.receivers) {
          const marker = L.marker([rx.lat, rx.lon], {
            icon: L.divIcon({ className: "receiver-icon " + (rx.online ? "online" : "offline"), iconSize: [12, 12], html: "<div></div>" }),
            keyboard: false,
          });
          marker.bindTooltip(esc(rx.name) + " · " + (rx.online ? "online" : "offline") + "<br>last beacon " +
            (rx.last_beacon ? fmtClock(Date.parse(rx.last_beacon)) : "—"));
          marker.soarReceiver = rx;
          layers.receivers.addLayer(marker);
        }
        stats.receivers = body.receivers.length;
      }).catch(() => {});
    } else if (zoom < 6) layers.receivers.clearLayers();
    if (state.layers.has("airfields") && zoom >= 8 && airfieldsLoadedFor !== key) {
      airfieldsLoadedFor = key;
      // zoomed out: the fields with an IATA code only; every strip from zoom 10
      fetch("/map/data/airfields?bbox=" + bboxParam() + "&limit=500&major=" + (zoom < 10)).then((r) => (r.ok ? r.json() : null)).then((body) => {
        if (!body) return;
        layers.airfields.clearLayers();
        const names = map.getZoom() >= 10;
        for (const field of body.airfields) {
          const marker = L.circleMarker([field.lat, field.lon], { radius: 5, color: "#5c3d2e", weight: 2, fillColor: "#fff", fillOpacity: 1 });
          marker.bindTooltip(esc(field.code) + (names ? " " + esc(field.name) : ""), {
            permanent: names, direction: "right", className: "airfield-label", offset: [6, 0],
          });
          marker.soarAirfield = field;
          layers.airfields.addLayer(marker);
        }
        stats.airfields = body.airfields.length;
      }).catch(() => {});
    } else if (zoom < 8) layers.airfields.clearLayers();
  }

  function loadConfig() {
    return fetch("/map/data/config").then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (body) Object.assign(config, body);
    }).catch(() => {}).then(() => {
      const overrides = { inactive: "inactive_after_s", remove: "remove_after_s", trail: "trail_minutes" };
      for (const [name, key] of Object.entries(overrides)) {
        const v = numberParam(name);
        if (v != null && v >= 0) config[key] = v;
      }
    });
  }

  // -- feeds -----------------------------------------------------------------------------------
  const feeds = {};
  function loadFeeds() {
    return fetch("/map/data/feeds").then((r) => (r.ok ? r.json() : null)).then((body) => {
      if (!body) return;
      Object.assign(feeds, body.feeds);
      document.getElementById("feeds").innerHTML = Object.entries(body.feeds).map(([protocol, feed]) =>
        '<span class="feed" data-protocol="' + protocol + '" data-state="' + esc(feed.state) + '" title="' +
        esc(feed.sources.map((s) => s.name + ": " + (FEED_TEXT[s.state] || s.state)).join("\n")) + '">' +
        '<span class="dot"></span>' + FEED_NAMES[protocol] + ' <span class="label">' + esc(FEED_TEXT[feed.state] || feed.state) + "</span></span>").join("");
      stats.feedsLoaded = (stats.feedsLoaded || 0) + 1;
    }).catch(() => {});
  }

  // -- live ------------------------------------------------------------------------------------
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
      if (msg.type === "fix") upsert(msg, "live");
      else if (msg.type === "fixes") { for (const f of msg.fixes) upsert(f, "live"); }
      else if (msg.type === "connection_status") {
        if (msg.status === "connected") {
          // many fixes per message: a busy sky would otherwise cost one message per fix
          socket.send(JSON.stringify({ type: "options", batch: true }));
          setStatus(true, "live"); subscribed = null; updateSubscription();
        } else setStatus(false, "live unavailable");
      } else if (msg.type === "error") console.warn("live:", msg.error);
    };
    socket.onclose = () => {
      setStatus(false, "reconnecting…");
      subscribed = null;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }

  // -- replay ----------------------------------------------------------------------------------
  const REPLAY_TICK_MS = 100;
  function showReplayClock() {
    if (!replay.active) return;
    document.getElementById("replay-clock").textContent =
      new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "medium", timeZone: state.tz || undefined }).format(new Date(replay.time)) + " " + tzLabel();
    document.getElementById("replay-state").textContent =
      (replay.playing ? "playing" : "paused") + (replay.exhausted && !replay.queue.length ? " · end of recorded fixes" : "");
    document.getElementById("replay-play").textContent = replay.playing ? "Pause" : "Play";
  }
  // The replay reads the fixes of the view and a margin around it (the whole world would be
  // thousands of aircraft nobody sees); a view outside that area starts a new read there, from
  // the replay clock on.
  function paddedBounds() {
    const b = clampedBounds();
    const dlat = (b.north - b.south) / 2, dlon = (b.east - b.west) / 2;
    return {
      west: Math.max(-180, b.west - dlon), south: Math.max(-90, b.south - dlat),
      east: Math.min(180, b.east + dlon), north: Math.min(90, b.north + dlat),
    };
  }
  function replayArea() {
    const a = replay.area;
    return [a.west, a.south, a.east, a.north].map((v) => v.toFixed(4)).join(",");
  }
  function replayFollowView() {
    const b = clampedBounds(), a = replay.area;
    if (a && a.west <= b.west && a.east >= b.east && a.south <= b.south && a.north >= b.north) return;
    replay.area = paddedBounds();
    replay.from = a ? replay.time : replay.start;
    replay.queue = []; replay.cursor = null; replay.exhausted = false;
    replay.generation = (replay.generation || 0) + 1;
    if (a) replay.rereads = (replay.rereads || 0) + 1;
    fetchReplayPage();
  }
  function fetchReplayPage() {
    if (replay.loading || replay.exhausted) return;
    replay.loading = true;
    const generation = replay.generation;
    let url = "/map/data/replay?start=" + encodeURIComponent(new Date(replay.from).toISOString()) +
      "&end=" + encodeURIComponent(new Date(replay.end).toISOString()) + "&bbox=" + replayArea() + "&limit=5000";
    if (replay.cursor) url += "&cursor=" + encodeURIComponent(replay.cursor);
    fetch(url).then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((body) => {
      if (generation !== replay.generation) return; // an older area's page
      for (const fix of body.fixes) replay.queue.push(fix);
      replay.cursor = body.next_cursor;
      if (!body.next_cursor) replay.exhausted = true;
      replay.pages = (replay.pages || 0) + 1;
    }).catch((err) => { replay.error = String(err); replay.exhausted = true; })
      .then(() => { replay.loading = false; if (generation !== replay.generation) fetchReplayPage(); });
  }
  let lastTick = null;
  function replayTick() {
    const wall = performance.now();
    if (replay.playing && lastTick != null) {
      // the clock waits for data rather than running past fixes not yet fetched
      const waiting = !replay.exhausted && !replay.queue.length;
      if (!waiting) replay.time += (wall - lastTick) * replay.speed;
    }
    lastTick = wall;
    replay.ticks = (replay.ticks || 0) + 1;
    let applied = 0;
    while (replay.queue.length && replay.queue[0].time_us / 1000 <= replay.time) {
      upsert(replay.queue.shift(), "replay");
      applied++;
    }
    replay.applied += applied;
    if (replay.queue.length < 1000) fetchReplayPage();
    if (applied) sweep();
    showReplayClock();
  }
  function startReplay() {
    replay.end = replay.start + 24 * 3600 * 1000;
    const endParam = params.get("replay_end");
    if (endParam && Number.isFinite(Date.parse(endParam)) && Date.parse(endParam) > replay.start) {
      replay.end = Math.min(replay.end, Date.parse(endParam));
    }
    document.getElementById("replay-bar").hidden = false;
    setStatus(false, "replay");
    document.getElementById("live-status").title = "replaying recorded fixes from the database";
    const speedSelect = document.getElementById("replay-speed");
    if (![...speedSelect.options].some((o) => Number(o.value) === replay.speed)) {
      speedSelect.insertAdjacentHTML("beforeend", "<option>" + replay.speed + "</option>");
    }
    speedSelect.value = String(replay.speed);
    speedSelect.onchange = () => { replay.speed = Number(speedSelect.value); writeUrl(); };
    document.getElementById("replay-play").onclick = () => { replay.playing = !replay.playing; showReplayClock(); };
    replayFollowView();
    setInterval(replayTick, REPLAY_TICK_MS);
  }

  // -- start -----------------------------------------------------------------------------------
  map.on("moveend", () => {
    if (replay.active && replay.area) replayFollowView();
    drawGrid(); updateSubscription(); loadInitial(); loadTrails(); loadLayers(); updateLabels();
    listDirty = true; writeUrl();
  });
  // Labels only when they can be read: few aircraft in view, or zoomed in.
  function updateLabels() {
    const b = map.getBounds();
    let inViewCount = 0;
    for (const entry of aircraft.values()) if (b.contains(entry.marker.getLatLng())) inViewCount++;
    map.getContainer().classList.toggle("labels-off", map.getZoom() < 10 && inViewCount > 60);
  }

  drawGrid();
  flightsLink();
  loadConfig().then(() => {
    // trails first: the aircraft loaded next find their history waiting
    loadTrails().then(() => loadInitial());
    loadLayers();
    locateFromUrl();
    if (replay.active) startReplay(); else connect();
  });
  loadFeeds();
  setInterval(loadFeeds, 5000);
  setInterval(sweep, 1000);
  setInterval(() => {
    if (listDirty || state.sort === "seen" || state.sort === "dist") renderList();
    updateLabels();
  }, 1000);

  document.getElementById("legend").innerHTML = Object.keys(LABELS).filter((k) => k !== "other").map(
    (k) => "<span>" + svg(k, COLORS[k]) + LABELS[k] + "</span>").join("");

  window.soar = {
    map: map, aircraft: aircraft, stats: stats, select: select, unselect: unselect, state: state,
    config: config, feeds: feeds, replay: replay, layers: layers, now: now,
    selectedPoints: () => selectedPoints,
    // how far (px) the point is from the map's centre: panning rounds to whole pixels
    offCentre: (latlng) => map.latLngToContainerPoint(latlng).distanceTo(map.getSize().divideBy(2)),
    selected: () => selected,
    listIds: () => [...document.querySelectorAll("#aclist tbody tr")].map((tr) => Number(tr.dataset.id)),
    renderList: renderList, setUnits: setUnits, applyFilters: applyFilters, sweep: sweep,
    // tests move the live clock instead of waiting minutes for freshness to change
    skew: (ms) => { skewMs = ms; sweep(); renderList(); },
    altColor: altColor, airborne: airborne, shapeOf: shapeOf,
  };
})();
