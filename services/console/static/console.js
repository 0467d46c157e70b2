// Live pages: on a cluster change (server-sent event) or, where the page shows something
// running, on a timer, re-read this page and swap in its <main>. No reload, no framework.
// Log panels with data-follow get their new lines pushed over an event stream of their own
// and are kept (not re-rendered) when <main> is swapped.
(function () {
  "use strict";
  var status = document.getElementById("live");
  var busy = false, again = false;
  var MAX_LOG_LINES = 5000;

  function follow(panel) {
    if (!window.EventSource || panel.tuskSource) return;
    var source = new EventSource(panel.getAttribute("data-follow"));
    panel.tuskSource = source;
    source.addEventListener("line", function (event) {
      var line = JSON.parse(event.data);
      var who = panel.id === "job-logs" && line.datum ? line.datum.slice(0, 8) + " " : "";
      panel.appendChild(document.createTextNode(line.ts.slice(11, 19) + " " + who + line.message + "\n"));
      // Bounded: the oldest lines go once the panel holds MAX_LOG_LINES.
      while (panel.childNodes.length > MAX_LOG_LINES) panel.removeChild(panel.firstChild);
      panel.scrollTop = panel.scrollHeight;
    });
    function stop() { source.close(); panel.removeAttribute("data-follow"); }
    source.addEventListener("end", stop);
    source.addEventListener("failed", stop);
  }
  function followAll(root) {
    root.querySelectorAll("pre[data-follow]").forEach(follow);
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main"), main = document.getElementById("main");
        if (!fresh || !main) return;
        var focused = document.activeElement && document.activeElement.getAttribute("href");
        // A followed log panel keeps its lines and its stream: moved into the new <main>.
        main.querySelectorAll("pre[id]").forEach(function (panel) {
          if (!panel.tuskSource) return;
          var twin = fresh.querySelector("#" + CSS.escape(panel.id));
          if (twin) twin.replaceWith(panel);
        });
        main.replaceWith(document.adoptNode(fresh));
        followAll(fresh);
        schedule();
        if (focused) {
          var again_ = document.querySelector('#main a[href="' + CSS.escape(focused) + '"]');
          if (again_) again_.focus();
        }
      })
      .catch(function () {})
      .finally(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var timer = null;
  function schedule() {
    if (timer) { clearTimeout(timer); timer = null; }
    var main = document.getElementById("main");
    var every = main && parseInt(main.getAttribute("data-poll") || "0", 10);
    if (every) timer = setTimeout(refresh, every);
  }
  var source = null;
  function connect() {
    if (!window.EventSource || source) return;
    source = new EventSource("/events");
    source.addEventListener("open", function () { if (status) status.textContent = "live"; });
    source.addEventListener("change", refresh);
    source.addEventListener("error", function () { if (status) status.textContent = "reconnecting"; });
  }
  // A page left for another one lets go of its streams at once. A browser allows six
  // connections per host; pages kept in the back/forward cache with their streams open
  // used them up, and the next page waited for one (tens of seconds).
  window.addEventListener("pagehide", function () {
    if (source) { source.close(); source = null; }
    document.querySelectorAll("pre[data-follow]").forEach(function (panel) {
      if (panel.tuskSource) { panel.tuskSource.close(); panel.tuskSource = null; }
    });
    if (status) status.textContent = "";
  });
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    connect();
    refresh();  // back from the cache: what changed meanwhile, and its log panels again
  });
  schedule();
  followAll(document);
  connect();
})();
