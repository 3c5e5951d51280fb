// Many WebRTC calls at once for bench/browser.py: one Chromium page (Humanline's own caller
// page, for its origin) opens `calls` peer connections to POST /call, each sending the fake
// microphone (silence), and holds them `hold_s` seconds. Prints
//   {"event":"connected","calls":N,"connected":K,"setup_ms":...}
// once all are up (or after 60 s), then after the hold
//   {"event":"quality","connected":K,"still_connected":K2,"rx_pps_median":..,"rx_pps_min":..,
//    "jitter_ms_p95":..,"lost_pct":..}
// (packets per second each call received from Humanline over the hold; 50 is every packet).
// Usage: node bench/browser_load.mjs CONFIG_JSON (base, wav, calls, hold_s)
import { launch } from "../tests/browser/chromium.mjs";

const c = JSON.parse(process.argv[2] || "{}");
const browser = await launch(c.wav, { loop: true });
const say = (o) => console.log(JSON.stringify(o));
let code = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`page: ${m.text()}`));
  await page.goto(`${c.base}/call.html`);
  const setup = await page.evaluate(async (n) => {
    const t0 = performance.now();
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    window.calls = [];
    const one = async () => {
      const pc = new RTCPeerConnection();
      mic.getTracks().forEach((t) => pc.addTrack(t.clone(), mic));
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((done) => {
        if (pc.iceGatheringState === "complete") return done();
        const timer = setTimeout(done, 2000);
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") { clearTimeout(timer); done(); }
        });
      });
      const r = await fetch("/call", { method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
      if (r.status !== 201) { console.log(`POST /call: ${r.status} ${await r.text()}`); pc.close(); return; }
      const resource = r.headers.get("Location");
      await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
      window.calls.push({ pc, resource });
    };
    // A few at a time, like callers arriving (and within the server's per-second limit).
    for (let i = 0; i < n; i += 10) {
      await Promise.all(Array.from({ length: Math.min(10, n - i) }, one));
    }
    const deadline = performance.now() + 60000;
    while (performance.now() < deadline) {
      if (window.calls.every((x) => x.pc.connectionState === "connected")) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    return {
      connected: window.calls.filter((x) => x.pc.connectionState === "connected").length,
      setup_ms: Math.round(performance.now() - t0),
    };
  }, Number(c.calls));
  say({ event: "connected", calls: Number(c.calls), ...setup });
  const snapshot = () => page.evaluate(async () => {
    const out = [];
    for (const x of window.calls) {
      const s = { state: x.pc.connectionState };
      (await x.pc.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") {
          s.received = r.packetsReceived; s.lost = r.packetsLost; s.jitter = r.jitter;
        }
      });
      out.push(s);
    }
    return { at: performance.now(), calls: out };
  });
  await page.waitForTimeout(2000);
  const a = await snapshot();
  await page.waitForTimeout(Number(c.hold_s) * 1000);
  const b = await snapshot();
  const secs = (b.at - a.at) / 1000;
  const pps = b.calls.map((x, i) => ((x.received || 0) - (a.calls[i].received || 0)) / secs).sort((p, q) => p - q);
  const jitter = b.calls.map((x) => (x.jitter || 0) * 1000).sort((p, q) => p - q);
  const received = b.calls.reduce((s, x, i) => s + (x.received || 0) - (a.calls[i].received || 0), 0);
  const lost = b.calls.reduce((s, x, i) => s + (x.lost || 0) - (a.calls[i].lost || 0), 0);
  const q = (v, p) => (v.length ? v[Math.round((p / 100) * (v.length - 1))] : null);
  say({
    event: "quality",
    connected: setup.connected,
    still_connected: b.calls.filter((x) => x.state === "connected").length,
    rx_pps_median: q(pps, 50),
    rx_pps_min: pps.length ? pps[0] : null,
    jitter_ms_p95: q(jitter, 95),
    lost_pct: received + lost > 0 ? (100 * lost) / (received + lost) : null,
  });
  await page.evaluate(async () => {
    await Promise.all(window.calls.map((x) => fetch(x.resource, { method: "DELETE" }).catch(() => {})));
    window.calls.forEach((x) => x.pc.close());
  });
} catch (err) {
  console.error(`load: ${err.stack || err}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
