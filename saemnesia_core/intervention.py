"""Erasure applied to a block's output: concept names + mode -> edits of a feature map.

Model-agnostic: the caller (the ComfyUI adapter, a diffusers hook, a test) hands in the
block output [B, C, H, W] (or [B, N, C]), the current model timestep (0..999), and which
batch rows to edit. Everything that depends only on the settings is prepared once here,
so the sampling hot path does only the mode's own work.
"""
from __future__ import annotations

import math
import re

import torch

from . import erasure
from .checkpoint import CONTEXT
from .concepts import MODES, Concept, ConceptIndex, nearest_concept
from .errors import SAEError, quoted
from .prompts import erase_entries
from .sae import TopKSAE

_NEURON = re.compile(r"^\s*(?:neuron\s*[:#]?|#)\s*(\d+)\s*$", re.IGNORECASE)


def split_anchor(spec: str):
    """'star -> heart' -> ('star', 'heart'); 'star ->' -> ('star', None): no anchor;
    'star' -> ('star', ...): the SAE's own anchor for it (Ellipsis = not given)."""
    if "->" not in spec:
        return spec.strip(), ...
    name, anchor = spec.split("->", 1)
    return name.strip(), (anchor.strip() or None)


def finite(value, what: str, fix: str) -> float:
    """`value` as a float, or an SAEError: json and the HTTP API both let NaN and inf through,
    and one NaN in an edit turns the whole picture black."""
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if isinstance(value, bool) or not math.isfinite(f):
        raise SAEError(f"{what} is {value!r:.40}, not a finite number; {fix}")
    return f


def window_problem(start_percent, end_percent) -> str | None:
    """What is wrong with an erase window (fractions of the schedule), or None when it is fine.
    None stands for a value not known yet (ComfyUI validates linked inputs that way)."""
    known = {}
    for name, v in (("start_percent", start_percent), ("end_percent", end_percent)):
        if v is None:
            continue
        try:
            known[name] = finite(v, name, "")
        except SAEError:
            return f"{name} is {v!r:.40}; give a number from 0 to 1 (a fraction of the sampling steps)."
        if not 0.0 <= known[name] <= 1.0:
            return f"{name} is {known[name]}; give a number from 0 to 1 (a fraction of the sampling steps)."
    if len(known) == 2 and known["start_percent"] > known["end_percent"]:
        return f"start_percent ({start_percent}) is after end_percent ({end_percent}); swap them."
    return None


def check_window(start_percent, end_percent):
    problem = window_problem(start_percent, end_percent) if None not in (start_percent, end_percent) \
        else "the erase window needs both start_percent and end_percent."
    if problem:
        raise SAEError(problem)


def raw_neuron(spec: str) -> int | None:
    m = _NEURON.match(spec)
    return int(m.group(1)) if m else None


def resolve_spec(index: ConceptIndex, spec: str, lookup=None) -> Concept | int:
    """What an entry of the concepts text means. A name in the SAE's index always wins (a
    concept may be labelled 'neuron 5'); otherwise 'neuron:5', 'neuron 5' or '#5' is raw latent 5;
    anything else must be a concept name (an unknown one raises, with a few near names).
    `lookup`: index.lookup(), when many entries are resolved against one index."""
    lookup = lookup or index.lookup()
    c = lookup(spec)
    if c is not None:
        return c
    n = raw_neuron(spec)
    return n if n is not None else index.get(spec, lookup)


def resolve_entry(index: ConceptIndex, spec: str | int | Concept, n_latents: int, lookup=None) -> Concept | int:
    """resolve_spec for whatever names a concept or latent (an entry of the concepts text, a raw
    latent index, a Concept), with a raw latent checked against the SAE's size."""
    c = resolve_spec(index, spec, lookup) if isinstance(spec, str) else spec
    if isinstance(c, int) and not 0 <= c < n_latents:
        raise SAEError(f"{quoted(spec)}: this SAE has latents 0..{n_latents - 1}. Pick an index in that range.")
    return c


