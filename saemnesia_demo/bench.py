"""MiniCanvas erasure benchmark: UA / IRA / CRA for every object and style as the target.

Definitions (UnlearnCanvas's, on MiniCanvas): for an erased object, UA = share of the images
prompted with that object that the object classifier no longer calls it; IRA = object
accuracy on the images of the other objects; CRA = style accuracy on all images (the style
must survive the erasure). Styles the same way round. The answer set is all 36 prompts x the
test seeds, sampled with the plain-torch DDIM sampler (15 steps by default, CFG 4), which matches the
stock KSampler ddim/ddim_uniform on this model. Erasure runs the same `ConceptEraser` the
ComfyUI node uses, hooked on the same transformer block, on both CFG halves.

Methods: no erasure; negative prompt (the concept's word in the negative prompt); SAeUron
(unsupervised SAE, per-timestep latents, per-concept (tau, gamma) chosen on validation seeds);
SAEmnesia (supervised SAE, the concept's one latent, the SAE's one calibrated multiplier);
SAEmnesia + PER (the same latent as detector, detected positions replaced). Plus erasing 2
and 4 concepts at once, sequential erasure of all objects, paraphrased prompts and an
artifact rate.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

import torch

from saemnesia_core import load_sae
from saemnesia_core.activations import ActivationWriter
from saemnesia_core.checkpoint import CONTEXT, save_sae_set
from saemnesia_core.concepts import select_unsupervised
from saemnesia_core.fileio import save_json_atomic
from saemnesia_core.intervention import ConceptEraser, erasers_for_set
from saemnesia_core.prompts import build_prompts
from saemnesia_core.training import concept_statistics

from . import data
from .classifier import load_classifiers
from .sampling import alphas_cumprod, ddim_sample
from .text_encoder import encode_prompts
from .unet import ldm_transformer_blocks, load_demo_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAE_DIR = os.path.join(REPO, "models", "sae")
SAES = {"objects": {"saeuron": "minicanvas_objects_saeuron", "saemnesia": "minicanvas_objects_saemnesia"},
        "styles": {"saeuron": "minicanvas_styles_saeuron", "saemnesia": "minicanvas_styles_saemnesia"}}
CONTEXT_SAE = "minicanvas_context_saemnesia"  # one text SAE for both kinds: read by every cross-attention
TEMPLATE = "a {object} in {style} style"  # data.prompt_for's
TEST_SEEDS = [0, 1, 2]
VALIDATION_SEEDS = [500]  # never in the answer set; also what calibration uses
CONFIDENT = 0.5  # artifact: neither classifier gives any class at least this probability
# Broken picture: the erasure made the picture unlike anything the demo model draws, by either of
# two measures compared with the unedited sample of the same prompt and seed. (1) Pixel noise
# (noise_level, 0..255): the classifiers, trained to be robust to noise, still name the class of
# a picture drowned in noise. Clean samples differ by at most ~3 between benign edits; noisy
# ones by 5+. (2) The demo model's own denoising error (denoising_error): also catches coarse
# colour blotches, which a 3x3 measure misses; blotched shapes rise by 0.04-0.17, and prompts
# an edit leaves alone do not move at all.
NOISE_MARGIN = 4.0
DENOISE_MARGIN = 0.06
DENOISE_TIMESTEPS = (100, 250, 400)  # moderate noise: enough to judge structure, not only grain
SCORING = ("v4: broken = noise level +4 or denoising error +0.06 over the unedited twin; "
           "a broken picture fails UA, IRA and CRA")  # calibration scores are reused only if equal
DETECT_SCALES = [1.0, 0.0]  # replace mode: detect above the latent's mean / wherever active
TAUS = [0.99, 0.999]  # with 512 latents: about the top 5 and the top 1 per timestep
GAMMAS = [-2.0, -8.0, -30.0]
GLOBAL_MULTIPLIERS = [-1.5, -5.0, -20.0, -50.0, -100.0, -200.0]
CONTEXT_MULTIPLIERS = [0.0, -0.5, -1.5, -3.0]
PARAPHRASE_OBJECTS = {"circle": "round disc", "square": "box", "triangle": "three-sided shape", "cross": "plus sign",
                      "star": "five-pointed star", "heart": "love heart"}
PARAPHRASE_STYLES = {"solid": "plain filled", "stripes": "striped", "dots": "polka dot", "checker": "checkerboard",
                     "outline": "outlined", "gradient": "colour gradient"}


def validation_pairs(target: str) -> list[tuple[int, int]]:
    """The target's 6 prompts and one prompt of each other concept of its kind: enough to see
    both whether it is gone and whether its neighbours survive, at a third of the cost."""
    n = len(data.OBJECTS)
    if kind_of(target) == "objects":
        t = data.OBJECTS.index(target)
        return [(t, s) for s in range(n)] + [(o, (o + 1) % n) for o in range(n) if o != t]
    t = data.STYLES.index(target)
    return [(o, t) for o in range(n)] + [((s + 2) % n, s) for s in range(n) if s != t]


def kind_of(concept: str) -> str:
    return "objects" if concept in data.OBJECTS else "styles"


def paraphrase(obj: str, style: str, i: int) -> str:
    """Other words and other word orders than the training template."""
    o, s = PARAPHRASE_OBJECTS[obj], PARAPHRASE_STYLES[style]
    return [f"{s} {o}", f"a picture of a {o}, {style} style", f"{style} style, a {obj}"][i % 3]


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Per image: the median over pixels of |pixel - its 3x3 median| (channel mean, 0..255).
    Edges and patterns touch a minority of pixels, so the median stays near the flat areas'
    grain; noise spread over the picture raises it."""
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    win = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    local_median = win.reshape(*win.shape[:4], 9).median(-1).values
    return (x - local_median).abs().mean(1).flatten(1).median(1).values


