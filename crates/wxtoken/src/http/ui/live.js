// The overview without reloads: every 10 s the page is fetched again and its live region swapped
// in. Nothing else: the dashboard works without script, this only saves pressing reload.
(function () {
  'use strict';
  var region = document.getElementById('live-region');
  if (!region || !window.fetch || !window.DOMParser) return;
  var stamp = document.getElementById('live-stamp');
  function tick() {
    fetch(location.href, { credentials: 'same-origin', redirect: 'manual' })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html').getElementById('live-region');
        if (fresh) {
          region.innerHTML = fresh.innerHTML;
          if (stamp) stamp.textContent = new Date().toLocaleTimeString();
        }
      })
      .catch(function () { if (stamp) stamp.textContent = '…'; });
  }
  setInterval(tick, 10000);
})();
