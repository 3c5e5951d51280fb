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
import argparse, json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cbpeers import ROOT, ULAW, Server, pct, sipp_stamps, speech_end_ms  # noqa: E402


def stamps(log, kind):
    """Times of the messages in a sipp -trace_msg log that are `kind` (a method)."""
    return [t for t, _ in sipp_stamps(log, kind)] if log else []


def run_mode(mode, utts, work):
    server = Server(work, mode, 5074, 8074, "40000-40999", data="data-" + mode,
                    agents=["sip:agent@127.0.0.1:5095"],
                    extra=["--no-partials"] if mode == "end_of_speech" else [],
                    log_filter="info,rsipstack=warn")
    agent_dir = os.path.join(work, "agent-" + mode)
    os.makedirs(agent_dir)
    # Not -bg: the agent stays this script's own process, stopped by its id at the end.
    agent = subprocess.Popen(["sipp", "-sf", os.path.join(ROOT, "tests/sipp/agent_answers.xml"), "-i", "127.0.0.1",
                              "-p", "5095", "-mp", "17200", "-m", str(len(utts)), "-trace_msg", "-nostdin"],
                             cwd=agent_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    server.wait_ready()
    results = []
    try:
        for uid, raw, end_ms, dur_ms in utts:
            cdir = os.path.join(work, f"c-{mode}-{uid}")
            os.makedirs(cdir)
            scen = open(os.path.join(ROOT, "tests/sipp/caller_speaks.xml")).read()
            scen = scen.replace("@AUDIO@", raw).replace("@HOLD_MS@", str(dur_ms + 3000))
            open(os.path.join(cdir, "c.xml"), "w").write(scen)
            before = len(stamps(agent_log(agent_dir), "INVITE"))
            subprocess.run(["sipp", "127.0.0.1:5074", "-sf", "c.xml", "-i", "127.0.0.1", "-p", "5064", "-mp", "16200",
                            "-m", "1", "-trace_msg", "-nostdin", "-timeout", "30s"], cwd=cdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            ack = stamps(agent_log(cdir), "ACK")
            invites = stamps(agent_log(agent_dir), "INVITE")
            if ack and len(invites) > before:
                latency = (invites[before] - (ack[0] + end_ms / 1000)) * 1000
                results.append(latency)
                print(f"  {mode} {uid}: {latency:.0f} ms", file=sys.stderr)
            else:
                print(f"  {mode} {uid}: not routed", file=sys.stderr)
    finally:
        server.kill()
        agent.kill()
        agent.wait()
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
        pcm = [ULAW[b] for b in open(raw, "rb").read()]
        utts.append((r[0], raw, speech_end_ms(pcm, 8000), len(pcm) // 8))
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
