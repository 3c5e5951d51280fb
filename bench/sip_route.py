#!/usr/bin/env python3
"""Time from the end of the caller's speech to the agent's INVITE on the wire, over real SIP.

A sipp caller streams each escape utterance of the corpus (bench/corpus, from
scripts/gen-speech-corpus.py) as PCMU to `humanline serve`; a sipp agent answers. The speech end
on the wire is the caller's ACK time plus the end of speech in the recording (the RTP stream
starts with the ACK); the INVITE time is when the agent's sipp logged it. Runs the server twice:
deciding on partial transcripts (Humanline) and deciding only at the end of speech
(--no-partials, the baseline). Writes bench/results/sip_route.json.

Usage: bench/sip_route.py [--every N]
"""
import argparse, datetime, json, math, os, re, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/humanline")


def stamps(log, kind):
    """Timestamps of messages in a sipp -trace_msg log whose first line starts with `kind`."""
    out, ts, lines = [], None, open(log, errors="replace").read().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^-{10,} (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d+)", line)
        if m:
            ts = datetime.datetime.fromisoformat(f"{m.group(1)} {m.group(2)}").timestamp()
            continue
        if ts is not None and line.startswith(kind):
            out.append(ts)
            ts = None
    return out


def speech_end_ms(pcm):
    frames = [pcm[i:i + 160] for i in range(0, len(pcm), 160)]
    rms = [math.sqrt(sum(s * s for s in f) / len(f)) for f in frames if f]
    peak = max(rms) if rms else 0
    if peak <= 0:
        return 0
    floor = peak * 10 ** (-35 / 20)
    last = max(i for i, r in enumerate(rms) if r >= floor)
    return (last + 1) * 20


def mulaw_decode(b):
    b = ~b & 0xFF
    sign, exp, mant = b & 0x80, (b >> 4) & 7, b & 0x0F
    s = ((mant << 3) + 0x84) << exp
    s -= 0x84
    return -s if sign else s


def pct(v, p):
    v = sorted(v)
    return v[round(p / 100 * (len(v) - 1))] if v else None


def run_mode(mode, utts, work):
    log = open(os.path.join(work, f"server-{mode}.log"), "w")
    args = [BIN, "serve", "--prompts", os.path.join(ROOT, "prompts"), "--model",
            os.path.join(ROOT, "models/ggml-tiny.en.bin"), "--sip-listen", "127.0.0.1:5074",
            "--http-listen", "127.0.0.1:8074", "--rtp-ports", "40000-40999", "--data-dir",
            os.path.join(work, "data-" + mode), "--agent", "sip:agent@127.0.0.1:5095"]
    if mode == "end_of_speech":
        args.append("--no-partials")
    server = subprocess.Popen(args, stderr=log, env={**os.environ, "HUMANLINE_LOG": "info,rsipstack=warn"})
    agent_dir = os.path.join(work, "agent-" + mode)
    os.makedirs(agent_dir)
    agent = subprocess.Popen(["sipp", "-sf", os.path.join(ROOT, "tests/sipp/agent_answers.xml"), "-i", "127.0.0.1",
                              "-p", "5095", "-mp", "17200", "-m", str(len(utts)), "-trace_msg", "-nostdin", "-bg"],
                             cwd=agent_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.5)
    results = []
    try:
        for uid, raw, end_ms, dur_ms in utts:
            cdir = os.path.join(work, f"c-{mode}-{uid}")
            os.makedirs(cdir)
            scen = open(os.path.join(ROOT, "tests/sipp/caller_speaks.xml")).read()
            scen = scen.replace("@AUDIO@", raw).replace("@HOLD_MS@", str(dur_ms + 3000))
            open(os.path.join(cdir, "c.xml"), "w").write(scen)
            before = len(stamps(agent_log(agent_dir), "INVITE")) if agent_log(agent_dir) else 0
            subprocess.run(["sipp", "127.0.0.1:5074", "-sf", "c.xml", "-i", "127.0.0.1", "-p", "5064", "-mp", "16200",
                            "-m", "1", "-trace_msg", "-nostdin", "-timeout", "30s"], cwd=cdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            clog = [os.path.join(cdir, f) for f in os.listdir(cdir) if f.endswith("_messages.log")][0]
            ack = [t for t in stamps(clog, "ACK")]
            invites = stamps(agent_log(agent_dir), "INVITE") if agent_log(agent_dir) else []
            if ack and len(invites) > before:
                latency = (invites[before] - (ack[0] + end_ms / 1000)) * 1000
                results.append(latency)
                print(f"  {mode} {uid}: {latency:.0f} ms", file=sys.stderr)
            else:
                print(f"  {mode} {uid}: not routed", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        agent.kill()
        subprocess.run(["pkill", "-f", "agent_answers.xml"], check=False)
    return results


def agent_log(d):
    logs = [os.path.join(d, f) for f in os.listdir(d) if f.endswith("_messages.log")]
    return logs[0] if logs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    a = ap.parse_args()
    corpus = os.path.join(ROOT, "bench/corpus")
    rows = [l.split("\t") for l in open(os.path.join(corpus, "manifest.tsv")).read().splitlines()[1:]]
    rows = [r for r in rows if r[1] == "escape"][::a.every]
    work = tempfile.mkdtemp()
    utts = []
    for r in rows:
        raw = os.path.join(work, r[0] + ".pcmu")
        subprocess.run(["sox", os.path.join(corpus, r[0] + ".wav"), "-t", "raw", "-e", "mu-law", "-b", "8", "-r", "8000",
                        "-c", "1", raw], check=True)
        pcm = [mulaw_decode(b) for b in open(raw, "rb").read()]
        utts.append((r[0], raw, speech_end_ms(pcm), len(pcm) // 8))
    report = {"command": f"bench/sip_route.py --every {a.every}", "utterances": len(utts)}
    for mode in ("humanline", "end_of_speech"):
        lat = run_mode(mode, utts, work)
        report[mode] = {"routed": len(lat), "median_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                        "max_ms": max(lat) if lat else None}
        print(f"{mode}: {report[mode]}", file=sys.stderr)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    json.dump(report, open(os.path.join(ROOT, "bench/results/sip_route.json"), "w"), indent=2)
    print(json.dumps(report, indent=2))
    if a.keep:
        print(f"logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
