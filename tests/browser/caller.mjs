// A browser caller for Humanline's tests: opens the caller page in Debian's Chromium with a
// fake microphone playing WAV once, presses Call, and reports what a person at the browser
// would notice, as JSON lines on stdout:
//   {"event":"status","status":"connected","t_ms":...}
//   {"event":"stats","t_ms":...,"inbound":{"packetsReceived":..,"totalAudioEnergy":..,"audioLevel":..},
//    "outbound":{"packetsSent":..}}
//   {"event":"ended","t_ms":...,"status":"...","text":"..."}
// Usage: node caller.mjs URL WAV SECONDS [hangup|stay]
// After SECONDS it presses Hang up (default) or just closes the browser (stay: the server is
// expected to notice the connection going away). Exits non-zero if the page never connects.
import { launch } from "./chromium.mjs";

const [url, wav, seconds = "30", ending = "hangup"] = process.argv.slice(2);
if (!url || !wav) {
  console.error("usage: node caller.mjs URL WAV SECONDS [hangup|stay]");
  process.exit(2);
}
const t0 = Date.now();
const say = (o) => console.log(JSON.stringify({ ...o, t_ms: Date.now() - t0 }));
const browser = await launch(wav);
let code = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  await page.goto(url);
  const promise = await page.textContent("#promise");
  say({ event: "page", promise: promise.replace(/\s+/g, " ").trim() });
  await page.click("#call");
  let last = "";
  const deadline = Date.now() + Number(seconds) * 1000;
  let connected = false;
  while (Date.now() < deadline) {
    const s = await page.evaluate(async () => {
      const h = window.humanline;
      const out = { status: h.status, text: document.getElementById("status").textContent };
      if (h.pc) {
        const stats = await h.pc.getStats();
        stats.forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "audio") {
            out.inbound = {
              packetsReceived: r.packetsReceived,
              totalAudioEnergy: r.totalAudioEnergy,
              audioLevel: r.audioLevel,
            };
          }
          if (r.type === "outbound-rtp" && r.kind === "audio") {
            out.outbound = { packetsSent: r.packetsSent };
          }
        });
      }
      return out;
    });
    if (s.status !== last) {
      say({ event: "status", status: s.status, text: s.text });
      last = s.status;
    }
    connected ||= s.status === "connected";
    if (s.status === "ended") break;
    say({ event: "stats", inbound: s.inbound || null, outbound: s.outbound || null });
    await page.waitForTimeout(500);
  }
  if (!connected) code = 1;
  if (ending === "hangup" && last !== "ended") {
    await page.click("#hangup");
    await page.waitForTimeout(500);
  }
  say({ event: "ended", status: last });
} catch (err) {
  console.error(`caller: ${err.stack || err}`);
  code = 1;
} finally {
  // A fresh, empty profile each time: playwright makes and removes it.
  await browser.close();
}
process.exit(code);
