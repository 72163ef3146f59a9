"""Handover maps for an SAE on text states: where the concept's latent fires, move every token
of the prompt to what the text encoder gives for the same prompt with the anchor's word.

A text encoder's states are contextual: every token of "a star in dots style" carries the star,
each in its own way, so one mean shift for all tokens lands far from any prompt the model was
trained on (measured: further from the anchor prompt's states than where it started). A linear
map per concept, fitted by ridge regression on token-aligned pairs (each training prompt that
names the concept, and its twin naming the anchor), predicts each token's own move. It is the
closed-form key/value edit of UCE, moved to the text states and gated by the SAE's detection.
"""
from __future__ import annotations

import re

import torch

# ridge weight, relative to the states' mean energy per channel (the Gram matrix's mean diagonal):
# keeps a map fitted on a few dozen prompts from learning their noise, and leaves their moves intact
RIDGE = 1e-2


def twin_text(text: str, name: str, anchor: str) -> str | None:
    """The prompt with every whole-word occurrence of `name` (any case) replaced by `anchor`;
    None if the prompt does not name it (a synonym line has no twin)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
    twin, n = pattern.subn(anchor, text)
    return twin if n else None


def _content_length(ids: list[int]) -> int:
    """Length without the trailing run of padding (the last id repeated), keeping one of it."""
    n = len(ids)
    while n > 1 and ids[n - 2] == ids[-1]:
        n -= 1
    return n


def align_twins(ids: list[int], twin_ids: list[int]) -> torch.Tensor:
    """For each token of a prompt, the index of its counterpart in the twin prompt (-1: none).

    The two differ in one span (the concept's word against the anchor's, which may tokenise to
    a different count): tokens before it pair by position, tokens after it by position from the
    end of the content, and every token of the span pairs with the first token of the twin's."""
    if len(ids) != len(twin_ids):
        raise ValueError(f"twin prompts tokenised to {len(ids)} and {len(twin_ids)} tokens; give equal lengths")
    n_tok = len(ids)
    lp, lt = _content_length(ids), _content_length(twin_ids)
    head = 0
    while head < min(lp, lt) and ids[head] == twin_ids[head]:
        head += 1
    tail = 0
    while tail < min(lp, lt) - head and ids[lp - 1 - tail] == twin_ids[lt - 1 - tail]:
        tail += 1
    shift = lt - lp
    out = []
    for i in range(n_tok):
        if i < head:
            out.append(i)
        elif i < lp - tail:
            out.append(head if head < n_tok else -1)
        else:
            out.append(i + shift if 0 <= i + shift < n_tok else -1)
    return torch.tensor(out, dtype=torch.long)


def fit_handover(states: list[torch.Tensor], twin_states: list[torch.Tensor], alignments: list[torch.Tensor],
                 ridge: float = RIDGE) -> torch.Tensor:
    """[d_in + 1, d_in]: M such that x + [x, 1] @ M approximates the twin's aligned token state.

    states / twin_states: per prompt [tokens, d_in]; alignments: per prompt from align_twins."""
    xs, ys = [], []
    for x, y, al in zip(states, twin_states, alignments):
        ok = al >= 0
        xs.append(x[ok].double())
        ys.append(y[al[ok]].double())
    if not xs or sum(len(x) for x in xs) == 0:
        raise ValueError("no aligned token pairs to fit a handover map on")
    x = torch.cat(xs)
    y = torch.cat(ys)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    scale = float((x * x).sum()) / x.shape[1]  # the ridge term scales with the data's energy
    gram = xb.T @ xb + ridge * scale * torch.eye(xb.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, xb.T @ (y - x)).float()


def handover_moves(x: torch.Tensor, maps: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Sum over maps of gate * ([x, 1] @ map): x [T, d]; maps [L, d + 1, d]; gates [T, L]."""
    d = x.shape[-1]
    moves = torch.einsum("td,lde->tle", x.to(maps.dtype), maps[:, :d]) + maps[:, d].unsqueeze(0)
    return (gates.to(maps.dtype).unsqueeze(-1) * moves).sum(1).to(x.dtype)


def fit_concept_handovers(index, prompts, encode) -> dict[str, str]:
    """Fit each anchored concept's map (`index` is changed in place: Concept.handover and
    handover_anchor). prompts: LabelledPrompt-like (text, labels); encode(list of texts) ->
    list of (token ids, states [tokens, d_in]). Returns {concept: why it has no map}."""
    skipped, pairs = {}, {}
    for c in index.concepts.values():
        c.handover, c.handover_anchor = None, None
        if c.latent is None or not c.anchor:
            continue
        texts = [p.text for p in prompts if c.name in p.labels]
        twins = [twin_text(t, c.name, c.anchor) for t in texts]
        pairs[c.name] = [(t, w) for t, w in zip(texts, twins) if w is not None and w != t]
        if not pairs[c.name]:
            skipped[c.name] = "none of its prompts names it"
    # a twin is often another concept's prompt (and the other way round): encode each text once
    texts = list(dict.fromkeys(t for ps in pairs.values() for pair in ps for t in pair))
    encoded = dict(zip(texts, encode(texts))) if texts else {}
    for name, ps in pairs.items():
        if not ps:
            continue
        c = index.concepts[name]
        states, twin_states, alignments = [], [], []
        for (ids, x), (twin_ids, y) in ((encoded[t], encoded[w]) for t, w in ps):
            if len(ids) != len(twin_ids) or x.shape != y.shape:
                continue  # a twin that crossed a chunk boundary has no token-by-token partner
            states.append(x)
            twin_states.append(y)
            alignments.append(align_twins(ids, twin_ids))
        if not states:
            skipped[c.name] = "its prompts and their twins tokenise to different lengths"
            continue
        c.handover = fit_handover(states, twin_states, alignments)
        c.handover_anchor = c.anchor
    return skipped
