#!/usr/bin/env python3
"""Crash loop: `humanline serve` is killed with SIGKILL at random moments, again and again, while
callers accept callbacks and while the dialer keeps them; then every promise a caller heard
confirmed must be kept, exactly once.

Phase 1 (--cycles, default 100): each cycle starts the server (same SQLite ledger every time),
calls it with a sipp caller who keys 0 (to a person; no agent is staffed, so a callback is
offered) and then 1 (accept), and kills the server at a random moment of the call; a share of
the kills (--early-fraction) lands right around the commit. The caller's audio goes to an ear
that records what was heard: a caller "was promised" a callback when loud audio (the
confirmation) reached them after they keyed 1.
Phase 2 (--drain-kills, default 30): a sipp agent and a sipp customer phone answer; the server
is started and killed at random moments while it dials, rings the agent and bridges customers.
Then it runs until every promise is completed (or --drain-limit passes).

Figures: promises heard confirmed, stored, kept (completed), lost (heard confirmed, not
stored; must be 0), duplicate completions (must be 0), stuck (not completed), customers called
again after a mid-call crash (at-least-once dialing), customer calls after completion (must
be 0). Writes bench/results/callback_crash.json.

Usage: bench/callback_crash.py [--cycles 100] [--drain-kills 30] [--seed 1]
"""
import argparse, json, os, random, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cbpeers import (BIN, HOST, ROOT, Ear, Server, Sipp, header, ledger, loadavg,  # noqa: E402
                     sipp_stamps)

BASE = 26500
SIP, HTTP, RTP = BASE, BASE + 1, f"{BASE + 100}-{BASE + 299}"
CALLER, EAR, AGENT, CUSTOMER = BASE + 10, BASE + 20, BASE + 30, BASE + 40
KEY0_MS, KEY1_MS, HOLD_MS = 1000, 2000, 2500
# Cut-off after key 1 before loud audio counts as the confirmation (the offer it interrupted
# stops within a packet or two).
CONFIRM_GRACE_S = 0.15


def config(work, with_trunk):
    path = os.path.join(work, "server.toml")
    text = ""
    if with_trunk:
        text += f'trunk = "sip:trunk@{HOST}:{CUSTOMER}"\n'
    # Crashes interrupt attempts and each one counts; a wide policy keeps retrying.
    text += ("\n[callback_retry]\nfirst_delay_ms = 500\nfactor = 1.0\nmax_delay_ms = 500\n"
             "max_attempts = 1000\nwindow_ms = 86400000\n")
    open(path, "w").write(text)
    return path


