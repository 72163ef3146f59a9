"""Prompt sets with concept labels.

Labels come from how prompts are built ("a {object} in {style} style"), or from free
"label: prompt" lines. Unlabelled prompts are allowed and serve as the "rest" when
concept scores are computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .concepts import check_concept_name
from .errors import SAEError

DEFAULT_TEMPLATES = ("a {object} in {style} style",)
_LABEL_LINE = re.compile(r"^\s*([^:]{1,400}?)\s*:\s*(.+)$")
_LABEL = re.compile(r"^\s*(?:(object|style|concept)\s*/\s*)?(.{1,80}?)\s*$", re.IGNORECASE)
UNSPECIFIED = "concept"  # a label without 'object/' or 'style/': its kind comes from elsewhere, if given


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


def template_lines(text: str) -> list[str]:
    """The templates box: one template per line; empty = the default template."""
    return [t for t in (text or "").splitlines()] or list(DEFAULT_TEMPLATES)


def build_prompts(objects: list[str], styles: list[str], templates=DEFAULT_TEMPLATES) -> list[LabelledPrompt]:
    """Every template filled with every object x style (or only the kind it mentions)."""
    templates = [t.strip() for t in templates if t and t.strip()]
    both = {n.lower() for n in objects} & {n.lower() for n in styles}
    if both:
        name = next(n for n in objects if n.lower() in both)
        # one label per name: a prompt "a cat in cat style" would silently keep only one kind
        raise SAEError(f"'{name}' is given both as an object and as a style; a concept has one kind. Remove it from "
                       "one of the two lists, or give the two concepts different names (e.g. 'cat' and 'cat style').")
    if not templates:
        raise SAEError("No prompt template given. Use e.g. 'a {object} in {style} style'.")
    out = []
    for t in templates:
        has_o, has_s = "{object}" in t, "{style}" in t
        if not (has_o or has_s):
            raise SAEError(f"Template '{t}' has neither {{object}} nor {{style}}; add at least one placeholder.")
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


def parse_labelled_lines(text: str) -> list[LabelledPrompt]:
    """'label: prompt' per line, or 'label, label: prompt' for a prompt that shows several
    concepts ('circle, style/stripes: a striped ball'); 'style/' or 'object/' before a label sets
    its kind. A line without a label is an unlabelled prompt; '#' starts a comment."""
    out = []
    for raw in (text or "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LABEL_LINE.match(line)
        labels = [_LABEL.match(part) for part in split_list(m.group(1))] if m else []
        if labels and all(labels):
            out.append(LabelledPrompt(m.group(2).strip(), {lab.group(2): (lab.group(1) or UNSPECIFIED).lower()
                                                           for lab in labels}))
        else:
            out.append(LabelledPrompt(line, {}))
    return out


def concept_kinds(prompts: list[LabelledPrompt]) -> dict[str, str]:
    """All concepts named by the prompts, in first-seen order. A label given without a kind takes
    the kind the name has elsewhere ('circle: a round ball' next to circle in the objects list)."""
    kinds: dict[str, str] = {}
    spelled: dict[str, str] = {}  # lower case -> first spelling (names are looked up without case)
    for p in prompts:
        for name, kind in p.labels.items():
            if name not in kinds:
                check_concept_name(name, "Rename the concept in the objects, styles or 'label: prompt' lines.")
                first = spelled.setdefault(name.lower(), name)
                if first != name:
                    raise SAEError(f"'{first}' and '{name}' differ only in case, and concept names are matched "
                                   "without case; spell them the same way.")
                kinds[name] = kind
            elif kind != UNSPECIFIED and kinds[name] == UNSPECIFIED:
                kinds[name] = kind
            elif kind not in (UNSPECIFIED, kinds[name]):
                raise SAEError(f"'{name}' is labelled both {kinds[name]} and {kind}; give it one kind.")
    return kinds


def resolve_kinds(prompts: list[LabelledPrompt]) -> list[LabelledPrompt]:
    """The prompts with every label carrying its concept's one kind (see concept_kinds)."""
    kinds = concept_kinds(prompts)
    return [LabelledPrompt(p.text, {n: kinds[n] for n in p.labels}) for p in prompts]


def assemble_prompts(objects: str, styles: str, templates: str, labelled_lines: str) -> list[LabelledPrompt]:
    """What the Train node's text boxes describe, as one list; refuses an empty result."""
    prompts = []
    o, s = split_list(objects), split_list(styles)
    if o or s:
        prompts += build_prompts(o, s, template_lines(templates))
    prompts += parse_labelled_lines(labelled_lines)
    if not prompts:
        raise SAEError("The prompt list is empty. Give objects and/or styles (with a template such as "
                       "'a {object} in {style} style'), or 'label: prompt' lines.")
    return resolve_kinds(prompts)  # bad or conflicting names fail here, before any sampling


def planned_concepts(objects: str, styles: str, templates: str, labelled_lines: str) -> list[tuple[str, str]]:
    """(name, kind) of the concepts the Train node's text boxes name, objects first, then styles,
    then labelled lines. Grammar only: the names are not checked (training refuses bad ones), so a
    preview still shows, escaped, what a shared workflow carries."""
    kinds: dict[str, str] = {}
    lines = [t.strip() for t in template_lines(templates)]
    for placeholder, names, kind in (("{object}", objects, "object"), ("{style}", styles, "style")):
        if any(placeholder in t for t in lines):
            for name in split_list(names):
                kinds.setdefault(name, kind)
    for p in parse_labelled_lines(labelled_lines):
        for name, kind in p.labels.items():
            if kinds.setdefault(name, kind) == UNSPECIFIED:
                kinds[name] = kind
    return list(kinds.items())
