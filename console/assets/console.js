/* The console's one script (embedded, progressive: every page works without it). It follows
 * the daemon's counters over Server-Sent Events: the overview's figures change in place, and
 * the queue and captured lists reload their rows when the queue changes. */
"use strict";
(function () {
  if (!window.EventSource || !document.querySelector("[data-live]")) {
    return;
  }
  var list = document.querySelector("table.list[data-live] tbody");
  var last = null;
  var busy = false;

  function refreshList() {
    if (busy || !list) {
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("table.list[data-live] tbody");
        if (fresh) {
          /* keep what is ticked across the refresh */
          var ticked = {};
          list.querySelectorAll("input[type=checkbox]:checked").forEach(function (c) {
            ticked[c.value] = true;
          });
          list.replaceWith(document.importNode(fresh, true));
          list = document.querySelector("table.list[data-live] tbody");
          list.querySelectorAll("input[type=checkbox]").forEach(function (c) {
            c.checked = !!ticked[c.value];
          });
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }

  var es = new EventSource("/console/events");
  es.addEventListener("counts", function (ev) {
    var c;
    try {
      c = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    Object.keys(c).forEach(function (k) {
      var el = document.querySelector('[data-count="' + k + '"]');
      if (el && k !== "oldest") {
        el.textContent = String(c[k]);
      }
    });
    var key = ev.data;
    if (last !== null && key !== last) {
      refreshList();
    }
    last = key;
  });
  window.addEventListener("beforeunload", function () { es.close(); });
})();