def concept_latents(c: Concept, bucket: int) -> list[int]:
    """The latents that carry a concept at a timestep bucket: its own latent (SAEmnesia), else its
    selection for that bucket (SAeUron; the last one past the end)."""
    if c.latent is not None:
        return [c.latent]
    return list(c.selections[min(bucket, len(c.selections) - 1)].latents)


class ConceptEraser:
    """Callable that erases the given concepts from one block's output."""

    def __init__(self, sae: TopKSAE, index: ConceptIndex, concepts: list[str], mode: str = "auto",
                 strength: float = 1.0, multiplier: float | None = None, seed: int = 0,
                 detect_scale: float | None = None, per_prompt: bool = False, check_interrupt=None):
        """per_prompt: the edited maps are prompts' text states, whose tokens all carry the prompt's
        concepts; the anchor move is judged per prompt (see erasure.scale_neurons).
        concepts: entries of the concepts text, bounded and without repeats (prompts.erase_entries).
        check_interrupt: called in every loop over the entries; raises to stop (the host's cancel)."""
        if mode == "auto":
            mode = index.default_mode
        if mode not in MODES:
            raise SAEError(f"Unknown erase mode {quoted(mode)}. Use one of: auto, {', '.join(MODES)}.")
        strength = finite(strength, "strength", "give 0 (off), 1 (as published) or more.")
        if strength < 0:
            raise SAEError(f"strength is {strength}; give 0 (off), 1 (as published) or more.")
        if multiplier is not None:
            multiplier = finite(multiplier, "multiplier", "give a number such as -1.5 (None: the SAE's own).")
        if detect_scale is not None:
            detect_scale = finite(detect_scale, "detect_scale", "give 0 or more.")
        self.sae = sae
        self.mode, self.strength, self.seed, self.per_prompt = mode, strength, int(seed), bool(per_prompt)
        self.concepts = erase_entries(list(concepts))
        self._check_interrupt = check_interrupt or (lambda: None)
        n_buckets = max(1, len(index.timesteps))
        self.index = index
        self.detect_scale = index.detect_scale if detect_scale is None else detect_scale
        resolved = self._resolve(index)
        built = [self._target(index, resolved, b, multiplier) for b in range(n_buckets)]
        self.targets = [t for t, _ in built]
        self.owners = [o for _, o in built]  # per bucket: the concept each target latent erases (None: a raw latent)
        self._device_targets: dict = {}
        self._sae_cache: dict = {}

    def _resolve(self, index: ConceptIndex) -> list[tuple]:
        """(the entry as typed, its concept or latent index, the concept its activation is handed
        to in neuron mode or None) of every entry: looked up once for all timestep buckets."""
        lookup, entries = index.lookup(), []
        for full in self.concepts:
            self._check_interrupt()
            spec, anchor = split_anchor(full)
            entries.append((full, resolve_entry(index, spec, self.sae.n_latents, lookup), anchor))
        erased = {c.name for _, c, _ in entries if not isinstance(c, int)}
        resolved = []
        for full, c, anchor in entries:
            self._check_interrupt()
            ac = None
            if self.mode == "neuron" and not isinstance(c, int) and c.latent is not None:
                a = c.anchor if anchor is ... else anchor
                if anchor is ... and a in erased:
                    # the SAE's anchor is erased too (circle and square, each the other's anchor):
                    # hand over to the nearest concept that stays, not to nothing
                    a = nearest_concept(index, c, self.sae.W_dec, exclude=erased)
                ac = index.get(a, lookup) if a else None
                if ac is not None and (ac.latent is None or ac.name == c.name):
                    raise SAEError(f"{quoted(full)}: the anchor {quoted(a)} must be another concept with its own latent.")
                if ac is not None and ac.name in erased:
                    ac = None  # never hand an erased concept's activation to another erased one
            resolved.append((full, c, ac))
        return resolved

    def _target(self, index: ConceptIndex, resolved: list[tuple], bucket: int,
                multiplier: float | None) -> tuple[erasure.ErasureTarget, list]:
        chosen: dict[int, tuple[float, float, float]] = {}
        owner: dict[int, str] = {}  # latent -> the concept that claimed it first
        anchors: dict[int, int] = {}
        shifts: dict[int, torch.Tensor] = {}  # concept latent -> anchor's mean state minus the concept's
        maps: dict[int, torch.Tensor] = {}  # concept latent -> its handover map to the anchor
        for full, c, ac in resolved:
            self._check_interrupt()
            if isinstance(c, int):
                m = multiplier if multiplier is not None else index.default_multiplier
                chosen.setdefault(c, (0.0, 1.0, m))
                continue
            m = multiplier if multiplier is not None else (c.multiplier if c.multiplier is not None else index.default_multiplier)
            if self.mode == "neuron" and c.latent is not None:
                sel = c.selections[bucket] if c.selections else None
                thr = sel.threshold[0] if sel else 0.0
                mean = sel.concept_mean[0] if sel else 1.0
                chosen.setdefault(c.latent, (thr, mean, m))
                owner.setdefault(c.latent, c.name)
                if ac is not None:
                    anchors[c.latent] = ac.latent
                    if c.handover is not None and c.handover_anchor == ac.name:
                        maps[c.latent] = c.handover  # fitted for this very anchor
                    if c.state is not None and ac.state is not None:
                        shifts[c.latent] = ac.state[min(bucket, len(ac.state) - 1)] - c.state[min(bucket, len(c.state) - 1)]
                continue
            if not c.selections:
                raise SAEError(f"Concept {quoted(c.name)} has no latent selection in this SAE's index; "
                               "rebuild the index (Train SAE from Prompts) or use neuron:<index>.")
            sel = c.selections[min(bucket, len(c.selections) - 1)]
            scale = self.detect_scale if self.mode == "replace" else 1.0
            for i, thr, mean in zip(sel.latents, sel.threshold, sel.concept_mean):
                chosen.setdefault(i, (thr * scale, mean, m))
                owner.setdefault(i, c.name)
        ids = list(chosen)
        vals = torch.tensor([chosen[i] for i in ids], dtype=torch.float32).view(-1, 3)
        if not torch.isfinite(vals).all():
            # an index built in code can hold NaN/inf (files are checked when read)
            raise SAEError(f"The concept index gives a non-finite threshold, mean or multiplier for "
                           f"{_listed(self.concepts)}; rebuild the index or pass a finite multiplier.")
        anchor_ids = torch.tensor([anchors.get(i, -1) for i in ids], dtype=torch.long) if anchors else None
        shift_rows = shifted = None
        if shifts:
            zero = torch.zeros(self.sae.d_in)
            shift_rows = torch.stack([shifts.get(i, zero).float() for i in ids])
            shifted = torch.tensor([i in shifts for i in ids])
        map_rows = mapped = None
        if maps:
            d = self.sae.d_in
            zero = torch.zeros(d + 1, d)
            map_rows = torch.stack([maps.get(i, zero).float() for i in ids])
            mapped = torch.tensor([i in maps for i in ids])
        target = erasure.ErasureTarget(torch.tensor(ids, dtype=torch.long), vals[:, 0], vals[:, 1], vals[:, 2], anchor_ids,
                                       shift_rows, shifted, map_rows, mapped)
        return target, [owner.get(i) for i in ids]

    # --- device handling ----------------------------------------------------------------
    def place(self, device=None, dtype=None) -> TopKSAE:
        """Keep the SAE copy on `device` / in `dtype` (None: where it is now), so it can follow
        the model when the host moves it instead of being converted on the first edit."""
        current = next(iter(self._sae_cache.values()), self.sae)
        device = current.W_dec.device if device is None else device
        dtype = current.W_dec.dtype if dtype is None else dtype
        self._device_targets.clear()  # targets are re-made on the device of the next edit
        return self.sae_on(device, dtype)

    def sae_on(self, device, dtype) -> TopKSAE:
        key = (str(device), dtype)
        if key not in self._sae_cache:
            self._sae_cache.clear()  # keep one copy: the model lives on one device at a time
            self._sae_cache[key] = self.sae if (self.sae.W_dec.device == torch.device(device) and self.sae.W_dec.dtype == dtype) \
                else _copy_sae(self.sae, device, dtype)
        return self._sae_cache[key]

    def target_on(self, bucket: int, device) -> erasure.ErasureTarget:
        key = (bucket, str(device))
        if key not in self._device_targets:
            self._device_targets[key] = self.targets[bucket].to(device)
        return self._device_targets[key]

    # --- the edit -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, h: torch.Tensor, timestep: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """h: [B, C, H, W] (or [B, N, C]); rows: bool [B] of maps to edit (None = all)."""
        if self.strength == 0 or not self.concepts:
            return h
        spatial = h.dim() == 4
        if spatial:
            b, c, hh, ww = h.shape
            tokens = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        else:
            tokens = h
            b, _, c = h.shape
        if c != self.sae.d_in:
            raise SAEError(f"block output has {c} channels but the SAE expects {self.sae.d_in}; "
                           "use an SAE trained on this block of this model")
        sel = torch.arange(b, device=h.device) if rows is None else torch.nonzero(rows.to(h.device), as_tuple=True)[0]
        if sel.numel() == 0:
            return h
        bucket = self.index.bucket(float(timestep))
        target = self.target_on(bucket, h.device)
        sae = self.sae_on(h.device, h.dtype)
        x = tokens[sel]
        if self.mode == "replace":
            gen = torch.Generator().manual_seed(self.seed * 1000003 + bucket)
            edited = erasure.replace(x, sae, target, self.strength, gen)
        else:
            flat = x.reshape(-1, c)
            if self.mode == "ablate":
                out = erasure.ablate(flat, sae, target, self.strength)
            else:
                out = erasure.scale_neurons(flat, sae, target, self.strength, x.shape[1] if self.per_prompt else None)
            edited = x if out is flat else out.view_as(x)
        if edited is x:
            return h  # the concept is nowhere in this map: hand back the block output untouched
        out_tokens = tokens.clone()
        out_tokens[sel] = edited
        if spatial:
            return out_tokens.view(b, hh, ww, c).permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(h))
        return out_tokens

    @torch.no_grad()
    def present(self, h: torch.Tensor, timestep: float, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Which maps of h ([B, N, C] or [B, C, H, W]) carry each erased concept: bool [B] per concept
        name, True where one of its latents fires above its threshold at some position (rows:
        bool [B] of maps to judge, None = all)."""
        tokens = h.flatten(2).transpose(1, 2) if h.dim() == 4 else h
        b, n, c = tokens.shape
        bucket = self.index.bucket(float(timestep))
        target = self.target_on(bucket, h.device)
        out: dict[str, torch.Tensor] = {}
        if self.strength == 0 or len(target) == 0:
            return out
        sae = self.sae_on(h.device, h.dtype)
        where, acts = erasure.selected_activations(tokens.reshape(-1, c), sae, target)
        fires = acts > target.threshold.to(acts.dtype).view(1, -1)
        for j, name in enumerate(self.owners[bucket]):
            if name is None:
                continue
            hit = torch.zeros(b, dtype=torch.bool, device=h.device)
            hit[where[fires[:, j]] // n] = True
            if rows is not None:
                hit &= rows.to(h.device)
            out[name] = out[name] | hit if name in out else hit
        return out


class PooledShift:
    """Moves a pooled text vector (the head of a model's `y`: SDXL's CLIP-G, Flux's CLIP-L, SD3's
    CLIP-L + CLIP-G) away from the erased concepts. The text SAE cannot read it (another encoder
    layer, another width), so where a concept's latent fires in a prompt's text states, the
    prompt's pooled vector moves by strength x (mean pooled vector of the training prompts
    without the concept - mean of those with it): the concept's average pull, taken out."""

    def __init__(self, eraser: ConceptEraser, shifts: dict[str, torch.Tensor]):
        self.eraser, self.shifts = eraser, shifts
        self.width = next(iter(shifts.values())).numel()

    @classmethod
    def from_record(cls, record: dict, eraser: ConceptEraser) -> "PooledShift | None":
        """From pooled_record's record; None when none of the erased concepts has a shift."""
        concepts = record.get("concepts", {}) if isinstance(record, dict) else {}
        shifts = {}
        for name in {n for owners in eraser.owners for n in owners if n}:
            values = concepts.get(name)
            if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
                shifts[name] = torch.tensor(values, dtype=torch.float32)
        if not shifts or len({v.numel() for v in shifts.values()}) != 1:
            return None
        return cls(eraser, shifts)

    @torch.no_grad()
    def __call__(self, text_states: torch.Tensor, y: torch.Tensor, timestep: float,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        if y.shape[-1] < self.width:
            raise SAEError(f"The SAE's pooled shifts have {self.width} values, but this model's pooled input has only "
                           f"{y.shape[-1]}; the SAE was trained with other text encoders.")
        move = torch.zeros(y.shape[0], self.width, device=y.device, dtype=torch.float32)
        for name, hit in self.eraser.present(text_states, timestep, rows).items():
            if name in self.shifts and bool(hit.any()):
                move[hit.to(y.device)] += self.shifts[name].to(y.device)
        if not bool(move.any()):
            return y
        out = y.clone()
        out[:, :self.width] += (self.eraser.strength * move).to(y.dtype)
        return out


def pooled_record(prompts, pooled: torch.Tensor) -> dict:
    """What PooledShift needs, from the training prompts (LabelledPrompt) and their pooled vectors
    [prompts, P]: per labelled concept, the mean pooled vector of the prompts without it minus the
    mean of those with it (rounded: a record of JSON numbers)."""
    names = sorted({name for p in prompts for name in p.labels})
    pooled = pooled.float()
    concepts = {}
    for name in names:
        has = torch.tensor([name in p.labels for p in prompts])
        if has.all() or not has.any():
            continue
        shift = pooled[~has].mean(0) - pooled[has].mean(0)
        concepts[name] = [float(f"{v:.5g}") for v in shift.tolist()]
    return {"width": int(pooled.shape[-1]), "concepts": concepts}


def _listed(entries: list[str], n: int = 5) -> str:
    """The first few entries (known names and raw latents, each short), for a message."""
    more = f" and {len(entries) - n} more" if len(entries) > n else ""
    return ", ".join(entries[:n]) + more


def _memory_format(h):
    return torch.channels_last if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous() else torch.contiguous_format


def _copy_sae(sae: TopKSAE, device, dtype) -> TopKSAE:
    ts = [getattr(sae, n).detach().to(device=device, dtype=dtype) for n in ("W_enc", "b_enc", "W_dec", "b_dec")]
    return TopKSAE.from_tensors(*ts, k=sae.k).set_reserved(sae.reserved.tolist())


def eraser_for(member, names: list[str], **eraser) -> ConceptEraser:
    """The eraser for one SAE of a loaded file (an SAE on the text states judges the anchor move
    per prompt)."""
    return ConceptEraser(member.sae, member.index, names, per_prompt=member.info.hook_point == CONTEXT, **eraser)


def erasers_for_set(loaded, names: list[str], **eraser) -> list[tuple[str, ConceptEraser]]:
    """(hook point, eraser) for every SAE of a loaded file: a set erases at each of its blocks."""
    return [(m.info.hook_point, eraser_for(m, names, **eraser)) for m in loaded.blocks]
