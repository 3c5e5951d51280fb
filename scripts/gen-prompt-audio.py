#!/usr/bin/env python3
"""Generates the prompt recordings under audio/ from the texts in prompts/*.toml with espeak-ng.

Each prompt becomes an 8 kHz mono 16-bit WAV (telephone rate). A prompt with placeholders
("You are number {position} in line") is recorded in parts, <name>.<i>.wav between the
placeholders, plus number clips numbers/<n>.wav, so playback can splice in live values; its
main <name>.wav says the text with example values. The results are committed: operators
replace them with studio recordings if they like, and check-config verifies them.

Each folder gets a recordings.toml noting what every recording there says (the prompt's text,
or the part's words). check-config, the server's reload and the console compare it with the
prompts: a prompt whose text changed since its recording was made is reported at its line
until it is recorded again. After recording one yourself, run with --note-only (and the same
--only/--prompt) to note the prompts' texts as what the recordings say, without re-recording.

It also makes the hold music (`hold_music` in humanline.toml, looped to a waiting caller
between announcements): soft sine chords with sox, no language.

Usage: scripts/gen-prompt-audio.py [--prompts DIR] [--only LANG] [--prompt NAME]... [--note-only]
Needs espeak-ng and sox (scripts/setup.sh installs them).
"""
import argparse, json, os, re, subprocess, sys, tempfile, tomllib

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


MANIFEST = "recordings.toml"


class Manifests:
    """The recordings.toml of each folder written to, updated in place: recordings not made
    in this run keep what they noted."""

    def __init__(self):
        self.folders = {}

    def note(self, path, text):
        folder, name = os.path.split(path)
        if folder not in self.folders:
            try:
                with open(os.path.join(folder, MANIFEST), "rb") as f:
                    self.folders[folder] = tomllib.load(f).get("recordings", {})
            except FileNotFoundError:
                self.folders[folder] = {}
        self.folders[folder][name] = text.strip()

    def write(self):
        for folder, says in self.folders.items():
            lines = [
                "# What each recording in this folder says, noted by scripts/gen-prompt-audio.py.",
                "# check-config and the server compare it with the prompts' texts: a prompt whose text",
                "# changed is reported until it is recorded again. After replacing a recording by hand,",
                "# set its words here (or run the script with --note-only).",
                "[recordings]",
            ]
            # JSON strings are TOML basic strings (same escapes; non-ASCII kept as is).
            lines += [f"{json.dumps(n, ensure_ascii=False)} = {json.dumps(t, ensure_ascii=False)}"
                      for n, t in sorted(says.items())]
            tmp = os.path.join(folder, MANIFEST + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, os.path.join(folder, MANIFEST))


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
    ap.add_argument("--note-only", action="store_true",
                    help="record nothing: note the prompts' texts as what their recordings say "
                         "(after recording them yourself)")
    args = ap.parse_args()
    manifests = Manifests()
    record = say
    if args.note_only:
        def record(text, voice, out):
            pass
    with open(os.path.join(args.prompts, "humanline.toml"), "rb") as f:
        settings = tomllib.load(f)
    audio_dir = os.path.normpath(os.path.join(args.prompts, settings.get("audio_dir", "../audio")))
    if settings.get("hold_music") and not args.prompt and not args.only and not args.note_only:
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
            record(re.sub(r"\{(\w+)\}", lambda m: EXAMPLE.get(m.group(1), ""), text), voice, out)
            # The whole recording notes the text with its placeholders: what the prompt says.
            manifests.note(out, text)
            parts = re.split(r"\{\w+\}", text)
            if len(parts) > 1:
                templated = True
                stem = out[:-4]
                for i, part in enumerate(parts):
                    if any(c.isalnum() for c in part):
                        record(part.strip(), voice, f"{stem}.{i}.wav")
                        manifests.note(f"{stem}.{i}.wav", part)
            print(f"{out}", file=sys.stderr)
        if templated and not args.prompt and not args.note_only:
            for n in NUMBERS:
                say(str(n), voice, os.path.join(audio_dir, lang, "numbers", f"{n}.wav"))
    manifests.write()


if __name__ == "__main__":
    main()
