// soar flight log: the UTC day's flights from /api/flights, filterable by airfield; refreshes
// every minute so it can stay open in the launch point caravan.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const dateInput = document.getElementById("date");
  const airportInput = document.getElementById("airport");
  dateInput.value = params.get("date") || new Date().toISOString().substring(0, 10);
  airportInput.value = (params.get("airport") || "").toUpperCase();

  function esc(text) {
    return String(text == null ? "" : text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function hhmm(iso) { return iso ? new Date(iso).toISOString().substring(11, 16) : ""; }
  function duration(f) {
    let seconds = f.duration_s;
    if (seconds == null && f.open && f.takeoff) seconds = (Date.now() - new Date(f.takeoff)) / 1000;
    if (seconds == null) return "";
    const m = Math.round(seconds / 60);
    return Math.floor(m / 60) + ":" + String(m % 60).padStart(2, "0");
  }

  function query() {
    const q = new URLSearchParams({ date: dateInput.value });
    const airport = airportInput.value.trim().toUpperCase();
    if (airport) q.set("airport", airport);
    return q;
  }

  function render(body) {
    const log = document.getElementById("log");
    const flights = body.flights;
    const open = flights.filter((f) => f.open).length;
    document.getElementById("summary").textContent =
      flights.length + " flight" + (flights.length === 1 ? "" : "s") + " on " + body.date +
      (body.airport ? " at " + body.airport : "") + (open ? " · " + open + " still airborne" : "") +
      " · times UTC";
    if (!flights.length) {
      log.innerHTML = '<div class="empty">No flights recorded for this day' + (body.airport ? " at " + esc(body.airport) : "") + ".</div>";
      return;
    }
    const rows = flights.map((f) => {
      const tow = f.tow ? esc(f.tow.registration || "") + (f.tow.release_height_ft ? " · " + Math.round(f.tow.release_height_ft) + " ft" : "") : "";
      const landing = f.landing ? hhmm(f.landing) : (f.timed_out ? "lost " + hhmm(f.timed_out) : (f.open ? "airborne" : ""));
      return '<tr class="' + (f.open ? "open" : "") + '">' +
        '<td class="num" data-label="Takeoff">' + (f.takeoff ? hhmm(f.takeoff) : "(" + hhmm(f.first_fix) + ")") + "</td>" +
        '<td class="num" data-label="Landing">' + landing + "</td>" +
        '<td class="num" data-label="Duration">' + duration(f) + "</td>" +
        '<td data-label="Aircraft"><span class="reg">' + esc(f.registration || f.callsign || "unknown") + "</span>" +
        (f.model ? " <small>" + esc(f.model) + "</small>" : "") + "</td>" +
        '<td data-label="Comp. no.">' + (f.competition_number ? '<span class="cn">' + esc(f.competition_number) + "</span>" : "") + "</td>" +
        '<td data-label="Tow / release">' + tow + "</td>" +
        '<td data-label="From">' + esc(f.departure_airport || "") + "</td>" +
        '<td data-label="To">' + esc(f.arrival_airport || "") + "</td>" +
        '<td data-label="Track"><a href="/api/flights/' + f.id + '.igc">IGC</a> <a href="/api/flights/' + f.id + '.kml">KML</a></td>' +
        "</tr>";
    }).join("");
    log.innerHTML = '<table class="log"><thead><tr><th>Takeoff</th><th>Landing</th><th>Duration</th><th>Aircraft</th><th>Comp.</th><th>Tow / release</th><th>From</th><th>To</th><th>Track</th></tr></thead><tbody>' + rows + "</tbody></table>";
  }

  function load() {
    const q = query();
    const csv = new URLSearchParams(q);
    csv.set("format", "csv");
    document.getElementById("csv").href = "/api/flights?" + csv.toString();
    fetch("/api/flights?" + q.toString()).then((r) => r.json().then((body) => ({ ok: r.ok, body: body }))).then((res) => {
      if (!res.ok) {
        document.getElementById("summary").textContent = "";
        document.getElementById("log").innerHTML = '<div class="empty">' + esc(res.body.error || "error") + "</div>";
        return;
      }
      render(res.body);
    }).catch(() => { document.getElementById("summary").textContent = "Could not load flights; retrying."; });
  }

  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", "/flights?" + query().toString());
    load();
  });
  load();
  setInterval(load, 60000);
  window.soarFlights = { load: load };
})();
