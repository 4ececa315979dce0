// Strata admin console: plain JavaScript, no framework, no build step. It calls this
// server's own API with the admin's credentials and nothing else: a cookie session (the
// HttpOnly cookie travels by itself; every change carries the session's CSRF token) or the
// admin token, kept in this tab's sessionStorage and sent as a bearer token (with
// `credentials: "omit"`, so no cookie rides along). All text from the server is inserted
// with textContent, never as markup. The page runs under a Content-Security-Policy without
// 'unsafe-inline': no inline script, style or event handler here either.
"use strict";

(function () {
  const TOKEN_KEY = "strata-admin-token";
  const auth = { mode: null, token: null, csrf: null, who: "", userId: null };

  // ---- small helpers -------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function badge(text, kind) {
    return el("span", { class: "badge " + (kind || text), text });
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function ms(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
    const m = seconds * 1000;
    if (m < 1) return m.toFixed(3) + " ms";
    if (m < 100) return m.toFixed(2) + " ms";
    return m.toFixed(0) + " ms";
  }

  function rate(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  }

  function problemText(r) {
    const p = r.data || {};
    if (p.detail) return p.detail;
    if (p.title) return p.title;
    return "the server answered HTTP " + r.status;
  }

  function flash(text, isError) {
    const box = $("flash");
    box.textContent = text;
    box.classList.toggle("error-flash", !!isError);
    box.hidden = !text;
  }

  // ---- the API -------------------------------------------------------------------------

  class SessionEnded extends Error {}

  /** One API call with the current credentials; `{status, ok, data, text, headers}`. */
  async function api(method, path, opts) {
    opts = opts || {};
    const headers = { Accept: "application/json, application/problem+json" };
    if (auth.mode === "token") headers.Authorization = "Bearer " + auth.token;
    if (auth.mode === "cookie" && method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = auth.csrf || "";
    if (opts.ifMatch !== undefined) headers["If-Match"] = '"' + opts.ifMatch + '"';
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.raw !== undefined) {
      headers["Content-Type"] = "application/json";
      body = opts.raw;
    }
    const res = await fetch(path, {
      method,
      headers,
      body,
      credentials: auth.mode === "token" ? "omit" : "same-origin",
      cache: "no-store",
      redirect: "error",
    });
    const text = await res.text();
    let data = null;
    if ((res.headers.get("content-type") || "").includes("json")) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    const out = { status: res.status, ok: res.ok, data, text, headers: res.headers };
    if (res.status === 401 && auth.mode && !opts.own401) {
      signedOut("Your session has ended (" + ((data && data.code) || "401") + "). Sign in again.");
      throw new SessionEnded();
    }
    return out;
  }

  /** Runs an async UI action, showing what went wrong instead of failing silently. */
  function guarded(fn) {
    return async function (...args) {
      try {
        await fn.apply(this, args);
      } catch (e) {
        if (e instanceof SessionEnded) return;
        flash("Something went wrong: " + (e && e.message ? e.message : e), true);
      }
    };
  }

  // ---- sign-in and sign-out ------------------------------------------------------------

  function setSignedIn(mode, fields) {
    auth.mode = mode;
    auth.token = fields.token || null;
    auth.csrf = fields.csrf || null;
    auth.who = fields.who || "";
    auth.userId = fields.userId || null;
    $("who").textContent = auth.who;
    $("nav").hidden = false;
    $("sign-out").hidden = false;
  }

  function signedOut(message) {
    stopHealth();
    auth.mode = null;
    auth.token = null;
    auth.csrf = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("who").textContent = "";
    $("nav").hidden = true;
    $("sign-out").hidden = true;
    flash(message || "", !!message);
    show("signin");
  }

  async function tryToken(token) {
    const res = await fetch("/v1/users?limit=1", {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
    });
    return res.status === 200;
  }

  function signinError(text) {
    const box = $("signin-error");
    box.textContent = text;
    box.hidden = !text;
  }

  let mfaChallenge = null;

  async function signIn(event) {
    event.preventDefault();
    signinError("");
    const email = $("signin-email").value.trim();
    const password = $("signin-password").value;
    let res;
    if (mfaChallenge) {
      res = await fetch("/v1/sessions/mfa", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ challenge: mfaChallenge, code: $("signin-code").value.trim(), cookie: true }),
      });
    } else {
      if (!email || !password) {
        signinError("Enter the email and password of an admin account.");
        return;
      }
      res = await fetch("/v1/sessions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ email, password, cookie: true }),
      });
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.status === 401 && data && data.code === "mfa_required") {
      mfaChallenge = data.challenge;
      $("signin-mfa").hidden = false;
      $("signin-code").focus();
      signinError("This account has a second factor: enter a code from the authenticator app.");
      return;
    }
    if (res.status !== 201) {
      const retry = res.headers.get("retry-after");
      let text;
      if (res.status === 429) text = "Too many attempts. Try again in " + (retry || "a few") + " seconds.";
      else if (data && data.code === "invalid_credentials") text = "Wrong email or password.";
      else text = (data && (data.detail || data.title)) || "Sign-in failed (HTTP " + res.status + ").";
      if (data && (data.code === "mfa_challenge_expired" || data.code === "mfa_challenge_invalid")) resetMfa();
      signinError(text);
      return;
    }
    resetMfa();
    $("signin-password").value = "";
    if (!data || !data.user || data.user.role !== "admin") {
      // A session of a non-admin is of no use here: end it rather than leave it lying around.
      await fetch("/v1/sessions/current", {
        method: "DELETE",
        headers: { "X-CSRF-Token": (data && data.csrf_token) || "" },
        credentials: "same-origin",
      });
      signinError("This account is not an administrator, so it cannot use the admin console. Its session was ended.");
      return;
    }
    setSignedIn("cookie", { csrf: data.csrf_token, who: data.user.email, userId: data.user.id });
    flash("");
    if (!location.hash || location.hash === "#/" || location.hash === "#/signin") location.hash = "#/users";
    else await route();
  }

  function resetMfa() {
    mfaChallenge = null;
    $("signin-mfa").hidden = true;
    $("signin-code").value = "";
  }

  async function useToken(event) {
    event.preventDefault();
    const box = $("token-error");
    box.hidden = true;
    const token = $("token-input").value.trim();
    if (!token) {
      box.textContent = "Paste the admin token.";
      box.hidden = false;
      return;
    }
    if (!(await tryToken(token))) {
      box.textContent = "That is not the admin token of this server.";
      box.hidden = false;
      return;
    }
    $("token-input").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    setSignedIn("token", { token, who: "admin token" });
    flash("");
    if (!location.hash || location.hash === "#/") location.hash = "#/users";
    else await route();
  }

  async function signOut() {
    if (auth.mode === "cookie") {
      try {
        await api("DELETE", "/v1/sessions/current", { own401: true });
      } catch (e) {
        // Signed out locally either way.
      }
    }
    // The next sign-in starts from the user list, not from where this one ended.
    history.replaceState(null, "", location.pathname);
    signedOut("");
    flash("Signed out.");
  }

  // ---- navigation ----------------------------------------------------------------------

  const VIEWS = ["loading", "signin", "users", "user", "health", "reports"];

  function show(name) {
    for (const v of VIEWS) $("view-" + v).hidden = v !== name;
    const section = name === "user" ? "users" : name;
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.section === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (name !== "health") stopHealth();
  }

  async function route() {
    if (!auth.mode) {
      show("signin");
      return;
    }
    const path = (location.hash || "#/users").slice(1);
    flashOnNavigate();
    if (path === "/users" || path === "/" || path === "") {
      show("users");
      await loadUsers(currentPage);
    } else if (path.startsWith("/users/")) {
      show("user");
      await loadUser(decodeURIComponent(path.slice("/users/".length)));
    } else if (path === "/health") {
      show("health");
      startHealth();
    } else if (path === "/reports") {
      show("reports");
    } else {
      location.hash = "#/users";
    }
  }

  // A message survives exactly one navigation (the one its action caused).
  let keepFlash = false;
  function flashOnNavigate() {
    if (keepFlash) keepFlash = false;
    else flash("");
  }

  // ---- confirmation --------------------------------------------------------------------

  function confirmAction(title, text, okLabel, danger) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    const ok = $("confirm-ok");
    ok.textContent = okLabel;
    ok.className = danger ? "danger" : "";
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          const confirmed = dialog.returnValue === "ok";
          // The outcome of this action replaces whatever the last one said.
          if (confirmed) flash("");
          resolve(confirmed);
        },
        { once: true },
      );
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  // ---- users ---------------------------------------------------------------------------

  // Cursors of the pages seen, so that "Previous" can go back: cursors[i] opens page i.
  let cursors = [null];
  let currentPage = 0;

  function filterQuery() {
    const q = new URLSearchParams();
    const prefix = $("filter-email").value.trim();
    if (prefix) q.set("email_prefix", prefix);
    if ($("filter-status").value) q.set("status", $("filter-status").value);
    if ($("filter-role").value) q.set("role", $("filter-role").value);
    q.set("limit", "25");
    return q;
  }

  let usersRequest = 0;

  async function loadUsers(page) {
    const q = filterQuery();
    const cursor = cursors[page];
    if (cursor) q.set("cursor", cursor);
    const mine = ++usersRequest;
    const r = await api("GET", "/v1/users?" + q.toString());
    if (mine !== usersRequest) return; // a newer search answered or will answer
    if (!r.ok) {
      flash("Cannot list users: " + problemText(r), true);
      return;
    }
    currentPage = page;
    cursors = cursors.slice(0, page + 1);
    if (r.data.next_cursor) cursors.push(r.data.next_cursor);
    const rows = $("users-rows");
    rows.replaceChildren(
      ...r.data.items.map((u) =>
        el(
          "tr",
          { "data-user-id": u.id },
          el("td", {}, el("a", { href: "#/users/" + encodeURIComponent(u.id), text: u.email })),
          el("td", { text: u.name }),
          el("td", {}, u.role === "admin" ? badge("admin") : document.createTextNode("user")),
          el("td", {}, badge(u.status)),
          el("td", { text: u.verified ? "yes" : "no" }),
          el("td", { text: u.mfa_enabled ? "on" : "off" }),
          el("td", { class: "mono", text: when(u.created_at) }),
        ),
      ),
    );
    $("users-empty").hidden = r.data.items.length > 0;
    $("users-prev").disabled = page === 0;
    $("users-next").disabled = !r.data.next_cursor;
    $("users-page").textContent = "Page " + (page + 1);
  }

  function newSearch(event) {
    if (event) event.preventDefault();
    cursors = [null];
    loadUsers(0).catch(() => {});
  }

  let typing = null;
  function searchAsYouType() {
    clearTimeout(typing);
    typing = setTimeout(newSearch, 300);
  }

  // ---- one user ------------------------------------------------------------------------

  let shown = null; // the user as this page last read it: every change is conditional on its version

  async function loadUser(id) {
    shown = null;
    $("user-stale").hidden = true;
    $("user-title").textContent = "User";
    $("user-fields").replaceChildren();
    $("sessions-rows").replaceChildren();
    $("user-audit").replaceChildren();
    setActionsEnabled(false);
    const r = await api("GET", "/v1/users/" + encodeURIComponent(id));
    if (r.status === 404 || r.status === 400) {
      $("user-title").textContent = "No such user";
      flash("There is no user " + id + " (deleted, or a wrong link).", true);
      return;
    }
    if (!r.ok) {
      flash("Cannot read the user: " + problemText(r), true);
      return;
    }
    renderUser(r.data);
    await Promise.all([loadSessions(id), loadUserAudit(id)]);
  }

  function renderUser(u) {
    shown = u;
    $("user-title").textContent = u.email;
    const rows = [
      ["Name", u.name],
      ["Email", u.email],
      ["Id", u.id],
      ["Role", badge(u.role === "admin" ? "admin" : "user", u.role)],
      ["Status", badge(u.status)],
      ["Email verified", u.verified ? "yes" : "no"],
      ["Second factor", u.mfa_enabled ? "TOTP on" : "off"],
      ["Version", String(u.version)],
      ["Created", when(u.created_at)],
      ["Updated", when(u.updated_at)],
    ];
    $("user-fields").replaceChildren(
      ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { "data-field": k.toLowerCase() }, v)]),
    );
    const disabled = u.status === "disabled";
    $("act-status").textContent = disabled ? "Enable" : "Disable";
    $("act-status").className = disabled ? "" : "danger";
    $("act-role-select").value = u.role;
    setActionsEnabled(true);
  }

  function setActionsEnabled(on) {
    for (const id of ["act-status", "act-revoke", "act-role", "act-delete", "act-role-select"]) $(id).disabled = !on;
  }

  async function loadSessions(id) {
    const r = await api("GET", "/v1/users/" + encodeURIComponent(id) + "/sessions");
    if (!r.ok) {
      flash("Cannot list the sessions: " + problemText(r), true);
      return;
    }
    const now = Date.now();
    $("sessions-rows").replaceChildren(
      ...r.data.items.map((s) => {
        let state = "active";
        if (s.revoked_at) state = "revoked";
        else if (!s.active || new Date(s.expires_at).getTime() <= now) state = "expired";
        return el(
          "tr",
          { "data-session-id": s.id, "data-state": state },
          el("td", { class: "mono", text: s.id }, s.current ? el("span", { text: " (this session)" }) : null),
          el("td", {}, badge(state)),
          el("td", { class: "mono", text: when(s.created_at) }),
          el("td", { class: "mono", text: when(s.expires_at) }),
          el("td", { class: "mono", text: when(s.revoked_at) }),
        );
      }),
    );
    $("sessions-empty").hidden = r.data.items.length > 0;
  }

  /** Who acted, in words: the user themself, this admin, the admin token, or an id. */
  function actorText(e) {
    const a = e.actor || {};
    if (a.id && a.id === e.subject) return "the user";
    if (a.id && a.id === auth.userId) return "you (" + auth.who + ")";
    if (a.via === "admin_token") return "the admin token";
    if (a.via === "provisioning_token") return "a provisioning token";
    if (a.type === "anonymous") return "someone not signed in";
    return (a.type || "?") + (a.id ? " " + a.id : "");
  }

  function auditItem(e) {
    const actor = actorText(e);
    const data = e.data || {};
    let detail = "";
    if (Array.isArray(data.changed) && data.changed.length) detail = "changed: " + data.changed.join(", ");
    else if (data.reason) detail = "reason: " + data.reason;
    const subject = data.user && data.user.email ? data.user.email : "";
    return el(
      "li",
      { "data-event-id": e.id },
      el("span", { class: "time", text: when(e.time) }),
      el("span", { class: "type", text: e.type }),
      el("span", { text: [subject, detail, actor ? "by " + actor : ""].filter(Boolean).join(" · ") }),
    );
  }

  /** The newest audit entries matching `query`: the log pages oldest first, so walk it. */
  async function newestAudit(query, keep) {
    let items = [];
    let cursor = null;
    for (let page = 0; page < 10; page++) {
      const q = new URLSearchParams(query);
      q.set("limit", "200");
      if (cursor) q.set("cursor", cursor);
      const r = await api("GET", "/v1/audit?" + q.toString());
      if (!r.ok) return null;
      items = items.concat(r.data.items).slice(-keep);
      cursor = r.data.next_cursor;
      if (!cursor) break;
    }
    return items;
  }

  async function loadUserAudit(id) {
    const items = await newestAudit({ user_id: id }, 25);
    const list = $("user-audit");
    if (items === null) {
      list.replaceChildren(el("li", { text: "The audit log cannot be read." }));
      return;
    }
    list.replaceChildren(...items.reverse().map(auditItem));
    if (!items.length) list.replaceChildren(el("li", { text: "No events yet." }));
  }

  function stale(detail) {
    $("user-stale-text").textContent =
      "This user was changed by someone else after this page loaded it (you saw version " +
      (shown ? shown.version : "?") +
      "). Nothing was changed. Reload the user to see the current state before acting again." +
      (detail ? " (" + detail + ")" : "");
    $("user-stale").hidden = false;
    setActionsEnabled(false);
    $("user-reload").focus();
  }

  /** The outcome of a conditional change: the new state, the stale message, or the error. */
  function afterChange(r, done) {
    if (r.status === 412) {
      stale();
      return false;
    }
    if (r.status === 404) {
      flash("This user no longer exists (deleted meanwhile).", true);
      setActionsEnabled(false);
      return false;
    }
    if (!r.ok) {
      flash(problemText(r), true);
      return false;
    }
    flash(done);
    return true;
  }

  /**
   * One action on the shown user: confirmed first, then sent conditional on the version the
   * page shows, then its outcome (new state, stale message or error) shown.
   */
  async function act(spec) {
    if (!shown) return;
    const u = shown;
    if (!(await confirmAction(spec.title, spec.text, spec.okLabel, spec.danger))) return;
    const r = await api(spec.method, spec.path, { json: spec.json, ifMatch: u.version });
    if (afterChange(r, spec.done(r))) await spec.then(r);
  }

  async function toggleStatus() {
    if (!shown) return;
    const u = shown;
    const disable = u.status !== "disabled";
    await act({
      title: (disable ? "Disable " : "Enable ") + u.email + "?",
      text: disable
        ? "Every session of this user ends at once and they cannot sign in until the account is enabled again."
        : "The user can sign in again. Their old sessions stay ended.",
      okLabel: disable ? "Disable" : "Enable",
      danger: disable,
      method: "PATCH",
      path: "/v1/users/" + u.id,
      json: { status: disable ? "disabled" : "active" },
      done: () => (disable ? "Disabled " : "Enabled ") + u.email + ".",
      then: async (r) => {
        renderUser(r.data);
        await Promise.all([loadSessions(u.id), loadUserAudit(u.id)]);
      },
    });
  }

  async function changeRole() {
    if (!shown) return;
    const u = shown;
    const role = $("act-role-select").value;
    if (role === u.role) {
      flash(u.email + " already has the role " + role + ".");
      return;
    }
    await act({
      title: "Make " + u.email + " " + (role === "admin" ? "an admin" : "a user") + "?",
      text:
        role === "admin"
          ? "Admins can read and change every account, the audit log and webhooks, and use this console."
          : "They lose every admin right at their next request.",
      okLabel: "Change role",
      danger: false,
      method: "PATCH",
      path: "/v1/users/" + u.id,
      json: { role },
      done: () => u.email + " now has the role " + role + ".",
      then: async (r) => {
        renderUser(r.data);
        await loadUserAudit(u.id);
      },
    });
  }

  async function revokeSessions() {
    if (!shown) return;
    const u = shown;
    await act({
      title: "End every session of " + u.email + "?",
      text: "Every device signed in as this user is signed out at once. The account itself stays as it is.",
      okLabel: "Revoke sessions",
      danger: true,
      method: "DELETE",
      path: "/v1/users/" + u.id + "/sessions",
      done: (r) => "Ended " + (r.data ? r.data.revoked : 0) + " session(s) of " + u.email + ".",
      then: () => Promise.all([loadSessions(u.id), loadUserAudit(u.id)]),
    });
  }

  async function deleteUser() {
    if (!shown) return;
    const u = shown;
    await act({
      title: "Delete " + u.email + "?",
      text: "The account and all its sessions are deleted for good. This cannot be undone.",
      okLabel: "Delete",
      danger: true,
      method: "DELETE",
      path: "/v1/users/" + u.id,
      done: () => "Deleted " + u.email + ".",
      then: async () => {
        keepFlash = true;
        location.hash = "#/users";
      },
    });
  }

  // ---- live health ---------------------------------------------------------------------

  /** Prometheus / OpenMetrics text → [{name, labels, value}]. */
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line.charCodeAt(0) === 35) continue; // '#'
      let i = 0;
      while (i < line.length && line[i] !== "{" && line[i] !== " ") i++;
      const name = line.slice(0, i);
      const labels = {};
      if (line[i] === "{") {
        i++;
        while (i < line.length && line[i] !== "}") {
          const eq = line.indexOf("=", i);
          if (eq < 0) break;
          const key = line.slice(i, eq).replace(/^[,\s]+/, "");
          i = eq + 2; // past ="
          let value = "";
          while (i < line.length && line[i] !== '"') {
            if (line[i] === "\\" && i + 1 < line.length) {
              const n = line[i + 1];
              value += n === "n" ? "\n" : n;
              i += 2;
            } else {
              value += line[i++];
            }
          }
          labels[key] = value;
          i++; // closing quote
          while (i < line.length && (line[i] === "," || line[i] === " ")) i++;
        }
        i++; // '}'
      }
      const value = Number.parseFloat(line.slice(i).trim().split(" ")[0].replace("+Inf", "Infinity"));
      out.push({ name, labels, value });
    }
    return out;
  }

  function labelKey(labels, skip) {
    return Object.keys(labels)
      .filter((k) => k !== skip)
      .sort()
      .map((k) => k + "=" + labels[k])
      .join(",");
  }

  /** A snapshot indexed for differencing: plain series by key, histogram buckets by series. */
  function index(samples) {
    const series = new Map();
    for (const s of samples) series.set(s.name + "{" + labelKey(s.labels) + "}", s);
    return { series, samples };
  }

  /** Histogram quantile over cumulative buckets [[le, count]] (Prometheus' interpolation). */
  function quantile(q, buckets) {
    if (!buckets.length) return null;
    const total = buckets[buckets.length - 1][1];
    if (!(total > 0)) return null;
    const rank = q * total;
    let lowerLe = 0;
    let lowerCount = 0;
    for (const [le, count] of buckets) {
      if (count >= rank) {
        if (le === Infinity) return lowerLe;
        const inBucket = count - lowerCount;
        return inBucket > 0 ? lowerLe + ((le - lowerLe) * (rank - lowerCount)) / inBucket : le;
      }
      lowerLe = le;
      lowerCount = count;
    }
    return lowerLe;
  }

  /**
   * Per-interval deltas of a histogram, merged by `groupBy(labels)`: Map group →
   * {buckets: Map le → count, count}. Null when a counter went backwards (a restart).
   */
  function histogramDeltas(prev, cur, name, groupBy) {
    const groups = new Map();
    for (const s of cur.samples) {
      if (s.name !== name + "_bucket") continue;
      const before = prev.series.get(s.name + "{" + labelKey(s.labels) + "}");
      const delta = s.value - (before ? before.value : 0);
      if (delta < 0) return null;
      const group = groupBy(s.labels);
      if (group === null) continue;
      let g = groups.get(group);
      if (!g) groups.set(group, (g = { buckets: new Map() }));
      const le = s.labels.le === "+Inf" ? Infinity : Number.parseFloat(s.labels.le);
      g.buckets.set(le, (g.buckets.get(le) || 0) + delta);
    }
    for (const g of groups.values()) {
      g.sorted = [...g.buckets.entries()].sort((a, b) => a[0] - b[0]);
      g.count = g.sorted.length ? g.sorted[g.sorted.length - 1][1] : 0;
    }
    return groups;
  }

  /** Sum of the deltas of counter `name` over samples selected by `pick(labels)`. */
  function counterDelta(prev, cur, name, pick) {
    let sum = 0;
    let seen = false;
    for (const s of cur.samples) {
      if (s.name !== name || (pick && !pick(s.labels))) continue;
      seen = true;
      const before = prev.series.get(s.name + "{" + labelKey(s.labels) + "}");
      sum += s.value - (before ? before.value : 0);
    }
    return seen ? sum : null;
  }

  function gauge(cur, name, pick) {
    let sum = null;
    for (const s of cur.samples) {
      if (s.name !== name || (pick && !pick(s.labels))) continue;
      sum = (sum || 0) + s.value;
    }
    return sum;
  }

  const HISTORY = 60;
  const TILES = [
    { id: "rps", title: "Requests/s", format: rate },
    { id: "errors", title: "Error rate (5xx)", format: (v) => (v === null ? "–" : (v * 100).toFixed(2) + " %") },
    { id: "p50", title: "Latency p50", format: ms },
    { id: "p99", title: "Latency p99", format: ms },
    { id: "cache", title: "Cache hit ratio", format: (v) => (v === null ? "–" : (v * 100).toFixed(1) + " %") },
    { id: "degraded", title: "Degraded cache servers", format: (v) => (v === null ? "–" : String(v)) },
    { id: "dbp99", title: "DB query p99", format: ms },
    { id: "pool", title: "DB pool in use", format: (v) => (v === null ? "–" : String(v)) },
    { id: "hash", title: "Password-hash queue", format: (v) => (v === null ? "–" : String(v)) },
    { id: "backlog", title: "Event backlog", format: (v) => (v === null ? "–" : String(v)), optional: true },
    { id: "webhooks", title: "Webhook failures/min", format: (v) => (v === null ? "–" : rate(v)), optional: true },
  ];

  const health = { timer: null, busy: false, prev: null, prevAt: 0, tiles: new Map(), seenRoutes: new Map() };
  let gatewayState = "unknown"; // unknown | absent | present | token-needed
  let gatewayTimer = null;
  let auditTimer = null;
  const auditSeen = new Map();

  function buildTiles() {
    if (health.tiles.size) return;
    const box = $("tiles");
    for (const t of TILES) {
      const value = el("p", { class: "value", text: "–" });
      const sub = el("p", { class: "sub" });
      const canvas = el("canvas", { width: 200, height: 46, role: "img", "aria-label": t.title + ": no data yet" });
      const tile = el("div", { class: "tile", id: "tile-" + t.id, "data-tile": t.id }, el("h2", { text: t.title }), value, sub, canvas);
      if (t.optional) tile.hidden = true;
      box.append(tile);
      health.tiles.set(t.id, { spec: t, tile, value, sub, canvas, points: [] });
    }
  }

  function setTile(id, v, subText, alert) {
    const t = health.tiles.get(id);
    if (!t) return;
    if (t.spec.optional && v !== null) t.tile.hidden = false;
    t.points.push(v === null ? null : v);
    if (t.points.length > HISTORY) t.points.shift();
    const shownValue = t.spec.format(v);
    t.value.textContent = shownValue;
    t.sub.textContent = subText || "";
    t.tile.classList.toggle("alert", !!alert);
    t.tile.dataset.value = v === null ? "" : String(v);
    t.canvas.setAttribute("aria-label", t.spec.title + ": " + shownValue + (subText ? ", " + subText : ""));
    t.canvas.dataset.points = String(t.points.filter((p) => p !== null).length);
    draw(t.canvas, t.points, alert);
  }

  /**
   * A sparkline of the last minute (at most), from zero to the largest value in it. Until a
   * minute has passed the points spread over the width, at least ten slots apart.
   */
  function draw(canvas, points, alert) {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(50, Math.round(canvas.clientWidth * ratio));
    const hgt = Math.max(20, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== hgt) canvas.height = hgt;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, hgt);
    ctx.fillStyle = "#e5e7eb";
    ctx.fillRect(0, hgt - ratio, w, ratio);
    const values = points.filter((p) => p !== null);
    if (values.length < 2) return;
    const max = Math.max(...values) || 1;
    const slots = Math.max(points.length, 10);
    const step = w / (slots - 1);
    const x = (i) => w - (points.length - 1 - i) * step;
    const y = (v) => hgt - 2 * ratio - (v / max) * (hgt - 4 * ratio);
    // Runs of consecutive known points, each drawn and filled on its own: a gap stays a gap.
    const runs = [];
    let run = [];
    points.forEach((p, i) => {
      if (p === null) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push([x(i), y(p)]);
    });
    if (run.length) runs.push(run);
    ctx.lineWidth = 1.5 * ratio;
    ctx.strokeStyle = alert ? "#b91c1c" : "#1d4ed8";
    ctx.fillStyle = alert ? "rgba(185, 28, 28, 0.12)" : "rgba(29, 78, 216, 0.12)";
    for (const r of runs) {
      ctx.beginPath();
      r.forEach(([px, py], k) => (k ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
      ctx.stroke();
      ctx.lineTo(r[r.length - 1][0], hgt);
      ctx.lineTo(r[0][0], hgt);
      ctx.closePath();
      ctx.fill();
    }
  }

  function startHealth() {
    buildTiles();
    if (!health.timer) {
      health.prev = null;
      tick();
      health.timer = setInterval(tick, 1000);
    }
    if (!auditTimer) {
      tailAudit();
      auditTimer = setInterval(tailAudit, 3000);
    }
    if (!gatewayTimer) {
      gateway();
      gatewayTimer = setInterval(gateway, 2000);
    }
  }

  function stopHealth() {
    clearInterval(health.timer);
    clearInterval(auditTimer);
    clearInterval(gatewayTimer);
    health.timer = null;
    auditTimer = null;
    gatewayTimer = null;
  }

  async function tick() {
    if (health.busy) return;
    health.busy = true;
    try {
      // /metrics is public and needs no credentials; none are sent.
      const res = await fetch("/metrics", { credentials: "omit", cache: "no-store" });
      const text = await res.text();
      const at = performance.now();
      if (!res.ok) throw new Error("HTTP " + res.status);
      const cur = index(parseMetrics(text));
      if (health.prev) {
        const dt = (at - health.prevAt) / 1000;
        if (dt > 0.2) {
          if (!update(health.prev, cur, dt)) health.prev = null;
        }
      }
      health.prev = cur;
      health.prevAt = at;
      $("health-status").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    } catch (e) {
      $("health-status").textContent = "Cannot read /metrics: " + (e.message || e) + ".";
    } finally {
      health.busy = false;
    }
  }

  /** One interval's figures into the tiles and the route table; false on a counter reset. */
  function update(prev, cur, dt) {
    const REQUESTS = "strata_http_requests_total";
    const byRoute = histogramDeltas(prev, cur, "strata_http_request_duration_seconds", (l) => l.route);
    const all = histogramDeltas(prev, cur, "strata_http_request_duration_seconds", () => "all");
    const db = histogramDeltas(prev, cur, "strata_db_query_duration_seconds", () => "all");
    if (!byRoute || !all || !db) return false;
    const total = counterDelta(prev, cur, REQUESTS) || 0;
    const errors5 = counterDelta(prev, cur, REQUESTS, (l) => Number(l.status) >= 500) || 0;
    const errors4 = counterDelta(prev, cur, REQUESTS, (l) => Number(l.status) >= 400 && Number(l.status) < 500) || 0;
    const allHist = all.get("all");
    setTile("rps", total / dt, "4xx: " + rate(errors4 / dt) + "/s");
    setTile("errors", total > 0 ? errors5 / total : 0, rate(errors5 / dt) + " errors/s", errors5 > 0);
    setTile("p50", allHist ? quantile(0.5, allHist.sorted) : null, "all routes");
    setTile("p99", allHist ? quantile(0.99, allHist.sorted) : null, "all routes");

    const lookups = counterDelta(prev, cur, "strata_cache_lookups_total");
    const hits = counterDelta(prev, cur, "strata_cache_lookups_total", (l) => l.outcome === "hit" || l.outcome === "negative_hit");
    if (lookups === null) setTile("cache", null, "no cache lookups yet");
    else if (lookups > 0) setTile("cache", hits / lookups, rate(lookups / dt) + " lookups/s");
    else setTile("cache", null, "no lookups in the last second");
    const degraded = gauge(cur, "strata_cache_degraded");
    setTile("degraded", degraded, degraded ? "served from the database meanwhile" : "", degraded > 0);
    const servers = cur.samples.filter((s) => s.name === "strata_cache_endpoint_degraded" && s.value > 0);
    $("cache-servers").hidden = servers.length === 0;
    $("cache-servers-list").replaceChildren(...servers.map((s) => el("li", { class: "mono", text: s.labels.endpoint })));

    const dbHist = db.get("all");
    setTile(
      "dbp99",
      dbHist ? quantile(0.99, dbHist.sorted) : null,
      "p50 " + ms(dbHist ? quantile(0.5, dbHist.sorted) : null) + " · " + rate(dbHist ? dbHist.count / dt : 0) + " queries/s",
    );
    const size = gauge(cur, "strata_db_pool_connections", (l) => l.state === "size");
    const idle = gauge(cur, "strata_db_pool_connections", (l) => l.state === "idle");
    const waiting = gauge(cur, "strata_db_pool_connections", (l) => l.state === "waiting");
    setTile("pool", size === null ? null : Math.max(0, size - (idle || 0)), "of " + (size ?? "–") + " · waiting " + (waiting ?? "–"), waiting > 0);
    const queue = gauge(cur, "strata_password_hash_queue");
    setTile("hash", queue, "waiting for a hashing thread", queue > 0);
    const backlog = gauge(cur, "strata_outbox_backlog");
    const age = gauge(cur, "strata_outbox_backlog_age_seconds");
    setTile("backlog", backlog, backlog ? "oldest " + (age || 0).toFixed(1) + " s" : "all published", age > 60);
    const failed = counterDelta(prev, cur, "strata_webhook_attempts_total", (l) => l.outcome === "failed");
    const retried = counterDelta(prev, cur, "strata_webhook_attempts_total", (l) => l.outcome === "retry");
    setTile("webhooks", failed === null ? null : (failed * 60) / dt, "retries " + rate(((retried || 0) * 60) / dt) + "/min", failed > 0);

    routesTable(prev, cur, byRoute, dt);
    return true;
  }

  function routesTable(prev, cur, byRoute, dt) {
    const now = Date.now();
    const rows = [];
    for (const [route, g] of byRoute) {
      const n = g.count;
      if (n > 0) health.seenRoutes.set(route, now);
      // A route stays listed for half a minute after its last request.
      if (!(now - (health.seenRoutes.get(route) || 0) < 30000)) continue;
      const e5 = counterDelta(prev, cur, "strata_http_requests_total", (l) => l.route === route && Number(l.status) >= 500) || 0;
      const e4 =
        counterDelta(prev, cur, "strata_http_requests_total", (l) => l.route === route && Number(l.status) >= 400 && Number(l.status) < 500) || 0;
      rows.push({ route, rps: n / dt, p50: quantile(0.5, g.sorted), p99: quantile(0.99, g.sorted), e5: e5 / dt, e4: e4 / dt });
    }
    rows.sort((a, b) => b.rps - a.rps || a.route.localeCompare(b.route));
    $("routes-rows").replaceChildren(
      ...rows.map((r) =>
        el(
          "tr",
          { "data-route": r.route },
          el("td", { class: "mono", text: r.route }),
          el("td", { text: rate(r.rps) }),
          el("td", { text: ms(r.p50) }),
          el("td", { text: ms(r.p99) }),
          el("td", { text: rate(r.e5) }),
          el("td", { text: rate(r.e4) }),
        ),
      ),
    );
  }

  /** Behind a gateway, its upstreams (it answers `/gateway/upstreams` to the admin token). */
  async function gateway() {
    if (gatewayState === "absent") return;
    let r;
    try {
      r = await api("GET", "/gateway/upstreams", { own401: true });
    } catch (e) {
      return;
    }
    if (r.status === 404) {
      gatewayState = "absent";
      $("gateway").hidden = true;
      return;
    }
    $("gateway").hidden = false;
    const note = $("gateway-note");
    if (r.status === 401) {
      gatewayState = "token-needed";
      note.textContent = "This console is behind a Strata gateway; its upstreams are shown to the admin token only.";
      note.hidden = false;
      return;
    }
    if (!r.ok || !r.data) return;
    gatewayState = "present";
    note.textContent = "Algorithm " + r.data.algorithm + ", discovery " + r.data.discovery + ".";
    note.hidden = false;
    $("gateway-rows").replaceChildren(
      ...r.data.upstreams.map((u) =>
        el(
          "tr",
          {},
          el("td", { class: "mono", text: u.authority }),
          el("td", {}, badge(u.state)),
          el("td", { text: String(u.in_flight) }),
          el("td", { text: u.ewma_ms.toFixed(2) + " ms" }),
          el("td", { text: String(u.requests) }),
          el("td", { text: String(u.errors) }),
          el("td", { text: String(u.ejections) }),
        ),
      ),
    );
  }

  async function tailAudit() {
    // Entries reach the log from the event relay a little after their time, possibly out of
    // order: look a minute back from the newest seen and drop what is already shown.
    let newest = 0;
    for (const e of auditSeen.values()) newest = Math.max(newest, new Date(e.time).getTime());
    const since = new Date((newest || Date.now() - 3600 * 1000) - 60 * 1000).toISOString();
    let items;
    try {
      items = await newestAudit({ since }, 200);
    } catch (e) {
      return;
    }
    const list = $("audit-tail");
    if (items === null) {
      list.replaceChildren(el("li", { text: "The audit log cannot be read." }));
      return;
    }
    for (const e of items) auditSeen.set(e.id, e);
    const latest = [...auditSeen.values()].sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0)).slice(0, 30);
    auditSeen.clear();
    for (const e of latest) auditSeen.set(e.id, e);
    list.replaceChildren(...latest.map(auditItem));
    if (!latest.length) list.replaceChildren(el("li", { text: "No events in the last hour." }));
  }

  // ---- bench reports -------------------------------------------------------------------

  async function openReport() {
    const input = $("report-file");
    const file = input.files && input.files[0];
    const error = $("report-error");
    const frame = $("report-frame");
    error.hidden = true;
    if (!file) return;
    const text = await file.text();
    const r = await api("POST", "/admin/bench-report", { raw: text });
    if (!r.ok) {
      error.textContent = "Cannot show " + file.name + ": " + problemText(r);
      error.hidden = false;
      frame.hidden = true;
      return;
    }
    // Shown in a sandboxed frame: no script runs in it, and it inherits this page's policy.
    frame.srcdoc = r.text;
    frame.title = "Bench report " + file.name;
    frame.hidden = false;
  }

  // ---- start ---------------------------------------------------------------------------

  async function boot() {
    $("signin-form").addEventListener("submit", guarded(signIn));
    $("token-form").addEventListener("submit", guarded(useToken));
    $("sign-out").addEventListener("click", guarded(signOut));
    $("users-search").addEventListener("submit", newSearch);
    $("filter-email").addEventListener("input", searchAsYouType);
    $("filter-status").addEventListener("change", newSearch);
    $("filter-role").addEventListener("change", newSearch);
    $("users-next").addEventListener("click", guarded(() => loadUsers(currentPage + 1)));
    $("users-prev").addEventListener("click", guarded(() => loadUsers(Math.max(0, currentPage - 1))));
    $("act-status").addEventListener("click", guarded(toggleStatus));
    $("act-role").addEventListener("click", guarded(changeRole));
    $("act-revoke").addEventListener("click", guarded(revokeSessions));
    $("act-delete").addEventListener("click", guarded(deleteUser));
    $("user-reload").addEventListener("click", guarded(() => loadUser(shown ? shown.id : location.hash.slice(8))));
    $("report-file").addEventListener("change", guarded(openReport));
    window.addEventListener("hashchange", guarded(route));

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && (await tryToken(saved))) {
      setSignedIn("token", { token: saved, who: "admin token" });
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
      // A cookie session from an earlier visit: who-am-I tells its CSRF token again.
      const res = await fetch("/v1/sessions/current", { credentials: "same-origin", cache: "no-store" });
      if (res.status === 200) {
        const me = await res.json();
        if (me.user && me.user.role === "admin" && me.csrf_token) {
          setSignedIn("cookie", { csrf: me.csrf_token, who: me.user.email, userId: me.user.id });
        }
      }
    }
    await route();
  }

  document.addEventListener("DOMContentLoaded", guarded(boot));
})();
