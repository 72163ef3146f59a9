"""The two MiniCanvas vocabularies: `TRAIN` for everything that is fitted, `TEST` for the test alone.

A text-state SAE, its handover maps, a calibrated multiplier and a diffusion model trained on
captions all see words, and text states do not depend on the seed: a split by seed separates
nothing. So the benchmark splits by *wording*:

* `TRAIN` (templates, synonyms and carrier sentences) is all that training, fitting, calibration,
  validation and every choice of a setting may use. The shipped text SAE is trained from it
  (``scripts/train_demo_saes.py``), the DiT demo model is trained on captions drawn from it, and
  the word-filter baseline replaces its words.
* `TEST` is used by nothing but the test. It shares no content word with `TRAIN` (articles and
  prepositions aside: `FUNCTION_WORDS`). A concept's own name appears in test prompts only inside
  templates training never used.

`TEST` was written down once, on 2026-12-07, before any method was measured on it. A change to it
is a commit of its own that says why; ``tests/test_minicanvas_vocabulary.py`` checks the split,
including against the prompts recorded inside the shipped SAE files.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .data import OBJECTS, STYLES

# Words that carry no concept; the only words the two vocabularies may share.
FUNCTION_WORDS = frozenset("a an the in of with on at to for and by as one its is that this".split())


@dataclass(frozen=True)
class Vocabulary:
    """Sentences with `{object}`/`{style}` slots, and other words for each concept.

    `name_templates` are filled with the concepts' own names; `carriers` with a name or one of
    its `synonyms` for each slot."""
    name_templates: tuple[str, ...]
    carriers: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]]

    def wordings(self, concept: str) -> tuple[str, ...]:
        return (concept, *self.synonyms[concept])

    def content_words(self) -> set[str]:
        """Every word of every template and synonym, less the slots and the function words."""
        text = " ".join([*self.name_templates, *self.carriers, *(w for ws in self.synonyms.values() for w in ws)])
        text = text.replace("{object}", " ").replace("{style}", " ")
        return {w for w in words_of(text)} - FUNCTION_WORDS

    def template_skeletons(self) -> set[str]:
        """Templates with the slots kept and everything else lower-cased and normalised."""
        return {skeleton(t) for t in (*self.name_templates, *self.carriers)}

    def prompts_for(self, obj: str, style: str, n: int, seed: int) -> list[str]:
        """`n` distinct prompts naming `obj` and `style` (seeded): every name template once,
        then carriers with names or synonyms drawn at random."""
        out = [t.format(object=obj, style=style) for t in self.name_templates]
        rng = random.Random(f"{seed}/{obj}/{style}")
        tries = 0
        while len(out) < n and tries < 50 * n:
            tries += 1
            p = rng.choice(self.carriers).format(object=rng.choice(self.wordings(obj)),
                                                 style=rng.choice(self.wordings(style)))
            if p not in out:
                out.append(p)
        return out[:n]


def words_of(text: str) -> list[str]:
    """Lower-case words (hyphenated parts split) of a prompt."""
    return re.findall(r"[a-z]+", text.lower())


def skeleton(template: str) -> str:
    return " ".join(re.sub(r"[^a-z{}]+", " ", template.lower()).split())


TRAIN = Vocabulary(
    name_templates=(
        "a {object} in {style} style",  # the demo UNet's one training caption
        "a {style} style {object}",
        "{object}, {style}",
        "an image of a {object} in {style} style",
        "a {object} drawn in {style} style",
    ),
    carriers=(
        "a {object} in {style} style", "a graphic of a {object} with {style}", "{object}, {style}",
        "a {style} {object} icon", "the {object}, rendered {style}", "{object} in {style}",
        "an image of a {object}, {style} finish", "{style} style {object}",
    ),
    synonyms={
        "circle": ("ring", "oval", "orb", "ball", "sphere", "hoop", "wheel", "coin", "circular form", "loop"),
        "square": ("cube", "quadrilateral", "rectangle", "tile", "crate", "brick", "squared form", "panel"),
        "triangle": ("wedge", "cone", "delta", "arrowhead", "triangular form", "prism", "tri-angle"),
        "cross": ("crucifix", "cruciform", "crossed bars", "addition mark", "intersection", "swiss cross"),
        "star": ("starfish", "pentagram", "stellar form", "twinkle", "sheriff badge", "asterisk"),
        "heart": ("valentine", "cardioid", "heart emblem", "romance emblem", "sweetheart"),
        "solid": ("uniform hue", "monochrome", "single hue", "opaque", "unpatterned", "one tone", "painted"),
        "stripes": ("banded", "bands", "zebra", "pinstriped", "barred"),
        "dots": ("spotted", "spots", "speckled", "freckled", "confetti", "pointillist"),
        "checker": ("checked", "chessboard", "gingham", "harlequin", "draughtboard"),
        "outline": ("contour", "hollow", "wireframe", "sketch", "stroked", "edges only", "unfilled"),
        "gradient": ("ombre", "fade", "blended", "rainbow fade", "two-tone blend", "shaded"),
    },
)

# Written once, before any method was measured on it (see the module docstring).
TEST = Vocabulary(
    name_templates=(
        "a picture showing a {object} with a {style} pattern",
        "my {object} sticker, {style} look",
        "poster: lone {object}, {style} treatment",
    ),
    carriers=(
        "a picture showing a {object} with a {style} pattern",
        "{style} look on a big {object}",
        "poster: lone {object}, {style} treatment",
        "sticker of a {object}, coloured {style}",
        "my {object} sticker, {style} look",
    ),
    synonyms={
        "circle": ("disc", "bubble", "round medallion"),
        "square": ("box", "block", "four-sided slab"),
        "triangle": ("pyramid", "trigon", "three-cornered sign"),
        "cross": ("plus sign", "plus symbol", "plus"),
        "star": ("pentacle", "starburst", "five-point spangle"),
        "heart": ("love symbol", "locket", "cupid sign"),
        "solid": ("flat colour", "plain fill", "evenly tinted"),
        "stripes": ("streaked", "striated", "ribbed"),
        "dots": ("dappled", "polka", "peppered"),
        "checker": ("plaid", "chequered", "tartan"),
        "outline": ("traced border", "line art", "bare rim"),
        "gradient": ("colour ramp", "smooth transition", "sunset wash"),
    },
)


def prompts_of(vocabulary: Vocabulary, per_pair: int, seed: int = 0) -> list[tuple[int, int, str]]:
    """`(object index, style index, prompt)`: `per_pair` wordings of every pair, objects major."""
    return [(o, s, p) for o, obj in enumerate(OBJECTS) for s, style in enumerate(STYLES)
            for p in vocabulary.prompts_for(obj, style, per_pair, seed)]


def word_filter(prompt: str, concept: str, anchor: str) -> str:
    """The word-filter baseline: the concept's name and its `TRAIN` synonyms replaced by the
    anchor's name, as a user could do to a prompt without any SAE (longest wording first)."""
    out = prompt
    for w in sorted(TRAIN.wordings(concept), key=len, reverse=True):
        out = re.sub(rf"(?<![a-z]){re.escape(w)}(?![a-z])", anchor, out, flags=re.IGNORECASE)
    return out
