// An agent who answers in Humanline's console, and optionally a browser caller, in ONE
// Chromium process (two contexts: one browser at a time on a small machine). Reports what
// the people at the two browsers would notice, as JSON lines on stdout:
//   {"event":"console_ready","t_ms":...}
//   {"event":"offer","t_ms":...,"call":..,"reason":..,"language":..,"waiting_s":..,"said":[..],"shown":"..."}
//   {"event":"agent_connected","t_ms":...}
//   {"event":"stats","page":"agent"|"caller","t_ms":...,"inbound":{"totalAudioEnergy":..,"totalSamplesDuration":..,"packetsReceived":..},"outbound":{"packetsSent":..}}
//   {"event":"agent_hung_up","t_ms":...}
//   {"event":"caller_status","t_ms":...,"status":"connected"|"ended"|...}
// Usage: node desk.mjs CONFIG_JSON, with
//   base      http://127.0.0.1:PORT
//   wav       the fake microphone (the caller's voice; the agent speaks a 440 Hz tone)
//   user, password   the agent's login
//   caller    true: a browser caller calls /call.html too (false: a SIP caller is expected)
//   talk_s    seconds to stay connected before the agent hangs up
//   after_s   seconds to listen on the caller's side after that
//   timeout_s most seconds to wait for the offer
//   offers    how many offers to take, one after another (default 1; the benchmark uses more)
//   decline   true: decline the first offer instead of accepting it
//   callbacks true: the agent is a supervisor; report the console's callback tables once a
//             promise is listed (or after 10 s):
//             {"event":"callbacks","promised":["id number state ...", ..],"escalated":[..]}
// Exits non-zero if the console never gets an offer or its call never connects.
import { launch, openConsole, toneContext } from "./chromium.mjs";

const config = JSON.parse(process.argv[2] || "{}");
const {
  base,
  wav,
  user,
  password,
  caller = false,
  talk_s = 8,
  after_s = 8,
  timeout_s = 60,
  decline = false,
} = config;
if (!base || !wav || !user || !password) {
  console.error("usage: node desk.mjs '{\"base\":..,\"wav\":..,\"user\":..,\"password\":..}'");
  process.exit(2);
}
const t0 = Date.now();
const say = (o) => console.log(JSON.stringify({ ...o, t_ms: Date.now() - t0 }));
const browser = await launch(wav);

// What a page's peer connection received and sent so far.
async function stats(page, key) {
  return page.evaluate(async (key) => {
    const pc = window[key] && window[key].pc;
    const out = { status: window[key] && window[key].status };
    if (!pc) return out;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        out.inbound = {
          totalAudioEnergy: r.totalAudioEnergy,
          totalSamplesDuration: r.totalSamplesDuration,
          packetsReceived: r.packetsReceived,
          audioLevel: r.audioLevel,
        };
      }
      if (r.type === "outbound-rtp" && r.kind === "audio") out.outbound = { packetsSent: r.packetsSent };
    });
    return out;
  }, key);
}

let code = 0;
try {
  // The agent's voice: a steady tone, so the caller's side can tell it from the IVR's speech.
  const agentContext = await toneContext(browser);
  const agent = await agentContext.newPage();
  agent.on("console", (m) => console.error(`agent page: ${m.text()}`));
  await openConsole(agent, base, user, password);
  say({ event: "console_ready" });
  if (config.callbacks) {
    await agent
      .waitForFunction(() => document.querySelectorAll("#promised tr").length > 0, null, { timeout: 10000 })
      .catch(() => {});
    const tables = await agent.evaluate(() => {
      const rows = (id) =>
        [...document.querySelectorAll(`#${id} tr`)].map((tr) => tr.innerText.replace(/\s+/g, " ").trim());
      return {
        shown: !document.getElementById("supervisor").hidden,
        promised: rows("promised"),
        escalated: rows("escalated"),
      };
    });
    say({ event: "callbacks", ...tables });
  }

  let callerPage = null;
  if (caller) {
    const callerContext = await browser.newContext();
    callerPage = await callerContext.newPage();
    callerPage.on("console", (m) => console.error(`caller page: ${m.text()}`));
    await callerPage.goto(`${base}/call.html`);
    await callerPage.click("#call");
    say({ event: "caller_calling" });
  }

  const sample = async () => {
    say({ event: "stats", page: "agent", ...(await stats(agent, "humanlineConsole")) });
    if (callerPage) say({ event: "stats", page: "caller", ...(await stats(callerPage, "humanline")) });
  };

  const offers = Number(config.offers || 1);
  for (let n = 0; n < offers; n++) {
    // Wait for the offer, as the agent sees it.
    const deadline = Date.now() + timeout_s * 1000;
    let offer = null;
    while (Date.now() < deadline) {
      offer = await agent.evaluate(() => {
        const o = window.humanlineConsole.offered;
        if (!o || !document.getElementById("offer").classList.contains("shown")) return null;
        return { ...o, shown: document.getElementById("offer-said").textContent };
      });
      if (offer) break;
      if (callerPage) await sample();
      await agent.waitForTimeout(50);
    }
    if (!offer) {
      say({ event: "no_offer" });
      code = 1;
      break;
    }
    say({ event: "offer", ...offer });
    if (decline && n === 0) {
      await agent.click("#decline");
      say({ event: "declined", call: offer.call });
      continue;
    }
    await agent.click("#accept");
    await agent.waitForFunction(() => window.humanlineConsole.status === "connected", null, {
      timeout: 15000,
    });
    say({ event: "agent_connected", call: offer.call });
    const talkUntil = Date.now() + talk_s * 1000;
    while (Date.now() < talkUntil) {
      await sample();
      await agent.waitForTimeout(250);
    }
    await sample();
    if (callerPage) {
      // The caller stops talking and listens: what they hear now is Humanline's.
      await callerPage.evaluate(() => window.humanline.pc.getSenders().forEach((s) => s.track && (s.track.enabled = false)));
    }
    await agent.click("#hangup");
    say({ event: "agent_hung_up", call: offer.call });
    const afterUntil = Date.now() + after_s * 1000;
    while (Date.now() < afterUntil) {
      await sample();
      await agent.waitForTimeout(250);
    }
  }
  if (callerPage) {
    const status = await callerPage.evaluate(() => window.humanline.status);
    say({ event: "caller_status", status });
    if (status !== "ended") {
      await callerPage.click("#hangup");
      await callerPage.waitForTimeout(500);
    }
  }
} catch (err) {
  console.error(`desk: ${err.stack || err}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
