/* edge-adserver publisher tag. No dependencies; creatives are built with DOM APIs only (never innerHTML).
   Slots:  <div data-adslot="placement" data-format="300x250" [data-geo="DE-BE"] [data-device="mobile"]>
   Script: <script async src="https://POP/tag.js" [data-geo] [data-device] [data-user] [data-gdpr="1"]
           [data-gdpr-consent="TCF string"]>  (slot attributes override script ones)
   /v1/ads takes one placement and one format per call, so slots are grouped by placement, format, geo and
   device: one request per group, with slots=N. The edge does not geolocate: pass data-geo; data-device
   defaults to a guess from the pointer and screen size.
   Consent: window.__tcfapi("getTCData") when a CMP is present (else data-gdpr*), and
   navigator.globalPrivacyControl, sent as gdpr, gdpr_consent and gpc; without consent no user id is sent.
   Beacons, each at most once per ad: impression when the creative image has loaded; viewable per MRC
   (>= 50% of the pixels, 30% for ads of >= 242,500 pixels, in view for 1 continuous second while the page
   is visible). Clicks go through the ad's signed click_url. Each slot's data-adstate tells where it is:
   loading, empty, error, rendered, impression, viewable. */
(function (w, d) {
  "use strict";
  var s = d.currentScript, base = s ? new URL(s.src, location.href).origin : "", tracked = [];
  var io = w.IntersectionObserver && new IntersectionObserver(function (es) {
    es.forEach(function (e) { var t = e.target.__adv; if (t) { t.r = e.intersectionRatio; check(t); } });
  }, { threshold: [0, 0.3, 0.5, 1] });
  d.addEventListener("visibilitychange", function () { tracked.forEach(check); });

  function attr(el, n) { return (el && el.getAttribute("data-" + n)) || ""; }
  function web(u) {  // only absolute http(s) URLs may become an image, a link or a beacon
    try { return /^https?:$/.test(new URL(u).protocol); } catch (e) { return false; }
  }
  function beacon(u) {
    if (!web(u)) return;
    try { if (navigator.sendBeacon && navigator.sendBeacon(u)) return; } catch (e) { /* fall back */ }
    fetch(u, { method: "POST", keepalive: true, mode: "no-cors", credentials: "omit" }).catch(function () {});
  }
  function state(el, v) { el.setAttribute("data-adstate", v); }
  function device() {
    var m = w.matchMedia && w.matchMedia("(pointer: coarse)").matches;
    return !m ? "desktop" : Math.min(screen.width, screen.height) < 600 ? "mobile" : "tablet";
  }

  function consent(done) {
    var c = { gdpr: attr(s, "gdpr") === "1" ? "1" : "0", gdpr_consent: attr(s, "gdpr-consent"),
              gpc: navigator.globalPrivacyControl === true ? "1" : "0" }, fin = 0;
    function end() { if (!fin++) done(c); }
    if (typeof w.__tcfapi !== "function") return end();
    // A CMP that never answers: assume GDPR applies without consent, i.e. contextual ads only.
    setTimeout(function () { c.gdpr = "1"; c.gdpr_consent = ""; end(); }, 1000);
    try {
      w.__tcfapi("getTCData", 2, function (tc, ok) {
        if (fin) return;
        if (ok && tc) { c.gdpr = tc.gdprApplies ? "1" : "0"; c.gdpr_consent = tc.gdprApplies ? tc.tcString || "" : ""; }
        else { c.gdpr = "1"; c.gdpr_consent = ""; }
        end();
      });
    } catch (e) { c.gdpr = "1"; c.gdpr_consent = ""; end(); }
  }

  function check(t) {  // start the 1 s timer while enough of the ad is in view; any drop resets it
    if (t.done) return;
    var on = t.r >= t.need && !d.hidden;
    if (on && !t.timer) t.timer = setTimeout(function () {
      t.done = 1; io.unobserve(t.a); beacon(t.ad.viewable_url); state(t.el, "viewable");
    }, 1000);
    else if (!on && t.timer) { clearTimeout(t.timer); t.timer = 0; }
  }

  function render(el, ad) {
    var c = ad.creative || {}, wh = String(c.size || attr(el, "format")).split("x"), W = +wh[0], H = +wh[1];
    if (!web(c.image_url) || !web(ad.click_url) || !(W > 0 && H > 0)) return state(el, "empty");
    var a = d.createElement("a"), img = d.createElement("img"), cap = d.createElement("span"),
        tag = d.createElement("span"), shown = 0;
    a.href = ad.click_url; a.target = "_blank"; a.rel = "noopener sponsored";
    a.style.cssText = "display:block;position:relative;overflow:hidden;text-decoration:none;color:#fff;" +
      "font:12px/1.3 system-ui,sans-serif;width:" + W + "px;height:" + H + "px";
    img.alt = c.headline || "Advertisement"; img.width = W; img.height = H;
    img.style.cssText = "display:block;border:0;width:100%;height:100%;object-fit:cover";
    cap.textContent = (c.headline || "") + (c.cta ? " \u00b7 " + c.cta + " \u203a" : "");
    cap.style.cssText = "position:absolute;left:0;right:0;bottom:0;padding:4px 6px;background:rgba(0,0,0,.6)";
    tag.textContent = "Ad";
    tag.style.cssText = "position:absolute;top:0;right:0;padding:0 4px;background:#fff;color:#555;font-size:10px";
    img.onerror = function () { if (!shown) { el.textContent = ""; state(el, "error"); } };
    img.onload = function () {  // rendered: count it once, then measure viewability on what was rendered
      if (shown++) return;
      beacon(ad.impression_url); state(el, "impression");
      if (!io) return;
      var t = { el: el, a: a, ad: ad, r: 0, timer: 0, done: 0, need: W * H >= 242500 ? 0.3 : 0.5 };
      a.__adv = t; tracked.push(t); io.observe(a);
    };
    img.src = c.image_url;
    a.appendChild(img); a.appendChild(cap); a.appendChild(tag);
    el.textContent = ""; el.appendChild(a); el.setAttribute("data-ad-id", ad.ad_id || ""); state(el, "rendered");
  }

  var groups = {}, keys = [];
  Array.prototype.forEach.call(d.querySelectorAll("[data-adslot]"), function (el) {
    if (attr(el, "adstate")) return;  // already handled (the tag was included twice)
    state(el, "loading");
    var g = [attr(el, "adslot"), attr(el, "format") || "300x250", (attr(el, "geo") || attr(s, "geo")).toUpperCase(),
             attr(el, "device") || attr(s, "device") || device()], k = g.join("|");
    if (!groups[k]) { groups[k] = { p: g, els: [] }; keys.push(k); }
    groups[k].els.push(el);
  });
  if (!keys.length) return;
  var kw = d.querySelector('meta[name="keywords"]');
  kw = kw ? kw.content.split(",").map(function (x) { return x.trim().toLowerCase(); }).filter(Boolean) : [];

  consent(function (c) {
    keys.forEach(function (k) {
      var g = groups[k], q = new URLSearchParams({ placement: g.p[0], format: g.p[1], slots: String(g.els.length),
        url: location.href.slice(0, 2048), gdpr: c.gdpr, gpc: c.gpc });
      if (g.p[2]) q.set("geo", g.p[2]);
      q.set("device", g.p[3]);
      if (kw.length) q.set("keywords", kw.slice(0, 50).join(","));
      if (c.gdpr_consent) q.set("gdpr_consent", c.gdpr_consent);
      if (attr(s, "user") && c.gpc === "0" && (c.gdpr === "0" || c.gdpr_consent)) q.set("user", attr(s, "user"));
      fetch(base + "/v1/ads?" + q, { credentials: "omit" }).then(function (r) {
        return r.status === 200 ? r.json() : { ads: [] };
      }).catch(function () { return { ads: [] }; }).then(function (res) {
        g.els.forEach(function (el, i) { var ad = (res.ads || [])[i]; if (ad) render(el, ad); else state(el, "empty"); });
      });
    });
  });
})(window, document);
