// soar flight log: a day's flights from /api/flights, filterable by airfield, a page at a time
// with "Load more" and the day's total; refreshes the loaded pages every minute so it can stay
// open in the launch point caravan. Times are in the browser's time zone unless ?tz= names
// one or "Times in UTC" is ticked; the day runs midnight to midnight in that zone.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const dateInput = document.getElementById("date");
  const airportInput = document.getElementById("airport");
  const utcInput = document.getElementById("utc");
  const spuriousInput = document.getElementById("spurious");
  const moreButton = document.getElementById("more");
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const pageSize = Math.min(500, Math.max(1, parseInt(params.get("limit") || "100", 10) || 100));
  let namedZone = params.get("tz");  // a zone from the URL wins over the browser's
  utcInput.checked = params.get("utc") === "1" || namedZone === "UTC";
  spuriousInput.checked = params.get("include_spurious") === "true";
  airportInput.value = (params.get("airport") || "").toUpperCase();

  function zone() { return utcInput.checked ? "UTC" : (namedZone || browserZone); }
  function knownZone(tz) {
    try { new Intl.DateTimeFormat("en", { timeZone: tz }); return true; } catch (e) { return false; }
  }
  function today(tz) {
    // a zone the browser does not know goes to the server as it is, which says what is wrong
    if (!knownZone(tz)) tz = browserZone;
    // the calendar day now in `tz` (en-CA formats as YYYY-MM-DD)
    return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
  }
  dateInput.value = params.get("date") || today(zone());

  const state = { flights: [], total: 0, next: null, body: null, loading: false };

  const ESTIMATES = {
    takeoff: {
      out_of_coverage: "Takeoff out of receiver coverage: projected back from the first climb",
      first_seen_airborne: "First seen airborne: the takeoff was not seen (time of the first fix)",
    },
    landing: {
      out_of_coverage: "Landed out of receiver coverage: touchdown projected from the last descent",
      timed_out: "Lost: no fix for an hour (time of the last fix)",
      split: "Track cut by a gap or a callsign change (time of the last fix)",
    },
  };
  const LAUNCH = { aerotow: "Aerotow", winch: "Winch", self: "Self", unknown: "Unknown" };

  function esc(text) {
    return String(text == null ? "" : text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function hhmm(iso) {
    if (!iso) return "";
    return new Intl.DateTimeFormat("en-GB", { timeZone: zone(), hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(new Date(iso));
  }
  function estimated(time, reason, kind) {
    const why = ESTIMATES[kind][reason] || reason;
    return '<span class="est" data-estimate="' + esc(reason) + '" title="' + esc(why) + '">' + hhmm(time) + "</span>";
  }
  function duration(f) {
    let seconds = f.duration_s;
    if (seconds == null && f.open && f.takeoff) seconds = (Date.now() - new Date(f.takeoff)) / 1000;
    if (seconds == null) return "";
    const m = Math.round(seconds / 60);
    return Math.floor(m / 60) + ":" + String(m % 60).padStart(2, "0");
  }
  function feet(value) { return value == null ? "" : Math.round(value).toLocaleString("en") + " ft"; }

  function query() {
    const q = new URLSearchParams({ date: dateInput.value, tz: zone() });
    const airport = airportInput.value.trim().toUpperCase();
    if (airport) q.set("airport", airport);
    if (spuriousInput.checked) q.set("include_spurious", "true");
    return q;
  }

  function takeoffCell(f) {
    if (f.takeoff_estimate === "first_seen_airborne") {
      return estimated(f.first_fix, "first_seen_airborne", "takeoff") + '<span class="why">first seen airborne</span>';
    }
    if (f.takeoff_estimate) return estimated(f.takeoff, f.takeoff_estimate, "takeoff") + '<span class="why">out of coverage</span>';
    return hhmm(f.takeoff);
  }
  function landingCell(f) {
    if (f.landing_estimate === "out_of_coverage") {
      return estimated(f.landing, "out_of_coverage", "landing") + '<span class="why">out of coverage</span>';
    }
    if (f.landing_estimate === "timed_out") {
      return estimated(f.last_fix, "timed_out", "landing") + '<span class="why">lost · last seen</span>';
    }
    if (f.landing_estimate === "split") return estimated(f.last_fix, "split", "landing") + '<span class="why">track cut</span>';
    if (f.landing) return hhmm(f.landing);
    return f.open ? "airborne" : "";
  }
  function launchCell(f) {
    let html = '<span class="launch ' + esc(f.launch) + '">' + esc(LAUNCH[f.launch] || f.launch) + "</span>";
    if (f.tow) html += " " + esc(f.tow.registration || (f.tow.aircraft_id == null ? "tow plane" : "#" + f.tow.aircraft_id));
    if (f.tow_plane) html += '<span class="towplane">tow plane</span>';
    return html;
  }
  function runwayCell(f) {
    const parts = [];
    if (f.takeoff_runway) parts.push(esc(f.takeoff_runway));
    if (f.landing_runway) parts.push(esc(f.landing_runway));
    return parts.join(" → ");
  }

  // The page's columns; the CSV has the same ones (and a date): data-col names its CSV column.
  const COLUMNS = [
    ["Takeoff", "takeoff", takeoffCell, "num"],
    ["Landing", "landing", landingCell, "num"],
    ["Duration", "duration", duration, "num"],
    ["Aircraft", "registration", (f) => '<span class="reg">' + esc(f.registration || f.callsign || (f.aircraft_id == null ? "anonymous" : "unknown")) + "</span>" + (f.model ? " <small>" + esc(f.model) + "</small>" : "")],
    ["Comp.", "competition_number", (f) => f.competition_number ? '<span class="cn">' + esc(f.competition_number) + "</span>" : ""],
    ["Launch", "launch", launchCell],
    ["Release", "release_height_ft", (f) => f.tow && f.tow.release_height_ft != null ? feet(f.tow.release_height_ft) : "", "num"],
    ["Runway", "takeoff_runway", runwayCell],
    ["Max height", "max_altitude_ft", (f) => feet(f.max_altitude_ft) + (f.max_agl_ft != null ? " <small>(" + feet(f.max_agl_ft) + " AGL)</small>" : ""), "num"],
    ["From", "departure", (f) => esc(f.departure_airport || "")],
    ["To", "arrival", (f) => esc(f.arrival_airport || "")],
    ["Track", "flight_id", (f) => '<a href="/api/flights/' + f.id + '.igc">IGC</a> <a href="/api/flights/' + f.id + '.kml">KML</a>'],
  ];

  function renderDay(summary) {
    const box = document.getElementById("day");
    if (!summary || !summary.airfields.length) { box.innerHTML = ""; return; }
    const rows = summary.airfields.map((a) =>
      "<tr data-airport=\"" + esc(a.airport || "") + "\"><td>" + esc(a.airport || "no airfield known") + "</td><td>" + a.flights + "</td><td>" +
      a.launches.aerotow + "</td><td>" + a.launches.winch + "</td><td>" + a.launches.self + "</td><td>" +
      a.launches.unknown + "</td><td>" + a.tow_plane_flights + "</td></tr>").join("");
    box.innerHTML = '<table class="day" id="day-summary"><thead><tr><th>Airfield</th><th>Flights</th><th>Aerotow</th><th>Winch</th><th>Self</th><th>Unknown</th><th>Tow-plane flights</th></tr></thead><tbody>' +
      rows + "</tbody></table>" + (summary.complete ? "" : '<div class="log-legend">Summary of the first flights only: the day is too busy to count them all.</div>');
  }

  function render() {
    const body = state.body;
    const log = document.getElementById("log");
    const flights = state.flights;
    const open = flights.filter((f) => f.open).length;
    document.getElementById("summary").textContent =
      (flights.length < state.total ? flights.length + " of " : "") +
      state.total + " flight" + (state.total === 1 ? "" : "s") + " on " + body.date +
      (body.airport ? " at " + body.airport : "") + (open ? " · " + open + " still airborne" : "") +
      " · times " + (zone() === "UTC" ? "UTC" : zone());
    moreButton.hidden = !state.next;
    if (!flights.length) {
      log.innerHTML = '<div class="empty">No flights recorded for this day' + (body.airport ? " at " + esc(body.airport) : "") + ".</div>";
      return;
    }
    const head = COLUMNS.map((c) => '<th data-col="' + c[1] + '">' + c[0] + "</th>").join("");
    const rows = flights.map((f) => '<tr data-flight="' + esc(f.id) + '" class="' + (f.open ? "open" : "") + '">' +
      COLUMNS.map((c) => '<td data-label="' + c[0] + '"' + (c[3] ? ' class="' + c[3] + '"' : "") + ">" + c[2](f) + "</td>").join("") +
      "</tr>").join("");
    log.innerHTML = '<table class="log"><thead><tr>' + head + "</tr></thead><tbody>" + rows + "</tbody></table>";
  }

  function fail(res) {
    document.getElementById("summary").textContent = "";
    document.getElementById("day").innerHTML = "";
    moreButton.hidden = true;
    document.getElementById("log").innerHTML = '<div class="empty">' + esc(res.body.error || "error") + "</div>";
  }

  function get(q) {
    return fetch("/api/flights?" + q.toString()).then((r) => r.json().then((body) => ({ ok: r.ok, body: body })));
  }

  // The first page with the day's summary; a refresh reloads as many flights as are shown.
  function load() {
    const q = query();
    const csv = new URLSearchParams(q);
    csv.set("format", "csv");
    document.getElementById("csv").href = "/api/flights?" + csv.toString();
    q.set("summary", "true");
    q.set("limit", String(Math.max(pageSize, Math.min(500, state.flights.length))));
    state.loading = true;
    return get(q).then((res) => {
      state.loading = false;
      if (!res.ok) return fail(res);
      state.body = res.body;
      state.flights = res.body.flights;
      state.total = res.body.total;
      state.next = res.body.next_cursor;
      renderDay(res.body.summary);
      render();
    }).catch(() => { state.loading = false; document.getElementById("summary").textContent = "Could not load flights; retrying."; });
  }

  function loadMore() {
    if (!state.next || state.loading) return Promise.resolve();
    const q = query();
    q.set("limit", String(pageSize));
    q.set("cursor", state.next);
    state.loading = true;
    return get(q).then((res) => {
      state.loading = false;
      if (!res.ok) return fail(res);
      state.flights = state.flights.concat(res.body.flights);
      state.total = res.body.total;
      state.next = res.body.next_cursor;
      render();
    }).catch(() => { state.loading = false; });
  }

  function remember() {
    const q = query();
    if (!utcInput.checked && !namedZone) q.delete("tz");  // the browser's zone: not in the link
    if (utcInput.checked) { q.delete("tz"); q.set("utc", "1"); }
    if (params.get("limit")) q.set("limit", String(pageSize));
    history.replaceState(null, "", "/flights?" + q.toString());
  }

  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.flights = [];
    remember();
    load();
  });
  utcInput.addEventListener("change", () => {
    if (!utcInput.checked && namedZone === "UTC") namedZone = null;
    remember();
    load();  // as many flights as are shown, in the other zone's day
  });
  spuriousInput.addEventListener("change", () => { state.flights = []; remember(); load(); });
  moreButton.addEventListener("click", loadMore);
  load();
  setInterval(load, 60000);
  window.soarFlights = { load: load, loadMore: loadMore, state: state, zone: zone, columns: COLUMNS.map((c) => c[1]) };
})();