def caller_cycle(work, n, rng, early_fraction):
    number = f"+3161{n:06d}"
    server = Server(work, n, SIP, HTTP, RTP, config=config(work, True))
    server.wait_ready()
    ear = Ear(EAR)
    caller = Sipp(work, f"caller{n}", "caller_keys.xml", CALLER, remote=f"{HOST}:{SIP}",
                  vars={"RTP_PORT": EAR, "KEY1": "0", "KEY1_AFTER_MS": KEY0_MS, "KEY2": "1",
                        "KEY2_AFTER_MS": KEY1_MS, "HOLD_MS": HOLD_MS},
                  literal={"+15550124": number}, timeout_s=20)
    started = time.time()
    early = rng.random() < early_fraction
    # Key 1 goes out about KEY0_MS + KEY1_MS after the call starts.
    at = (KEY0_MS + KEY1_MS) / 1000
    delay = rng.uniform(at - 0.1, at + 0.25) if early else rng.uniform(0.0, at + 2.5)
    time.sleep(max(0.0, started + delay - time.time()))
    server.kill()
    killed = time.time()
    time.sleep(0.1)
    caller.stop()
    ear.stop()
    infos = sipp_stamps(caller.msg, "INFO", contains="Signal=1")
    key1 = infos[0][0] if infos else None
    heard_ms = ear.loud_ms(key1 + CONFIRM_GRACE_S, killed) if key1 else 0
    log = server.log()
    return {
        "cycle": n, "number": number, "kill_after_s": round(killed - started, 3),
        "aimed_at_commit": early, "keyed_1": key1 is not None,
        "confirmation_heard_ms": heard_ms, "promised": heard_ms >= 100,
        "log_committing": "committing a callback" in log,
        "log_stored": "callback promised" in log,
        "log_confirmation_played": "prompt=callback_confirmed" in log,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--drain-kills", type=int, default=30)
    ap.add_argument("--drain-limit", type=float, default=900)
    ap.add_argument("--early-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/callback_crash.json"))
    a = ap.parse_args()
    for tool in ("sipp", "sox"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} is missing: run scripts/setup.sh")
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="humanline-cbcrash-", dir="/var/tmp")
    began, load_start = time.time(), loadavg()
    print(f"callback crash loop: work folder {work}", file=sys.stderr)

    cycles = []
    for n in range(1, a.cycles + 1):
        c = caller_cycle(work, n, rng, a.early_fraction)
        cycles.append(c)
        print(f"cycle {n}: killed at {c['kill_after_s']:.2f} s, promised={c['promised']} "
              f"stored(log)={c['log_stored']}", file=sys.stderr)

    # Phase 2: keep the promises, through crashes.
    tone = os.path.join(work, "customer-tone.pcmu")
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-t", "raw", "-e", "mu-law", "-b", "8",
                    tone, "synth", "1", "sine", "440", "vol", "0.5"], check=True)
    agent = Sipp(work, "agent", "agent_answers.xml", AGENT, calls=100000)
    customer = Sipp(work, "customer", "customer_answers.xml", CUSTOMER, calls=100000,
                    vars={"AUDIO": tone, "TALK_MS": 800})
    agents = [f"sip:agent@{HOST}:{AGENT}"]
    n = a.cycles
    drain_kills = []
    for _ in range(a.drain_kills):
        n += 1
        s = Server(work, n, SIP, HTTP, RTP, config=config(work, True), agents=agents)
        s.wait_ready()
        delay = rng.uniform(0.0, 4.0)
        time.sleep(delay)
        s.kill()
        drain_kills.append(round(delay, 3))
    n += 1
    s = Server(work, n, SIP, HTTP, RTP, config=config(work, True), agents=agents)
    s.wait_ready()
    deadline = time.time() + a.drain_limit
    while time.time() < deadline:
        promises, _ = ledger(work)
        if all(p["state"] in ("completed", "escalated") for p in promises):
            break
        time.sleep(1)
    time.sleep(2)  # let the last customer's BYE land in the logs
    s.kill()
    agent.stop()
    customer.stop()

    promises, attempts = ledger(work)
    by_number = {p["number"]: p for p in promises}
    heard = [c for c in cycles if c["promised"]]
    lost = [c["number"] for c in heard if c["number"] not in by_number]
    completed = [p for p in promises if p["state"] == "completed"]
    kept_heard = [c for c in heard if by_number.get(c["number"], {}).get("state") == "completed"]
    completions = {}
    for at in attempts:
        if at["outcome"] == "completed":
            completions[at["callback_id"]] = completions.get(at["callback_id"], 0) + 1
    duplicate_completions = {k: v for k, v in completions.items() if v > 1}
    # What the customer's phone saw: INVITEs per promise, and any after its completion.
    invites = {}
    after_completion = []
    done_at = {p["id"]: p["completed_at"] for p in promises}
    for t, msg in sipp_stamps(customer.msg, "INVITE"):
        pid = header(msg, "X-Humanline-Callback")
        if pid and pid.isdigit():
            pid = int(pid)
            invites[pid] = invites.get(pid, 0) + 1
            if done_at.get(pid) and t * 1000 > done_at[pid] + 1:
                after_completion.append(pid)
    interrupted = sum(1 for at in attempts if at["outcome"] == "interrupted")
    report = {
        "command": f"bench/callback_crash.py --cycles {a.cycles} --drain-kills {a.drain_kills} "
                   f"--seed {a.seed} --early-fraction {a.early_fraction}",
        "sigkills": a.cycles + a.drain_kills,
        "sigkills_during_calls": a.cycles,
        "sigkills_while_dialing": a.drain_kills,
        "kills_aimed_at_the_commit": sum(1 for c in cycles if c["aimed_at_commit"]),
        "callers_who_keyed_accept": sum(1 for c in cycles if c["keyed_1"]),
        "promised_heard_confirmed": len(heard),
        "stored": len(promises),
        "stored_but_killed_before_confirmation": len(promises) - len(heard),
        "kept_completed": len(completed),
        "kept_of_heard": len(kept_heard),
        "lost": len(lost), "lost_numbers": lost,
        "duplicate_completions": len(duplicate_completions),
        "customer_calls_after_completion": len(after_completion),
        "stuck_not_completed": len(promises) - len(completed),
        "escalated": sum(1 for p in promises if p["state"] == "escalated"),
        "attempts": len(attempts),
        "attempts_interrupted_by_a_crash": interrupted,
        "customers_called_more_than_once": sum(1 for v in invites.values() if v > 1),
        "heard_confirmation_but_server_logged_no_play": sum(
            1 for c in heard if not c["log_confirmation_played"]),
        "confirmation_played_but_not_logged_stored": sum(
            1 for c in cycles if c["log_confirmation_played"] and not c["log_stored"]),
        "drain_kill_delays_s": drain_kills,
        "seconds": round(time.time() - began, 1),
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": load_start,
                    "loadavg_at_end": loadavg()},
        "cycles": cycles,
    }
    text = json.dumps(report, indent=2)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write(text + "\n")
    summary = {k: v for k, v in report.items() if k not in ("cycles", "drain_kill_delays_s")}
    print(json.dumps(summary, indent=2))
    if a.keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = not lost and not duplicate_completions and not after_completion \
        and len(completed) == len(promises)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
