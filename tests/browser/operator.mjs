// An operator at Humanline's flow page (/operator) in Debian's Chromium, for the tests: logs in
// through the login page and does one part of an operator's work, reporting what they would
// see as JSON lines on stdout.
// Usage: node operator.mjs BASE_URL USER PASSWORD PHASE [TEXT]
//   publish   an invalid timer -> its error at the field, not published; fixed; the English
//             greeting changed to TEXT, checked (recorded again), published; "try it" twice
//   rollback  rolls back to the oldest version
//   refused   (a user without the operator role) changes the greeting and presses Publish
//   hear      "try it" with the WAV file TEXT: what Humanline heard, and both flows' decisions
//   record    the same through the microphone (Record, Stop), Chromium's fake one playing TEXT
//   upload    the WAV file TEXT as the English greeting's recording: checked, and it plays;
//             then discarded again (uploaded by mistake)
import { launch } from "./chromium.mjs";

const [base, user, password, phase, text = ""] = process.argv.slice(2);
if (!base || !user || !password || !phase) {
  console.error("usage: node operator.mjs BASE_URL USER PASSWORD PHASE [TEXT]");
  process.exit(2);
}
const t0 = Date.now();
const say = (o) => console.log(JSON.stringify({ ...o, t_ms: Date.now() - t0 }));
// Only `record` speaks into the microphone (the WAV file TEXT).
const browser = await launch(phase === "record" ? text : undefined);
const field = (file, key) => `.field[data-file="${file}"][data-key="${key}"]`;
let code = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  page.setDefaultTimeout(60000);
  await page.goto(`${base}/operator`);
  await page.waitForURL(/\/login/);
  await page.fill("#name", user);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
  await page.waitForURL(/\/operator$/);
  const greeting = field("en.toml", "prompts.greeting.text");
  await page.waitForSelector(`${greeting} textarea`);
  say({ event: "page", running: await page.textContent("#running") });

  // Waits for the status line to settle on a result, and reports it.
  const outcome = async (event) => {
    await page.waitForFunction(() => {
      const r = document.getElementById("result");
      return r.textContent && !r.textContent.endsWith("…");
    });
    const r = await page.$eval("#result", (e) => ({ text: e.textContent, ok: e.className === "ok" }));
    say({ event, ...r });
    return r;
  };

  if (phase === "publish") {
    const timer = field("humanline.toml", "timers.no_input_ms");
    await page.fill(`${timer} input`, "10");
    await page.click("#publish");
    const refused = await outcome("invalid_publish");
    const problem = await page.textContent(`${timer} .problem`);
    say({ event: "field_problem", field: "timers.no_input_ms", problem, published: refused.ok });
    await page.fill(`${timer} input`, "7000");
    await page.fill(`${greeting} textarea`, text);
    await page.click("#check");
    const checked = await outcome("checked");
    const audio = await page.$eval(`${greeting} audio`, (a) => a.src);
    // The recording the check made plays in the page (a WAV it can decode).
    const listen = await page.evaluate(async (src) => {
      const r = await fetch(src);
      const bytes = new Uint8Array(await r.arrayBuffer());
      return { status: r.status, type: r.headers.get("content-type"), riff: String.fromCharCode(...bytes.slice(0, 4)), bytes: bytes.length };
    }, audio);
    say({ event: "listen", src: audio, ...listen, problem: await page.textContent(`${timer} .problem`), checked: checked.ok });
    await page.fill("#message", "a friendlier greeting");
    await page.click("#publish");
    await outcome("published");
    await page.waitForFunction((t) => {
      const a = document.querySelector('.field[data-file="en.toml"][data-key="prompts.greeting.text"] textarea');
      return a && a.value === t;
    }, text);
    for (const sentence of ["I want a real person", "I want to pay my bill"]) {
      await page.fill("#try-text", sentence);
      await page.selectOption("#try-language", "en");
      await page.$eval("#try-published", (e) => { e.textContent = ""; });
      await page.click("#try");
      await page.waitForFunction(() => document.getElementById("try-published").textContent !== "");
      say({
        event: "try", text: sentence,
        published: await page.textContent("#try-published"),
        draft: await page.textContent("#try-draft"),
        escape: await page.$$eval("#try-published .escape", (e) => e.length > 0),
      });
    }
  } else if (phase === "rollback") {
    const buttons = await page.$$("button.rollback");
    const oldest = buttons[buttons.length - 1];
    say({ event: "versions", count: buttons.length, to: await oldest.getAttribute("data-version") });
    await oldest.click();
    await outcome("rolled_back");
    say({ event: "greeting", text: await page.$eval(`${greeting} textarea`, (a) => a.value) });
  } else if (phase === "hear" || phase === "record") {
    await page.selectOption("#try-language", "en");
    if (phase === "hear") await page.setInputFiles("#try-audio", text);
    else {
      await page.click("#try-record");
      await page.waitForFunction(() => document.getElementById("try-heard").textContent.startsWith("recording"));
      await page.waitForTimeout(5000);
      await page.click("#try-record");
    }
    await page.waitForFunction(() => document.getElementById("try-heard").textContent.startsWith("Humanline heard")
      || document.querySelector("#try-published .problem"), null, { timeout: 90000 });
    await page.waitForFunction(() => document.getElementById("try-published").textContent !== "");
    say({
      event: "heard", heard: await page.textContent("#try-heard"),
      published: await page.textContent("#try-published"),
      draft: await page.textContent("#try-draft"),
      escape: await page.$$eval("#try-published .escape", (e) => e.length > 0),
    });
  } else if (phase === "upload") {
    await page.setInputFiles(`${greeting} input.upload`, text);
    const checked = await outcome("uploaded");
    const audio = await page.$eval(`${greeting} audio`, (a) => a.src);
    const listen = await page.evaluate(async (src) => {
      const r = await fetch(src);
      const bytes = new Uint8Array(await r.arrayBuffer());
      const view = new DataView(bytes.buffer);
      return { status: r.status, riff: String.fromCharCode(...bytes.slice(0, 4)), rate: view.getUint32(24, true), channels: view.getUint16(22, true) };
    }, audio);
    say({ event: "listen", src: audio, ...listen, checked: checked.ok, result: checked.text });
    // Uploaded by mistake: discarded before publishing.
    const waiting = () => page.evaluate(async () => (await (await fetch("/api/flow")).json()).uploads);
    const before = await waiting();
    const discard = `${greeting} button.discard-upload`;
    const shown = await page.isVisible(discard);
    await page.$eval("#result", (e) => { e.textContent = ""; });
    await page.click(discard);
    const discarded = await outcome("discard_result");
    say({
      event: "discarded", ...discarded, shown, before, after: await waiting(),
      still_shown: await page.isVisible(discard),
      src: await page.$eval(`${greeting} audio`, (a) => a.src),
    });
  } else if (phase === "refused") {
    await page.fill(`${greeting} textarea`, text);
    await page.click("#publish");
    await outcome("publish_as_" + user);
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
