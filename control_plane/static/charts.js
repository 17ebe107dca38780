/* Tiny inline-SVG line charts for the dashboard: no library, no network, every label set with textContent.
   Charts.line(container, {x0, x1, series: [{key, label, color, dash, points: [[x, y], ...]}], yFormat, xFormat})
   draws one chart into container (replacing what was there). Each series becomes
   <path data-series="key" data-points="N" data-last="y" data-sum="Σy">, so tests and tools can read what is drawn. */
(function (w) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg", W = 600, H = 210, L = 58, R = 12, T = 10, B = 26;

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function niceMax(v) {  // a round axis maximum: 1, 2, 2.5 or 5 times a power of ten
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  function hhmm(ms) {
    var d = new Date(ms);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function line(container, opt) {
    var x0 = opt.x0, x1 = Math.max(opt.x1, opt.x0 + 1), fmt = opt.yFormat || String, xfmt = opt.xFormat || hhmm,
        ymax = 0;
    opt.series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] > ymax) ymax = p[1]; }); });
    ymax = niceMax(ymax * 1.05);
    function sx(x) { return L + (Math.min(Math.max(x, x0), x1) - x0) / (x1 - x0) * (W - L - R); }
    function sy(y) { return T + (1 - y / ymax) * (H - T - B); }

    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opt.title || "chart" });
    for (var i = 0; i <= 4; i++) {
      var y = ymax * i / 4;
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: i ? "gridline" : "axis" }));
      svg.appendChild(el("text", { x: L - 6, y: sy(y) + 3, "text-anchor": "end" }, fmt(y)));
    }
    [0, 0.5, 1].forEach(function (f) {
      svg.appendChild(el("text", { x: L + f * (W - L - R), y: H - 8, "text-anchor": f ? (f < 1 ? "middle" : "end") : "start" },
                         xfmt(x0 + f * (x1 - x0))));
    });
    opt.series.forEach(function (s) {
      var pts = s.points.filter(function (p) { return p[0] >= x0 && p[0] <= x1; });
      var d = pts.map(function (p, j) { return (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1); });
      svg.appendChild(el("path", { d: d.join(" ") || "M0 0", fill: "none", stroke: s.color, "stroke-width": 2,
                                   "stroke-dasharray": s.dash || "none", "stroke-linejoin": "round",
                                   "data-series": s.key, "data-points": pts.length,
                                   "data-last": pts.length ? pts[pts.length - 1][1] : 0,
                                   "data-sum": pts.reduce(function (a, p) { return a + p[1]; }, 0) }));
      if (pts.length) {  // mark the latest value, so a single point is visible too
        var last = pts[pts.length - 1];
        svg.appendChild(el("circle", { cx: sx(last[0]), cy: sy(last[1]), r: 3, fill: s.color }));
      }
    });

    var legend = document.createElement("div");
    legend.className = "legend";
    opt.series.forEach(function (s) {
      var item = document.createElement("span"), swatch = document.createElement("i");
      swatch.style.background = s.color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.label));
      legend.appendChild(item);
    });
    container.textContent = "";
    container.appendChild(svg);
    container.appendChild(legend);
  }

  w.Charts = { line: line, niceMax: niceMax };
})(window);
