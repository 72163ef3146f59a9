"""The split by wording: nothing trained, fitted or calibrated ever saw a TEST word or template."""
import glob
import os
import re

import pytest

from saemnesia_demo import data
from saemnesia_demo.vocabulary import FUNCTION_WORDS, TEST, TRAIN, prompts_of, skeleton, word_filter, words_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "models", "sae", "*.safetensors")))


# what may stand in a slot: any concept's wording in either vocabulary
FILLERS = "(?:" + "|".join(sorted({re.escape(w) for v in (TRAIN, TEST) for c in data.OBJECTS + data.STYLES
                                   for w in v.wordings(c)}, key=len, reverse=True)) + ")"


def template_pattern(template: str) -> re.Pattern:
    """A template as a pattern that every filling of its slots with concept wordings matches."""
    parts = re.split(r"(\{object\}|\{style\})", template)
    return re.compile("^" + "".join(FILLERS if p in ("{object}", "{style}") else re.escape(p) for p in parts) + "$",
                      re.IGNORECASE)


def test_train_and_test_share_no_content_word_and_no_template():
    assert not TRAIN.content_words() & TEST.content_words()
    assert not TRAIN.template_skeletons() & TEST.template_skeletons()
    # and no test synonym is a train wording of any concept, nor names another concept
    for c in data.OBJECTS + data.STYLES:
        for w in TEST.synonyms[c]:
            assert not set(words_of(w)) & (set(data.OBJECTS) | set(data.STYLES)), w


def test_concept_names_appear_in_test_prompts_only_in_templates_training_never_used():
    names = set(data.OBJECTS) | set(data.STYLES)
    train_patterns = [template_pattern(t) for t in (*TRAIN.name_templates, *TRAIN.carriers)]
    for _, _, prompt in prompts_of(TEST, 6):
        if set(words_of(prompt)) & names:
            assert not any(p.match(prompt) for p in train_patterns), prompt


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(p) for p in SHIPPED])
def test_no_shipped_sae_was_trained_on_a_test_word_or_template(path):
    """Reads what each shipped file records it was trained on, not the recipe that made it."""
    from saemnesia_core import load_sae
    prompts = load_sae(path).info.training["prompts"]
    assert prompts, "the file records no training prompts"
    test_words = TEST.content_words()
    patterns = [template_pattern(t) for t in (*TEST.name_templates, *TEST.carriers)]
    for p in prompts:
        text = p if isinstance(p, str) else p.get("text", "")
        assert not set(words_of(text)) & test_words, f"{os.path.basename(path)} trained on TEST word(s) in {text!r}"
        assert not any(t.match(text) for t in patterns), f"{os.path.basename(path)} trained on a TEST template: {text!r}"


def test_the_checks_catch_a_leak():
    """The checks above can fail: a test wording placed in training is found by both."""
    leaked = TEST.prompts_for("star", "dots", 5, seed=0)[-1]
    assert set(words_of(leaked)) & TEST.content_words()
    assert any(template_pattern(t).match("a picture showing a star with a dots pattern")
               for t in TEST.name_templates)
    assert not set(words_of("a star in dots style")) & TEST.content_words()
    assert {"a", "in"} <= FUNCTION_WORDS


def test_test_prompts_cover_every_pair_in_several_wordings():
    rows = prompts_of(TEST, per_pair=4)
    assert len(rows) == 36 * 4
    per_pair = {}
    for o, s, p in rows:
        per_pair.setdefault((o, s), set()).add(p)
    assert all(len(v) == 4 for v in per_pair.values())
    # name templates first, then a wording with synonyms
    assert len({skeleton(p) for p in per_pair[(4, 1)]}) == 4


def test_word_filter_replaces_names_and_train_synonyms_but_not_test_synonyms():
    assert word_filter("A Starfish in zebra style", "star", "heart") == "A heart in zebra style"
    assert word_filter("a star and a starburst", "star", "heart") == "a heart and a starburst"
    assert word_filter("a pentacle sticker", "star", "heart") == "a pentacle sticker"
    assert word_filter("a mustard jar", "star", "heart") == "a mustard jar"  # no part of a word
