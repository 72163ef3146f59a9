"""Prompt sets with concept labels.

Labels come from how prompts are built ("a {object} in {style} style"), or from free
"label: prompt" lines. Unlabelled prompts are allowed and serve as the "rest" when
concept scores are computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .concepts import MAX_CONCEPT_NAME_CHARS, check_concept_name, check_distinct_names
from .errors import SAEError, quoted
from .text import check_text, lookup_key, normal_form

DEFAULT_TEMPLATES = ("a {object} in {style} style",)
_LABEL_LINE = re.compile(r"^\s*([^:]{1,400}?)\s*:\s*(.+)$")
_LABEL = re.compile(rf"^\s*(?:(object|style|concept)\s*/\s*)?(.{{1,{MAX_CONCEPT_NAME_CHARS}}}?)\s*$", re.IGNORECASE)
_KIND_ONLY = re.compile(r"^\s*(object|style|concept)\s*/\s*$", re.IGNORECASE)
UNSPECIFIED = "concept"  # a label without 'object/' or 'style/': its kind comes from elsewhere, if given

# Limits on what the nodes take, checked before any work (one constant each, quoted by the messages).
# Erase Concepts: its concepts text (room for every entry at the longest name and an anchor), and
# the entries in it once repeats are removed
MAX_ERASE_TEXT_CHARS = 100_000
MAX_ERASE_ENTRIES = 500
# Train SAE from Prompts: each text box, and the prompts they make once repeats are removed (the
# UnlearnCanvas grid of 50 styles x 20 objects is 1,000 prompts per template)
MAX_TRAIN_BOX_CHARS = 100_000
MAX_TRAIN_PROMPTS = 5_000
TRAIN_BOXES = ("objects", "styles", "templates", "labelled_prompts")


@dataclass
class LabelledPrompt:
    text: str
    labels: dict[str, str] = field(default_factory=dict)  # concept name -> kind


# The one list grammar: Erase's concepts, Train's objects, styles and hook points, and (served with
# every concept list by the pack's route) the picker's editing of the concepts text.
LIST_SEPARATORS = ",;\n"
_LIST_SPLIT = re.compile(f"[{re.escape(LIST_SEPARATORS)}]")


def split_list(text: str | list[str]) -> list[str]:
    """'cat, sketch\nneuron:12; ink' -> ['cat', 'sketch', 'neuron:12', 'ink']; blank entries dropped.
    A list is taken as already split."""
    items = text if isinstance(text, list) else _LIST_SPLIT.split(text or "")
    return [s.strip() for s in items if s and s.strip()]


def unique(items, key=lambda item: item) -> list:
    """The items without repeats (by key), first occurrence kept, in order: the one way repeats
    are removed, from concept lists, prompt lists and lines alike."""
    return list({key(item): item for item in reversed(list(items))}.values())[::-1]


def erase_entries(concepts: str | list[str]) -> list[str]:
    """The entries of an Erase Concepts text (or list), bounded before any lookup: the text by
    MAX_ERASE_TEXT_CHARS, the entries, once repeats (text.lookup_key) are removed, by MAX_ERASE_ENTRIES."""
    if not isinstance(concepts, list):
        concepts = check_text(concepts, "The concepts text", MAX_ERASE_TEXT_CHARS)
    entries = unique(split_list(concepts), key=lookup_key)
    if len(entries) > MAX_ERASE_ENTRIES:
        raise SAEError(f"The concepts text names {len(entries):,} different concepts; Erase Concepts takes at most "
                       f"{MAX_ERASE_ENTRIES:,} at once. Erase fewer, or chain a second Erase Concepts node for the rest.")
    return entries


def box_lines(text: str) -> list[str]:
    """The lines of a text box: split at line breaks a user types (\n, \r\n, \r) only, not at the
    invisible ones str.splitlines also takes (U+2028, U+0085, form feed...), which would cut a line
    where nothing shows; those stay in the line, where the name rule refuses them in a name."""
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n") if text else []


def template_lines(text: str) -> list[str]:
    """The templates box: one template per line; empty = the default template."""
    return box_lines(text) or list(DEFAULT_TEMPLATES)


def build_prompts(objects: list[str], styles: list[str], templates=DEFAULT_TEMPLATES) -> list[LabelledPrompt]:
    """Every template filled with every object x style (or only the kind it mentions); names in
    their normal form (text.normal_form), each once."""
    objects, styles = (unique(normal_form(n) for n in names) for names in (objects, styles))
    templates = [t.strip() for t in templates if t and t.strip()]
    both = {n.lower() for n in objects} & {n.lower() for n in styles}
    if both:
        name = next(n for n in objects if n.lower() in both)
        # one label per name: a prompt "a cat in cat style" would silently keep only one kind
        raise SAEError(f"{quoted(name)} is given both as an object and as a style; a concept has one kind. Remove it "
                       "from one of the two lists, or give the two concepts different names (e.g. 'cat' and 'cat style').")
    if not templates:
        raise SAEError("No prompt template given. Use e.g. 'a {object} in {style} style'.")
    out = []
    for t in templates:
        has_o, has_s = "{object}" in t, "{style}" in t
        if not (has_o or has_s):
            raise SAEError(f"Template {quoted(t)} has neither {{object}} nor {{style}}; add at least one placeholder.")
        if (has_o and not objects) or (has_s and not styles):
            continue
        for o in (objects if has_o else [None]):
            for s in (styles if has_s else [None]):
                labels = {}
                if o is not None:
                    labels[o] = "object"
                if s is not None:
                    labels[s] = "style"
                out.append(LabelledPrompt(t.replace("{object}", o or "").replace("{style}", s or ""), labels))
    return out


def parse_labelled_lines(text: str, strict: bool = True) -> list[LabelledPrompt]:
    """'label: prompt' per line, or 'label, label: prompt' for a prompt that shows several
    concepts ('circle, style/stripes: a striped ball'); 'style/' or 'object/' before a label sets
    its kind. A line without a label is an unlabelled prompt; '#' starts a comment. A line that is
    only a label, only a ':', or has no word at all would train on nothing: refused (skipped when
    not strict: the picker's preview of what a Train node will index)."""
    out = []
    for number, raw in enumerate(box_lines(text), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            out.append(_labelled_line(line, f"labelled_prompts line {number} ({quoted(line)})"))
        except SAEError:
            if strict:
                raise
    return out


def _labelled_line(line: str, where: str) -> LabelledPrompt:
    m = _LABEL_LINE.match(line)
    if m is None and ":" in line:
        label, _, prompt = line.partition(":")
        if not label.strip() or not prompt.strip():
            raise SAEError(f"{where} is a label without a prompt, or a ':' without a label. Write 'label: prompt' "
                           "(e.g. 'cat: a cat on a sofa'), or a prompt without ':'.")
    parts = split_list(m.group(1)) if m else []
    kind_only = [part for part in parts if _KIND_ONLY.match(part)]
    if kind_only:
        raise SAEError(f"{where}: the label {quoted(kind_only[0])} gives a kind but no name; write e.g. 'style/ink'.")
    labels = [_LABEL.match(part) for part in parts]
    labelled = bool(labels) and all(labels)
    prompt = m.group(2).strip() if labelled else line
    if not any(ch.isalnum() for ch in prompt):
        raise SAEError(f"{where} has no words to prompt with. Write a prompt, or remove the line.")
    if not labelled:
        return LabelledPrompt(line, {})
    return LabelledPrompt(prompt, {normal_form(lab.group(2)): (lab.group(1) or UNSPECIFIED).lower() for lab in labels})


def concept_kinds(prompts: list[LabelledPrompt]) -> dict[str, str]:
    """All concepts named by the prompts, in first-seen order. A label given without a kind takes
    the kind the name has elsewhere ('circle: a round ball' next to circle in the objects list).
    Every name follows the one rule for concept names, and no two look alike."""
    kinds: dict[str, str] = {}
    fix = "Rename the concept in the objects, styles or 'label: prompt' lines."
    for p in prompts:
        for name, kind in p.labels.items():
            if name not in kinds:
                check_concept_name(name, fix)
                kinds[name] = kind
            elif kind != UNSPECIFIED and kinds[name] == UNSPECIFIED:
                kinds[name] = kind
            elif kind not in (UNSPECIFIED, kinds[name]):
                raise SAEError(f"{quoted(name)} is labelled both {kinds[name]} and {kind}; give it one kind.")
    check_distinct_names(kinds, fix)
    return kinds


def resolve_kinds(prompts: list[LabelledPrompt]) -> list[LabelledPrompt]:
    """The prompts with every label carrying its concept's one kind (see concept_kinds)."""
    kinds = concept_kinds(prompts)
    return [LabelledPrompt(p.text, {n: kinds[n] for n in p.labels}) for p in prompts]


def train_boxes(*texts) -> list[str]:
    """The Train node's four text boxes (TRAIN_BOXES), each checked (text, at most
    MAX_TRAIN_BOX_CHARS, no lone surrogate) before it is parsed."""
    return [check_text(t, f"The {box} box", MAX_TRAIN_BOX_CHARS) for box, t in zip(TRAIN_BOXES, texts)]


def assemble_prompts(objects: str, styles: str, templates: str, labelled_lines: str) -> list[LabelledPrompt]:
    """What the Train node's text boxes describe, as one list without repeats; refuses an empty
    result, one that names no concept, and one of more than MAX_TRAIN_PROMPTS prompts."""
    objects, styles, templates, labelled_lines = train_boxes(objects, styles, templates, labelled_lines)
    prompts = []
    o, s = split_list(objects), split_list(styles)
    if o or s:
        prompts += build_prompts(o, s, template_lines(templates))
    prompts += parse_labelled_lines(labelled_lines)
    if not prompts:
        raise SAEError("The prompt list is empty. Give objects and/or styles (with a template such as "
                       "'a {object} in {style} style'), or 'label: prompt' lines.")
    given = len(prompts)
    prompts = unique(prompts, key=lambda p: (p.text, tuple(sorted(p.labels.items()))))
    if len(prompts) > MAX_TRAIN_PROMPTS:
        raise SAEError(f"These boxes make {len(prompts):,} different prompts ({given - len(prompts):,} repeats removed); "
                       f"Train SAE from Prompts takes at most {MAX_TRAIN_PROMPTS:,}. Each prompt is sampled "
                       "(steps x seeds_per_prompt model runs) and stored before training starts: use fewer objects, "
                       "styles or templates, or fewer lines.")
    if not any(p.labels for p in prompts):
        raise SAEError("None of the prompts names a concept, so the SAE would have no concept to erase. Give objects "
                       "and/or styles with a template, or 'label: prompt' lines (e.g. 'cat: a cat on a sofa').")
    return resolve_kinds(prompts)  # bad or conflicting names fail here, before any sampling


def planned_concepts(objects: str, styles: str, templates: str, labelled_lines: str) -> list[tuple[str, str]]:
    """(name, kind) of the concepts the Train node's text boxes name, objects first, then styles,
    then labelled lines, in their normal form. Grammar only: the names are not checked (training
    refuses bad ones), so a preview still shows, escaped, what a shared workflow carries."""
    objects, styles, templates, labelled_lines = train_boxes(objects, styles, templates, labelled_lines)
    kinds: dict[str, str] = {}
    lines = [t.strip() for t in template_lines(templates)]
    for placeholder, names, kind in (("{object}", objects, "object"), ("{style}", styles, "style")):
        if any(placeholder in t for t in lines):
            for name in split_list(names):
                kinds.setdefault(normal_form(name), kind)
    for p in parse_labelled_lines(labelled_lines, strict=False):
        for name, kind in p.labels.items():
            if kinds.setdefault(name, kind) == UNSPECIFIED:
                kinds[name] = kind
    return list(kinds.items())
