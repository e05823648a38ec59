// Live taps on the overview: one row per tap from the dashboard's server-sent events (/events).
// Text only (textContent), so nothing from the server is ever parsed as HTML.
(function () {
  "use strict";
  var table = document.getElementById("live-taps");
  var status = document.getElementById("live-status");
  var empty = document.getElementById("live-empty");
  if (!table || !status || !window.EventSource) {
    return;
  }
  var MAX_ROWS = 50;

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text || "";
    if (className) {
      td.className = className;
    }
    return td;
  }

  function show(state) {
    status.textContent = status.getAttribute("data-" + state);
    status.className = "live " + state;
  }

  var source = new EventSource("/events");
  source.addEventListener("open", function () { show("connected"); });
  source.addEventListener("error", function () { show("disconnected"); });
  source.addEventListener("expired", function () {
    source.close();
    window.location.assign("/login?expired=1&next=/");
  });
  source.addEventListener("tap", function (event) {
    var tap = JSON.parse(event.data);
    var rows = table.tBodies[0];
    var row = document.createElement("tr");
    row.className = "kind-" + tap.kind + " fresh";
    row.appendChild(cell(tap.time));
    row.appendChild(cell(tap.gate));
    row.appendChild(cell(tap.student || tap.card));
    row.appendChild(cell(tap["class"]));
    row.appendChild(cell(tap.label));
    rows.insertBefore(row, rows.firstChild);
    while (rows.rows.length > MAX_ROWS) {
      rows.deleteRow(-1);
    }
    if (empty) {
      empty.hidden = true;
    }
  });
})();
