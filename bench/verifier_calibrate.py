#!/usr/bin/env python3
"""Calibrates the keyword verifier's escape settings from `humanline bench verifier` results.

Reads one or more result files (e.g. the espeak Dutch corpus and the real Dutch corpus, run at
the same decode settings) and, for each echo bar (`[verifier] echo_threshold`), finds the
lowest escape threshold under which at most 1% of the *tuning* ordinary utterances of all
files together escape, then reports recall and false escapes per file on the tuning and the
held-out parts, as the call brain decides (`CallBrain::escape_in`): an escape routes when the
text matcher or the verifier hears it, unless the transcript is nothing but escape words and
the model's mean token log-probability of it is under the echo bar.

With --phrase-thresholds it also tries one threshold per escape phrase: each phrase gets the
lowest threshold at which it alone lets none of the tuning ordinary utterances through.

Each RESULT is a run's JSON or the `.rows.jsonl` it writes as it goes (for a run stopped early).

Usage: bench/verifier_calibrate.py RESULT.json [RESULT.json ...] [--phrase-thresholds]
       [--echo-bars -20,-1.0,-0.8] [--max-false 0.01]
"""
import argparse, json, math

NEG = -math.inf


def load(paths):
    out = []
    for p in paths:
        if p.endswith(".jsonl"):  # the rows a run wrote as it went
            utterances = [json.loads(line) for line in open(p) if line.strip()]
        else:
            utterances = json.load(open(p))["utterances"]
        for u in utterances:
            v = u.get("verdict") or {}
            out.append({
                "file": p, "id": u["id"], "kind": u["kind"], "tuning": u["tuning"],
                "mentions": u.get("mentions_escape_word", False), "heard": u["heard"],
                "text": u["text_escape"], "echo": u.get("echo_shaped", False),
                "hyp_lp": v.get("hypothesis_lp", 0.0),
                "scores": {s["phrase"]: s["score"] for s in u.get("scores", [])},
            })
    return out


def best(u, thresholds, default):
    """Whether any phrase reaches its threshold."""
    return any(s >= thresholds.get(p, default) for p, s in u["scores"].items())


def routes(u, th, bar, per_phrase):
    if u["echo"] and u["hyp_lp"] < bar:
        return False
    return u["text"] or best(u, per_phrase, th)


def ordinary(u):
    return u["kind"] != "escape" and not u["mentions"]


def calibrate(tune, bar, per_phrase, max_false):
    """Lowest global threshold (in 0.05 steps) with at most max_false of tune escaping."""
    allowed = math.floor(max_false * len(tune))
    chosen = None
    t = 3.0
    while t >= -8.0:
        if sum(routes(u, t, bar, per_phrase) for u in tune) > allowed:
            break
        chosen = t
        t = round(t - 0.05, 2)
    return chosen


def phrase_thresholds(tune):
    th = {}
    for u in tune:
        for p, s in u["scores"].items():
            th[p] = max(th.get(p, NEG), s + 0.01)
    return {p: round(t, 2) for p, t in th.items() if t > NEG}


def report(rows, th, bar, per_phrase, label):
    print(f"\n{label}: threshold {th}, echo bar {bar}" + (", per phrase" if per_phrase else ""))
    print("| file | part | recall (text / verifier / routed) | false escapes routed |")
    print("|---|---|---|---|")
    for f in sorted({u["file"] for u in rows}):
        for part, tuning in (("tuning", True), ("held out", False)):
            sel = [u for u in rows if u["file"] == f and u["tuning"] == tuning]
            esc = [u for u in sel if u["kind"] == "escape"]
            oth = [u for u in sel if ordinary(u)]
            if not sel:
                continue
            fa = [u for u in oth if routes(u, th, bar, per_phrase)]
            rec = lambda pred: f"{sum(map(pred, esc))}/{len(esc)}" if esc else "-"
            print(f"| {f} | {part} | {rec(lambda u: u['text'])} / "
                  f"{rec(lambda u: best(u, per_phrase, th))} / "
                  f"**{rec(lambda u: routes(u, th, bar, per_phrase))}** | "
                  f"**{len(fa)}/{len(oth)}** |")
            for u in fa[:6]:
                print(f"|   | false | {u['id']} | {u['heard']!r} (echo {u['echo']}, lp {u['hyp_lp']:.2f}) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--echo-bars", default="-20,-1.5,-1.0,-0.8,-0.6,-0.5,-0.4")
    ap.add_argument("--max-false", type=float, default=0.01)
    ap.add_argument("--phrase-thresholds", action="store_true")
    args = ap.parse_args()
    rows = load(args.results)
    tune = [u for u in rows if u["tuning"] and ordinary(u)]
    print(f"{len(rows)} utterances; {len(tune)} ordinary for tuning")
    for bar in (float(b) for b in args.echo_bars.split(",")):
        th = calibrate(tune, bar, {}, args.max_false)
        if th is None:
            print(f"\necho bar {bar}: no threshold keeps tuning false escapes within "
                  f"{args.max_false:.0%} (the text matcher alone exceeds it)")
            continue
        report(rows, th, bar, {}, "global threshold")
        if args.phrase_thresholds:
            per = phrase_thresholds(tune)
            print("per-phrase thresholds:", json.dumps(per))
            report(rows, 99.0, bar, per, "per-phrase thresholds")


if __name__ == "__main__":
    main()
