/* The triage table of report.html: filter (outcome, class, group columns, text) and sort by any column.
   Plain JavaScript, inlined in the page; without it the table is complete, in folder order. */
(function () {
  "use strict";
  var table = document.getElementById("triage");
  var controls = document.getElementById("triage-controls");
  if (!table || !controls) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var selects = Array.prototype.slice.call(controls.querySelectorAll("select[data-attr]"));
  var text = document.getElementById("f-text");
  var count = document.getElementById("f-count");
  controls.hidden = false;

  function apply() {
    var wanted = selects.map(function (s) { return [s.getAttribute("data-attr"), s.value]; });
    var needle = text.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var ok = wanted.every(function (w) { return !w[1] || row.getAttribute(w[0]) === w[1]; });
      if (ok && needle) { ok = row.textContent.toLowerCase().indexOf(needle) >= 0; }
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " images shown";
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  text.addEventListener("input", apply);

  function key(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent.trim(); }
    if (numeric) { var n = parseFloat(v); return isNaN(n) ? -Infinity : n; }
    return v.toLowerCase();
  }
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, col) {
    var kind = th.getAttribute("data-sort");
    if (!kind) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.className = "sort";
    while (th.firstChild) { button.appendChild(th.firstChild); }
    th.appendChild(button);
    button.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var numeric = kind === "num";
      var order = rows.map(function (row, i) { return [key(row, col, numeric), i, row]; });
      order.sort(function (a, b) {
        if (a[0] < b[0]) { return up ? -1 : 1; }
        if (a[0] > b[0]) { return up ? 1 : -1; }
        return a[1] - b[1];
      });
      var frag = document.createDocumentFragment();
      order.forEach(function (o) { frag.appendChild(o[2]); });
      body.appendChild(frag);
    });
  });
  apply();
}());
