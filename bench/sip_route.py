#!/usr/bin/env python3
"""Time from the end of the caller's speech to the agent's INVITE on the wire, over real SIP.

A sipp caller streams each escape utterance of the corpus (bench/corpus, from
scripts/gen-speech-corpus.py) as PCMU to `humanline serve`; a sipp agent answers. The speech end
on the wire is the caller's ACK time plus the end of speech in the recording (the RTP stream
starts with the ACK); the INVITE time is when the agent's sipp logged it. Side by side, each
utterance called on each in turn (so the machine's load falls on all alike): the server deciding
on partial transcripts (Humanline), the same deciding only at the end of speech (--no-partials,
the baseline), and with --compare-bin another build deciding on partials (an earlier commit). Each route is counted by the reason the agent's
INVITE gives: on the caller's words (keyword, repetition) or speech_unavailable (recognition fell
behind, so the agent was rung without the words). Writes bench/results/sip_route.json (--out).

Usage: bench/sip_route.py [--every N] [--compare-bin PATH --compare-label LABEL] [--out FILE]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cbpeers import ROOT, ULAW, Server, header, pct, sipp_stamps, speech_end_ms  # noqa: E402


def stamps(log, kind):
    """Times of the messages in a sipp -trace_msg log that are `kind` (a method)."""
    return [t for t, _ in sipp_stamps(log, kind)] if log else []


class Setup:
    """One server under test (its own ports and data) with the sipp agent it rings."""

    def __init__(self, i, mode, work, calls, bin=None):
        self.mode, self.sip = mode, 5074 + 100 * i
        self.server = Server(work, mode, self.sip, 8074 + i, f"{40000 + 1000 * i}-{40999 + 1000 * i}",
                             data="data-" + mode, agents=[f"sip:agent@127.0.0.1:{5095 + 100 * i}"],
                             extra=["--no-partials"] if mode == "end_of_speech" else [],
                             log_filter="info,rsipstack=warn", bin=bin)
        self.agent_dir = os.path.join(work, "agent-" + mode)
        os.makedirs(self.agent_dir)
        # Not -bg: the agent stays this script's own process, stopped by its id at the end.
        self.agent = subprocess.Popen(
            ["sipp", "-sf", os.path.join(ROOT, "tests/sipp/agent_answers.xml"), "-i", "127.0.0.1",
             "-p", str(5095 + 100 * i), "-mp", str(17200 + 100 * i), "-m", str(calls), "-trace_msg",
             "-nostdin"], cwd=self.agent_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.results = []

    def call(self, work, uid, raw, end_ms, dur_ms):
        cdir = os.path.join(work, f"c-{self.mode}-{uid}")
        os.makedirs(cdir)
        scen = open(os.path.join(ROOT, "tests/sipp/caller_speaks.xml")).read()
        # The caller stays 6 s after the recording: long enough for the 3 s final timer's
        # speech_unavailable route to reach the agent too.
        scen = scen.replace("@AUDIO@", raw).replace("@HOLD_MS@", str(dur_ms + 6000))
        open(os.path.join(cdir, "c.xml"), "w").write(scen)
        before = len(stamps(agent_log(self.agent_dir), "INVITE"))
        subprocess.run(["sipp", f"127.0.0.1:{self.sip}", "-sf", "c.xml", "-i", "127.0.0.1", "-p", "5064", "-mp",
                        "16200", "-m", "1", "-trace_msg", "-nostdin", "-timeout", "30s"], cwd=cdir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        ack = stamps(agent_log(cdir), "ACK")
        log = agent_log(self.agent_dir)
        invites = sipp_stamps(log, "INVITE") if log else []
        if ack and len(invites) > before:
            t, msg = invites[before]
            latency = (t - (ack[0] + end_ms / 1000)) * 1000
            reason = header(msg, "X-Humanline-Reason") or "?"
            self.results.append((latency, reason))
            print(f"  {self.mode} {uid}: {latency:.0f} ms ({reason})", file=sys.stderr)
        else:
            print(f"  {self.mode} {uid}: not routed", file=sys.stderr)

    def stop(self):
        self.server.kill()
        self.agent.kill()
        self.agent.wait()


def agent_log(d):
    logs = [os.path.join(d, f) for f in os.listdir(d) if f.endswith("_messages.log")]
    return logs[0] if logs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    ap.add_argument("--compare-bin", help="another humanline binary, run deciding on partials too")
    ap.add_argument("--compare-label", default="compare", help="its name in the report")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/sip_route.json"))
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
    command = " ".join(["bench/sip_route.py"] + sys.argv[1:])
    report = {"command": command, "utterances": len(utts),
              "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    modes = [("humanline", None)]
    if a.compare_bin:
        modes.append((f"humanline@{a.compare_label}", a.compare_bin))
    modes.append(("end_of_speech", None))
    # Every setup runs at once (idle between calls) and each utterance is called on each in
    # turn, so a change in the machine's load falls on all of them alike.
    setups = []
    try:
        for i, (mode, bin) in enumerate(modes):
            setups.append(Setup(i, mode, work, len(utts), bin))
        for s in setups:
            s.server.wait_ready()
        for uid, raw, end_ms, dur_ms in utts:
            for s in setups:
                s.call(work, uid, raw, end_ms, dur_ms)
    finally:
        for s in setups:
            s.stop()
    for s in setups:
        mode, routes = s.mode, s.results
        lat = [l for l, _ in routes]
        words = [l for l, r in routes if r not in ("speech_unavailable", "?")]
        report[mode] = {"routed": len(lat), "routed_on_words": len(words),
                        "speech_unavailable": sum(r == "speech_unavailable" for _, r in routes),
                        "median_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                        "max_ms": max(lat) if lat else None,
                        "on_words_median_ms": pct(words, 50), "on_words_p95_ms": pct(words, 95)}
        print(f"{mode}: {report[mode]}", file=sys.stderr)
    report["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    json.dump(report, open(a.out, "w"), indent=2)
    print(json.dumps(report, indent=2))
    if a.keep:
        print(f"logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
