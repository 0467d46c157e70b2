// Live pages: on a cluster change (server-sent event) or, where the page shows something
// running, on a timer, re-read this page and swap in its <main>. No reload, no framework.
(function () {
  "use strict";
  var status = document.getElementById("live");
  var busy = false, again = false;
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
        main.replaceWith(document.adoptNode(fresh));
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
  schedule();
  if (window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("open", function () { if (status) status.textContent = "live"; });
    source.addEventListener("change", refresh);
    source.addEventListener("error", function () { if (status) status.textContent = "reconnecting"; });
  }
})();
