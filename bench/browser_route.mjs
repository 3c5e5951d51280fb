// Browser callers for bench/browser.py: in one Chromium (Debian's, driven by the pinned
// playwright-core of tests/browser), `reps` callers one after another open /call.html and say
// the fake microphone's WAV (it restarts for each caller). With mode "console" an agent logged
// in to the console (same Chromium, another context) sees each offer, accepts, hangs up; with
// mode "sip" a SIP agent (sipp, run by the harness) is rung instead and the caller stays
// `stay_ms` after the end of its speech.
// Prints one JSON line per caller: {"rep":N,"speech_end_at":EPOCH_MS,"offer_shown_at":EPOCH_MS|null}
// (speech_end_at = when getUserMedia resolved + `end_ms`, the end of speech in the WAV).
// Usage: node bench/browser_route.mjs CONFIG_JSON (base, wav, end_ms, mode, reps, user, password)
import { launch, openConsole, toneContext } from "../tests/browser/chromium.mjs";

const c = JSON.parse(process.argv[2] || "{}");
const reps = Number(c.reps || 1);
const browser = await launch(c.wav);
let code = 0;
try {
  let agent = null;
  if (c.mode === "console") {
    agent = await (await toneContext(browser)).newPage();
    await openConsole(agent, c.base, c.user, c.password);
  }
  for (let rep = 0; rep < reps; rep++) {
    const ctx = await browser.newContext();
    await ctx.addInitScript(() => {
      const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = async (constraints) => {
        const stream = await real(constraints);
        window.gumAt = Date.now();
        return stream;
      };
    });
    const page = await ctx.newPage();
    await page.goto(`${c.base}/call.html`);
    await page.click("#call");
    await page.waitForFunction(() => window.gumAt, null, { timeout: 10000 });
    const speechEnd = (await page.evaluate(() => window.gumAt)) + Number(c.end_ms);
    let shownAt = null;
    if (agent) {
      try {
        await agent.waitForFunction(() => window.humanlineConsole.offered, null, { timeout: 20000, polling: 10 });
        shownAt = await agent.evaluate(() => window.humanlineConsole.offered.shown_at);
        await agent.click("#accept");
        await agent.waitForFunction(() => window.humanlineConsole.status === "connected", null, { timeout: 15000 });
        await agent.click("#hangup");
      } catch (err) {
        console.error(`rep ${rep}: ${err.message || err}`);
      }
    } else {
      await page.waitForTimeout(Math.max(0, speechEnd + Number(c.stay_ms || 6000) - Date.now()));
    }
    console.log(JSON.stringify({ rep, speech_end_at: speechEnd, offer_shown_at: shownAt }));
    await page.click("#hangup").catch(() => {});
    await page.waitForTimeout(300);
    await ctx.close();
    // The agent is idle again before the next caller (the console shows the line empty).
    await new Promise((r) => setTimeout(r, Number(c.gap_ms || 1000)));
  }
} catch (err) {
  console.error(`route: ${err.stack || err}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
