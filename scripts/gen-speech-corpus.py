#!/usr/bin/env python3
"""Generates the phone-band speech corpus for `humanline bench speech` and the speech tests.

Every sentence is spoken by several espeak-ng voices at several rates, then passed through a
telephone channel (300-3400 Hz band, mu-law, 8 kHz) and written as 8 kHz 16-bit mono WAV with
0.4 s of silence before and 0.8 s after (room for the VAD to see the speech end).
Writes bench/corpus/<id>.wav and bench/corpus/manifest.tsv (id, kind, voice, rate, text).
kind: escape (asks for a person), ordinary (must not escape).

With --language nl it writes the Dutch corpus (Dutch sentences, espeak-ng's nl voice with
variants) to bench/corpus-nl/ instead.

Usage: scripts/gen-speech-corpus.py [--language en|nl] [--out DIR] [--small]
"""
import argparse, os, subprocess, tempfile

ESCAPE = [
    "I want to talk to a human",
    "human",
    "agent",
    "operator",
    "representative",
    "can I speak to a representative please",
    "let me talk to an agent",
    "get me a real person",
    "I need to speak to someone",
    "customer service please",
    "put me through to an operator",
    "I would like to speak with a human being",
    "just give me a human",
    "agent agent",
    "can I talk to a person",
    "I want a real person not a machine",
    "transfer me to an agent",
    "speak to a representative",
    "operator please",
    "is there a human I can talk to",
]
ORDINARY = [
    "my internet is down",
    "I have a question about my bill",
    "what are your opening hours",
    "I want to change my address",
    "my package has not arrived yet",
    "how do I reset my password",
    "I was charged twice this month",
    "my operation was cancelled",
    "what is on the agenda today",
    "I need a new router",
    "the connection keeps dropping every evening",
    "can you tell me my balance",
    "I am moving house next week",
    "my phone screen is broken",
    "I would like to cancel my subscription",
    "the presentation starts at noon",
    "when will the engineer arrive",
    "I forgot my account number",
    "the television has no signal",
    "I want to upgrade my plan",
]
VOICES = ["en-us", "en", "en-us+f3", "en+m3"]
RATES = [145, 185]

