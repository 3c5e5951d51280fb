#!/usr/bin/env python3
"""The browser benchmark (issue 12), all on 127.0.0.1 with Debian's Chromium:

1. route: the end of a browser caller's speech to the offer appearing in a browser agent's
   console (p50/p95), beside the same caller (same recordings, same Chromium) reaching a SIP
   agent's INVITE (sipp's message log). The speech end is when the caller page's
   getUserMedia resolved plus the end of speech in the recording (bench/browser_route.mjs);
2. memory: server RSS with N WebRTC calls held open (bench/browser_load.mjs) against a fresh
   idle server, beside N SIP calls (sipp) in the same run;
3. capacity: for each step of WebRTC calls at once, whether they all connect and keep
   receiving Humanline's audio (packets per second per call, jitter, loss at the browser),
   and the server's CPU.

Writes bench/results/browser.json. Usage:
  bench/browser.py [--reps 4] [--steps 25,50,100] [--memory-calls 50] [--only route|load]
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cbpeers import BIN, ROOT, Server, loadavg, pct, sipp_stamps, speech_end_ms, wav_samples  # noqa: E402

SIP, HTTP = 5076, 8076
SIP_AGENT = 5097
PHRASES = [
    "I want to talk to a human",
    "can I speak to an agent please",
    "operator",
    "let me talk to a real person",
]


def make_wav(work, i, text):
    raw, wav = os.path.join(work, f"u{i}.espeak.wav"), os.path.join(work, f"u{i}.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "145", "-w", raw, text], check=True)
    # 2 s of silence first (the connection comes up), 4 s after; 48 kHz like a microphone.
    subprocess.run(["sox", raw, "-r", "48000", "-c", "1", "-b", "16", wav, "pad", "2", "4"], check=True)
    return wav, speech_end_ms(*wav_samples(wav))


class BrowserServer(Server):
    """`humanline serve` on this benchmark's ports, each run with its own data, ready, and
    what the benchmark reads of it: memory, CPU time, calls in progress."""

    def __init__(self, work, name, agents=(), config=None):
        path = None
        if config:
            path = os.path.join(work, f"server-{name}.toml")
            open(path, "w").write(config)
        super().__init__(work, name, SIP, HTTP, "30000-39999", config=path, agents=agents,
                         data=f"data-{name}", log_filter="info,rsipstack=warn")
        self.wait_ready()

    def add_user(self, name, password):
        subprocess.run([BIN, "users", "add", name, "--role", "agent", "--data-dir", self.data_dir],
                       input=password.encode(), check=True, stdout=subprocess.DEVNULL)

    def rss_kb(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def active_calls(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/metrics", timeout=5).read().decode()
        m = re.search(r"^humanline_active_calls (\S+)", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        self.kill()

    def route_reasons(self):
        """How the callers were routed (`keyword`, or `speech_unavailable` when recognition fell
        behind: the latency then is the 3 s fallback, not the words)."""
        out = {}
        for m in re.finditer(r'route to a person reason="?([a-z_]+)', open(self.log_path, errors="replace").read()):
            out[m.group(1)] = out.get(m.group(1), 0) + 1
        return out


def node(script, config, timeout):
    r = subprocess.run(["node", os.path.join(ROOT, "bench", script), json.dumps(config)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def route(work, utts, reps):
    out = {}
    # The console: an agent answering in the browser.
    server = BrowserServer(work, "console")
    server.add_user("ann", "ann-password-1")
    console = []
    try:
        for wav, end_ms in utts:
            for r in node("browser_route.mjs", {"base": f"http://127.0.0.1:{HTTP}", "wav": wav, "end_ms": end_ms,
                                                "mode": "console", "reps": reps, "user": "ann",
                                                "password": "ann-password-1"}, 300):
                if r.get("offer_shown_at"):
                    console.append(r["offer_shown_at"] - r["speech_end_at"])
                    print(f"  console: {console[-1]:.0f} ms", file=sys.stderr)
                else:
                    print(f"  console: no offer ({r})", file=sys.stderr)
    finally:
        server.stop()
    reasons = {"console_offer": server.route_reasons()}
    # The same callers to a SIP agent (sipp answers; its message log has the INVITE times).
    agent_dir = os.path.join(work, "sip-agent")
    os.makedirs(agent_dir)
    server = BrowserServer(work, "sip", agents=[f"sip:agent@127.0.0.1:{SIP_AGENT}"])
    # Not -bg: the agent stays this script's own process, stopped by its id at the end.
    agent = subprocess.Popen(["sipp", "-sf", os.path.join(ROOT, "tests/sipp/agent_answers.xml"), "-i", "127.0.0.1",
                              "-p", str(SIP_AGENT), "-mp", "17300", "-m", str(len(utts) * reps), "-trace_msg",
                              "-nostdin"], cwd=agent_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    sip, ends = [], []
    try:
        time.sleep(1.5)
        for wav, end_ms in utts:
            ends += [r["speech_end_at"] / 1000 for r in
                     node("browser_route.mjs", {"base": f"http://127.0.0.1:{HTTP}", "wav": wav, "end_ms": end_ms,
                                                "mode": "sip", "reps": reps, "stay_ms": 5000}, 300)]
        logs = [os.path.join(agent_dir, f) for f in os.listdir(agent_dir) if f.endswith("_messages.log")]
        invites = [t for t, _ in sipp_stamps(logs[0], "INVITE")] if logs else []
        for end in ends:
            after = [t for t in invites if end - 2 < t < end + 15]
            if after:
                sip.append((after[0] - end) * 1000)
                print(f"  sip: {sip[-1]:.0f} ms", file=sys.stderr)
            else:
                print("  sip: no INVITE", file=sys.stderr)
    finally:
        server.stop()
        agent.kill()
        agent.wait()
    reasons["sip_invite"] = server.route_reasons()
    for name, v in (("console_offer", console), ("sip_invite", sip)):
        v = [round(x) for x in v]
        out[name] = {"callers": len(utts) * reps, "routed": len(v), "median_ms": pct(v, 50),
                     "p95_ms": pct(v, 95), "max_ms": max(v) if v else None, "all_ms": v,
                     "route_reasons": reasons[name]}
    return out


LOAD_CONFIG = """[browser]
max_calls = 1000
max_new_calls_per_second = 1000
max_calls_per_client = 1000
max_new_calls_per_second_per_client = 1000
[admission]
max_calls = 2000
max_new_calls_per_second = 1000
"""


def load(work, steps, memory_calls, silence):
    out = {"webrtc_steps": []}
    base = f"http://127.0.0.1:{HTTP}"
    # Memory: a fresh server idle, then N WebRTC calls held; the same for SIP (sipp).
    for kind in ("webrtc", "sip"):
        server = BrowserServer(work, f"mem-{kind}", config=LOAD_CONFIG)
        try:
            time.sleep(2)
            idle = server.rss_kb()
            if kind == "webrtc":
                proc = subprocess.Popen(["node", os.path.join(ROOT, "bench/browser_load.mjs"),
                                         json.dumps({"base": base, "wav": silence, "calls": memory_calls, "hold_s": 10})],
                                        stdout=subprocess.PIPE, text=True)
                first = proc.stdout.readline()
                time.sleep(4)
            else:
                proc = subprocess.Popen(["sipp", "-sn", "uac", f"127.0.0.1:{SIP}", "-i", "127.0.0.1", "-p", "5066",
                                         "-mp", "16300", "-r", "20", "-m", str(memory_calls), "-d", "20000", "-nostdin"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(memory_calls / 20 + 5)
                first = ""
            active = server.active_calls()
            busy = server.rss_kb()
            proc.wait(timeout=120)
            per = (busy - idle) / active if active else None
            out[f"memory_{kind}"] = {"idle_rss_kb": idle, "active_calls": active, "rss_kb": busy,
                                     "kb_per_call": round(per, 1) if per else None, "setup": first.strip()}
            print(f"  memory {kind}: {out[f'memory_{kind}']}", file=sys.stderr)
        finally:
            server.stop()
    # Capacity: each step on a fresh server.
    for n in steps:
        server = BrowserServer(work, f"load-{n}", config=LOAD_CONFIG)
        try:
            proc = subprocess.Popen(["node", os.path.join(ROOT, "bench/browser_load.mjs"),
                                     json.dumps({"base": base, "wav": silence, "calls": n, "hold_s": 10})],
                                    stdout=subprocess.PIPE, text=True)
            connected = json.loads(proc.stdout.readline() or "{}")
            cpu0, t0 = server.cpu_s(), time.time()
            quality = json.loads(proc.stdout.readline() or "{}")
            cpu = (server.cpu_s() - cpu0) / (time.time() - t0)
            proc.wait(timeout=120)
            row = {"calls": n, **{k: v for k, v in connected.items() if k != "event"},
                   **{k: v for k, v in quality.items() if k != "event"}, "server_cpu_cores": round(cpu, 2),
                   "load_avg": loadavg()}
            out["webrtc_steps"].append(row)
            print(f"  load: {row}", file=sys.stderr)
        finally:
            server.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--steps", default="25,50,100")
    ap.add_argument("--memory-calls", type=int, default=50)
    ap.add_argument("--only", choices=["route", "load"])
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    report = {"command": "bench/browser.py " + " ".join(sys.argv[1:]), "machine_cores": os.cpu_count(),
              "load_avg_at_start": loadavg()}
    try:
        if a.only != "load":
            utts = [make_wav(work, i, t) for i, t in enumerate(PHRASES)]
            report["route"] = route(work, utts, a.reps)
        if a.only != "route":
            silence = os.path.join(work, "silence.wav")
            subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", silence, "trim", "0", "5"], check=True)
            report["load"] = load(work, [int(s) for s in a.steps.split(",")], a.memory_calls, silence)
    finally:
        report["load_avg_at_end"] = loadavg()
        name = "browser.json" if not a.only else f"browser-{a.only}.json"
        os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
        json.dump(report, open(os.path.join(ROOT, "bench/results", name), "w"), indent=2)
        print(json.dumps(report, indent=2))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
