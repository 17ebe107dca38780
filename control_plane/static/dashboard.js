/* The advertiser dashboard. It talks only to the public API with the advertiser's bearer token, so it can do
   nothing the API would not allow. The token lives in sessionStorage (this tab only) and travels only in the
   Authorization header, never in a URL. Everything the API returns is put on the page with textContent or
   setAttribute: campaign names, headlines and URLs are user input. Validation is the API's: a 422 answer's
   `fields` messages are shown next to the inputs they name. */
(function () {
  "use strict";
  var KEY = "edge-adserver.token", REFRESH_MS = 3000, DAY_MS = 86400000;
  var SIZES = ["300x250", "728x90", "320x50", "160x600", "300x600", "970x250", "320x100", "336x280"];
  var token = "", campaigns = [], openId = null, editing = null, initial = null, busy = false, again = false;

  function $(id) { return document.getElementById(id); }
  function h(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  // --- API -------------------------------------------------------------------------------------------------
  async function api(method, path, body, headers) {
    var init = { method: method, cache: "no-store", headers: Object.assign({ Authorization: "Bearer " + token }, headers) };
    if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
    var r, data = null;
    try { r = await fetch(path, init); } catch (e) { return { status: 0, data: { error: "network error: " + e.message } }; }
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401 && token) { signOut((data && data.error) || "token rejected"); }
    return { status: r.status, data: data || {} };
  }

  // --- money, numbers, time -----------------------------------------------------------------------------
  function toMicros(text) {  // "4.5" -> 4500000 without floating point; anything else goes to the API as typed
    var s = text.trim().replace(/[,\s]/g, "");
    if (!s) return undefined;
    var m = /^(\d{1,10})(?:\.(\d{1,6}))?$/.exec(s);
    return m ? Number(m[1]) * 1e6 + Number((m[2] || "").padEnd(6, "0")) : s;
  }
  function unitsText(micros) {  // exact inverse of toMicros for prefilling a form
    if (typeof micros !== "number") return "";
    var whole = Math.floor(micros / 1e6), frac = String(micros % 1e6).padStart(6, "0").replace(/0+$/, "");
    return whole + "." + frac.padEnd(2, "0");
  }
  function money(micros) {
    var m = Number(micros) || 0;
    return (m / 1e6).toFixed(m !== 0 && Math.abs(m) < 1e6 ? 4 : 2);
  }
  function int(n) { return (Number(n) || 0).toLocaleString("en-US"); }
  function pct(x) { return (100 * (Number(x) || 0)).toFixed(2) + "%"; }
  function tzOk(tz) { try { new Intl.DateTimeFormat("en-US", { timeZone: tz }); return true; } catch (e) { return false; } }
  function dayStart(tz, now) {  // midnight in the campaign's time zone, which is when its daily budget resets
    var zone = tzOk(tz) ? tz : "UTC";
    var parts = new Intl.DateTimeFormat("en-US", { timeZone: zone, hourCycle: "h23", hour: "numeric",
                                                   minute: "numeric", second: "numeric" }).formatToParts(new Date(now));
    var get = function (t) { return Number((parts.find(function (p) { return p.type === t; }) || {}).value || 0); };
    return now - ((get("hour") * 60 + get("minute")) * 60 + get("second")) * 1000 - (now % 1000);
  }
  function wallClock(tz, ms) {  // "YYYY-MM-DDTHH:MM:SS" in tz, the value a datetime-local input takes
    var parts = new Intl.DateTimeFormat("en-CA", { timeZone: tzOk(tz) ? tz : "UTC", hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }).formatToParts(new Date(ms));
    var g = function (t) { return (parts.find(function (p) { return p.type === t; }) || {}).value; };
    return g("year") + "-" + g("month") + "-" + g("day") + "T" + g("hour") + ":" + g("minute") + ":" + g("second");
  }
  function clockIn(tz) {
    var f = new Intl.DateTimeFormat("en-GB", { timeZone: tzOk(tz) ? tz : "UTC", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return function (ms) { return f.format(new Date(ms)); };
  }

  // --- sign in / out ----------------------------------------------------------------------------------
  async function signIn(candidate) {
    token = candidate.trim();
    var r = await api("GET", "/v1/campaigns");
    if (r.status !== 200) {
      token = "";
      sessionStorage.removeItem(KEY);
      $("signin-error").textContent = (r.data && r.data.error) || "sign-in failed (HTTP " + r.status + ")";
      return;
    }
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    $("signin-error").textContent = "";
    $("who").textContent = "advertiser " + token.split(".")[0];
    $("signin").hidden = true; $("app").hidden = false; $("signout").hidden = false;
    renderList(r.data.campaigns || []);
    refresh();
  }
  function signOut(message) {
    token = ""; sessionStorage.removeItem(KEY); campaigns = []; openId = null;
    $("app").hidden = true; $("signin").hidden = false; $("signout").hidden = true; $("who").textContent = "";
    $("signin-error").textContent = message || "";
  }

  // --- campaign list ------------------------------------------------------------------------------------
  async function listTotals(c, now) {
    var from = dayStart(c.timezone, now);
    var r = await api("GET", "/v1/campaigns/" + encodeURIComponent(c.id) + "/metrics?granularity=hour&from=" + from + "&to=" + (now + 60000));
    return r.status === 200 ? r.data.totals : null;
  }
  function actionButtons(c, small) {
    var span = document.createDocumentFragment();
    var acts = { draft: ["submit"], rejected: ["submit"], active: ["pause", "complete"], paused: ["resume", "complete"] }[c.status] || [];
    acts.forEach(function (a) {
      var b = h("button", { submit: "Submit for review", pause: "Pause", resume: "Resume", complete: "End" }[a],
                small ? "small" : "");
      b.type = "button";
      b.setAttribute("data-action", a);
      b.addEventListener("click", function () { lifecycle(c, a, b); });
      span.appendChild(b);
    });
    return span;
  }
  async function lifecycle(c, action, button) {
    if (action === "complete" && !window.confirm("End " + c.name + "? A completed campaign cannot be restarted.")) return;
    button.disabled = true;
    var r = await api("POST", "/v1/campaigns/" + encodeURIComponent(c.id) + "/" + action);
    button.disabled = false;
    var target = openId === c.id ? $("d-error") : $("list-error");
    target.textContent = r.status === 200 ? "" : (r.data.error || "HTTP " + r.status);
    if (r.status === 200 && r.data.status === "rejected" && r.data.review) {
      target.textContent = "Rejected by review: " + (r.data.review.reasons || []).join("; ");
    }
    await refresh();
  }
  function renderList(items, totals) {
    campaigns = items;
    var tb = $("campaigns").querySelector("tbody");
    tb.textContent = "";
    $("empty").hidden = items.length > 0;
    items.forEach(function (c, i) {
      var t = (totals && totals[i]) || {}, tr = document.createElement("tr");
      tr.setAttribute("data-campaign-id", c.id);
      if (c.id === openId) tr.className = "open";
      var nameCell = h("td"), nameBtn = h("button", c.name, "name");
      nameBtn.type = "button";
      nameBtn.addEventListener("click", function () { openDetail(c.id); });
      nameCell.appendChild(nameBtn);
      tr.appendChild(nameCell);
      var st = h("td"); st.appendChild(h("span", c.status.replace("_", " "), "badge " + c.status)); tr.appendChild(st);
      tr.appendChild(h("td", money(c.max_bid_micros) + " " + String(c.bid_type).toUpperCase()));
      tr.appendChild(h("td", money(c.daily_budget_micros)));
      var sp = h("td", money(t.spend_micros)); sp.setAttribute("data-col", "spend"); tr.appendChild(sp);
      var im = h("td", int(t.impressions)); im.setAttribute("data-col", "impressions"); tr.appendChild(im);
      tr.appendChild(h("td", int(t.clicks)));
      tr.appendChild(h("td", pct(t.ctr)));
      var act = h("td", null, "actions"); act.appendChild(actionButtons(c, true)); tr.appendChild(act);
      tb.appendChild(tr);
    });
  }

  // --- refresh loop ----------------------------------------------------------------------------------------
  async function refresh() {  // one at a time; a call during a refresh runs once more right after it
    if (!token || document.hidden) return;
    if (busy) { again = true; return; }
    busy = true;
    try {
      var r = await api("GET", "/v1/campaigns");
      if (r.status !== 200) { $("list-error").textContent = r.data.error || "HTTP " + r.status; return; }
      var items = r.data.campaigns || [], now = Date.now();
      items.sort(function (a, b) { return String(b.created_at).localeCompare(String(a.created_at)); });
      var totals = await Promise.all(items.map(function (c) { return listTotals(c, now); }));
      renderList(items, totals);
      if (openId) await renderDetail();
      $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  // --- forms: read values, show the API's field errors -------------------------------------------------
  function listValue(input) {
    var items = input.value.split(",").map(function (x) { return x.trim(); }).filter(Boolean);
    return input.hasAttribute("data-ints") ? items.map(function (x) { return /^\d+$/.test(x) ? Number(x) : x; }) : items;
  }
  function fieldValue(input) {
    if (input.hasAttribute("data-money")) return toMicros(input.value);
    if (input.hasAttribute("data-number")) {
      var v = input.value.trim();
      return v === "" ? undefined : (/^\d*\.?\d+$/.test(v) ? Number(v) : v);
    }
    if (input.hasAttribute("data-list")) return listValue(input);
    if (input.type === "datetime-local") return input.value || undefined;
    return input.value;
  }
  function readCampaign() {
    var form = $("campaign-form"), body = {}, targeting = {};
    form.querySelectorAll("[name]").forEach(function (input) {
      if (input.closest("#first-creative")) return;
      var v = fieldValue(input);
      if (input.name.indexOf("targeting.") === 0) targeting[input.name.slice(10)] = v;
      else if (v !== undefined) body[input.name] = v;
    });
    targeting.devices = Array.prototype.filter.call(form.querySelectorAll("[data-devices] input"),
      function (c) { return c.checked; }).map(function (c) { return c.value; });
    body.targeting = targeting;
    return body;
  }
  function readCreative(container) {
    var c = {};
    container.querySelectorAll("[name]").forEach(function (input) { c[input.name] = input.value.trim(); });
    return c;
  }
  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (s) { s.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (i) { i.removeAttribute("aria-invalid"); });
    form.querySelectorAll("ul.error").forEach(function (u) { u.textContent = ""; });
  }
  function showErrors(form, fields, fallback) {
    clearErrors(form);
    var general = form.querySelector("ul.error"), first = null;
    (fields || []).forEach(function (f) {
      // "targeting.keywords[2]" is shown at the keywords input; "creatives[0].headline" has its own slot.
      var names = [f.field, String(f.field).replace(/\[\d+\]$/, "")], slot = null;
      for (var i = 0; i < names.length && !slot; i++) {
        slot = form.querySelector('[data-error-for="' + CSS.escape(names[i]) + '"]');
      }
      if (!slot) { general.appendChild(h("li", f.field + ": " + f.message)); return; }
      slot.textContent = slot.textContent ? slot.textContent + "; " + f.message : f.message;
      var input = slot.parentElement.querySelector("input, select");
      if (input) { input.setAttribute("aria-invalid", "true"); first = first || input; }
    });
    if (fallback && !(fields || []).length) general.appendChild(h("li", fallback));
    if (first) first.focus();
  }

  // --- create and edit --------------------------------------------------------------------------------
  function fillSizes(select) {
    select.textContent = "";
    SIZES.forEach(function (s) { select.appendChild(h("option", s)); });
  }
  function openEditor(c) {
    var form = $("campaign-form");
    editing = c || null;
    form.reset();
    clearErrors(form);
    $("form-status").textContent = "";
    $("editor-title").textContent = c ? "Edit " + c.name : "New campaign";
    $("save").textContent = c ? "Save changes" : "Create campaign";
    $("first-creative").hidden = !!c;
    var tz = c ? c.timezone : (Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC");
    $("f-timezone").value = tz;
    $("f-start").value = c ? String(c.start).slice(0, 19) : wallClock(tz, Date.now() - 60000);
    $("f-end").value = c && c.end ? String(c.end).slice(0, 19) : "";
    if (c) {
      ["name", "objective", "bid_type", "pacing"].forEach(function (k) { form.elements[k].value = c[k]; });
      ["max_bid_micros", "daily_budget_micros", "total_budget_micros"].forEach(function (k) { form.elements[k].value = unitsText(c[k]); });
      form.elements.prior_cvr.value = c.prior_cvr;
      Object.keys(c.targeting || {}).forEach(function (k) {
        var input = form.elements["targeting." + k];
        if (input) input.value = (c.targeting[k] || []).join(", ");
      });
      form.querySelectorAll("[data-devices] input").forEach(function (box) {
        box.checked = (c.targeting.devices || []).indexOf(box.value) >= 0;
      });
    }
    initial = c ? readCampaign() : null;  // an edit sends only what changed
    $("editor").hidden = false;
    $("f-name").focus();
  }
  async function saveCampaign(ev) {
    ev.preventDefault();
    var form = $("campaign-form"), body = readCampaign(), r;
    $("save").disabled = true;
    $("form-status").textContent = "saving…";
    try {
      if (editing) {
        var patch = {};
        Object.keys(body).forEach(function (k) {
          if (JSON.stringify(body[k]) !== JSON.stringify(initial[k])) patch[k] = body[k];
        });
        if (initial.end && !body.end) patch.end = null;
        if (!Object.keys(patch).length) { $("form-status").textContent = "nothing changed"; return; }
        r = await api("PATCH", "/v1/campaigns/" + encodeURIComponent(editing.id), patch,
                      { "If-Match": '"' + editing.revision + '"' });
      } else {
        var creative = readCreative($("first-creative"));
        if (creative.headline || creative.image_url || creative.landing_url) body.creatives = [creative];
        r = await api("POST", "/v1/campaigns", body);
      }
    } finally { $("save").disabled = false; }
    if (r.status === 200 || r.status === 201) {
      $("editor").hidden = true;
      openId = r.data.id;
      $("detail").hidden = false;
      await refresh();
      return;
    }
    $("form-status").textContent = "";
    showErrors(form, r.data.fields, r.data.error || "HTTP " + r.status);
  }
  async function addCreative(ev) {
    ev.preventDefault();
    var form = $("creative-form"), status = form.querySelector(".creative-status");
    var r = await api("POST", "/v1/campaigns/" + encodeURIComponent(openId) + "/creatives", readCreative(form));
    if (r.status === 201) {
      clearErrors(form); form.reset(); fillSizes($("n-size"));
      status.textContent = "creative added";
      await refresh();
    } else {
      status.textContent = "";
      showErrors(form, r.data.fields, r.data.error || "HTTP " + r.status);
    }
  }

  // --- campaign detail and charts --------------------------------------------------------------------------
  function openDetail(id) {
    openId = id;
    $("detail").hidden = false;
    $("d-error").textContent = "";
    renderDetail();
    document.querySelectorAll("#campaigns tbody tr").forEach(function (tr) {
      tr.className = tr.getAttribute("data-campaign-id") === id ? "open" : "";
    });
  }
  function renderCreatives(c) {
    var tb = $("creatives").querySelector("tbody");
    tb.textContent = "";
    (c.creatives || []).forEach(function (k) {
      var tr = h("tr"), thumb = h("td");
      if (/^https:\/\//.test(k.image_url)) {
        var img = h("img", null, "thumb"); img.alt = ""; img.src = k.image_url; thumb.appendChild(img);
      }
      tr.appendChild(thumb);
      tr.appendChild(h("td", k.headline));
      tr.appendChild(h("td", k.size));
      tr.appendChild(h("td", k.status + (k.review_reasons ? " (" + k.review_reasons.join("; ") + ")" : "")));
      tr.appendChild(h("td", k.landing_url));
      tb.appendChild(tr);
    });
  }
  async function renderDetail() {
    var id = openId, now = Date.now();
    var got = await api("GET", "/v1/campaigns/" + encodeURIComponent(id));
    if (id !== openId) return;
    if (got.status !== 200) { $("d-error").textContent = got.data.error || "HTTP " + got.status; return; }
    var c = got.data, day0 = dayStart(c.timezone, now), range = $("d-range").value;
    var x0 = range === "day" ? day0 : now - Number(range) * 60000, x1 = now;
    var from = Math.min(day0, x0) - (Math.min(day0, x0) % 60000);
    var m = await api("GET", "/v1/campaigns/" + encodeURIComponent(id) + "/metrics?granularity=minute&from=" + from + "&to=" + (now + 60000));
    if (id !== openId) return;
    $("d-name").textContent = c.name;
    var badge = $("d-status"); badge.textContent = c.status.replace("_", " "); badge.className = "badge " + c.status;
    $("d-review").textContent = c.status === "rejected" && c.review ? "Review: " + (c.review.reasons || []).join("; ") : "";
    $("d-tz").textContent = c.timezone;
    var acts = $("d-actions"); acts.textContent = ""; acts.appendChild(actionButtons(c, false));
    $("d-edit").onclick = function () { openEditor(c); };
    renderCreatives(c);
    if (m.status !== 200) { $("d-error").textContent = m.data.error || "HTTP " + m.status; return; }

    var byMinute = {}, today = { spend_micros: 0, impressions: 0, clicks: 0, conversions: 0, viewable: 0,
                                 invalid: 0, gross_impressions: 0 };
    (m.data.series || []).forEach(function (row) {
      byMinute[row.bucket_start_ms] = row;
      if (row.bucket_start_ms >= day0) {
        ["spend_micros", "impressions", "clicks", "conversions", "viewable", "gross_impressions"].forEach(function (k) {
          today[k] += row[k] || 0;
        });
        today.invalid += (row.invalid_impressions || 0) + (row.invalid_clicks || 0) + (row.invalid_conversions || 0);
      }
    });
    var daily = c.daily_budget_micros, plan = function (t) { return daily * Math.min(1, (t - day0) / DAY_MS); };
    $("kpi-spend").textContent = money(today.spend_micros);
    $("kpi-budget").textContent = "of " + money(daily) + " daily budget (" + pct(today.spend_micros / daily) + ")";
    $("kpi-plan").textContent = money(plan(now));
    $("kpi-pace").textContent = today.spend_micros > plan(now) ? "ahead of plan" : "behind plan";
    $("kpi-impressions").textContent = int(today.impressions);
    $("kpi-viewable").textContent = "viewable " + pct(today.impressions ? today.viewable / today.impressions : 0);
    $("kpi-clicks").textContent = int(today.clicks);
    $("kpi-ctr").textContent = "CTR " + pct(today.impressions ? today.clicks / today.impressions : 0);
    $("kpi-conversions").textContent = int(today.conversions);
    $("kpi-invalid").textContent = int(today.invalid);
    $("kpi-gross").textContent = "of " + int(today.gross_impressions) + " gross impressions";

    // Spend is cumulative since the campaign's midnight; each minute's point sits at the end of its bucket.
    var spend = [], cum = 0, sx0 = Math.max(x0, day0);
    for (var t = day0 - (day0 % 60000); t <= now; t += 60000) {
      cum += (byMinute[t] && byMinute[t].spend_micros) || 0;
      var at = Math.min(t + 60000, now);
      if (at >= sx0) spend.push([at, cum]);
    }
    var traffic = { imp: [], clk: [], ctr: [], gross: [], invalid: [] };
    for (var u = x0 - (x0 % 60000); u <= x1; u += 60000) {
      var row = byMinute[u] || {};
      traffic.imp.push([u, row.impressions || 0]);
      traffic.clk.push([u, row.clicks || 0]);
      traffic.ctr.push([u, row.impressions ? row.clicks / row.impressions : 0]);
      traffic.gross.push([u, (row.gross_impressions || 0) + (row.gross_clicks || 0)]);
      traffic.invalid.push([u, (row.invalid_impressions || 0) + (row.invalid_clicks || 0) + (row.invalid_conversions || 0)]);
    }
    var xf = clockIn(c.timezone);
    Charts.line($("chart-spend"), { title: "spend against pacing", x0: sx0, x1: x1, xFormat: xf, yFormat: money, series: [
      { key: "spend", label: "spend (cumulative)", color: "#2458d6", points: spend },
      { key: "plan", label: "pacing plan (" + money(daily) + " per day)", color: "#b7791f", dash: "6 4",
        points: [[sx0, plan(sx0)], [x1, plan(x1)]] }] });
    Charts.line($("chart-traffic"), { title: "impressions and clicks", x0: x0, x1: x1, xFormat: xf, yFormat: int, series: [
      { key: "impressions", label: "impressions", color: "#2458d6", points: traffic.imp },
      { key: "clicks", label: "clicks", color: "#1d8a4e", points: traffic.clk }] });
    Charts.line($("chart-ctr"), { title: "CTR", x0: x0, x1: x1, xFormat: xf, yFormat: pct, series: [
      { key: "ctr", label: "CTR", color: "#7a3fc4", points: traffic.ctr }] });
    Charts.line($("chart-ivt"), { title: "gross and invalid traffic", x0: x0, x1: x1, xFormat: xf, yFormat: int, series: [
      { key: "gross", label: "gross (impressions + clicks)", color: "#6b7385", points: traffic.gross },
      { key: "invalid", label: "invalid", color: "#c0352b", points: traffic.invalid }] });
  }

  // --- wiring -------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    fillSizes($("c0-size")); fillSizes($("n-size"));
    $("signin-form").addEventListener("submit", function (ev) { ev.preventDefault(); signIn($("token").value); });
    $("signout").addEventListener("click", function () { signOut(""); });
    $("new-campaign").addEventListener("click", function () { openEditor(null); });
    $("editor-cancel").addEventListener("click", function () { $("editor").hidden = true; });
    $("campaign-form").addEventListener("submit", saveCampaign);
    $("creative-form").addEventListener("submit", addCreative);
    $("d-close").addEventListener("click", function () { openId = null; $("detail").hidden = true; refresh(); });
    $("d-range").addEventListener("change", function () { renderDetail(); });
    document.addEventListener("visibilitychange", refresh);
    setInterval(refresh, REFRESH_MS);
    var saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved);
  });
})();