@torch.no_grad()
def denoising_error(eps_fn, images: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Per image: how badly the diffusion model predicts the noise added to it (mean squared
    error over DENOISE_TIMESTEPS, fixed noise, empty prompt). A picture like the model's own
    training data is easy to denoise; blotches and noise are not, whatever a classifier says."""
    x = images.float().clamp(-1, 1)
    acp = alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    ctx = uncond.expand(len(x), *uncond.shape[1:])
    total = torch.zeros(len(x))
    for t in DENOISE_TIMESTEPS:
        noise = torch.randn(x.shape, generator=gen)
        noisy = acp[t].sqrt() * x + (1 - acp[t]).sqrt() * noise
        pred = eps_fn(noisy, torch.full((len(x),), t, dtype=torch.long), ctx)
        total += ((pred - noise) ** 2).flatten(1).mean(1)
    return total / len(DENOISE_TIMESTEPS)


@dataclass
class Answers:
    """Classifier read-outs of one batch of samples, with what each was prompted with."""
    objs: torch.Tensor
    styles: torch.Tensor
    pred_obj: torch.Tensor
    pred_style: torch.Tensor
    confident: torch.Tensor  # some classifier is sure of some class
    broken: torch.Tensor  # the edit ruined the picture (noise, blotches): neither erased (UA) nor kept (IRA, CRA)

    def metrics(self, targets: list[str]) -> dict:
        """UA over the targets' images; IRA over the other concepts of their kind; CRA on the other kind."""
        kind = kind_of(targets[0])
        truth, pred, other_truth, other_pred, names = (
            (self.objs, self.pred_obj, self.styles, self.pred_style, data.OBJECTS) if kind == "objects"
            else (self.styles, self.pred_style, self.objs, self.pred_obj, data.STYLES))
        pred, other_pred = pred.masked_fill(self.broken, -1), other_pred.masked_fill(self.broken, -1)
        ids = torch.tensor([names.index(t) for t in targets])
        on = torch.isin(truth, ids)
        erased = (pred != truth) & ~self.broken  # ruining the picture is not erasing the concept
        ua = float(erased[on].float().mean()) if on.any() else float("nan")
        ira = float((pred[~on] == truth[~on]).float().mean()) if (~on).any() else float("nan")
        cra = float((other_pred == other_truth).float().mean())
        out = {"UA": 100 * ua, "IRA": 100 * ira, "CRA": 100 * cra}
        out["avg"] = sum(out.values()) / 3
        return {k: round(v, 2) for k, v in out.items()}

    def drawn_metrics(self, targets: list[str], drawn: torch.Tensor) -> dict:
        """UA over the targets' pictures whose unedited twin showed the target (`drawn`, per row)."""
        kind = kind_of(targets[0])
        truth, pred, names = ((self.objs, self.pred_obj, data.OBJECTS) if kind == "objects"
                              else (self.styles, self.pred_style, data.STYLES))
        on = torch.isin(truth, torch.tensor([names.index(t) for t in targets])) & drawn
        erased = (pred != truth) & ~self.broken
        return {"UA_drawn": round(100 * float(erased[on].float().mean()), 2) if on.any() else float("nan"),
                "drawn": int(on.sum())}

    @property
    def artifacts(self) -> torch.Tensor:
        return ~self.confident | self.broken

    @property
    def artifact_rate(self) -> float:
        return round(100 * float(self.artifacts.float().mean()), 2)


class Bench:
    def __init__(self, threads: int = 1, steps: int = 25, cfg: float = 4.0, batch: int = 108, log=print):
        torch.set_num_threads(threads)
        self.unet, meta = load_demo_unet()
        self.blocks = ldm_transformer_blocks(meta["diffusers_config"])
        self.clf, _ = load_classifiers()
        self.steps, self.cfg, self.batch, self.log = steps, cfg, batch, log
        self._text: dict[str, torch.Tensor] = {}
        self._unedited: dict[tuple[str, int], tuple[float, float]] = {}  # (noise level, denoising error)
        self._t = {"t": 0.0}
        self._context_edits = []
        self.images = 0
        self.seconds = 0.0

    def text(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            for p, e in zip(missing, encode_prompts(missing)):
                self._text[p] = e
        return torch.stack([self._text[p] for p in prompts])

    def _eps(self, x, t, ctx):
        self._t["t"] = float(t[0])
        for fn in self._context_edits:  # what every cross-attention reads (hook point "context")
            ctx = fn(ctx, self._t["t"])
        return self.unet(x, t, encoder_hidden_states=ctx).sample

    def _hook(self, block: str, fn):
        def hook(_module, _inputs, out):
            if isinstance(out, tuple):
                return (fn(out[0], self._t["t"]),) + tuple(out[1:])
            out.sample = fn(out.sample, self._t["t"])
            return out
        return self.unet.get_submodule(self.blocks[block]).register_forward_hook(hook)

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], edits=(), negative: str = "") -> torch.Tensor:
        """edits: [(block, fn(h, timestep) -> h)], applied in order (stacked erasers)."""
        handles = [self._hook(b, fn) for b, fn in edits if b != CONTEXT]
        self._context_edits = [fn for b, fn in edits if b == CONTEXT]
        t0 = time.perf_counter()
        try:
            out = []
            for i in range(0, len(prompts), self.batch):
                cond = self.text(prompts[i:i + self.batch])
                out.append(ddim_sample(self._eps, cond, self.text([negative]), steps=self.steps, cfg=self.cfg,
                                       seeds=seeds[i:i + self.batch]))
        finally:
            for h in handles:
                h.remove()
            self._context_edits = []
        self.images += len(prompts)
        self.seconds += time.perf_counter() - t0
        return torch.cat(out)

    @torch.no_grad()
    def judge(self, images, objs, styles, broken=None) -> Answers:
        x = images.float().clamp(-1, 1)
        po, ps = self.clf.object(x).softmax(1), self.clf.style(x).softmax(1)
        confident = (po.max(1).values >= CONFIDENT) | (ps.max(1).values >= CONFIDENT)
        broken = torch.zeros(len(x), dtype=torch.bool) if broken is None else broken
        return Answers(torch.as_tensor(objs), torch.as_tensor(styles), po.argmax(1), ps.argmax(1), confident, broken)

    def quality(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 2]: noise_level and denoising_error of each picture."""
        return torch.stack([noise_level(images), denoising_error(self._eps, images, self.text([""]))], 1)

    def unedited_quality(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """quality() of the unedited samples of these (prompt, seed) rows, sampled once each."""
        keys = list(zip(prompts, seeds))
        missing = list(dict.fromkeys(k for k in keys if k not in self._unedited))
        if missing:
            imgs = self.sample([p for p, _ in missing], [sd for _, sd in missing])
            self._unedited.update(zip(missing, map(tuple, self.quality(imgs).tolist())))
        return torch.tensor([self._unedited[k] for k in keys])

    def answer_set(self, seeds, pairs=None, edits=(), negative="", words=None) -> Answers:
        """All prompts (or the given (object, style) index pairs) x seeds."""
        pairs = pairs or [(o, s) for o in range(len(data.OBJECTS)) for s in range(len(data.STYLES))]
        rows = [(o, s, seed) for seed in seeds for o, s in pairs]
        prompts = [words(o, s, seed) if words else data.prompt_for(o, s) for o, s, seed in rows]
        seed_list = [seed for _, _, seed in rows]
        imgs = self.sample(prompts, seed_list, edits, negative)
        quality = self.quality(imgs)
        if edits or negative:
            rise = quality - self.unedited_quality(prompts, seed_list)
            broken = (rise[:, 0] > NOISE_MARGIN) | (rise[:, 1] > DENOISE_MARGIN)
        else:
            self._unedited.update(zip(zip(prompts, seed_list), map(tuple, quality.tolist())))
            broken = None
        return self.judge(imgs, [o for o, _, _ in rows], [s for _, s, _ in rows], broken)


# --- methods: each returns the (block, fn) edits for a set of target concepts ------------------
@dataclass
class Methods:
    bench: Bench
    saes: dict  # kind -> {"saeuron": LoadedSAE, "saemnesia": LoadedSAE}
    saeuron_choice: dict = field(default_factory=dict)  # concept -> {"tau", "gamma", "index"}
    context_sae: object = None  # LoadedSAE of the text SAE, or None when not shipped

    def saemnesia(self, targets, mode="neuron"):
        edits = []
        for kind in dict.fromkeys(kind_of(t) for t in targets):
            names = [t for t in targets if kind_of(t) == kind]
            edits += erasers_for_set(self.saes[kind]["saemnesia"], names, mode=mode)
        return edits

    def context(self, targets):
        """SAEmnesia on the text states: the concepts' latents (handed to their anchors) in what
        every cross-attention reads, with the SAE's calibrated multiplier."""
        return erasers_for_set(self.context_sae, list(targets), mode="neuron")

    def per(self, targets):
        return self.saemnesia(targets, mode="replace")

    def saeuron(self, targets, choice=None):
        edits = []
        for t in targets:
            c = (choice or self.saeuron_choice)[t]
            s = self.saes[kind_of(t)]["saeuron"]
            edits.append((s.info.hook_point, ConceptEraser(s.sae, c["index"], [t], mode="ablate", multiplier=c["gamma"])))
        return edits

    @staticmethod
    def negative(targets):
        return ", ".join(targets)


