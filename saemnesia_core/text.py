"""Rules for text that comes from users (text boxes, HTTP bodies) and from files: bounded length,
no lone surrogates, and the Unicode pieces of the concept name rule (saemnesia_core.concepts):
the normal form, invisible characters, scripts and look-alikes.

Python's unicodedata has no Script property and no confusables data, so both are built here:
a letter's script is read from its Unicode name (which begins with it for every alphabet in
use: "CYRILLIC SMALL LETTER A"), and LOOKALIKES is a small table, written for this pack, of the
Cyrillic and Greek letters (and digits) that are drawn like Latin ones. It is not Unicode's whole
confusables.txt: it covers the look-alikes a concept list of Latin names can be spoofed with.
"""
from __future__ import annotations

import re
import unicodedata

from .errors import SAEError, quoted

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value, what: str, limit: int) -> str:
    """A text input as the pack takes it: text (None counts as empty), at most `limit` characters
    (checked before any parsing, so the work after it is bounded), and no lone surrogate (JSON's
    "\\ud800" decodes to one; it is half of a UTF-16 pair, not a character, and text encoders fail
    on it with a raw TypeError)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SAEError(f"{what} must be text, not {type(value).__name__}.")
    if len(value) > limit:
        raise SAEError(f"{what} is {len(value):,} characters long; the limit is {limit:,}. Shorten it.")
    bad = _SURROGATE.search(value)
    if bad:
        raise SAEError(f"{what} contains a lone surrogate (U+{ord(bad.group()):04X}) at character {bad.start() + 1}: half "
                       "of a UTF-16 pair, not a character (a broken copy and paste, or a hand-made request). "
                       "Retype that part.")
    return value


# --- invisible characters ---------------------------------------------------------------------
# controls, format characters (zero-width, BOM, bidi overrides and isolates, soft hyphen),
# surrogates, private use, unassigned, line and paragraph separators
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# characters of other categories that draw nothing: the combining grapheme joiner, Hangul and
# Khmer fillers, the braille blank, Mongolian and other variation selectors
_BLANK = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0, 0x2800, 0x180B, 0x180C, 0x180D, 0x180F]
                   + list(range(0xFE00, 0xFE10)) + list(range(0xE0100, 0xE01F0)))


def is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) in INVISIBLE_CATEGORIES or ord(ch) in _BLANK


def describe_char(ch: str) -> str:
    """'U+202E RIGHT-TO-LEFT OVERRIDE': how a message names a character it refuses."""
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}"


# --- the normal form --------------------------------------------------------------------------
def normal_form(name: str) -> str:
    """NFKC (compatibility forms as their plain letters: full-width 'ｓｔａｒ' is 'star', a
    decomposed 'café' is the composed one), every space character a plain space (a no-break space
    is one), runs of spaces one space, none at either end. Controls and invisible characters stay,
    for the name rule to refuse by name."""
    text = name
    if not text.isascii():  # ASCII is its own NFKC, and its only space is ' '
        text = unicodedata.normalize("NFKC", text)
        text = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text)
    return re.sub(" {2,}", " ", text).strip(" ")


def lookup_key(name: str) -> str:
    """What two spellings of one concept share: the normal form without case (and without the
    whitespace around it, which the concepts text allows)."""
    return normal_form(name.strip()).casefold()


# --- scripts (UTS #39 mixed-script detection, from character names) ----------------------------
_SCRIPT_PREFIXES = (("CJK", "Han"), ("IDEOGRAPHIC", "Han"), ("KATAKANA-HIRAGANA", None), ("HIRAGANA", "Hiragana"),
                    ("KATAKANA", "Katakana"), ("HANGUL", "Hangul"), ("BOPOMOFO", "Bopomofo"), ("MODIFIER", None))
# UTS #39 "highly restrictive": one script, or Latin with the scripts one East Asian language mixes
_ALLOWED_MIXES = (frozenset({"Latin", "Han", "Hiragana", "Katakana"}), frozenset({"Latin", "Han", "Bopomofo"}),
                  frozenset({"Latin", "Han", "Hangul"}))


def script_of(ch: str) -> str | None:
    """The script of a letter ('Latin', 'Cyrillic', 'Greek', 'Han', ...); None for what belongs to
    no script (digits, spaces, punctuation, symbols, combining marks)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    for prefix, script in _SCRIPT_PREFIXES:
        if name.startswith(prefix):
            return script
    first = name.split(" ", 1)[0]
    return first.capitalize() if first else None


def mixed_scripts(name: str) -> list[str] | None:
    """The scripts of a name that mixes scripts no one writes together (Latin and Cyrillic in
    'stаr'), sorted; None when the name is written in one script (or an allowed mix)."""
    if name.isascii():
        return None  # ASCII letters are all Latin
    scripts = {s for s in map(script_of, name) if s}
    if len(scripts) <= 1 or any(scripts <= allowed for allowed in _ALLOWED_MIXES):
        return None
    return sorted(scripts)


# --- look-alikes (UTS #39 skeletons, with a small table) ----------------------------------------
# Cyrillic and Greek letters drawn like a Latin one, capitals first (casefolding would lose that
# Greek 'Η' looks like 'H' while 'η' looks like 'n'), and the digits 0 and 1.
_CAPITALS = dict(zip("АВЕКМНОРСТХЅІЈҮԌԚԜΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEKMHOPCTXSIJYGQWABEZHIKMNOPTYX"))
_SMALL = dict(zip("авекмнорстухѕіјһԁԛԝӏьαγικνορτυχωηϲϳ01", "abekmhopctyxsijhdqwlbayikvoptuxwncjol"))
LOOKALIKES = {**_CAPITALS, **_SMALL}


def skeleton(name: str) -> str:
    """What a name looks like: its normal form with every look-alike replaced by the Latin letter
    it is drawn like, without case. Two names with one skeleton cannot be told apart on screen."""
    text = "".join(LOOKALIKES.get(ch, ch) for ch in normal_form(name))
    return "".join(LOOKALIKES.get(ch, ch) for ch in text.casefold())


def near_names(typed: str, names: list[str], n: int = 5) -> list[str]:
    """At most n names like the typed one: look-alikes first, then the closest spellings."""
    import difflib
    key, skel = lookup_key(typed), skeleton(typed)
    alike = [name for name in names if skeleton(name) == skel]
    by_key = {lookup_key(name): name for name in names}
    close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=n, cutoff=0.6)]
    return list(dict.fromkeys(alike + close))[:n]


def hidden_in(text: str) -> str | None:
    """Why a typed name may not be what it looks like (invisible characters, mixed scripts), for
    messages about a name that was not found; None when nothing is hidden."""
    invisible = sorted({ch for ch in text if is_invisible(ch)})
    if invisible:
        return f"it contains {', '.join(describe_char(ch) for ch in invisible[:3])}, which cannot be seen"
    scripts = mixed_scripts(normal_form(text))
    if scripts:
        return f"it mixes {' and '.join(scripts)} letters"
    return None


__all__ = ["check_text", "describe_char", "hidden_in", "is_invisible", "lookup_key", "mixed_scripts", "near_names",
           "normal_form", "quoted", "script_of", "skeleton"]
