"""Concept index: which SAE latents stand for which concept.

Two ways to fill it:
- SAeUron (unsupervised): per timestep, score every latent by how much more of its
  (normalised) mean activation falls on prompts with the concept than on the rest, and keep
  the latents above the tau-quantile of scores.
- SAEmnesia (supervised): each concept owns one latent, assigned greedily by the same score
  (objects first) and then tied to it by the supervised loss during training.

Either way the index also keeps, per timestep and selected latent, the concept's mean
activation and the mean over all prompts: the ablation target and its firing threshold.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch

from . import text
from .errors import SAEError, UnknownConceptError, quoted

KINDS = ("object", "style", "concept")
MODES = ("neuron", "ablate", "replace")
# the concept picker shows names in the browser: characters that are markup there are refused
_MARKUP = set('<>&"')
MAX_CONCEPT_NAME_CHARS = 80  # also the longest label a 'label: prompt' line can give
# an unknown name is answered with the SAE's whole list up to this many concepts, else with a few near ones
LIST_ALL_UP_TO = 12


def name_problem(name) -> str | None:
    """What breaks the one rule for concept names, or None. A name is text with a letter or digit,
    at most MAX_CONCEPT_NAME_CHARS long, free of markup (< > & "), control and invisible characters
    (zero-width, BOM, bidi overrides and isolates, line separators), already in its normal form
    (text.normal_form: NFKC, plain single spaces, none at the ends), and written in one script."""
    if not isinstance(name, str) or not name.strip():
        return "is empty or not text"
    if len(name) > MAX_CONCEPT_NAME_CHARS:
        return f"is {len(name):,} characters long; concept names have at most {MAX_CONCEPT_NAME_CHARS}"
    bad = sorted({ch for ch in name if ch in _MARKUP or text.is_invisible(ch)})
    if bad:
        shown = ", ".join(repr(ch) if ch in _MARKUP else text.describe_char(ch) for ch in bad[:4])
        return (f"contains {shown}: concept names may not contain < > & \" (the concept picker shows them in the "
                "browser), control characters, or characters that cannot be seen (zero-width, BOM, bidi controls, "
                "line separators)")
    plain = text.normal_form(name)
    if plain != name:
        return (f"is not in plain form (no-break or repeated spaces, spaces at an end, or compatibility "
                f"characters such as full-width letters); write it as {quoted(plain)}")
    if not any(ch.isalnum() for ch in name):
        return "has no letter or digit, so it names no concept"
    scripts = text.mixed_scripts(name)
    if scripts:
        return (f"mixes {' and '.join(scripts)} letters, so it can pass for another name; write it in one script")
    return None


def check_concept_name(name: str, fix: str) -> str:
    """The one rule for concept names (SAE files loaded, prompts trained), see name_problem.
    `fix` says what the user should do."""
    problem = name_problem(name)
    if problem:
        raise SAEError(f"Concept name {quoted(name)} {problem}. {fix}")
    return name


def check_distinct_names(names, fix: str):
    """The rule for the concepts of one SAE: no two are the same without case, or look alike
    (text.skeleton: 'stаr' with a Cyrillic а beside 'star'), so every name in the picker is one
    concept and erasing it erases that one."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(text.skeleton(name), name)
        if first == name:
            continue
        if text.lookup_key(first) == text.lookup_key(name):
            raise SAEError(f"{quoted(first)} and {quoted(name)} differ only in case, and concept names are matched "
                           f"without case; spell them the same way. {fix}")
        raise SAEError(f"{quoted(first)} and {quoted(name)} look alike (they differ only in letters drawn the same, "
                       f"such as Latin and Cyrillic 'a'); give the concepts names that can be told apart. {fix}")


@dataclass
class Selection:
    """Latents chosen for one concept at one timestep bucket."""

    latents: list[int]
    scores: list[float]
    concept_mean: list[float]  # mean activation on the concept's prompts
    threshold: list[float]  # mean activation over all prompts ("fires" above this)

    def to_json(self):
        return {"latents": self.latents, "scores": _r(self.scores), "concept_mean": _r(self.concept_mean),
                "threshold": _r(self.threshold)}

    @classmethod
    def from_json(cls, d):
        d = _obj(d, "a timestep selection")
        latents = _list(d.get("latents"), "a selection's latents")
        n = len(latents)
        sel = cls([_int(i, "a selected latent") for i in latents],
                  *(_finite_list(d.get(key, [0.0] * n), f"a selection's {key}") for key in ("scores", "concept_mean", "threshold")))
        if not (len(sel.scores) == len(sel.concept_mean) == len(sel.threshold) == n):
            raise SAEError("concept index selection has lists of different lengths; re-create the SAE file")
        return sel


@dataclass
class Concept:
    name: str
    kind: str = "concept"
    latent: int | None = None  # the dedicated latent of a supervised (SAEmnesia) SAE
    selections: list[Selection] = field(default_factory=list)  # one per timestep bucket
    multiplier: float | None = None  # per-concept override of the index default
    # neuron mode hands the erased concept's activation to this concept's latent (the nearest
    # concept of the same kind, see assign_anchors): the model draws a neighbour in its place
    # instead of an undefined blend; None = only scale the concept's own latent
    anchor: str | None = None
    # the hook's mean input on the concept's prompts, per timestep bucket [buckets, d_in]: an
    # anchor hands over as the difference of two such means, a move between states the model
    # itself produces (stored as a tensor beside the weights, not in the JSON record)
    state: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # [d_in + 1, d_in]: the handover map to handover_anchor (saemnesia_core.handover), fitted on the
    # concept's prompts and their twins naming the anchor; moves the prompt before the mean-state
    # move, which then acts only on what the latent still sees
    handover: torch.Tensor | None = field(default=None, repr=False, compare=False)
    handover_anchor: str | None = None

    def to_json(self):
        d = {"kind": self.kind, "selections": [s.to_json() for s in self.selections]}
        if self.latent is not None:
            d["latent"] = int(self.latent)
        if self.multiplier is not None:
            d["multiplier"] = float(self.multiplier)
        if self.anchor is not None:
            d["anchor"] = self.anchor
        return d


@dataclass
class ConceptIndex:
    timesteps: list[float] = field(default_factory=list)  # model timesteps (0..999) of the buckets, descending
    concepts: dict[str, Concept] = field(default_factory=dict)
    default_mode: str = "ablate"
    default_multiplier: float = -1.5
    # replace mode detects a concept where a latent exceeds detect_scale x its threshold
    # (0: wherever it is active); calibrated per SAE, like the multiplier
    detect_scale: float = 1.0

    # --- lookup ---------------------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        return [n for n, c in self.concepts.items() if kind is None or c.kind == kind]

    def lookup(self):
        """A function: name -> its Concept or None (see find), over a table built once, so that
        resolving hundreds of entries against thousands of concepts stays linear."""
        table: dict[str, Concept] = {}
        for n, c in self.concepts.items():
            table.setdefault(text.lookup_key(n), c)
        return lambda name: table.get(text.lookup_key(name))

    def find(self, name: str) -> Concept | None:
        """The concept of that name (case, surrounding spaces and compatibility forms ignored:
        text.lookup_key), or None."""
        return self.lookup()(name)

    def get(self, name: str, lookup=None) -> Concept:
        c = (lookup or self.lookup())(name)
        if c is not None:
            return c
        raise UnknownConceptError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The message for a name this index does not hold: bounded whatever the size of the index
        or of the name (the whole list only for small indices, else a few near names)."""
        typed = name.strip()
        hint = text.hidden_in(typed)
        said = f"Unknown concept {quoted(typed)}" + (f" ({hint})" if hint else "") + "."
        names = list(self.concepts)
        if not names:
            return (f"{said} This SAE has no concepts (no concept index: train it with labelled prompts); use "
                    "'neuron:<index>' for a raw latent.")
        if len(names) <= LIST_ALL_UP_TO:
            return (f"{said} This SAE knows: {', '.join(sorted(names))}. Pick one of these names, or use "
                    "'neuron:<index>' for a raw latent.")
        # no concept name is longer than MAX_CONCEPT_NAME_CHARS: a longer text is spelled like none
        near = text.near_names(typed, names) if len(typed) <= MAX_CONCEPT_NAME_CHARS else []
        nearest = f"the nearest: {', '.join(near)}" if near else "none is spelled like it"
        return (f"{said} This SAE knows {len(names):,} concepts; {nearest}. Pick a name from the concept picker, or "
                "use 'neuron:<index>' for a raw latent.")

    def bucket(self, timestep: float) -> int:
        """Nearest collected timestep bucket (works for any sampler schedule)."""
        if len(self.timesteps) <= 1:
            return 0
        ts = self.timesteps
        # timesteps are stored descending; search on the negated list
        neg = [-t for t in ts]
        i = bisect.bisect_left(neg, -timestep)
        if i <= 0:
            return 0
        if i >= len(ts):
            return len(ts) - 1
        return i if abs(ts[i] - timestep) < abs(ts[i - 1] - timestep) else i - 1

    @property
    def supervised(self) -> bool:
        return any(c.latent is not None for c in self.concepts.values())

    def summary(self) -> str:
        kinds = {}
        for c in self.concepts.values():
            kinds.setdefault(c.kind, []).append(c.name)
        parts = [f"{k}s: {', '.join(v)}" for k, v in kinds.items()]
        return "; ".join(parts) if parts else "no concepts"

    # --- (de)serialisation ----------------------------------------------------------
    def to_json(self):
        return {"timesteps": _r(self.timesteps), "default_mode": self.default_mode,
                "default_multiplier": self.default_multiplier, "detect_scale": self.detect_scale,
                "concepts": {n: c.to_json() for n, c in self.concepts.items()}}

    @classmethod
    def from_json(cls, d) -> "ConceptIndex":
        """Read an index from a file's JSON; anything malformed or non-finite is an SAEError
        (a NaN multiplier or threshold would otherwise erase into black images or not at all)."""
        if not isinstance(d, dict):
            raise SAEError("concept index must be a JSON object; re-create the SAE file")
        idx = cls(timesteps=_finite_list(d.get("timesteps", []), "timesteps"),
                  default_mode=d.get("default_mode", "ablate"),
                  default_multiplier=_finite(d.get("default_multiplier", -1.5), "default_multiplier"),
                  detect_scale=_finite(d.get("detect_scale", 1.0), "detect_scale"))
        if not idx.detect_scale >= 0:
            raise SAEError(f"concept index detect_scale {idx.detect_scale} must be 0 or more; re-create the SAE file")
        if not isinstance(idx.default_mode, str) or idx.default_mode not in MODES:
            raise SAEError(f"concept index default_mode {quoted(idx.default_mode)} is not one of {MODES}")
        fix = "Re-create the SAE file."
        kinds_seen = set()  # a few kinds for thousands of concepts: each checked once
        for name, c in _obj(d.get("concepts", {}), "concepts").items():
            check_concept_name(name, "Re-create the SAE with plain concept names (Train SAE from Prompts), or ask its "
                                     "author for a fixed file.")
            what = f"concept {quoted(name)}"
            c = _obj(c, what)
            kind = c.get("kind", "concept")
            if not isinstance(kind, str):
                raise SAEError(f"{what} has kind {quoted(kind)}, not text; re-create the SAE file")
            if kind not in kinds_seen:
                check_concept_name(kind, f"(This is the kind of {what}.) {fix}")
                kinds_seen.add(kind)
            sels = [Selection.from_json(s) for s in _list(c.get("selections", []), f"{what} selections")]
            if sels and idx.timesteps and len(sels) != len(idx.timesteps):
                raise SAEError(f"{what} has {len(sels)} timestep selections but the index has "
                               f"{len(idx.timesteps)} timesteps; re-create the SAE file")
            anchor = c.get("anchor")
            if anchor is not None and not isinstance(anchor, str):
                raise SAEError(f"{what} has an anchor that is not a concept name; re-create the SAE file")
            latent, mult = c.get("latent"), c.get("multiplier")
            idx.concepts[name] = Concept(name, kind, None if latent is None else _int(latent, f"{what} latent"),
                                         sels, None if mult is None else _finite(mult, f"{what} multiplier"), anchor)
        check_distinct_names(idx.concepts, f"The picker would show both and erase only one of them. {fix}")
        for c in idx.concepts.values():
            if c.anchor is not None and (c.anchor not in idx.concepts or idx.concepts[c.anchor].latent is None):
                raise SAEError(f"concept {quoted(c.name)} names anchor {quoted(c.anchor)}, which has no latent in this "
                               "index; re-create the SAE file")
        return idx

    def validate(self, n_latents: int):
        for c in self.concepts.values():
            ids = [c.latent] if c.latent is not None else []
            for s in c.selections:
                ids += s.latents
            bad = [i for i in ids if not 0 <= i < n_latents]
            if bad:
                raise SAEError(f"concept {quoted(c.name)} names latent {bad[0]}, but the SAE has only "
                               f"{n_latents} latents; the file's index does not belong to these weights")


def _r(xs):
    return [round(float(x), 6) for x in xs]


# --- reading a file's JSON: the type and finiteness checks json itself does not make ---------
def _obj(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise SAEError(f"{what} is a JSON {type(v).__name__}, not an object; re-create the SAE file")
    return v


def _list(v, what: str) -> list:
    if not isinstance(v, list):
        raise SAEError(f"{what} is a JSON {type(v).__name__}, not a list; re-create the SAE file")
    return v


def _finite(v, what: str) -> float:
    # bool is an int in Python, and json reads NaN/Infinity: both are refused here
    try:
        f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    except OverflowError:  # a JSON integer too large for a float
        f = math.inf
    if not math.isfinite(f):
        raise SAEError(f"{what} is {quoted(v)}, not a finite number; re-create the SAE file")
    return f


def _finite_list(v, what: str) -> list[float]:
    return [_finite(x, what) for x in _list(v, what)]


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise SAEError(f"{what} is {quoted(v)}, not a whole number; re-create the SAE file")
    return int(v)


# --- statistics --------------------------------------------------------------------
class ConceptStats:
    """Running sums of latent activations per (timestep bucket, concept), and over all tokens."""

    def __init__(self, n_latents: int, concepts: dict[str, str], timesteps: list[float]):
        self.concepts = dict(concepts)  # name -> kind
        self.names = list(self.concepts)
        self.timesteps = sorted((float(t) for t in timesteps), reverse=True)
        nt, nc = max(1, len(self.timesteps)), len(self.names)
        self.sums = torch.zeros(nt, nc, n_latents, dtype=torch.float64)
        self.counts = torch.zeros(nt, nc, dtype=torch.float64)
        self.all_sums = torch.zeros(nt, n_latents, dtype=torch.float64)
        self.all_counts = torch.zeros(nt, dtype=torch.float64)
        self.state_sums: torch.Tensor | None = None  # [nt, nc, d_in], when add() is given the inputs
        self._bucketer = ConceptIndex(timesteps=self.timesteps)

    def add(self, values: torch.Tensor, indices: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
            inputs: torch.Tensor | None = None):
        """values/indices: sparse code [T, k]; timesteps [T]; labels: multi-hot [T, n_concepts];
        inputs: the SAE inputs [T, d_in], for the concepts' mean states."""
        if inputs is not None and self.state_sums is None:
            self.state_sums = torch.zeros(*self.counts.shape, inputs.shape[-1], dtype=torch.float64)
        buckets = torch.tensor([self._bucketer.bucket(float(t)) for t in timesteps.tolist()], dtype=torch.long)
        values = values.double()
        for b in buckets.unique().tolist():
            rows = buckets == b
            v, i, lab = values[rows], indices[rows], labels[rows].double()
            dense = torch.zeros(v.shape[0], self.sums.shape[-1], dtype=torch.float64).scatter_add_(1, i, v)
            self.all_sums[b] += dense.sum(0)
            self.all_counts[b] += v.shape[0]
            self.sums[b] += lab.T @ dense
            self.counts[b] += lab.sum(0)
            if inputs is not None:
                self.state_sums[b] += lab.T @ inputs[rows].double()

    def means(self):
        mc = self.sums / self.counts.clamp_min(1).unsqueeze(-1)
        rest_n = (self.all_counts.unsqueeze(-1) - self.counts).clamp_min(1)
        mr = (self.all_sums.unsqueeze(1) - self.sums) / rest_n.unsqueeze(-1)
        mall = self.all_sums / self.all_counts.clamp_min(1).unsqueeze(-1)
        return mc, mr, mall

    def states(self) -> torch.Tensor | None:
        """Mean SAE input per (bucket, concept) [nt, nc, d_in] (None if inputs were not given)."""
        if self.state_sums is None:
            return None
        return (self.state_sums / self.counts.clamp_min(1).unsqueeze(-1)).float()

    def scores(self) -> torch.Tensor:
        """SAeUron score [buckets, concepts, latents]: normalised mean on concept minus on the rest."""
        mc, mr, _ = self.means()
        return mc / mc.sum(-1, keepdim=True).clamp_min(1e-12) - mr / mr.sum(-1, keepdim=True).clamp_min(1e-12)


def select_unsupervised(stats: ConceptStats, quantile: float = 0.999, max_latents: int = 8,
                        default_multiplier: float = -10.0) -> ConceptIndex:
    """SAeUron selection: per timestep, latents whose score is above the quantile (and > 0)."""
    if stats.counts.sum() == 0:
        raise SAEError("no labelled activations were collected; nothing to build a concept index from")
    scores = stats.scores()
    mc, _, mall = stats.means()
    idx = ConceptIndex(timesteps=stats.timesteps, default_mode="ablate", default_multiplier=default_multiplier)
    for ci, name in enumerate(stats.names):
        sels = []
        for b in range(scores.shape[0]):
            s = scores[b, ci]
            cut = torch.quantile(s.float(), quantile).item()
            order = s.argsort(descending=True)[:max_latents]
            chosen = [int(i) for i in order if s[i] > max(cut, 0.0)] or [int(order[0])]
            sels.append(Selection(chosen, [float(s[i]) for i in chosen], [float(mc[b, ci, i]) for i in chosen],
                                  [float(mall[b, i]) for i in chosen]))
        idx.concepts[name] = Concept(name, stats.concepts[name], None, sels)
    return idx


def assign_latents(scores: torch.Tensor, names: list[str], kinds: dict[str, str],
                   exclude: set[int] | None = None) -> dict[str, int]:
    """SAEmnesia assignment: one distinct latent per concept, greedily by mean score over
    timesteps, objects first, then styles, then free labels; within a kind, the concept
    with the strongest claim picks first."""
    mean_score = scores.mean(0) if scores.dim() == 3 else scores  # [concepts, latents]
    taken = set(exclude or ())
    out = {}
    for kind in KINDS:
        members = [i for i, n in enumerate(names) if kinds[n] == kind]
        members.sort(key=lambda i: -float(mean_score[i].max()))
        for ci in members:
            s = mean_score[ci].clone()
            if taken:
                s[list(taken)] = float("-inf")
            best = int(s.argmax())
            out[names[ci]] = best
            taken.add(best)
    return out


def supervised_index(stats: ConceptStats, assignment: dict[str, int], default_multiplier: float = -1.5) -> ConceptIndex:
    """Index of a supervised SAE: each concept's own latent, with per-timestep means for
    the firing threshold (used by replace mode to find where the concept is)."""
    scores = stats.scores()
    mc, _, mall = stats.means()
    states = stats.states()
    idx = ConceptIndex(timesteps=stats.timesteps, default_mode="neuron", default_multiplier=default_multiplier)
    for ci, name in enumerate(stats.names):
        i = assignment[name]
        sels = [Selection([i], [float(scores[b, ci, i])], [float(mc[b, ci, i])], [float(mall[b, i])])
                for b in range(scores.shape[0])]
        idx.concepts[name] = Concept(name, stats.concepts[name], i, sels,
                                     state=None if states is None or not stats.counts[:, ci].any() else states[:, ci])
    return idx


def assign_anchors(index: ConceptIndex, W_dec: torch.Tensor) -> ConceptIndex:
    """Give every concept with a latent an anchor: another concept of its kind whose decoder
    direction is alike (cosine), i.e. a small change of the activations that still names a
    concept. Pairs are taken most-alike first and each concept anchors at most one other, so no
    single concept (a "hub" such as a busy texture) receives every erased concept of its kind.
    One rule for all, no search per concept."""
    with_latent = [c for c in index.concepts.values() if c.latent is not None]
    for c in with_latent:
        c.anchor = None
    for kind in dict.fromkeys(c.kind for c in with_latent):
        members = [c for c in with_latent if c.kind == kind]
        if len(members) < 2:
            continue
        d = torch.nn.functional.normalize(W_dec[[c.latent for c in members]].float(), dim=1)
        sim = d @ d.T
        pairs = sorted(((float(sim[i, j]), i, j) for i in range(len(members)) for j in range(len(members)) if i != j),
                       reverse=True)
        used = set()
        for _, i, j in pairs:
            if members[i].anchor is None and j not in used:
                members[i].anchor = members[j].name
                used.add(j)
        for c in members:  # every other concept already anchors one: the nearest after all
            if c.anchor is None:
                c.anchor = nearest_concept(index, c, W_dec, exclude={c.name})
    return index


def nearest_concept(index: ConceptIndex, concept: "Concept", W_dec: torch.Tensor, exclude: set[str]) -> str | None:
    """The concept of the same kind, with a latent and not in exclude, whose decoder direction
    is most alike; None when there is none."""
    others = [c for c in index.concepts.values()
              if c.kind == concept.kind and c.latent is not None and c.name not in exclude]
    if not others or concept.latent is None:
        return None
    d = torch.nn.functional.normalize(W_dec[[concept.latent] + [c.latent for c in others]].float(), dim=1)
    return others[int((d[1:] @ d[0]).argmax())].name
