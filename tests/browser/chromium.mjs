// Debian's Chromium as the browser tests and benchmarks drive it: headless, with the flags
// that work on this machine (see ../shared/notes/test-peers.md), a fake microphone playing a
// WAV file, and the agent console's login. Shared by caller.mjs, desk.mjs, dashboard.mjs,
// operator.mjs and bench/browser_{route,load}.mjs, so that every browser Humanline is tested
// and measured with is the same.
import { chromium } from "playwright-core";

// Chromium with a fake microphone playing `wav`: once (`loop: false`, each new capture
// starts it again) or over and over. Without `wav` (a page that records nothing) the fake
// microphone is Chromium's own beep.
export function launch(wav, { loop = false } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      ...(wav ? [`--use-file-for-fake-audio-capture=${wav}${loop ? "" : "%noloop"}`] : []),
      "--autoplay-policy=no-user-gesture-required",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--allow-loopback-in-peer-connection",
    ],
  });
}

// A browser context whose microphone is a steady tone (the agent's voice), so the other side
// can tell it from Humanline's speech.
export async function toneContext(browser, frequency = 440) {
  const context = await browser.newContext();
  await context.addInitScript((hz) => {
    navigator.mediaDevices.getUserMedia = async () => {
      const ctx = new AudioContext();
      const osc = ctx.createOscillator();
      osc.frequency.value = hz;
      const gain = ctx.createGain();
      gain.gain.value = 0.3;
      const dest = ctx.createMediaStreamDestination();
      osc.connect(gain).connect(dest);
      osc.start();
      return dest.stream;
    };
  }, frequency);
  return context;
}

// Logs `user` in at /login and waits until their console answers calls in this browser.
export async function openConsole(page, base, user, password) {
  await page.goto(`${base}/login`);
  await page.fill("#name", user);
  await page.fill("#password", password);
  await page.press("#password", "Enter");
  await page.waitForURL("**/console", { timeout: 15000 });
  await page.waitForFunction(
    () => (document.getElementById("state").textContent || "").includes("answering in the browser"),
    null,
    { timeout: 15000 },
  );
}
