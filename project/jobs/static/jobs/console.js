// Refreshes the job console's figures every few seconds without a full reload. Local
// script: no library, no network beyond this site. Pauses while the tab is hidden and
// while a form in the live area has focus.
(function () {
  "use strict";
  var live = document.getElementById("console-live");
  if (!live) { return; }
  var url = live.getAttribute("data-refresh-url");
  var seconds = parseFloat(live.getAttribute("data-refresh-seconds")) || 5;
  var busy = false;

  function refresh() {
    if (busy || document.hidden) { return; }
    if (live.contains(document.activeElement) && document.activeElement.tagName !== "BODY") { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        // Folded sections stay as the operator left them.
        var open = Array.prototype.map.call(live.querySelectorAll("details[open][id]"), function (d) { return d.id; });
        live.innerHTML = html;
        open.forEach(function (id) {
          var details = document.getElementById(id);
          if (details) { details.open = true; }
        });
        live.removeAttribute("data-stale");
      })
      .catch(function () { live.setAttribute("data-stale", "1"); })
      .then(function () { busy = false; });
  }

  window.setInterval(refresh, seconds * 1000);
})();
