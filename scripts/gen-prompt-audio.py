#!/usr/bin/env python3
"""Generates the prompt recordings under audio/ from the texts in prompts/*.toml with espeak-ng.

Each prompt becomes an 8 kHz mono 16-bit WAV (telephone rate). A prompt with placeholders
("You are number {position} in line") is recorded in parts, <name>.<i>.wav between the
placeholders, plus number clips numbers/<n>.wav, so playback can splice in live values; its
main <name>.wav says the text with example values. The results are committed: operators
replace them with studio recordings if they like, and check-config verifies them.

It also makes the hold music (`hold_music` in humanline.toml, looped to a waiting caller
between announcements): soft sine chords with sox, no language.

Usage: scripts/gen-prompt-audio.py [--prompts DIR] [--only LANG] [--prompt NAME]...
Needs espeak-ng and sox (scripts/setup.sh installs them).
"""
import argparse, os, re, subprocess, sys, tempfile, tomllib

VOICES = {"en": "en-us", "nl": "nl"}
EXAMPLE = {"position": "3", "minutes": "5", "hour": "15", "minute": "30"}
NUMBERS = range(1, 61)


def say(text, voice, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", raw.name, text], check=True)
        # Telephone rate, a little headroom, no trailing silence beyond 150 ms.
        subprocess.run(["sox", raw.name, "-r", "8000", "-c", "1", "-b", "16", out, "gain", "-n", "-3",
                        "reverse", "silence", "1", "0.05", "0.5%", "reverse", "pad", "0", "0.15"], check=True)


def hold_music(out):
    """Eight seconds of soft, continuous chords (C, A minor, F, G), faded at the seams so
    the loop is seamless: never dead air, never loud."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for i, notes in enumerate(chords):
            part = os.path.join(tmp, f"{i}.wav")
            synth = ["synth", "2"] + [w for f in notes for w in ("sine", str(f))]
            subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", part] + synth +
                           ["remix", "-", "fade", "q", "0.15", "2", "0.15", "gain", "-n", "-16"], check=True)
            parts.append(part)
        subprocess.run(["sox"] + parts + [out], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=os.path.join(os.path.dirname(__file__), "..", "prompts"))
    ap.add_argument("--only")
    ap.add_argument("--prompt", action="append", help="only these prompts (repeatable)")
    args = ap.parse_args()
    with open(os.path.join(args.prompts, "humanline.toml"), "rb") as f:
        settings = tomllib.load(f)
    audio_dir = os.path.normpath(os.path.join(args.prompts, settings.get("audio_dir", "../audio")))
    if settings.get("hold_music") and not args.prompt and not args.only:
        hold_music(os.path.join(audio_dir, settings["hold_music"]))
        print(os.path.join(audio_dir, settings["hold_music"]), file=sys.stderr)
    for lang in settings["languages"]:
        if args.only and lang != args.only:
            continue
        with open(os.path.join(args.prompts, f"{lang}.toml"), "rb") as f:
            conf = tomllib.load(f)
        voice = VOICES.get(lang, lang)
        templated = False
        for name, p in conf["prompts"].items():
            if args.prompt and name not in args.prompt:
                continue
            out = os.path.join(audio_dir, p["audio"])
            text = p["text"]
            say(re.sub(r"\{(\w+)\}", lambda m: EXAMPLE.get(m.group(1), ""), text), voice, out)
            parts = re.split(r"\{\w+\}", text)
            if len(parts) > 1:
                templated = True
                stem = out[:-4]
                for i, part in enumerate(parts):
                    if any(c.isalnum() for c in part):
                        say(part.strip(), voice, f"{stem}.{i}.wav")
            print(f"{out}", file=sys.stderr)
        if templated and not args.prompt:
            for n in NUMBERS:
                say(str(n), voice, os.path.join(audio_dir, lang, "numbers", f"{n}.wav"))


if __name__ == "__main__":
    main()
