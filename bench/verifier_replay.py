#!/usr/bin/env python3
"""Replays the events of a `humanline bench speech` run under other escape settings.

`bench speech --transcripts` records every partial, pause partial and final of each utterance with the
keyword verifier's verdicts, whatever the threshold, so one run shows what other thresholds, echo bars and
confirmation rules would have decided on the same hearings. The text matcher is approximated here (exact
phrases with a plural "s", the language's sounds_like, and the fuzzy rule for phrases of 7 letters or more:
letters and Metaphone sound both within the thresholds); on bench/results/speech-nl-live-every4 it gives
39/60 and 15/240 where the brain measured 38/60 and 14/240.

Usage: bench/verifier_replay.py TRANSCRIPTS.json [--language nl] [--setting THRESHOLD:ECHO[:confirm]]...
  confirm: a partial's match that needs its last word, or that only the verifier found, routes only when
  the next partial or the final also has an escape.
Needs jellyfish (pip install jellyfish).
"""
import argparse, json, os, re, sys, tomllib, unicodedata

import jellyfish

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def words(text):
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", text)


class Matcher:
    def __init__(self, language):
        with open(os.path.join(ROOT, "prompts", f"{language}.toml"), "rb") as f:
            escape = tomllib.load(f)["escape"]
        self.phrases = [words(p) for p in escape["phrases"]]
        self.sounds_like = [words(p) for p in escape.get("sounds_like", {})]
        self.vocabulary = {w for p in self.phrases for w in p}

    @staticmethod
    def _sim(a, b):
        return 1 - jellyfish.levenshtein_distance(a, b) / max(len(a), len(b), 1)

    def escape(self, text):
        heard = words(text)
        for p in self.phrases + self.sounds_like:
            for i in range(len(heard) - len(p) + 1):
                if all(h == q or h == q + "s" for h, q in zip(heard[i:i + len(p)], p)):
                    return True
        for p in self.phrases:
            joined = "".join(p)
            if len(joined) < 7:
                continue
            sound = "".join(jellyfish.metaphone(w) for w in p)
            for n in range(max(1, len(p) - 1), len(p) + 2):
                for i in range(len(heard) - n + 1):
                    w = heard[i:i + n]
                    if (self._sim("".join(w), joined) >= 0.78
                            and self._sim("".join(jellyfish.metaphone(x) for x in w), sound) >= 0.75):
                        return True
        return False

    def echo_shaped(self, text):
        heard = words(text)
        return bool(heard) and all(w in self.vocabulary or w.removesuffix("s") in self.vocabulary for w in heard)

    def needs_last_word(self, text):
        heard = words(text)
        return self.escape(text) and not self.escape(" ".join(heard[:-1]))


def decide(m, utterance, threshold, echo, confirm):
    """(how, time) of the route, or (None, None)."""
    score, lp, pending = None, 0.0, False
    for e in utterance["events"]:
        if e["event"] == "verified":
            escapes = [v for v in e["verdicts"] if v["kind"] == "escape"]
            score = max((v["score"] for v in escapes), default=None)
            lp = escapes[0]["hypothesis_lp"] if escapes else 0.0
        elif e["event"] in ("partial", "final"):
            doubted = m.echo_shaped(e["text"]) and score is not None and lp < echo
            by_text = not doubted and m.escape(e["text"])
            by_verifier = not doubted and score is not None and score >= threshold
            if e["event"] == "final":
                return ("final", e["t"]) if by_text or by_verifier else (None, None)
            if by_text or by_verifier:
                unsure = confirm and ((by_text and m.needs_last_word(e["text"])) or not by_text)
                if pending or not unsure:
                    return ("partial-text" if by_text else "partial-verified"), e["t"]
                pending = True
            else:
                pending = False
            score = None
    return None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("transcripts")
    ap.add_argument("--language", default="nl")
    ap.add_argument("--setting", action="append", default=[])
    args = ap.parse_args()
    m = Matcher(args.language)
    run = json.load(open(args.transcripts))["setups"]["humanline"]
    escapes = [u for u in run if u["kind"] == "escape"]
    ordinary = [u for u in run if u["kind"] != "escape" and not u.get("mentions_escape_word")]
    for setting in args.setting or ["0.0:-20", "0.5:-0.75", "0.5:-0.75:confirm"]:
        parts = setting.split(":")
        threshold, echo, confirm = float(parts[0]), float(parts[1]), "confirm" in parts[2:]
        routed = [decide(m, u, threshold, echo, confirm) for u in escapes]
        false = [decide(m, u, threshold, echo, confirm) for u in ordinary]
        after = sorted(t - u["end_ms"] for u, (how, t) in zip(escapes, routed) if how)
        pick = lambda q: after[min(len(after) - 1, int(q * len(after)))] if after else None
        print(f"{setting:20} recall {sum(1 for h, _ in routed if h)}/{len(escapes)}  "
              f"false {sum(1 for h, _ in false if h)}/{len(ordinary)} "
              f"(on a partial {sum(1 for h, _ in false if h and h.startswith('partial'))})  "
              f"route after end of speech median {pick(0.5)} p95 {pick(0.95)} ms")


if __name__ == "__main__":
    sys.exit(main())
