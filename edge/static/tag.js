/* edge-adserver publisher tag: one request for every <div data-adslot="placement" data-format="300x250">,
   rendered with DOM APIs only (creative text never becomes HTML), impression counted on render.
   The full viewability beacon is tracked in the "publisher tag" issue. */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script ? new URL(script.src).origin : "";
  var slots = Array.prototype.slice.call(document.querySelectorAll("div[data-adslot]"));
  if (!slots.length) return;
  var groups = {};
  slots.forEach(function (el) {
    var key = el.getAttribute("data-adslot") + "|" + (el.getAttribute("data-format") || "300x250");
    (groups[key] = groups[key] || []).push(el);
  });
  Object.keys(groups).forEach(function (key) {
    var parts = key.split("|"), els = groups[key];
    var q = new URLSearchParams({ placement: parts[0], format: parts[1], slots: String(els.length),
                                  url: location.href.slice(0, 2048) });
    var kw = document.querySelector('meta[name="keywords"]');
    if (kw) q.set("keywords", kw.content.toLowerCase().split(",").slice(0, 20).join(","));
    fetch(base + "/v1/ads?" + q.toString(), { credentials: "omit" }).then(function (r) {
      return r.status === 200 ? r.json() : { ads: [] };
    }).then(function (res) {
      res.ads.forEach(function (ad, i) { render(els[i], ad); });
    }).catch(function () {});
  });
  function render(el, ad) {
    if (!el) return;
    var a = document.createElement("a");
    a.href = ad.click_url; a.rel = "noopener sponsored"; a.target = "_blank";
    var img = document.createElement("img");
    img.src = ad.creative.image_url; img.alt = ad.creative.headline;
    var size = (ad.creative.size || "300x250").split("x");
    img.width = +size[0]; img.height = +size[1];
    var h = document.createElement("div"); h.textContent = ad.creative.headline;
    var cta = document.createElement("span"); cta.textContent = ad.creative.cta;
    a.appendChild(img); a.appendChild(h); a.appendChild(cta);
    el.textContent = ""; el.appendChild(a);
    img.addEventListener("load", function () {
      if (navigator.sendBeacon) navigator.sendBeacon(ad.impression_url);
      else fetch(ad.impression_url, { method: "POST", keepalive: true });
    }, { once: true });
  }
})();
