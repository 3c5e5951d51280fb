// A supervisor (or an agent) at Humanline's live dashboard (/dashboard) in Debian's Chromium,
// for the tests: logs in through the login page and reports what they would see as JSON lines
// on stdout.
// Usage: node dashboard.mjs BASE_URL USER PASSWORD PHASE [REASON MIN]
//   watch    the dashboard after login; then waits (the page refreshes itself, no reload)
//            until the routes picture counts at least MIN routes for REASON (`any`: all)
//   refused  what someone without the role sees at /dashboard after logging in
import { launch } from "./chromium.mjs";

const [base, user, password, phase, reason = "keyword", min = "1"] = process.argv.slice(2);
if (!base || !user || !password || !phase) {
  console.error("usage: node dashboard.mjs BASE_URL USER PASSWORD PHASE [REASON MIN]");
  process.exit(2);
}
const t0 = Date.now();
const say = (o) => console.log(JSON.stringify({ ...o, t_ms: Date.now() - t0 }));
const browser = await launch();
let code = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  page.setDefaultTimeout(60000);
  await page.goto(`${base}/dashboard`);
  await page.waitForURL(/\/login/);
  say({ event: "login_page", url: page.url() });
  await page.fill("#name", user);
  await page.fill("#password", password);
  const landed = page.waitForResponse((r) => new URL(r.url()).pathname === "/dashboard");
  await page.click("button[type=submit]");
  const response = await landed;
  await page.waitForLoadState("domcontentloaded");

  if (phase === "watch") {
    await page.waitForFunction(() => Number(document.body.dataset.refreshed || 0) >= 1);
    const totals = () => page.$$eval("#routes .legend", (gs) => Object.fromEntries(gs.map((g) => [g.dataset.reason, Number(g.dataset.total)])));
    const total = async () => {
      const t = await totals();
      return reason === "any" ? Object.values(t).reduce((a, b) => a + b, 0) : (t[reason] || 0);
    };
    say({
      event: "page", url: page.url(), status: response.status(),
      calls: await page.getAttribute("#calls", "aria-label"),
      routes: await page.getAttribute("#routes", "aria-label"),
      total: await total(),
      pictures: await page.$$eval("main svg", (s) => s.map((e) => e.id)),
    });
    const want = Number(min);
    await page.waitForFunction(([r, n]) => {
      const gs = [...document.querySelectorAll("#routes .legend")].filter((g) => r === "any" || g.dataset.reason === r);
      return gs.reduce((sum, g) => sum + Number(g.dataset.total), 0) >= n;
    }, [reason, want], { timeout: 120000 });
    say({
      event: "routes", reason, total: await total(), totals: await totals(),
      bars: await page.$$eval("#routes rect.bar", (b) => b.reduce((n, e) => {
        n[e.dataset.reason] = (n[e.dataset.reason] || 0) + Number(e.dataset.count);
        return n;
      }, {})),
      label: await page.getAttribute("#routes", "aria-label"),
      time: await page.getAttribute("#time", "aria-label"),
      refreshes: await page.evaluate(() => Number(document.body.dataset.refreshed)),
      url: page.url(),
    });
  } else if (phase === "refused") {
    say({
      event: "refused", url: page.url(), status: response.status(),
      text: await page.textContent("body"),
      drawn: await page.$$eval("svg", (s) => s.length),
    });
  } else {
    throw new Error(`unknown phase ${phase}`);
  }
} catch (e) {
  say({ event: "error", message: String(e && e.stack || e) });
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
