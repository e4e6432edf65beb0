// The faucet's live updates: follows /events (Server-Sent Events) and puts each section's
// new HTML, rendered and escaped by the server, in place. Without JavaScript the page
// still shows everything as of its load.
(function () {
  'use strict';
  var live = document.getElementById('live');
  var state = document.getElementById('live-state');
  var at = document.getElementById('at');
  var last = {};
  function show(s, text) {
    live.setAttribute('data-state', s);
    state.textContent = text;
  }
  if (!window.EventSource) {
    show('off', 'not live (this browser has no EventSource)');
    return;
  }
  var source = new EventSource('/events');
  source.addEventListener('open', function () { show('live', '● live'); });
  source.addEventListener('error', function () { show('reconnecting', '○ reconnecting…'); });
  source.addEventListener('faucet', function (e) {
    var d = JSON.parse(e.data);
    Object.keys(d.sections).forEach(function (id) {
      var el = document.getElementById(id);
      // Only what changed, so images and open details elsewhere stay as they are.
      if (el && last[id] !== d.sections[id]) {
        el.innerHTML = d.sections[id];
        last[id] = d.sections[id];
      }
    });
    at.textContent = d.at;
    document.body.setAttribute('data-version', String(d.version));
    show('live', '● live');
  });
})();
