"""Prompt sets with concept labels.

Labels come from how prompts are built ("a {object} in {style} style"), or from free
"label: prompt" lines. Unlabelled prompts are allowed and serve as the "rest" when
concept scores are computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SAEError

DEFAULT_TEMPLATES = ("a {object} in {style} style",)
_LABEL_LINE = re.compile(r"^\s*(?:(object|style|concept)\s*/\s*)?([^:]{1,80}?)\s*:\s*(.+)$", re.IGNORECASE)


@dataclass
class LabelledPrompt:
    text: str
    labels: dict[str, str] = field(default_factory=dict)  # concept name -> kind


def split_list(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"[,\n]", text or "") if s.strip()]


def build_prompts(objects: list[str], styles: list[str], templates=DEFAULT_TEMPLATES) -> list[LabelledPrompt]:
    """Every template filled with every object x style (or only the kind it mentions)."""
    templates = [t.strip() for t in templates if t and t.strip()]
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
    """'label: prompt' per line ('style/label: prompt' or 'object/label: prompt' to set the
    kind); a line without a label is an unlabelled prompt; '#' starts a comment."""
    out = []
    for raw in (text or "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LABEL_LINE.match(line)
        if m and m.group(3).strip():
            kind = (m.group(1) or "concept").lower()
            out.append(LabelledPrompt(m.group(3).strip(), {m.group(2).strip(): kind}))
        else:
            out.append(LabelledPrompt(line, {}))
    return out


def concept_kinds(prompts: list[LabelledPrompt]) -> dict[str, str]:
    """All concepts named by the prompts, in first-seen order."""
    kinds: dict[str, str] = {}
    for p in prompts:
        for name, kind in p.labels.items():
            if kinds.setdefault(name, kind) != kind:
                raise SAEError(f"'{name}' is labelled both {kinds[name]} and {kind}; give it one kind.")
    return kinds


def assemble_prompts(objects: str, styles: str, templates: str, labelled_lines: str) -> list[LabelledPrompt]:
    """What the Train node's text boxes describe, as one list; refuses an empty result."""
    prompts = []
    o, s = split_list(objects), split_list(styles)
    if o or s:
        prompts += build_prompts(o, s, [t for t in (templates or "").splitlines()] or DEFAULT_TEMPLATES)
    prompts += parse_labelled_lines(labelled_lines)
    if not prompts:
        raise SAEError("The prompt list is empty. Give objects and/or styles (with a template such as "
                       "'a {object} in {style} style'), or 'label: prompt' lines.")
    return prompts
