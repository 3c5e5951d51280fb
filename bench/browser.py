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
import argparse, datetime, json, math, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/humanline")
SIP, HTTP = 5076, 8076
SIP_AGENT = 5097
PHRASES = [
    "I want to talk to a human",
    "can I speak to an agent please",
    "operator",
    "let me talk to a real person",
]


def pct(v, p):
    v = sorted(v)
    return v[round(p / 100 * (len(v) - 1))] if v else None


def stamps(log, kind):
    """Timestamps of messages in a sipp -trace_msg log whose first line starts with `kind`."""
    out, ts = [], None
    for line in open(log, errors="replace").read().splitlines():
        m = re.match(r"^-{10,} (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+)", line)
        if m:
            ts = datetime.datetime.fromisoformat(f"{m.group(1)} {m.group(2)}").timestamp()
            continue
        if ts is not None and line.startswith(kind):
            out.append(ts)
            ts = None
    return out


def speech_end_ms(wav):
    """Last 20 ms frame within 35 dB of the loudest (16-bit mono WAV, header skipped)."""
    data = open(wav, "rb").read()
    rate = int.from_bytes(data[24:28], "little")
    pos = data.find(b"data") + 8
    pcm = [int.from_bytes(data[i:i + 2], "little", signed=True) for i in range(pos, len(data) - 1, 2)]
    n = rate // 50
    rms = [math.sqrt(sum(s * s for s in pcm[i:i + n]) / n) for i in range(0, len(pcm) - n, n)]
    floor = max(rms) * 10 ** (-35 / 20)
    return (max(i for i, r in enumerate(rms) if r >= floor) + 1) * 20


def make_wav(work, i, text):
    raw, wav = os.path.join(work, f"u{i}.espeak.wav"), os.path.join(work, f"u{i}.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "145", "-w", raw, text], check=True)
    # 2 s of silence first (the connection comes up), 4 s after; 48 kHz like a microphone.
    subprocess.run(["sox", raw, "-r", "48000", "-c", "1", "-b", "16", wav, "pad", "2", "4"], check=True)
    return wav, speech_end_ms(wav)


class Server:
    def __init__(self, work, name, agents=(), config=None):
        self.log_path = os.path.join(work, f"server-{name}.log")
        data = os.path.join(work, f"data-{name}")
        args = [BIN, "serve", "--prompts", os.path.join(ROOT, "prompts"), "--model",
                os.path.join(ROOT, "models/ggml-tiny.en.bin"), "--sip-listen", f"127.0.0.1:{SIP}",
                "--http-listen", f"127.0.0.1:{HTTP}", "--rtp-ports", "30000-39999", "--data-dir", data]
        for a in agents:
            args += ["--agent", a]
        if config:
            path = os.path.join(work, f"server-{name}.toml")
            open(path, "w").write(config)
            args += ["--config", path]
        self.args = args
        self.proc = subprocess.Popen(args, stderr=open(self.log_path, "w"),
                                     env={**os.environ, "HUMANLINE_LOG": "info,rsipstack=warn"})
        for _ in range(600):
            if "humanline: ready" in open(self.log_path, errors="replace").read():
                return
            time.sleep(0.1)
        raise SystemExit(f"server did not start: {self.log_path}")

    def add_user(self, name, password):
        subprocess.run(self.args[:1] + ["users", "add", name, "--role", "agent", "--data-dir",
                                        self.args[self.args.index("--data-dir") + 1]],
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
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def node(script, config, timeout):
    r = subprocess.run(["node", os.path.join(ROOT, "bench", script), json.dumps(config)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def route(work, utts, reps):
    out = {}
    # The console: an agent answering in the browser.
    server = Server(work, "console")
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
    # The same callers to a SIP agent (sipp answers; its message log has the INVITE times).
    agent_dir = os.path.join(work, "sip-agent")
    os.makedirs(agent_dir)
    server = Server(work, "sip", agents=[f"sip:agent@127.0.0.1:{SIP_AGENT}"])
    agent = subprocess.Popen(["sipp", "-sf", os.path.join(ROOT, "tests/sipp/agent_answers.xml"), "-i", "127.0.0.1",
                              "-p", str(SIP_AGENT), "-mp", "17300", "-m", str(len(utts) * reps), "-trace_msg",
                              "-nostdin", "-bg"], cwd=agent_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sip, ends = [], []
    try:
        time.sleep(1.5)
        for wav, end_ms in utts:
            ends += [r["speech_end_at"] / 1000 for r in
                     node("browser_route.mjs", {"base": f"http://127.0.0.1:{HTTP}", "wav": wav, "end_ms": end_ms,
                                                "mode": "sip", "reps": reps, "stay_ms": 5000}, 300)]
        logs = [os.path.join(agent_dir, f) for f in os.listdir(agent_dir) if f.endswith("_messages.log")]
        invites = stamps(logs[0], "INVITE") if logs else []
        for end in ends:
            after = [t for t in invites if end - 2 < t < end + 15]
            if after:
                sip.append((after[0] - end) * 1000)
                print(f"  sip: {sip[-1]:.0f} ms", file=sys.stderr)
            else:
                print("  sip: no INVITE", file=sys.stderr)
    finally:
        server.stop()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
    for name, v in (("console_offer", console), ("sip_invite", sip)):
        out[name] = {"callers": len(utts) * reps, "routed": len(v), "median_ms": pct(v, 50),
                     "p95_ms": pct(v, 95), "max_ms": max(v) if v else None, "all_ms": [round(x) for x in v]}
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
        server = Server(work, f"mem-{kind}", config=LOAD_CONFIG)
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
        server = Server(work, f"load-{n}", config=LOAD_CONFIG)
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
                   "load_avg_1m": os.getloadavg()[0]}
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
              "load_avg_at_start": os.getloadavg()}
    try:
        if a.only != "load":
            utts = [make_wav(work, i, t) for i, t in enumerate(PHRASES)]
            report["route"] = route(work, utts, a.reps)
        if a.only != "route":
            silence = os.path.join(work, "silence.wav")
            subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", silence, "trim", "0", "5"], check=True)
            report["load"] = load(work, [int(s) for s in a.steps.split(",")], a.memory_calls, silence)
    finally:
        report["load_avg_at_end"] = os.getloadavg()
        name = "browser.json" if not a.only else f"browser-{a.only}.json"
        os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
        json.dump(report, open(os.path.join(ROOT, "bench/results", name), "w"), indent=2)
        print(json.dumps(report, indent=2))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
