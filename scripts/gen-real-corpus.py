#!/usr/bin/env python3
"""Builds a corpus of real recorded human voices, English and Dutch, through the telephone channel.

Sources (Debian packages with recorded speech and the texts spoken):
  English  asterisk-core-sounds-en-wav: Allison Smith's Asterisk prompts (8 kHz WAV); the texts
           are in asterisk-core-sounds-en's core-sounds-en.txt.gz ("name: text").
  Dutch    fillets-ng-data-nl: the Dutch voice lines of Fish Fillets NG (ogg, two main actors:
           the small fish `m` and the big fish `v`, and others); the texts are the dialogStr(...)
           after each dialogId(...) in fillets-ng-data's script/*/dialogs_nl.lua.
Missing packages are installed with apt-get (root or sudo), unless --no-install.

Each recording of 0.8-6 s whose text is plain speech is passed through the same telephone
channel as scripts/gen-speech-corpus.py (300-3400 Hz band, mu-law, 8 kHz) with 0.4 s of silence
before and 0.8 s after, and written as 8 kHz 16-bit mono WAV. Writes <out>/<id>.wav and
<out>/manifest.tsv with columns:
  id  language  kind(real)  speaker  split(tune|report)  is_escape  mentions_escape_word  text
is_escape: the speaker asks to reach a person (none of these recordings do: they are the real
speech that must not escape). mentions_escape_word: the text has a word of the language's escape
lexicon ("For an operator, press zero"), which a caller saying it would rightly be routed for.
split: English has one speaker, so every third prompt is for tuning and the rest for the report;
Dutch is split by speaker (the small fish `m` for tuning, every other voice for the report).

Usage: scripts/gen-real-corpus.py [--out DIR] [--max-per-language N] [--no-install]
"""
import argparse, glob, gzip, hashlib, os, re, subprocess, sys, tempfile

PACKAGES = ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "fillets-ng-data-nl", "fillets-ng-data"]
AST_SOUNDS = "/usr/share/asterisk/sounds/en"
AST_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
FILLETS = "/usr/share/games/fillets-ng"
ESCAPE_WORDS = {
    "en": ["human", "agent", "operator", "representative", "person", "someone", "somebody",
           "customer service"],
    "nl": ["medewerker", "mens", "iemand", "klantenservice", "persoon", "telefonist", "operator",
           "agent"],
}


def ensure_packages(install):
    missing = [p for p in PACKAGES
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout.find("install ok installed") < 0]
    if not missing:
        return
    if not install:
        sys.exit(f"missing packages: {' '.join(missing)} (apt-get install them, or drop --no-install)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {' '.join(missing)}", file=sys.stderr)
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def duration(path):
    out = subprocess.run(["sox", "--i", "-D", path], capture_output=True, text=True)
    try:
        return float(out.stdout.strip())
    except ValueError:
        return 0.0


def mentions(language, text):
    words = " " + re.sub(r"[^\w ]+", " ", text.lower()) + " "
    return any(f" {w} " in words for w in ESCAPE_WORDS[language])


def english():
    with gzip.open(AST_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            name, text = name.strip(), " ".join(text.split())
            if not sep or line.startswith(";") or "/" in name or not text:
                continue
            # Tones and sound effects are bracketed; "..." marks a prompt cut off mid-sentence.
            if "[" in text or "..." in text:
                continue
            path = os.path.join(AST_SOUNDS, name + ".wav")
            if os.path.isfile(path):
                split = "tune" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 3 == 0 else "report"
                yield name, path, "allison", split, text


def dutch():
    pattern = re.compile(r'dialogId\("([^"]+)"[^)]*\)\s*dialogStr\("((?:[^"\\]|\\.)*)"\)')
    for script in sorted(glob.glob(os.path.join(FILLETS, "script", "*", "dialogs_nl.lua"))):
        level = os.path.basename(os.path.dirname(script))
        with open(script, encoding="utf-8", errors="replace") as f:
            source = f.read()
        for sound_id, text in pattern.findall(source):
            path = os.path.join(FILLETS, "sound", level, "nl", sound_id + ".ogg")
            text = " ".join(text.replace('\\"', '"').split())
            if not os.path.isfile(path) or not text:
                continue
            parts = sound_id.split("-")
            speaker = parts[1] if len(parts) > 2 else "other"
            split = "tune" if speaker == "m" else "report"
            yield f"{level}-{sound_id}", path, f"fillets-{speaker}", split, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "bench", "corpus-real"))
    ap.add_argument("--max-per-language", type=int, default=150)
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args()
    ensure_packages(not args.no_install)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for language, source in (("en", english()), ("nl", dutch())):
        n = 0
        for name, path, speaker, split, text in source:
            if n >= args.max_per_language:
                break
            if not 0.8 <= duration(path) <= 6.0:
                continue
            uid = f"{language}-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}"
            out = os.path.join(args.out, uid + ".wav")
            if not os.path.exists(out):
                with tempfile.TemporaryDirectory() as tmp:
                    ulaw = os.path.join(tmp, "ulaw.wav")
                    subprocess.run(["sox", path, "-r", "8000", "-c", "1", "-e", "mu-law", ulaw,
                                    "sinc", "300-3400", "pad", "0.4", "0.8"], check=True)
                    subprocess.run(["sox", ulaw, "-e", "signed-integer", "-b", "16", out], check=True)
            rows.append((uid, language, "real", speaker, split, "0",
                         "1" if mentions(language, text) else "0", text.replace("\t", " ")))
            n += 1
    with open(os.path.join(args.out, "manifest.tsv"), "w") as f:
        f.write("id\tlanguage\tkind\tspeaker\tsplit\tis_escape\tmentions_escape_word\ttext\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    by = {}
    for r in rows:
        by[(r[1], r[4])] = by.get((r[1], r[4]), 0) + 1
    print(f"{len(rows)} utterances in {args.out}: {by}")


if __name__ == "__main__":
    main()
