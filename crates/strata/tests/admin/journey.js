// The admin console in a real browser (issue 14): Debian's Chromium driven by
// playwright-core through a whole admin journey against a fresh `strata serve`, axe-core on
// every view, screenshots of each step.
//
//   node crates/strata/tests/admin/journey.js [path/to/strata]
//
// Environment: STRATA_BIN (the binary, default target/debug/strata), PLAYWRIGHT_DIR (a
// directory whose node_modules hold playwright-core and axe-core, default
// ~/.cache/strata-tools/playwright), CHROMIUM (default /usr/bin/chromium), STRATA_ARTIFACTS
// (screenshots go to $STRATA_ARTIFACTS/admin, default target/ci-artifacts/admin).
// Exits non-zero, saying which step failed, on the first broken expectation.
"use strict";

const { spawn, execFile } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { createRequire } = require("node:module");

const repo = path.resolve(__dirname, "../../../..");
const modules = process.env.PLAYWRIGHT_DIR || path.join(os.homedir(), ".cache/strata-tools/playwright");
const requireTool = createRequire(path.join(modules, "package.json"));
const { chromium } = requireTool("playwright-core");
const axeSource = fs.readFileSync(requireTool.resolve("axe-core/axe.min.js"), "utf8");

const bin = path.resolve(process.argv[2] || process.env.STRATA_BIN || path.join(repo, "target/debug/strata"));
const artifacts = path.join(path.resolve(repo, process.env.STRATA_ARTIFACTS || "target/ci-artifacts"), "admin");
const ADMIN_TOKEN = "journey-admin-token-" + Math.random().toString(36).slice(2, 14);
const PASSWORD = "correct horse battery";

let step = "start";
function expect(ok, what) {
  if (!ok) throw new Error(what);
}

// ---- the server ---------------------------------------------------------------------------

async function startServer(dir) {
  const child = spawn(bin, ["serve", "--listen", "127.0.0.1:0"], {
    env: {
      ...process.env,
      STRATA_DATABASE_URL: "sqlite://" + path.join(dir, "journey.db"),
      STRATA_ADMIN_TOKEN: ADMIN_TOKEN,
      // Plain HTTP on 127.0.0.1: the cookie cannot be Secure. Strict: the console's cookie
      // never rides along with another site's request.
      STRATA_COOKIE_SECURE: "false",
      STRATA_COOKIE_SAME_SITE: "Strict",
      STRATA_PASSWORD_MEMORY_KIB: "256",
      STRATA_PASSWORD_ITERATIONS: "1",
      STRATA_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const base = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("strata did not start: " + stderr)), 30000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/strata listening on (http:\/\/[^ ]+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on("exit", (code) => reject(new Error("strata exited with " + code + ": " + stderr)));
  });
  return { child, base };
}

// ---- the API from outside the browser ------------------------------------------------------

function client(base) {
  async function call(method, p, { token, json, headers } = {}) {
    const h = { ...(headers || {}) };
    if (token) h.authorization = "Bearer " + token;
    if (json !== undefined) h["content-type"] = "application/json";
    const res = await fetch(base + p, { method, headers: h, body: json === undefined ? undefined : JSON.stringify(json) });
    const text = await res.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (e) {
      body = null;
    }
    return { status: res.status, body, text, headers: res.headers };
  }
  return {
    call,
    async register(email, name) {
      const r = await call("POST", "/v1/users", { json: { email, name, password: PASSWORD } });
      expect(r.status === 201, "register " + email + ": " + r.status + " " + r.text);
      return r.body;
    },
    async login(email) {
      const r = await call("POST", "/v1/sessions", { json: { email, password: PASSWORD } });
      expect(r.status === 201, "login " + email + ": " + r.status + " " + r.text);
      return r.body.token;
    },
    async user(id) {
      const r = await call("GET", "/v1/users/" + id, { token: ADMIN_TOKEN });
      expect(r.status === 200, "read user: " + r.status);
      return r.body;
    },
    async patch(id, json) {
      const current = await this.user(id);
      const r = await call("PATCH", "/v1/users/" + id, {
        token: ADMIN_TOKEN,
        json,
        headers: { "if-match": '"' + current.version + '"' },
      });
      expect(r.status === 200, "patch: " + r.status + " " + r.text);
      return r.body;
    },
    async whoami(token) {
      return (await call("GET", "/v1/sessions/current", { token })).status;
    },
  };
}

// ---- the browser ---------------------------------------------------------------------------

const problems = [];

async function shot(page, name, viewportOnly) {
  // A modal dialog's backdrop covers the viewport only: such steps are shot as seen.
  await page.screenshot({ path: path.join(artifacts, name + ".png"), fullPage: !viewportOnly });
}

/** axe-core on the page as it is now: no serious or critical violation. */
async function accessible(page, what) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern (a
  // <script> tag with axe inline would be refused, as it should be).
  await page.evaluate(axeSource + ";0");
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result) console.log("  axe " + what + ": " + v.impact + " " + v.id + " (" + v.help + ") " + v.nodes.slice(0, 3).join(", "));
  expect(bad.length === 0, "accessibility (" + what + "): " + JSON.stringify(bad, null, 1));
}