# Dutch callers asking for a person, and ordinary Dutch requests (some near the escape words:
# "mededeling", "werk", "mensen", "spreekuur", "persoonlijk").
ESCAPE_NL = [
    "ik wil een medewerker spreken",
    "medewerker",
    "een mens",
    "mag ik iemand spreken",
    "klantenservice",
    "ik wil graag met een mens praten",
    "verbind me door met een medewerker",
    "kan ik een medewerker spreken alstublieft",
    "ik wil iemand spreken",
    "geef me een echte persoon",
    "medewerker alstublieft",
    "ik wil met een persoon praten",
    "de klantenservice graag",
    "kan ik met iemand praten",
    "ik wil een mens aan de lijn",
    "medewerker medewerker",
    "operator",
    "doorverbinden met een medewerker",
    "ik wil gewoon een mens spreken",
    "is er iemand die ik kan spreken",
]
ORDINARY_NL = [
    "mijn internet doet het niet",
    "ik heb een vraag over mijn rekening",
    "wat zijn jullie openingstijden",
    "ik wil mijn adres wijzigen",
    "mijn pakket is nog niet aangekomen",
    "hoe reset ik mijn wachtwoord",
    "er is twee keer geld afgeschreven",
    "ik heb een mededeling ontvangen",
    "de monteur komt morgen werken",
    "ik heb een nieuwe router nodig",
    "de verbinding valt elke avond weg",
    "wat is mijn saldo",
    "ik ga volgende week verhuizen",
    "het scherm van mijn telefoon is kapot",
    "ik wil mijn abonnement opzeggen",
    "veel mensen hebben hier last van",
    "wanneer is het spreekuur",
    "ik ben mijn klantnummer vergeten",
    "de televisie heeft geen signaal",
    "mijn persoonlijke gegevens kloppen niet",
    # More ordinary requests, so the false-escape rate rests on hundreds of utterances: what
    # callers of a bank, an energy or a telecom company say (none asks for a person).
    "ik wil mijn meterstanden doorgeven",
    "mijn gasmeter staat op twaalfduizend kuub",
    "de stroommeter geeft een foutmelding",
    "waarom is mijn voorschot zo hoog",
    "ik wil mijn maandbedrag aanpassen",
    "mijn jaarafrekening klopt niet",
    "ik heb mijn eindafrekening nog niet gehad",
    "ik verhuis op de eerste van de maand",
    "hoe zeg ik mijn energiecontract op",
    "ik wil mijn contract verlengen",
    "wanneer wordt het geld teruggestort",
    "mijn pinpas is gestolen",
    "ik wil mijn bankpas blokkeren",
    "mijn creditcard werkt niet in het buitenland",
    "hoe verhoog ik mijn daglimiet",
    "ik zie een betaling die ik niet ken",
    "de automatische incasso is mislukt",
    "ik wil een betalingsregeling treffen",
    "kan ik de factuur in termijnen betalen",
    "ik heb een aanmaning gekregen",
    "mijn rekeningnummer is veranderd",
    "ik kan niet inloggen in de app",
    "ik ben mijn gebruikersnaam kwijt",
    "mijn wachtwoord is verlopen",
    "ik krijg geen sms met de code",
    "de app blijft hangen bij het opstarten",
    "mijn mobiele data is op",
    "ik wil een nieuwe simkaart",
    "mijn nummer overzetten naar een ander toestel",
    "ik heb geen bereik in huis",
    "mijn telefoon belt steeds weg",
    "de wifi is heel traag",
    "het lampje op het modem knippert rood",
    "ik wil een snellere verbinding",
    "wanneer komt de glasvezel in mijn straat",
    "de decoder geeft een zwart beeld",
    "ik mis een paar zenders",
    "mijn pakket staat al drie dagen op onderweg",
    "de bezorger heeft mijn pakket bij de buren gelaten",
    "ik wil een retour aanmelden",
    "het pakket is beschadigd aangekomen",
    "waar kan ik mijn pakket ophalen",
    "ik heb de verkeerde maat gekregen",
    "wanneer is de winkel open op zondag",
    "tot hoe laat zijn jullie vandaag bereikbaar",
    "zijn jullie op koningsdag gesloten",
    "ik wil een afspraak maken voor de installatie",
    "de monteur is niet gekomen",
    "ik wil mijn e-mailadres wijzigen",
    "mijn naam is verkeerd gespeld op de brief",
    "ik heb een nieuw telefoonnummer",
    "stuur de facturen voortaan per post",
    "hoeveel kost bellen naar het buitenland",
    "ik wil een klacht indienen over de storing",
    "er is een storing in mijn wijk",
    "ik wil mijn zonnepanelen aanmelden",
    "hoe werkt het terugleveren van stroom",
    "mijn slimme meter stuurt geen gegevens",
    "ik wil overstappen naar een vast tarief",
    "kunt u mijn saldo voorlezen",
]
VOICES_NL = ["nl", "nl+f3", "nl+m3", "nl+f2", "nl+m1", "nl+f4"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--language", choices=["en", "nl"], default="en")
    ap.add_argument("--out", default=None)
    ap.add_argument("--small", action="store_true", help="2 voices, 1 rate (for tests)")
    args = ap.parse_args()
    dutch = args.language == "nl"
    if args.out is None:
        folder = "corpus-nl" if dutch else "corpus"
        args.out = os.path.join(os.path.dirname(__file__), "..", "bench", folder)
    all_voices = VOICES_NL if dutch else VOICES
    voices, rates = (all_voices[:2], RATES[:1]) if args.small else (all_voices, RATES)
    sets = (("escape", ESCAPE_NL), ("ordinary", ORDINARY_NL)) if dutch else (("escape", ESCAPE), ("ordinary", ORDINARY))
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for kind, sentences in sets:
        for si, text in enumerate(sentences):
            for voice in voices:
                for rate in rates:
                    uid = f"{kind}-{si:02d}-{voice.replace('+', '_')}-{rate}"
                    out = os.path.join(args.out, uid + ".wav")
                    if not os.path.exists(out):
                        with tempfile.TemporaryDirectory() as tmp:
                            raw, ulaw = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "ulaw.wav")
                            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", raw, text], check=True)
                            subprocess.run(["sox", raw, "-r", "8000", "-c", "1", "-e", "mu-law", ulaw,
                                            "sinc", "300-3400", "pad", "0.4", "0.8"], check=True)
                            subprocess.run(["sox", ulaw, "-e", "signed-integer", "-b", "16", out], check=True)
                    rows.append((uid, kind, voice, str(rate), text))
    # Escape and ordinary sentences take turns in the manifest, so that a run over its first
    # part (or every Nth line) measures both kinds.
    order = {kind: i for i, (kind, _) in enumerate(sets)}
    rows.sort(key=lambda r: (int(r[0].split("-")[1]), order[r[1]]))
    with open(os.path.join(args.out, "manifest.tsv"), "w") as f:
        f.write("id\tkind\tvoice\trate\ttext\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"{len(rows)} utterances in {args.out}")


if __name__ == "__main__":
    main()
