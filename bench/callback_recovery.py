#!/usr/bin/env python3
"""Dialer recovery: how soon after start-up `humanline serve` starts keeping overdue promises
when its ledger holds many, side by side with a ledger holding one (the baseline).

For each size, `humanline bench callbacks --seed` writes a ledger of overdue promises (the
first one the most overdue); the server starts on it with a sipp agent and a sipp customer
phone that answer. Measured from the spawn of the process: ready (log line), the agent's phone
ringing (INVITE in the agent's sipp log) and the customer's phone ringing. The first promise
dialed must be the most overdue one. Writes bench/results/callback_recovery.json.

Usage: bench/callback_recovery.py [--sizes 1,10000] [--runs 5]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cbpeers import (BIN, HOST, ROOT, Server, Sipp, header, loadavg, median,  # noqa: E402
                     sipp_stamps)

BASE = 27500
SIP, HTTP, RTP = BASE, BASE + 1, f"{BASE + 100}-{BASE + 199}"
AGENT, CUSTOMER = BASE + 30, BASE + 40


def one_run(work, size, run):
    folder = os.path.join(work, f"{size}-{run}")
    os.makedirs(os.path.join(folder, "data"))
    db = os.path.join(folder, "data", "callbacks.db")
    subprocess.run([BIN, "bench", "callbacks", "--seed", db, "--pending", str(size)],
                   check=True, stderr=subprocess.DEVNULL)
    tone = os.path.join(folder, "tone.pcmu")
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law", "-b", "8",
                    tone, "synth", "1", "sine", "440", "vol", "0.5"], check=True)
    config = os.path.join(folder, "server.toml")
    open(config, "w").write(f'trunk = "sip:trunk@{HOST}:{CUSTOMER}"\n')
    agent = Sipp(folder, "agent", "agent_answers.xml", AGENT, calls=1000)
    customer = Sipp(folder, "customer", "customer_answers.xml", CUSTOMER, calls=1000,
                    vars={"AUDIO": tone, "TALK_MS": 500})
    time.sleep(0.3)  # the phones are up before the server starts
    server = Server(folder, 1, SIP, HTTP, RTP, config=config,
                    agents=[f"sip:agent@{HOST}:{AGENT}"])
    ready = server.wait_ready()
    deadline = time.time() + 30
    agent_inv = customer_inv = []
    while time.time() < deadline:
        agent_inv = sipp_stamps(agent.msg, "INVITE")
        customer_inv = sipp_stamps(customer.msg, "INVITE")
        if agent_inv and customer_inv:
            break
        time.sleep(0.05)
    server.kill()
    agent.stop()
    customer.stop()
    if not (agent_inv and customer_inv):
        raise SystemExit(f"{size}-{run}: no callback within 30 s:\n{server.log()[-3000:]}")
    first = header(agent_inv[0][1], "X-Humanline-Callback") or ""
    return {
        "ready_ms": round((ready - server.spawned) * 1000),
        "agent_invite_ms": round((agent_inv[0][0] - server.spawned) * 1000),
        "customer_invite_ms": round((customer_inv[0][0] - server.spawned) * 1000),
        "first_dialed": first,
        "most_overdue_first": first.startswith("1 "),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/callback_recovery.json"))
    a = ap.parse_args()
    if not shutil.which("sipp") or not os.path.exists(BIN):
        raise SystemExit("sipp or the release build is missing: run scripts/setup.sh")
    work = tempfile.mkdtemp(prefix="humanline-cbrecovery-", dir="/var/tmp")
    load_start = loadavg()
    results = {}
    for size in [int(s) for s in a.sizes.split(",")]:
        runs = [one_run(work, size, r) for r in range(a.runs)]
        for r in runs:
            print(f"{size} pending: {r}", file=sys.stderr)
        results[str(size)] = {
            "runs": runs,
            "median_ready_ms": median([r["ready_ms"] for r in runs]),
            "median_agent_invite_ms": median([r["agent_invite_ms"] for r in runs]),
            "median_customer_invite_ms": median([r["customer_invite_ms"] for r in runs]),
            "most_overdue_first": all(r["most_overdue_first"] for r in runs),
        }
    sizes = list(results)
    base = results[sizes[0]]["median_agent_invite_ms"]
    for s in sizes:
        results[s]["agent_invite_ratio_to_baseline"] = round(
            results[s]["median_agent_invite_ms"] / max(base, 1), 2)
    report = {
        "command": f"bench/callback_recovery.py --sizes {a.sizes} --runs {a.runs}",
        "measured_from": "spawn of humanline serve",
        "baseline": f"{sizes[0]} pending",
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": load_start,
                    "loadavg_at_end": loadavg()},
        "sizes": results,
    }
    text = json.dumps(report, indent=2)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write(text + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