async function confirmDialog(page, expectedTitle) {
  const dialog = page.locator("#confirm");
  await dialog.waitFor({ state: "visible" });
  const title = await page.locator("#confirm-title").textContent();
  expect(title.includes(expectedTitle), "dialog title " + JSON.stringify(title) + " lacks " + expectedTitle);
  return dialog;
}

async function tileValue(page, id) {
  const v = await page.locator("#tile-" + id).getAttribute("data-value");
  return v === null || v === "" ? null : Number(v);
}

function runBench(base, token, dir) {
  const json = path.join(dir, "bench.json");
  const html = path.join(artifacts, "bench-report.html");
  return new Promise((resolve, reject) => {
    execFile(
      bin,
      [
        "bench", "--target", base, "--scenario", "http", "--path", "/v1/sessions/current",
        "--header", "authorization: Bearer " + token, "--rate", "150", "--duration", "5s",
        "--json", json, "--html", html, "--quiet",
      ],
      { timeout: 60000 },
      (err, stdout, stderr) => (err ? reject(new Error("strata bench: " + err.message + stderr)) : resolve(json)),
    );
  });
}

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "strata-admin-"));
  const { child, base } = await startServer(dir);
  const api = client(base);
  let browser;
  try {
    step = "headers";
    const page0 = await api.call("GET", "/admin");
    expect(page0.status === 200, "/admin: " + page0.status);
    const csp = page0.headers.get("content-security-policy") || "";
    expect(csp.includes("script-src 'self'") && !csp.includes("unsafe-inline"), "CSP: " + csp);

    step = "seed";
    const admin = await api.register("root@example.com", "Root Admin");
    await api.patch(admin.id, { role: "admin" });
    const alice = await api.register("alice@example.com", "Alice Liddell");
    await api.register("alina@example.com", "Alina Petrova");
    await api.register("bob@example.com", "Bob Builder");
    const aliceToken = await api.login("alice@example.com");
    expect((await api.whoami(aliceToken)) === 200, "alice's token works before");

    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu"],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("console", (m) => {
      const text = m.text();
      if (m.type() === "error" && !/status of 4\d\d/.test(text)) problems.push("console: " + text);
      if (/Content Security Policy|Refused to/.test(text)) problems.push("CSP: " + text);
    });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));

    step = "sign-in page";
    await page.goto(base + "/admin");
    await page.locator("#view-signin").waitFor({ state: "visible" });
    await shot(page, "01-signin");
    await accessible(page, "sign-in");

    step = "a non-admin is turned away";
    await page.fill("#signin-email", "alice@example.com");
    await page.fill("#signin-password", PASSWORD);
    await page.click("#signin-submit");
    await page.locator("#signin-error").waitFor({ state: "visible" });
    const refusal = await page.locator("#signin-error").textContent();
    expect(/not an administrator/.test(refusal), "non-admin message: " + refusal);
    expect((await api.whoami(aliceToken)) === 200, "turning alice away ended only the console's session");

    step = "sign in as the admin";
    await page.fill("#signin-email", "root@example.com");
    await page.fill("#signin-password", PASSWORD);
    await page.click("#signin-submit");
    await page.locator("#view-users").waitFor({ state: "visible" });
    await page.locator("#users-rows tr").first().waitFor();
    expect((await page.locator("#who").textContent()) === "root@example.com", "who is signed in");
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "strata_session");
    expect(session && session.httpOnly && session.sameSite === "Strict", "session cookie: " + JSON.stringify(cookies));
    expect((await page.evaluate(() => localStorage.length)) === 0, "nothing in localStorage");
    expect((await page.locator("#users-rows tr").count()) === 4, "four users listed");
    await shot(page, "02-users");
    await accessible(page, "users");

    step = "search by email prefix";
    await page.fill("#filter-email", "ali");
    await page.click("#users-search button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#users-rows tr").length === 2);
    const found = await page.locator("#users-rows tr td:first-child").allTextContents();
    expect(found.join(",") === "alice@example.com,alina@example.com", "prefix search: " + found);
    await page.selectOption("#filter-role", "admin");
    await page.fill("#filter-email", "");
    await page.click("#users-search button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#users-rows tr").length === 1);
    expect((await page.locator("#users-rows tr td:first-child").textContent()) === "root@example.com", "role filter");
    await page.selectOption("#filter-role", "");
    await page.fill("#filter-email", "ali");
    await page.click("#users-search button[type=submit]");
    await page.waitForFunction(() => document.querySelectorAll("#users-rows tr").length === 2);
    await shot(page, "03-search");

    step = "open the user";
    await page.click("text=alice@example.com");
    await page.locator("#view-user").waitFor({ state: "visible" });
    await page.locator("#sessions-rows tr[data-state=active]").first().waitFor();
    expect((await page.locator("#user-title").textContent()) === "alice@example.com", "user page title");
    await shot(page, "04-user");
    await accessible(page, "user");

    step = "disable the user; their token dies";
    await page.click("#act-status");
    await confirmDialog(page, "Disable alice@example.com");
    await shot(page, "05-confirm-disable", true);
    await accessible(page, "confirmation dialog");
    await page.click("#confirm-ok");
    await page.locator("dd[data-field=status] .badge.disabled").waitFor();
    expect((await api.whoami(aliceToken)) === 401, "alice's token is dead once she is disabled");
    await page.waitForFunction(() => !document.querySelector("#sessions-rows tr[data-state=active]"));
    await shot(page, "06-disabled");

    step = "enable the user again";
    await page.click("#act-status");
    await confirmDialog(page, "Enable alice@example.com");
    await page.click("#confirm-ok");
    await page.locator("dd[data-field=status] .badge.active").waitFor();
    expect((await api.user(alice.id)).status === "active", "alice is active");
    expect((await api.whoami(aliceToken)) === 401, "her old sessions stay ended");

    step = "cancel changes nothing";
    await page.click("#act-delete");
    await confirmDialog(page, "Delete alice@example.com");
    await page.click("#confirm-cancel");
    expect((await api.call("GET", "/v1/users/" + alice.id, { token: ADMIN_TOKEN })).status === 200, "cancel kept her");

    step = "change the role";
    await page.selectOption("#act-role-select", "admin");
    await page.click("#act-role");
    await confirmDialog(page, "Make alice@example.com an admin");
    await page.click("#confirm-ok");
    await page.locator("dd[data-field=role] .badge.admin").waitFor();
    expect((await api.user(alice.id)).role === "admin", "alice is an admin");

    step = "a stale page is told, not obeyed";
    await api.patch(alice.id, { name: "Alice Changed Elsewhere" });
    await page.click("#act-status");
    await confirmDialog(page, "Disable alice@example.com");
    await page.click("#confirm-ok");
    await page.locator("#user-stale").waitFor({ state: "visible" });
    const staleText = await page.locator("#user-stale-text").textContent();
    expect(/changed by someone else/.test(staleText) && /Nothing was changed/.test(staleText), "stale text: " + staleText);
    expect((await api.user(alice.id)).status === "active", "the stale disable did not happen");
    expect(await page.locator("#act-status").isDisabled(), "actions wait for a reload");
    await shot(page, "07-stale");
    await accessible(page, "stale message");
    await page.click("#user-reload");
    await page.waitForFunction(() => {
      const name = document.querySelector("dd[data-field=name]");
      return name && name.textContent === "Alice Changed Elsewhere";
    });
    expect(await page.locator("#user-stale").isHidden(), "the reload clears the message");

    step = "revoke every session";
    const again = await api.login("alice@example.com");
    // A reload of the browser page: the cookie session carries on (who-am-I gives its CSRF
    // token back) and the new session is listed.
    await page.reload();
    await page.locator("#view-user").waitFor({ state: "visible" });
    await page.locator("#sessions-rows tr[data-state=active]").first().waitFor();
    await page.click("#act-revoke");
    await confirmDialog(page, "End every session of alice@example.com");
    await page.click("#confirm-ok");
    await page.waitForFunction(() => /Ended 1 session/.test(document.querySelector("#flash").textContent));
    expect((await api.whoami(again)) === 401, "the revoked token is dead");
    expect((await api.user(alice.id)).status === "active", "the account itself is untouched");

    step = "live health moves under load";
    const bobToken = await api.login("bob@example.com");
    await page.click("a[data-section=health]");
    await page.locator("#view-health").waitFor({ state: "visible" });
    await page.waitForFunction(() => Number(document.querySelector("#tile-rps canvas").dataset.points || 0) >= 2, null, { timeout: 15000 });
    const idleRps = await tileValue(page, "rps");
    const pointsBefore = Number(await page.locator("#tile-rps canvas").getAttribute("data-points"));
    const bench = runBench(base, bobToken, dir);
    await page.waitForFunction(() => Number(document.querySelector("#tile-rps").dataset.value || 0) > 60, null, { timeout: 20000 });
    const loadedRps = await tileValue(page, "rps");
    expect(loadedRps > idleRps + 50, "requests/s moved from " + idleRps + " to " + loadedRps);
    await page.locator("#routes-rows tr[data-route='/v1/sessions/current']").waitFor();
    const p99 = await tileValue(page, "p99");
    expect(p99 !== null && p99 > 0, "a p99 under load: " + p99);
    const cache = await tileValue(page, "cache");
    expect(cache !== null && cache > 0.5, "session checks hit the cache: " + cache);
    const pointsAfter = Number(await page.locator("#tile-rps canvas").getAttribute("data-points"));
    expect(pointsAfter > pointsBefore, "the chart grew from " + pointsBefore + " to " + pointsAfter + " points");
    const shownRps = await page.locator("#tile-rps .value").textContent();
    expect(Number(shownRps) > 50, "the visible number: " + shownRps);
    await page.waitForFunction(() => document.querySelectorAll("#audit-tail li[data-event-id]").length > 0, null, { timeout: 15000 });
    await accessible(page, "health");
    const reportFile = await bench;
    // Shot once the load is over and a few idle seconds followed: the charts show it rise and fall.
    await page.waitForFunction(() => Number(document.querySelector("#tile-rps").dataset.value || 0) < 20, null, { timeout: 15000 });
    await page.waitForTimeout(2000);
    await shot(page, "08-health");

    step = "a bench report, as its HTML report";
    await page.click("a[data-section=reports]");
    await page.locator("#view-reports").waitFor({ state: "visible" });
    await page.setInputFiles("#report-file", reportFile);
    await page.locator("#report-frame").waitFor({ state: "visible" });
    const frame = page.frameLocator("#report-frame");
    await frame.locator("h1").waitFor();
    const plots = await frame.locator("svg.plot").count();
    expect(plots >= 5, "plots in the report: " + plots);
    const heading = await frame.locator("h1").textContent();
    expect(/strata bench/.test(heading), "report heading: " + heading);
    // The linked stylesheet applied (the body is centred at 1100px by the report's CSS).
    const maxWidth = await frame.locator("body").evaluate((b) => getComputedStyle(b).maxWidth);
    expect(maxWidth === "1100px", "the report's stylesheet applied: max-width " + maxWidth);
    await shot(page, "09-report");
    // The same report as `strata bench --html` wrote it, for comparison by eye.
    const standalone = await context.newPage();
    await standalone.goto("file://" + path.join(artifacts, "bench-report.html"));
    await shot(standalone, "09b-report-standalone");
    await standalone.close();
    await accessible(page, "reports");
    fs.writeFileSync(path.join(dir, "bad.json"), '{"schema": "something-else/1"}');
    await page.setInputFiles("#report-file", path.join(dir, "bad.json"));
    await page.locator("#report-error").waitFor({ state: "visible" });
    expect(/something-else/.test(await page.locator("#report-error").textContent()), "bad report explained");

    step = "sign out; the cookie session is over";
    await page.click("#sign-out");
    await page.locator("#view-signin").waitFor({ state: "visible" });
    expect(!(await context.cookies()).some((c) => c.name === "strata_session" && c.value), "cookie cleared");

    step = "sign in with the admin token";
    await page.fill("#token-input", "not-the-token-at-all");
    await page.click("#token-form button[type=submit]");
    await page.locator("#token-error").waitFor({ state: "visible" });
    await page.fill("#token-input", ADMIN_TOKEN);
    await page.click("#token-form button[type=submit]");
    await page.locator("#view-users").waitFor({ state: "visible" });
    expect((await page.locator("#who").textContent()) === "admin token", "signed in by token");
    const stored = await page.evaluate(() => [sessionStorage.length, localStorage.length]);
    expect(stored[0] === 1 && stored[1] === 0, "the token is in sessionStorage only: " + stored);
    expect(!page.url().includes(ADMIN_TOKEN), "no secret in the URL");
    await page.click("text=bob@example.com");
    await page.locator("#view-user").waitFor({ state: "visible" });
    await page.locator("#sessions-rows tr").first().waitFor();
    await shot(page, "10-token-user");
    await page.click("#sign-out");
    await page.locator("#view-signin").waitFor({ state: "visible" });
    expect((await page.evaluate(() => sessionStorage.length)) === 0, "sign-out forgets the token");

    step = "no CSP violation or script error on the way";
    expect(problems.length === 0, problems.join("\n"));
    console.log("admin journey: every step passed; screenshots in " + artifacts);
  } finally {
    if (browser) await browser.close();
    child.kill("SIGTERM");
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error("admin journey FAILED at step \"" + step + "\": " + (e && e.stack ? e.stack : e));
  if (problems.length) console.error(problems.join("\n"));
  process.exit(1);
});