def unsupervised_indexes(bench: Bench, loaded, seeds, taus) -> dict:
    """SAeUron's per-timestep selection at each tau, from the SAE's activations on the
    validation seeds (all 36 labelled prompts), as the score the paper defines."""
    import tempfile
    block = loaded.info.hook_point
    prompts = build_prompts(list(data.OBJECTS), list(data.STYLES), [TEMPLATE])
    with tempfile.TemporaryDirectory() as tmp:
        writer = ActivationWriter(tmp, loaded.sae.d_in, prompts, hook_point=block)
        n = len(prompts)

        def grab(h, t):
            cond = h[: h.shape[0] // 2]  # cond half (the paper's statistics)
            for i in range(cond.shape[0]):
                writer.add(cond[i].flatten(1).T, t, i % n)
            return h
        bench.sample([p.text for p in prompts] * len(seeds), [s for s in seeds for _ in prompts], [(block, grab)])
        stats = concept_statistics(loaded.sae, writer.close())
    return {tau: select_unsupervised(stats, quantile=tau, max_latents=8) for tau in taus}


def grid_search_saeuron(bench: Bench, methods: Methods, targets, seeds, log, taus=TAUS, gammas=GAMMAS) -> dict:
    """Per concept: the (tau, gamma) with the best mean of UA, IRA, CRA on validation seeds."""
    idx = {kind: unsupervised_indexes(bench, methods.saes[kind]["saeuron"], seeds, taus) for kind in
           dict.fromkeys(kind_of(t) for t in targets)}
    evaluated = 0
    for t in targets:
        best = None
        for tau in taus:
            for gamma in gammas:
                choice = {t: {"tau": tau, "gamma": gamma, "index": idx[kind_of(t)][tau]}}
                m = bench.answer_set(seeds, pairs=validation_pairs(t), edits=methods.saeuron([t], choice)).metrics([t])
                evaluated += 1
                if best is None or m["avg"] > best[0]["avg"]:
                    best = (m, choice[t])
        methods.saeuron_choice[t] = best[1]
        log(f"SAeUron grid {t}: tau {best[1]['tau']}, gamma {best[1]['gamma']} (validation {best[0]})")
    return {"settings_per_concept": len(taus) * len(gammas), "settings_evaluated": evaluated, "taus": taus,
            "gammas": gammas, "validation": "per setting: the target's 6 prompts + 1 prompt of each other concept",
            "chosen": {t: {"tau": c["tau"], "gamma": c["gamma"]} for t, c in methods.saeuron_choice.items()}}


def is_context_sae(loaded) -> bool:
    return any(m.info.hook_point == CONTEXT for m in loaded.blocks)


def _validation_score(bench: Bench, loaded, kinds, seeds, **eraser) -> float:
    names = [t for k in kinds for t in (data.OBJECTS if k == "objects" else data.STYLES)]
    scores = [_validation_answers(bench, loaded, t, seeds, **eraser).metrics([t])["avg"] for t in names]
    return round(sum(scores) / len(scores), 2)


def _validation_answers(bench: Bench, loaded, target: str, seeds, **eraser) -> Answers:
    """The target erased alone, on its validation pairs and these seeds."""
    return bench.answer_set(seeds, pairs=validation_pairs(target), edits=erasers_for_set(loaded, [target], **eraser))


def calibrate(bench: Bench, loaded, kinds, seeds=VALIDATION_SEEDS, candidates=None, log=print,
              known: dict | None = None, detect_scales=None) -> dict:
    """SAEmnesia's one global multiplier: the candidate with the best mean score over all the
    SAE's concepts of its kind(s) on validation seeds (never per concept). Likewise replace
    (PER)'s one detection scale, so that erase mode 'auto' defaults to whichever works better.
    A text ('context') SAE has no positions to replace, and its concept latents hand their
    activation to an anchor, so its candidates are gentler (0 = the concept's latent removed)."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    context = is_context_sae(loaded)
    if candidates is None:
        candidates = CONTEXT_MULTIPLIERS if context else GLOBAL_MULTIPLIERS
    if detect_scales is None:
        detect_scales = [] if context else DETECT_SCALES
    # `known`: an earlier calibration of this file with the same seeds and scoring; its scores are reused
    same = bool(known) and known.get("validation_seeds") == list(seeds) and known.get("scoring") == SCORING
    name = os.path.basename(loaded.info.source)

    def scores(key, values, eraser):
        done = {float(v): sc for v, sc in (known or {}).get(key, {}).items()} if same else {}
        out = {}
        for v in values:
            out[v] = done[v] if v in done else _validation_score(bench, loaded, kinds, seeds, **eraser(v))
            log(f"calibration {name}: {key} {v} -> {out[v]}")
        return out

    by_multiplier = scores("mean_score_by_multiplier", candidates, lambda m: {"mode": "neuron", "multiplier": m})
    by_scale = scores("mean_score_replace_by_detect_scale", detect_scales,
                      lambda d: {"mode": "replace", "detect_scale": d})
    best = max(by_multiplier, key=by_multiplier.get)
    best_scale = max(by_scale, key=by_scale.get) if by_scale else loaded.index.detect_scale
    use_replace = bool(by_scale) and by_scale[best_scale] > by_multiplier[best]
    return {"multiplier": best, "mean_score_by_multiplier": by_multiplier, "detect_scale": best_scale,
            "mean_score_replace_by_detect_scale": by_scale, "default_mode": "replace" if use_replace else "neuron",
            "kinds": kinds, "validation_seeds": list(seeds), "scoring": SCORING, "noise_margin": NOISE_MARGIN,
            "denoise_margin": DENOISE_MARGIN}


# DDIM steps of the benchmark, and so of the calibration that chooses settings for it
BENCH_STEPS = 15


def calibrate_shipped(path: str, kinds, threads: int = 1):
    loaded = load_sae(path)
    # where a concept's handover map applies the multiplier is never reached (its latent is silent
    # on the moved states), so every candidate would tie: calibrate the move the map stands in
    # for, which erasing a concept with its anchor (or to an anchor the user names) still uses;
    # the maps are set aside meanwhile and saved back with the result
    concepts = [c for m in loaded.blocks for c in m.index.concepts.values()]
    maps = [(c, c.handover, c.handover_anchor) for c in concepts]
    for c in concepts:
        c.handover = c.handover_anchor = None
    result = calibrate(Bench(threads=threads, steps=BENCH_STEPS), loaded, kinds, known=loaded.info.training.get("calibration"))
    for c, handover, anchor in maps:
        c.handover, c.handover_anchor = handover, anchor
    result["without_handover_maps"] = any(h is not None for _, h, _ in maps)
    for m in loaded.blocks:
        m.index.default_multiplier = float(result["multiplier"])
        m.index.default_mode = result["default_mode"]
        m.index.detect_scale = float(result["detect_scale"])
    loaded.info.training["calibration"] = result
    save_sae_set(path, [(m.sae, m.info) for m in loaded.blocks], loaded.info.training)
    print(f"{path}: default multiplier {result['multiplier']}, detect scale {result['detect_scale']}, "
          f"default mode {result['default_mode']}", flush=True)


def run(args) -> dict:
    log = print if not args.quiet else (lambda *a: None)
    bench = Bench(threads=args.threads, batch=args.batch, steps=args.steps)
    saes = {kind: {m: load_sae(os.path.join(args.sae_dir, name + ".safetensors")) for m, name in v.items()}
            for kind, v in SAES.items()}
    context_path = os.path.join(args.sae_dir, CONTEXT_SAE + ".safetensors")
    methods = Methods(bench, saes, context_sae=load_sae(context_path) if os.path.isfile(context_path) else None)
    targets = [t for t in (list(data.OBJECTS) + list(data.STYLES)) if not args.targets or t in args.targets]
    seeds = list(range(args.seeds))
    t_start = time.perf_counter()
    out = {"settings": {"test_seeds": seeds, "validation_seeds": VALIDATION_SEEDS, "steps": bench.steps,
                        "cfg": bench.cfg, "sampler": "DDIM (eta 0), SD1 schedule; = KSampler ddim/ddim_uniform",
                        "answer_set": f"36 prompts x {len(seeds)} seeds", "artifact_confidence": CONFIDENT,
                        "broken_noise_margin": NOISE_MARGIN, "broken_denoise_margin": DENOISE_MARGIN,
                        "saes": {k: {m: {"file": os.path.basename(s.info.source), "block": s.info.hook_point,
                                         "latents": s.sae.n_latents, "k": s.sae.k,
                                         "default_multiplier": s.index.default_multiplier,
                                         "detect_scale": s.index.detect_scale}
                                     for m, s in v.items()} for k, v in saes.items()}},
           "methods": {}}

    base = bench.answer_set(seeds)
    out["demo_model"] = {"object_acc": round(100 * float((base.pred_obj == base.objs).float().mean()), 2),
                         "style_acc": round(100 * float((base.pred_style == base.styles).float().mean()), 2),
                         "artifact_rate": base.artifact_rate}
    out["methods"]["none"] = {"targets": {t: base.metrics([t]) for t in targets}, "artifact_rate": base.artifact_rate}
    log(f"demo model: {out['demo_model']}")

    out["saeuron_search"] = grid_search_saeuron(bench, methods, targets, VALIDATION_SEEDS, log, args.taus, args.gammas)
    plans = {
        "negative_prompt": lambda ts: {"negative": methods.negative(ts)},
        "saeuron": lambda ts: {"edits": methods.saeuron(ts)},
        "saemnesia": lambda ts: {"edits": methods.saemnesia(ts)},
        "saemnesia_per": lambda ts: {"edits": methods.per(ts)},
    }
    if methods.context_sae is not None:
        plans["saemnesia_context"] = lambda ts: {"edits": methods.context(ts)}
        out["settings"]["context_sae"] = {"file": CONTEXT_SAE + ".safetensors", "latents": methods.context_sae.sae.n_latents,
                                          "k": methods.context_sae.sae.k,
                                          "default_multiplier": methods.context_sae.index.default_multiplier}
    for name, plan in plans.items():
        per_target, confident = {}, []
        for t in targets:
            a = bench.answer_set(seeds, **plan([t]))
            per_target[t] = a.metrics([t])
            confident.append(a.confident)
            log(f"{name:16s} {t:9s} {per_target[t]}")
        out["methods"][name] = {"targets": per_target,
                                "artifact_rate": round(100 * float((~torch.cat(confident)).float().mean()), 2)}
    for name, m in out["methods"].items():
        m["summary"] = summarize(m["targets"])

    extra_seeds = seeds[:1]
    groups = {"objects_2": ["star", "heart"], "objects_4": ["star", "heart", "cross", "circle"],
              "styles_2": ["stripes", "dots"], "styles_4": ["stripes", "dots", "checker", "solid"]}
    out["multi_concept"] = {"seeds": extra_seeds, "results": {}}
    for g, ts in groups.items():
        if not all(t in targets for t in ts):
            continue
        for name, plan in plans.items():
            m = bench.answer_set(extra_seeds, **plan(ts)).metrics(ts)
            out["multi_concept"]["results"].setdefault(g, {})[name] = m
            log(f"multi {g} {name}: {m}")

    objects = [t for t in data.OBJECTS if t in targets]
    out["sequential"] = {"seeds": extra_seeds, "order": objects, "results": {}}
    for name in [n for n in ("saemnesia", "saemnesia_per", "saemnesia_context") if n in plans]:
        steps = []
        for n in range(1, len(objects) + 1 if len(objects) > 1 else 0):
            erased = objects[:n]
            m = bench.answer_set(extra_seeds, **plans[name](erased)).metrics(erased)
            steps.append({"erased": n, **m})
            log(f"sequential {name} {n}: {m}")
        out["sequential"]["results"][name] = steps

    # paraphrases: other words and word orders than any prompt the SAEs were trained or calibrated on.
    # Per target, its 6 prompts and one prompt of each other concept of its kind, reworded. UA counts
    # only pictures whose unedited twin shows the target ("drawn and removed"): a reworded prompt the
    # model does not draw is no test of erasure. IRA/CRA as in the main table, on the reworded prompts.
    out["paraphrases"] = {"seeds": extra_seeds, "examples": [paraphrase("star", "stripes", i) for i in range(3)],
                          "UA": {}, "results": {}}
    words = lambda o, s, seed: paraphrase(data.OBJECTS[o], data.STYLES[s], o + s)  # noqa: E731
    drawn = {}
    for name, plan in {"none": lambda ts: {}, **plans}.items():
        per_target = {}
        for t in targets:
            a = bench.answer_set(extra_seeds, pairs=validation_pairs(t), words=words, **plan([t]))
            if name == "none":
                truth, pred = (a.objs, a.pred_obj) if kind_of(t) == "objects" else (a.styles, a.pred_style)
                drawn[t] = pred == truth
            per_target[t] = {**a.metrics([t]), **a.drawn_metrics([t], drawn[t])}
        out["paraphrases"]["results"][name] = {"targets": per_target, "summary": summarize_paraphrases(per_target)}
        out["paraphrases"]["UA"][name] = {"targets": {t: m["UA"] for t, m in per_target.items()},
                                          **{k: _mean([m["UA"] for t, m in per_target.items() if kind_of(t) == k])
                                             for k in ("objects", "styles")}}
        log(f"paraphrases {name}: {out['paraphrases']['results'][name]['summary']}")

    out["run"] = {"images": bench.images, "sampling_seconds": round(bench.seconds, 1),
                  "seconds": round(time.perf_counter() - t_start, 1), "threads": args.threads,
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return out


def run_split(args, argv: list[str]) -> dict:
    """Objects and styles in two child processes, merged: the answer sets are independent."""
    import subprocess
    import sys
    import tempfile
    keep, skip = [], False
    for a in argv:  # the parent's options minus --workers N / --workers=N (and its outputs)
        if skip:
            skip = False
        elif a in ("--workers", "--out", "--plot", "--threads"):
            skip = True
        elif not a.startswith(("--workers=", "--out=", "--plot=", "--threads=")):
            keep.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        procs, parts = [], []
        for kind, names in (("objects", data.OBJECTS), ("styles", data.STYLES)):
            part = os.path.join(tmp, f"{kind}.json")
            cmd = [sys.executable, "-m", "saemnesia_demo.bench", *keep, "--threads", "1",
                   "--targets", *names, "--out", part, "--plot", part + ".png"]
            procs.append(subprocess.Popen(cmd, cwd=REPO))
            parts.append(part)
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a benchmark worker failed (see its output above)")
        loaded = []
        for part in parts:
            with open(part, encoding="utf-8") as f:
                loaded.append(json.load(f))
    return merge(loaded)


def merge(parts: list[dict]) -> dict:
    out = json.loads(json.dumps(parts[0]))
    for p in parts[1:]:
        for name, m in p["methods"].items():
            out["methods"][name]["targets"].update(m["targets"])
            n0, n1 = len(out["methods"][name]["targets"]) - len(m["targets"]), len(m["targets"])
            out["methods"][name]["artifact_rate"] = round(
                (out["methods"][name]["artifact_rate"] * n0 + m["artifact_rate"] * n1) / (n0 + n1), 2)
        out["saeuron_search"]["settings_evaluated"] += p["saeuron_search"]["settings_evaluated"]
        out["saeuron_search"]["chosen"].update(p["saeuron_search"]["chosen"])
        out["multi_concept"]["results"].update(p["multi_concept"]["results"])
        for name, steps in p["sequential"]["results"].items():
            if steps:
                out["sequential"]["results"][name] = steps
        if p["sequential"]["order"]:
            out["sequential"]["order"] = p["sequential"]["order"]
        for name, v in p["paraphrases"].get("results", {}).items():
            o = out["paraphrases"]["results"].setdefault(name, {"targets": {}})
            o["targets"].update(v["targets"])
            o["summary"] = summarize_paraphrases(o["targets"])
        for name, v in p["paraphrases"]["UA"].items():
            o = out["paraphrases"]["UA"][name]
            o["targets"].update(v["targets"])
            for kind in ("objects", "styles"):
                if v[kind] is not None and v[kind] == v[kind]:  # not NaN/null
                    o[kind] = v[kind]
        out["run"]["images"] += p["run"]["images"]
        out["run"]["sampling_seconds"] = round(out["run"]["sampling_seconds"] + p["run"]["sampling_seconds"], 1)
        out["run"]["seconds"] = max(out["run"]["seconds"], p["run"]["seconds"])
    out["run"]["threads"] = f"{len(parts)} processes x 1"
    out["demo_model"]["note"] = "from the first worker's answer set (each worker samples the same one)"
    for m in out["methods"].values():
        m["summary"] = summarize(m["targets"])
    return out


def _no_nan(obj):
    """JSON has no NaN: metrics without images (IRA once every object is erased) become null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def _mean(xs):
    xs = [x for x in xs if x == x]
    return round(sum(xs) / len(xs), 2) if xs else float("nan")


def summarize_paraphrases(per_target: dict) -> dict:
    out = {}
    for kind in ("objects", "styles"):
        rows = [m for t, m in per_target.items() if kind_of(t) == kind]
        if rows:
            out[kind] = {k: _mean([r[k] for r in rows]) for k in ("UA", "UA_drawn", "IRA", "CRA", "avg")}
            out[kind]["drawn"] = sum(r["drawn"] for r in rows)
    return out


def summarize(per_target: dict) -> dict:
    out = {}
    for kind in ("objects", "styles"):
        rows = [m for t, m in per_target.items() if kind_of(t) == kind]
        if rows:
            out[kind] = {k: _mean([r[k] for r in rows]) for k in ("UA", "IRA", "CRA", "avg")}
    return out


def plot(results: dict, path: str):
    from PIL import Image, ImageDraw
    methods = list(results["methods"])
    kinds = ["objects", "styles"]
    w, h, pad = 760, 300, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    colors = {"UA": (200, 60, 60), "IRA": (60, 120, 200), "CRA": (60, 160, 90), "avg": (60, 60, 60)}
    group_w = (w - 2 * pad) / (len(methods) * len(kinds))
    bar_w = group_w / 5
    for gi, (kind, m) in enumerate((k, m) for k in kinds for m in methods):
        s = results["methods"][m]["summary"].get(kind)
        x0 = pad + gi * group_w
        for bi, key in enumerate(("UA", "IRA", "CRA", "avg")):
            v = s[key] if s else 0
            top = h - pad - (h - 2 * pad) * v / 100
            d.rectangle([x0 + bi * bar_w, top, x0 + (bi + 1) * bar_w - 1, h - pad], fill=colors[key])
        d.text((x0, h - pad + 4), m.replace("saemnesia", "SAEm").replace("negative_prompt", "neg")[:11], fill="black")
        d.text((x0, h - pad + 16), kind, fill="gray")
    for i, key in enumerate(colors):
        d.rectangle([pad + i * 70, 8, pad + i * 70 + 10, 18], fill=colors[key])
        d.text((pad + i * 70 + 14, 7), key, fill="black")
    d.line([pad, pad, pad, h - pad], fill="black")
    d.text((4, pad - 6), "100", fill="black")
    d.text((12, h - pad - 6), "0", fill="black")
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def validation_check(sae_path: str, seeds: list[int], threads: int = 2, steps: int = BENCH_STEPS, log=print) -> dict:
    """The text SAE as shipped, each concept erased in turn on its validation pairs and the given
    (never test) seeds: the quick check that decides whether a change is worth a full run."""
    if set(seeds) & set(TEST_SEEDS):
        raise SystemExit(f"--validation-check takes validation seeds only, not the test seeds {TEST_SEEDS}")
    bench, loaded = Bench(threads=threads, steps=steps, log=log), load_sae(sae_path)
    out = {"sae": os.path.basename(sae_path), "seeds": list(seeds), "steps": steps, "targets": {}, "kinds": {}}
    for kind, names in (("objects", data.OBJECTS), ("styles", data.STYLES)):
        for t in names:
            answers = _validation_answers(bench, loaded, t, seeds, mode="neuron")
            out["targets"][t] = {**answers.metrics([t]), "broken": int(answers.broken.sum())}
            log(f"{t}: {out['targets'][t]}")
        out["kinds"][kind] = round(sum(out["targets"][t]["avg"] for t in names) / len(names), 2)
    log(f"kind averages: {out['kinds']}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m saemnesia_demo.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae-dir", default=SAE_DIR)
    ap.add_argument("--seeds", type=int, default=len(TEST_SEEDS), help="test seeds per prompt (0..n-1)")
    ap.add_argument("--targets", nargs="*", help="limit to these concepts (default: all 12)")
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--batch", type=int, default=108)
    ap.add_argument("--steps", type=int, default=BENCH_STEPS,
                    help="DDIM steps (15 keeps a full run under an hour on 2 CPU cores; the no-erasure row shows the model at this setting)")
    ap.add_argument("--taus", type=float, nargs="+", default=TAUS, help="SAeUron grid: score quantiles")
    ap.add_argument("--gammas", type=float, nargs="+", default=GAMMAS, help="SAeUron grid: multipliers")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "minicanvas.json"))
    ap.add_argument("--plot", default=os.path.join(REPO, "benchmarks", "results", "minicanvas.png"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--workers", type=int, default=1,
                    help="2: objects and styles in two processes (one thread each), merged into one result")
    ap.add_argument("--merge", nargs="+", metavar="PART.json", help="merge results of runs on disjoint targets")
    ap.add_argument("--validation-check", type=int, nargs="+", metavar="SEED",
                    help="only the quick check of the shipped text SAE on these validation seeds (e.g. 501 502 503); "
                         "writes benchmarks/results/validation_check.json")
    args = ap.parse_args(argv)
    if args.validation_check:
        result = validation_check(os.path.join(args.sae_dir, CONTEXT_SAE + ".safetensors"), args.validation_check,
                                  threads=args.threads, steps=args.steps)
        save_json_atomic(result, os.path.join(REPO, "benchmarks", "results", "validation_check.json"))
        return result
    if args.merge:
        parts = []
        for path in args.merge:
            with open(path, encoding="utf-8") as f:
                parts.append(json.load(f))
        results = merge(parts)
    elif args.workers > 1 and not args.targets:
        results = run_split(args, argv or [])
    else:
        results = run(args)
    results = _no_nan(results)
    save_json_atomic(results, args.out)
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return results


if __name__ == "__main__":
    main()
