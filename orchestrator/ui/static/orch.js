// orch ui: live refresh, the log tail, reset countdowns and bar sizes. No inline script
// (the CSP forbids it): everything the pages do in the browser is here.
(function () {
  "use strict";

  function sizeBars(root) {
    root.querySelectorAll("[data-left]").forEach(function (el) {
      el.style.left = el.dataset.left + "%";
      el.style.width = el.dataset.width + "%";
    });
    root.querySelectorAll("[data-pct]").forEach(function (el) { el.style.width = el.dataset.pct + "%"; });
    root.querySelectorAll("[data-height]").forEach(function (el) { el.style.height = el.dataset.height + "%"; });
  }

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d" + String(h).padStart(2, "0") + "h";
    if (h) return h + "h" + String(m).padStart(2, "0") + "m";
    return m + "m" + String(s % 60).padStart(2, "0") + "s";
  }

  function countdowns() {
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var left = Number(el.dataset.until) - Date.now() / 1000;
      var when = new Date(Number(el.dataset.until) * 1000).toUTCString().replace(":00 GMT", " UTC");
      el.textContent = when + " (in " + duration(left) + ")";
    });
  }

  function liveRefresh() {
    var live = document.getElementById("live");
    var every = live ? Number(live.dataset.refresh || 0) : 0;
    if (!every) return;
    setInterval(function () {
      if (document.hidden) return;
      fetch(location.href, {headers: {"X-Orch-Partial": "1"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          live.innerHTML = html;  // server-rendered and escaped there
          sizeBars(live);
          countdowns();
        })
        .catch(function () {});
    }, every * 1000);
  }

  function logTail() {
    var log = document.getElementById("log");
    if (!log) return;
    var status = document.getElementById("log-status");
    function read() {
      fetch(log.dataset.src, {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (doc) {
          var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          if (doc.found) log.textContent = (doc.cut ? "[orch ui] … earlier output not shown\n" : "") + doc.text;
          status.textContent = doc.problem ? "(log not readable yet: " + doc.problem + ")" : (doc.active ? "(following)" : "");
          if (atEnd) log.scrollTop = log.scrollHeight;
          if (doc.active) setTimeout(read, 2000);
        })
        .catch(function () { setTimeout(read, 5000); });
    }
    read();
  }

  function autoFilter() {
    document.querySelectorAll("form.filters select").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    sizeBars(document);
    countdowns();
    setInterval(countdowns, 1000);
    liveRefresh();
    logTail();
    autoFilter();
  });
})();
