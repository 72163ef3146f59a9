"""MiniCanvas erasure benchmark: UA / IRA / CRA for every object and style as the target.

Definitions (UnlearnCanvas's, on MiniCanvas): for an erased object, UA = share of the pictures
prompted with that object that the object classifier no longer calls it; IRA = object accuracy
on the pictures of the other objects; CRA = style accuracy on all pictures (the style must
survive the erasure). Styles the same way round. A picture that neither classifier is confident
about, or that the edit broke (noise, blotches), is *broken*: it fails UA, IRA and CRA alike.

Split by wording, not by seed (text states do not depend on the seed): every method is measured
on prompts from the `TEST` vocabulary (``vocabulary.py``), which nothing was trained, fitted,
calibrated or chosen on: the headline. UA there counts the pictures whose unedited twin showed
the target ("drawn and removed"), since the demo UNet, trained on one template, draws a concept
from other wordings only some of the time; the unedited model's accuracy stands beside it. The
training template ("a {object} in {style} style", which the text SAE and its maps were fitted
on) is reported as the *seen* wording. Sampled with the plain-torch DDIM sampler (15 steps,
CFG 4), which matches the stock KSampler ddim/ddim_uniform on this model; erasers are the ones
the ComfyUI node uses, on the same hook points, on both CFG halves.

Methods (one entry each in `METHODS`): no erasure; negative prompt; word filter (the concept's
name and `TRAIN` synonyms replaced by its anchor's name: what a user can do without the pack);
oracle (the prompt's own wording of the concept replaced by the anchor's name: the bound of any
move to the anchor); SAeUron (unsupervised SAE, per-timestep latents, per-concept (tau, gamma)
chosen on validation seeds and the training template); SAEmnesia (supervised SAE, one latent,
one calibrated multiplier); SAEmnesia + PER (the latent as detector, detected positions
replaced); SAEmnesia on the text states. Plus several concepts at once and in sequence, on test
wordings too. Attacks (``attacks.py``) run as their own part.

Two models (``--model``): the demo UNet (default, ``minicanvas.json``) and MiniCanvas-DiT (``dit.py``,
Flux layout, rectified flow; ``minicanvas_dit.json``), sampled with its own family's sampler (Euler,
simple schedule) at the same steps and CFG, judged by the same classifiers and scoring. On the DiT
the text SAE edits the text states at its input; the methods that need block SAEs on UNet blocks
(SAeUron, SAEmnesia, SAEmnesia + PER) are skipped, and the results say so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
from .dit import DEFAULT_PATH as DEFAULT_DIT
from .dit import euler_sample, load_demo_dit
from .sampling import alphas_cumprod, ddim_sample, seed_noise
from .text_encoder import encode_prompts
from .unet import ldm_transformer_blocks, load_demo_unet
from .vocabulary import TEST, TRAIN, word_filter

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
SCORING = ("v5: broken = neither classifier confident, or noise level +4 or denoising error +0.06 over "
           "the unedited twin; a broken picture fails UA, IRA and CRA")  # calibration scores are reused only if equal
DETECT_SCALES = [1.0, 0.0]  # replace mode: detect above the latent's mean / wherever active
TAUS = [0.99, 0.999]  # with 512 latents: about the top 5 and the top 1 per timestep
GAMMAS = [-2.0, -8.0, -30.0]
GLOBAL_MULTIPLIERS = [-1.5, -5.0, -20.0, -50.0, -100.0, -200.0]
CONTEXT_MULTIPLIERS = [0.0, -0.5, -1.5, -3.0]
TEST_WORDINGS = 4  # TEST wordings per (object, style) pair: its 3 name templates and 1 with synonyms
# in the several-at-once and sequential parts, of each pair's TEST_WORDINGS: the first name template
# and the wording with synonyms
SEQUENCE_WORDINGS = (0, TEST_WORDINGS - 1)
SECTIONS = ("test", "seen", "multi", "sequential")


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
    broken: torch.Tensor  # the edit ruined the picture (noise, blotches) compared with its unedited twin

    @property
    def failed(self) -> torch.Tensor:
        """Pictures that count as neither erased (UA) nor kept (IRA, CRA): broken by the edit, or
        so degenerate that no classifier is sure of anything (a blank picture is no erasure)."""
        return self.broken | ~self.confident

    def metrics(self, targets: list[str]) -> dict:
        """UA over the targets' images; IRA over the other concepts of their kind; CRA on the other kind."""
        kind = kind_of(targets[0])
        truth, pred, other_truth, other_pred, names = (
            (self.objs, self.pred_obj, self.styles, self.pred_style, data.OBJECTS) if kind == "objects"
            else (self.styles, self.pred_style, self.objs, self.pred_obj, data.STYLES))
        pred, other_pred = pred.masked_fill(self.failed, -1), other_pred.masked_fill(self.failed, -1)
        ids = torch.tensor([names.index(t) for t in targets])
        on = torch.isin(truth, ids)
        erased = (pred != truth) & ~self.failed  # ruining the picture is not erasing the concept
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
        erased = (pred != truth) & ~self.failed
        return {"UA_drawn": round(100 * float(erased[on].float().mean()), 2) if on.any() else float("nan"),
                "drawn": int(on.sum())}

    @property
    def artifact_rate(self) -> float:
        """Share of failed pictures: unconfident or broken, both counted."""
        return round(100 * float(self.failed.float().mean()), 2)


class Bench:
    """The demo UNet as the benchmark runs it: sampling with edits on its hook points, the
    classifiers' answers, the quality measures of `broken`. `DitBench` is the same for the DiT."""
    model = "unet"
    sampler = "DDIM (eta 0), SD1 schedule; = KSampler ddim/ddim_uniform"

    def __init__(self, threads: int = 1, steps: int = 25, cfg: float = 4.0, batch: int = 108, log=print):
        torch.set_num_threads(threads)
        self.load_model()
        self.clf, _ = load_classifiers()
        self.steps, self.cfg, self.batch, self.log = steps, cfg, batch, log
        self._text: dict[str, torch.Tensor] = {}
        self._unedited: dict[tuple[str, int], tuple[float, float]] = {}  # (noise level, denoising error)
        self._t = {"t": 0.0}
        self._context_edits = []
        self.images = 0
        self.seconds = 0.0

    # --- what differs between the models ---------------------------------------------------
    def load_model(self):
        self.unet, meta = load_demo_unet()
        self.blocks = ldm_transformer_blocks(meta["diffusers_config"])
        self.model_info = {"file": "demo_unet.safetensors"}

    def net(self, x, t, ctx):
        """The model's own call, unedited: the UNet's noise prediction at DDPM timestep t."""
        return self.unet(x, t, encoder_hidden_states=ctx).sample

    def draw(self, net, cond, uncond, seeds) -> torch.Tensor:
        """The model's sampler over `net(x, t, ctx)` (the model's own call, edits included)."""
        return ddim_sample(net, cond, uncond, steps=self.steps, cfg=self.cfg, seeds=seeds)

    def noise_prediction(self, net, x, t, ctx):
        """The noise that `net` sees in `x`, noised as DDPM noises at integer timesteps `t`: the
        objective denoising_error and the attacks share across models."""
        return net(x, t, ctx)

    def hook_block(self, block: str, edit: Callable[[torch.Tensor], torch.Tensor]):
        """A forward hook that passes the block's output through `edit`; its handle."""
        def hook(_module, _inputs, out):
            if isinstance(out, tuple):
                return (edit(out[0]),) + tuple(out[1:])
            out.sample = edit(out.sample)
            return out
        return self.unet.get_submodule(self.blocks[block]).register_forward_hook(hook)

    # --- the same for every model ------------------------------------------------------------
    def text(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            for p, e in zip(missing, encode_prompts(missing)):
                self._text[p] = e
        return torch.stack([self._text[p] for p in prompts])

    def _edited_net(self, x, t, ctx, *_):
        self._t["t"] = float(t[0])
        for fn in self._context_edits:  # what the model reads of the prompt (hook point "context")
            ctx = fn(ctx, self._t["t"])
        return self.net(x, t, ctx)

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], edits=(), negative: str = "",
               rewrite: Callable[[str], str] | None = None) -> torch.Tensor:
        """edits: [(block, fn(h, timestep) -> h)], applied in order (stacked erasers); rewrite:
        what the prompt text becomes before it is encoded (a user's edit of the prompt)."""
        if rewrite is not None:
            prompts = [rewrite(p) for p in prompts]
        handles = []
        t0 = time.perf_counter()
        try:
            for b, fn in edits:
                if b != CONTEXT:
                    handles.append(self.hook_block(b, lambda h, fn=fn: fn(h, self._t["t"])))
            self._context_edits = [fn for b, fn in edits if b == CONTEXT]
            out = []
            for i in range(0, len(prompts), self.batch):
                out.append(self.draw(self._edited_net, self.text(prompts[i:i + self.batch]), self.text([negative]),
                                     seeds[i:i + self.batch]))
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
        eps = lambda x, t, ctx: self.noise_prediction(self.net, x, t, ctx)  # noqa: E731
        return torch.stack([noise_level(images), denoising_error(eps, images, self.text([""]))], 1)

    def unedited(self, rows: list[tuple]) -> Answers:
        """The unedited model's answers on these `(object, style, prompt, seed)` rows, each sampled
        once and remembered (with its quality, the yardstick of `broken`)."""
        keys = [(p, sd) for _, _, p, sd in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self._unedited))
        if missing:
            imgs = self.sample([p for p, _ in missing], [sd for _, sd in missing])
            x = imgs.float().clamp(-1, 1)
            po, ps = self.clf.object(x).softmax(1), self.clf.style(x).softmax(1)
            for k, q, a, b in zip(missing, self.quality(imgs).tolist(), po, ps):
                self._unedited[k] = {"quality": q, "pred_obj": int(a.argmax()), "pred_style": int(b.argmax()),
                                     "confident": bool(a.max() >= CONFIDENT or b.max() >= CONFIDENT)}
        got = [self._unedited[k] for k in keys]
        return Answers(torch.tensor([o for o, _, _, _ in rows]), torch.tensor([s for _, s, _, _ in rows]),
                       torch.tensor([g["pred_obj"] for g in got]), torch.tensor([g["pred_style"] for g in got]),
                       torch.tensor([g["confident"] for g in got]), torch.zeros(len(rows), dtype=torch.bool))

    def answer_rows(self, rows: list[tuple], plan: Plan | None = None) -> Answers:
        """Answers on `(object, style, prompt, seed)` rows under a plan; a picture counts as broken
        when its quality fell against the unedited twin (same prompt, same seed)."""
        plan = plan or Plan()
        base = self.unedited(rows)
        if plan.is_empty:
            return base
        prompts, seeds = [p for _, _, p, _ in rows], [sd for _, _, _, sd in rows]
        imgs = self.sample(prompts, seeds, plan.edits, plan.negative, plan.rewrite)
        rise = self.quality(imgs) - torch.tensor([self._unedited[(p, sd)]["quality"] for p, sd in zip(prompts, seeds)])
        broken = (rise[:, 0] > NOISE_MARGIN) | (rise[:, 1] > DENOISE_MARGIN)
        return self.judge(imgs, base.objs, base.styles, broken)

    def answer_set(self, seeds, pairs=None, edits=(), negative="") -> Answers:
        """The training template ("a {object} in {style} style") on all prompts, or on the given
        (object, style) index pairs, x seeds: the *seen* wording."""
        return self.answer_rows(seen_rows(seeds, pairs), Plan(tuple(edits), negative))


# Methods that edit UNet blocks through block SAEs: none exists for the DiT's blocks
UNET_ONLY = ("saeuron", "saemnesia", "saemnesia_per")


class DitBench(Bench):
    """MiniCanvas-DiT as the benchmark runs it: Euler on the rectified flow with the `simple`
    schedule (the stock KSampler euler/simple), CFG on the velocity's x0; text edits on the states
    the DiT reads at its input (`txt_in`), told the model's own timestep (sigma in 0..1, as
    ComfyUI's ModelSamplingFlux gives an edit); no block hook points."""
    model = "dit"
    sampler = "Euler on the rectified flow, simple schedule, shift 0.5; = KSampler euler/simple"

    def __init__(self, path=None, **kwargs):
        self.path = Path(path or DEFAULT_DIT)
        super().__init__(**kwargs)

    def load_model(self):
        if not self.path.is_file():
            raise FileNotFoundError(
                f"MiniCanvas-DiT weights not found at {self.path}. Train them with `nice -n 19 python -m "
                f"saemnesia_demo.train_dit --work scratch/minicanvas_dit` (docs/minicanvas.md), or export a running "
                f"training's EMA weights with `python -m saemnesia_demo.train_dit --work scratch/minicanvas_dit "
                f"--export-only --out PATH` and pass --dit PATH.")
        self.dit, meta = load_demo_dit(self.path)
        self.blocks = {}
        self.model_info = {"file": self.path.name, "training_steps": meta.get("training", {}).get("steps")}

    def net(self, x, t, ctx):
        """The DiT's velocity (noise - x0) at sigma t."""
        return self.dit(x, t, ctx)

    def draw(self, net, cond, uncond, seeds) -> torch.Tensor:
        return euler_sample(net, cond, uncond, seed_noise(seeds), steps=self.steps, cfg=self.cfg)

    def noise_prediction(self, net, x, t, ctx):
        """DDPM's x_t at timestep t is the rectified flow's x_s scaled by (sqrt(a) + sqrt(1 - a)),
        at sigma s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)) (the same signal-to-noise ratio); the
        velocity v = noise - x0 then names the noise as x_s + (1 - s) v. Its squared error is the
        flow-matching loss at s weighted by (1 - s)^2, on the scale of the UNet's."""
        a = alphas_cumprod()[t].view(-1, 1, 1, 1)
        scale = a.sqrt() + (1 - a).sqrt()
        s = (1 - a).sqrt() / scale
        xs = x / scale
        return xs + (1 - s) * net(xs, s.flatten(), ctx)

    def hook_block(self, block, edit):
        raise ValueError(f"MiniCanvas-DiT has no block hook point '{block}' (no block SAE exists for it); "
                         f"on the DiT only 'context' edits (the text SAE) apply")


def make_bench(model: str = "unet", dit_path=None, **kwargs) -> Bench:
    return DitBench(dit_path, **kwargs) if model == "dit" else Bench(**kwargs)


@dataclass(frozen=True)
class Plan:
    """What a method does to a sampling run: edits on hook points, a negative prompt, a rewrite
    of the prompt text."""
    edits: tuple = ()
    negative: str = ""
    rewrite: Callable[[str], str] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.edits and not self.negative and self.rewrite is None


def all_pairs() -> list[tuple[int, int]]:
    return [(o, s) for o in range(len(data.OBJECTS)) for s in range(len(data.STYLES))]


def seen_rows(seeds, pairs=None) -> list[tuple]:
    """`(object, style, prompt, seed)` rows in the training template."""
    return [(o, s, data.prompt_for(o, s), seed) for seed in seeds for o, s in (pairs or all_pairs())]


def unseen_rows(seeds, pairs=None, pick: tuple[int, ...] | None = None) -> list[tuple]:
    """`(object, style, prompt, seed)` rows in `TEST` wordings (the same wordings for every seed):
    each pair's TEST_WORDINGS, or those of them at the `pick` positions."""
    def wordings(o, s):
        ws = TEST.prompts_for(data.OBJECTS[o], data.STYLES[s], TEST_WORDINGS, seed=0)
        return ws if pick is None else [ws[i] for i in pick]
    return [(o, s, p, seed) for seed in seeds for o, s in (pairs or all_pairs()) for p in wordings(o, s)]


def pairs_for(targets) -> list[tuple[int, int]]:
    """Every target's validation pairs (its 6 prompts, one of each neighbour), in order, once."""
    return list(dict.fromkeys(p for t in targets for p in validation_pairs(t)))


# What a rewrite names when every concept of the kind is erased: words of neither vocabulary
NO_ANCHOR = {"objects": "shape", "styles": "unnamed"}


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

    def anchor(self, concept: str, avoid=()) -> str:
        """Where a rewrite sends the concept: the text SAE's anchor for it (the same the SAE
        methods move to), or the next concept of its kind; never a concept also being erased."""
        names = data.OBJECTS if kind_of(concept) == "objects" else data.STYLES
        first = None
        if self.context_sae is not None:
            c = self.context_sae.blocks[0].index.concepts.get(concept)
            first = c.anchor if c is not None else None
        order = ([first] if first else []) + [names[(names.index(concept) + k) % len(names)] for k in range(1, len(names))]
        # every concept of the kind erased (the last step of the sequential part): a word that names none
        return next((a for a in order if a not in avoid and a != concept), NO_ANCHOR[kind_of(concept)])

    def word_filter(self, targets):
        """What a user can do without the pack: the name and its TRAIN synonyms -> the anchor's name."""
        swaps = [(t, self.anchor(t, targets)) for t in targets]

        def rewrite(prompt: str) -> str:
            for t, a in swaps:
                prompt = word_filter(prompt, t, a)
            return prompt
        return rewrite

    def oracle(self, targets):
        """The prompt rewritten by hand: whatever TEST or TRAIN words name the concept -> the anchor's name."""
        swaps = [(t, self.anchor(t, targets)) for t in targets]

        def rewrite(prompt: str) -> str:
            for t, a in swaps:
                for w in sorted({*TRAIN.wordings(t), *TEST.wordings(t)}, key=len, reverse=True):
                    prompt = re.sub(rf"(?<![a-z]){re.escape(w)}(?![a-z])", a, prompt, flags=re.IGNORECASE)
            return prompt
        return rewrite


# One entry per method: key -> (what it is, plan for a set of targets). A method is one line here.
METHODS: dict[str, tuple[str, Callable[[Methods, list], Plan]]] = {
    "none": ("no erasure", lambda m, ts: Plan()),
    "negative_prompt": ("negative prompt", lambda m, ts: Plan(negative=", ".join(ts))),
    "word_filter": ("word filter (name and TRAIN synonyms -> anchor name)", lambda m, ts: Plan(rewrite=m.word_filter(ts))),
    "oracle": ("oracle (the prompt rewritten by hand to name the anchor)", lambda m, ts: Plan(rewrite=m.oracle(ts))),
    "saeuron": ("SAeUron (per-concept grid search)", lambda m, ts: Plan(tuple(m.saeuron(ts)))),
    "saemnesia": ("SAEmnesia (one latent, one multiplier)", lambda m, ts: Plan(tuple(m.saemnesia(ts)))),
    "saemnesia_per": ("SAEmnesia + PER (detect and replace)", lambda m, ts: Plan(tuple(m.per(ts)))),
    "saemnesia_context": ("SAEmnesia on the text states, all 7 blocks (one latent detects, a handover map to the anchor)",
                          lambda m, ts: Plan(tuple(m.context(ts)))),
}
SEQUENTIAL_METHODS = ("word_filter", "saemnesia_per", "saemnesia_context")
# what a method is on the DiT where it differs from the UNet's: its text enters once, at txt_in
DIT_METHOD_NAMES = {"saemnesia_context": "SAEmnesia on the text states, at the DiT's input (one latent detects, a "
                                         "handover map to the anchor)"}


def method_name(name: str, model: str = "unet") -> str:
    return (DIT_METHOD_NAMES.get(name) if model == "dit" else None) or METHODS[name][0]


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


def shows(answers: Answers, target: str) -> torch.Tensor:
    """Per row: the picture shows the target (the classifier of its kind names it, confidently)."""
    truth, pred = (answers.objs, answers.pred_obj) if kind_of(target) == "objects" else (answers.styles, answers.pred_style)
    return (pred == truth) & ~answers.failed


def record(section: str, method: str, targets: list[str], answers: Answers, drawn=None, **extra) -> dict:
    """One measurement: a method erasing these targets on one set of rows."""
    rec = {"section": section, "method": method, "targets": list(targets), **answers.metrics(targets),
           "pictures": len(answers.objs), "failed": int(answers.failed.sum()), **extra}
    if drawn is not None:
        rec.update(answers.drawn_metrics(targets, drawn))
        rec["avg_drawn"] = round((rec["UA_drawn"] + rec["IRA"] + rec["CRA"]) / 3, 2)
    return rec


def accuracy(answers: Answers) -> dict:
    ok = ~answers.failed
    return {"object_acc": round(100 * float(((answers.pred_obj == answers.objs) & ok).float().mean()), 2),
            "style_acc": round(100 * float(((answers.pred_style == answers.styles) & ok).float().mean()), 2),
            "failed_rate": answers.artifact_rate, "pictures": len(answers.objs)}


def setup(args, log=print) -> tuple[Bench, Methods, list[str], list[str]]:
    """The bench of the model the options name, the methods over the shipped SAEs, the targets and
    the method names the options ask for ("none" always; the text SAE's method only where its file
    is there; on the DiT none of the methods that need UNet block SAEs, each said why)."""
    model = getattr(args, "model", "unet")
    bench = make_bench(model, getattr(args, "dit", None), threads=args.threads, batch=args.batch, steps=args.steps)
    block_saes = {} if model == "dit" else SAES
    saes = {kind: {m: load_sae(os.path.join(args.sae_dir, name + ".safetensors")) for m, name in v.items()}
            for kind, v in block_saes.items()}
    context_path = os.path.join(args.sae_dir, CONTEXT_SAE + ".safetensors")
    methods = Methods(bench, saes, context_sae=load_sae(context_path) if os.path.isfile(context_path) else None)
    targets = [t for t in (list(data.OBJECTS) + list(data.STYLES)) if not args.targets or t in args.targets]
    names = [n for n in METHODS if (n != "saemnesia_context" or methods.context_sae is not None)
             and (not args.methods or n in args.methods or n == "none")]
    skipped = skipped_methods(bench, names)
    for n, why in skipped.items():
        log(f"skipping {n} on {bench.model}: {why}")
    return bench, methods, targets, [n for n in names if n not in skipped]


def skipped_methods(bench: Bench, names) -> dict[str, str]:
    """Methods of `names` that do not apply to the bench's model, with the reason."""
    if bench.model != "dit":
        return {}
    return {n: "needs block SAEs on UNet blocks; none exists for MiniCanvas-DiT's blocks" for n in names if n in UNET_ONLY}


def run(args) -> dict:
    log = print if not args.quiet else (lambda *a: None)
    bench, methods, targets, names = setup(args, log)
    asked = [n for n in METHODS if not args.methods or n in args.methods]
    saes = methods.saes
    seeds, sections = list(range(args.seeds)), list(args.sections)
    t_start = time.perf_counter()
    out = {"settings": {"model": bench.model, "model_file": bench.model_info, "skipped_methods": skipped_methods(bench, asked),
                        "test_seeds": seeds, "validation_seeds": VALIDATION_SEEDS, "steps": bench.steps,
                        "cfg": bench.cfg, "sampler": bench.sampler,
                        "test_wordings": {"per_pair": TEST_WORDINGS, "vocabulary": "TEST (saemnesia_demo/vocabulary.py)",
                                          "examples": TEST.prompts_for("star", "stripes", TEST_WORDINGS, seed=0),
                                          "multi_and_sequential": f"wordings {list(SEQUENCE_WORDINGS)} of each pair, seed 0"},
                        "seen_wording": TEMPLATE, "rows_per_target": "its 6 pairs + one pair of each other concept of its kind",
                        "sections": sections, "artifact_confidence": CONFIDENT, "scoring": SCORING,
                        "broken_noise_margin": NOISE_MARGIN, "broken_denoise_margin": DENOISE_MARGIN,
                        "methods": {n: method_name(n, bench.model) for n in names},
                        "saes": {k: {m: {"file": os.path.basename(s.info.source), "block": s.info.hook_point,
                                         "latents": s.sae.n_latents, "k": s.sae.k,
                                         "default_multiplier": s.index.default_multiplier,
                                         "detect_scale": s.index.detect_scale}
                                     for m, s in v.items()} for k, v in saes.items()}},
           "records": []}
    if methods.context_sae is not None:
        out["settings"]["context_sae"] = {"file": CONTEXT_SAE + ".safetensors", "latents": methods.context_sae.sae.n_latents,
                                          "k": methods.context_sae.sae.k,
                                          "default_multiplier": methods.context_sae.index.default_multiplier}
    out["demo_model"] = {"test": accuracy(bench.unedited(unseen_rows(seeds))),
                         "seen": accuracy(bench.unedited(seen_rows(seeds)))}
    log(f"demo model: {out['demo_model']}")
    if "saeuron" in names:
        out["saeuron_search"] = grid_search_saeuron(bench, methods, targets, VALIDATION_SEEDS, log, args.taus, args.gammas)

    def measure(section, name, ts, rows, **extra):
        answers = bench.answer_rows(rows, METHODS[name][1](methods, list(ts)))
        base = bench.unedited(rows)
        drawn = torch.stack([shows(base, t) for t in ts]).any(0)
        rec = record(section, name, ts, answers, drawn, **extra)
        out["records"].append(rec)
        if getattr(args, "out", None):  # a run stopped or failed later keeps what it measured
            save_json_atomic(_no_nan(out), partial_path(args.out))
        log(f"{section:10s} {name:17s} {'+'.join(ts):12s} " + " ".join(
            f"{k} {rec[k]}" for k in ("UA", "UA_drawn", "drawn", "IRA", "CRA", "failed")))

    for name in names:
        for t in targets:
            if "test" in sections:
                measure("test", name, [t], unseen_rows(seeds, validation_pairs(t)))
            if "seen" in sections:
                measure("seen", name, [t], seen_rows(seeds, validation_pairs(t)))
    if "multi" in sections:
        groups = {"objects_2": ["star", "heart"], "objects_4": ["star", "heart", "cross", "circle"],
                  "styles_2": ["stripes", "dots"], "styles_4": ["stripes", "dots", "checker", "solid"]}
        for g, ts in groups.items():
            if all(t in targets for t in ts):
                for name in names:
                    measure("multi", name, ts, unseen_rows(seeds[:1], pairs_for(ts), SEQUENCE_WORDINGS), group=g)
    objects = [t for t in data.OBJECTS if t in targets]
    if "sequential" in sections and len(objects) > 1:
        for name in [n for n in SEQUENTIAL_METHODS if n in names]:
            for n in range(1, len(objects) + 1):
                measure("sequential", name, objects[:n], unseen_rows(seeds[:1], all_pairs(), SEQUENCE_WORDINGS), step=n)
    out["run"] = {"images": bench.images, "sampling_seconds": round(bench.seconds, 1),
                  "seconds": round(time.perf_counter() - t_start, 1), "threads": args.threads,
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return views(out)


def partial_path(out: str) -> str:
    """Where a run keeps the records it has finished while it runs (`views` of it gives the tables)."""
    return os.path.splitext(out)[0] + ".partial.json"


def views(out: dict) -> dict:
    """The tables derived from the records (run and merge both end here): per section, method and
    target the record, and per kind the means; the multi-concept and sequential parts by group."""
    recs = out["records"]
    for section in ("test", "seen"):
        table = {}
        for r in (r for r in recs if r["section"] == section):
            table.setdefault(r["method"], {"targets": {}})["targets"][r["targets"][0]] = r
        for m in table.values():
            m["summary"] = summarize(m["targets"])
            rows = list(m["targets"].values())
            m["failed_rate"] = round(100 * sum(r["failed"] for r in rows) / max(1, sum(r["pictures"] for r in rows)), 2)
        out[section] = table
    out["multi"] = {}
    for r in (r for r in recs if r["section"] == "multi"):
        out["multi"].setdefault(r["group"], {})[r["method"]] = r
    out["sequential"] = {}
    for r in sorted((r for r in recs if r["section"] == "sequential"), key=lambda r: r["step"]):
        out["sequential"].setdefault(r["method"], []).append(r)
    return out


def run_split(args, argv: list[str]) -> dict:
    """Objects and styles in two child processes, merged: the answer sets are independent."""
    import subprocess
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
    """Runs on disjoint targets as one: their records joined, their counts added."""
    models = {p["settings"].get("model", "unet") for p in parts}
    if len(models) > 1:
        raise SystemExit(f"cannot merge runs on different models ({', '.join(sorted(models))}); merge each model's parts apart")
    out = {k: json.loads(json.dumps(v)) for k, v in parts[0].items() if k in ("settings", "demo_model", "run")}
    out["records"] = [r for p in parts for r in p["records"]]
    searches = [p["saeuron_search"] for p in parts if "saeuron_search" in p]
    if searches:
        out["saeuron_search"] = {**searches[0], "settings_evaluated": sum(s["settings_evaluated"] for s in searches),
                                 "chosen": {t: c for s in searches for t, c in s["chosen"].items()}}
    out["run"]["images"] = sum(p["run"]["images"] for p in parts)
    out["run"]["sampling_seconds"] = round(sum(p["run"]["sampling_seconds"] for p in parts), 1)
    out["run"]["seconds"] = max(p["run"]["seconds"] for p in parts)
    out["run"]["threads"] = f"{len(parts)} processes x 1"
    return views(out)


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


def summarize(per_target: dict) -> dict:
    """Per kind, the mean over its targets of each metric the records hold (drawn: a sum)."""
    out = {}
    for kind in ("objects", "styles"):
        rows = [m for t, m in per_target.items() if kind_of(t) == kind]
        if rows:
            keys = [k for k in ("UA", "UA_drawn", "IRA", "CRA", "avg", "avg_drawn") if k in rows[0]]
            out[kind] = {k: _mean([r[k] for r in rows]) for k in keys}
            if "drawn" in rows[0]:
                out[kind]["drawn"] = sum(r["drawn"] for r in rows)
    return out


def plot(results: dict, path: str):
    from PIL import Image, ImageDraw
    methods = list(results["test"])
    if not methods:  # a run of other sections only (seen, multi, sequential): nothing to draw
        return
    kinds = ["objects", "styles"]
    w, h, pad = 1200, 300, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    colors = {"UA_drawn": (200, 60, 60), "IRA": (60, 120, 200), "CRA": (60, 160, 90), "avg_drawn": (60, 60, 60)}
    group_w = (w - 2 * pad) / (len(methods) * len(kinds))
    bar_w = group_w / 5
    for gi, (kind, m) in enumerate((k, m) for k in kinds for m in methods):
        s = results["test"][m]["summary"].get(kind)
        x0 = pad + gi * group_w
        for bi, key in enumerate(("UA_drawn", "IRA", "CRA", "avg_drawn")):
            v = (s or {}).get(key) or 0  # None: no picture to measure (UA of a target never drawn)
            top = h - pad - (h - 2 * pad) * v / 100
            d.rectangle([x0 + bi * bar_w, top, x0 + (bi + 1) * bar_w - 1, h - pad], fill=colors[key])
        d.text((x0, h - pad + 4), m.replace("saemnesia", "SAEm").replace("negative_prompt", "neg")[:9], fill="black")
        d.text((x0, h - pad + 16), kind, fill="gray")
    for i, key in enumerate(colors):
        d.rectangle([pad + i * 90, 8, pad + i * 90 + 10, 18], fill=colors[key])
        d.text((pad + i * 90 + 14, 7), key, fill="black")
    d.line([pad, pad, pad, h - pad], fill="black")
    d.text((4, pad - 6), "100", fill="black")
    d.text((12, h - pad - 6), "0", fill="black")
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def run_attacks(args) -> dict:
    """UA under each attack of ``attacks.py`` for every method of `METHODS`, the unedited model as control."""
    from .attacks import attack_results
    bench, methods, targets, names = setup(args)
    names = [n for n in names if n != "none"]  # attack_results adds the unedited control itself
    if "saeuron" in names:
        grid_search_saeuron(bench, methods, targets, VALIDATION_SEEDS, print, args.taus, args.gammas)

    def as_dict(name):
        def make(ts):
            plan = METHODS[name][1](methods, list(ts))
            return {"edits": list(plan.edits), "negative": plan.negative, "rewrite": plan.rewrite}
        return make
    out = attack_results(bench, {n: as_dict(n) for n in names}, targets, list(range(args.seeds)))
    out["settings"].update({"model": bench.model, "model_file": bench.model_info, "sampler": bench.sampler,
                            "skipped_methods": skipped_methods(bench, [n for n in METHODS if not args.methods or n in args.methods])})
    return out


def validation_check(sae_path: str, seeds: list[int], threads: int = 2, steps: int = BENCH_STEPS, log=print,
                     model: str = "unet", dit_path=None) -> dict:
    """The text SAE as shipped, each concept erased in turn on its validation pairs and the given
    (never test) seeds: the quick check that decides whether a change is worth a full run."""
    if set(seeds) & set(TEST_SEEDS):
        raise SystemExit(f"--validation-check takes validation seeds only, not the test seeds {TEST_SEEDS}")
    bench, loaded = make_bench(model, dit_path, threads=threads, steps=steps, log=log), load_sae(sae_path)
    out = {"model": model, "sae": os.path.basename(sae_path), "seeds": list(seeds), "steps": steps, "targets": {}, "kinds": {}}
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
    ap.add_argument("--model", choices=("unet", "dit"), default="unet",
                    help="the demo model measured: the UNet, or MiniCanvas-DiT (Flux layout; methods that need UNet "
                         "block SAEs are skipped on it); each model has its own results files (dit: *_dit.json)")
    ap.add_argument("--dit", default=str(DEFAULT_DIT), help="MiniCanvas-DiT weights (with --model dit)")
    ap.add_argument("--out", help="default benchmarks/results/minicanvas.json (dit: minicanvas_dit.json)")
    ap.add_argument("--plot", help="default benchmarks/results/minicanvas.png (dit: minicanvas_dit.png)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--methods", nargs="*", choices=list(METHODS), help="limit to these methods (no erasure always runs)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="test wordings, seen wording, several at once, in sequence (default: all)")
    ap.add_argument("--workers", type=int, default=1,
                    help="2: objects and styles in two processes (one thread each), merged into one result")
    ap.add_argument("--merge", nargs="+", metavar="PART.json", help="merge results of runs on disjoint targets")
    ap.add_argument("--validation-check", type=int, nargs="+", metavar="SEED",
                    help="only the quick check of the shipped text SAE on these validation seeds (e.g. 501 502 503); "
                         "writes benchmarks/results/validation_check.json (dit: validation_check_dit.json)")
    ap.add_argument("--attacks", action="store_true",
                    help="only the attacks part (attacks.py: a word prefix and an embedding against every method); "
                         "writes benchmarks/results/attacks.json (dit: attacks_dit.json)")
    args = ap.parse_args(argv)
    args.out = args.out or result_path("minicanvas", args.model)
    args.plot = args.plot or result_path("minicanvas", args.model, ".png")
    try:
        return _main(args, argv)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def result_path(name: str, model: str, ext: str = ".json") -> str:
    """benchmarks/results/NAME.json for the UNet, NAME_dit.json for the DiT: one file per model."""
    return os.path.join(REPO, "benchmarks", "results", name + ("" if model == "unet" else f"_{model}") + ext)


def _main(args, argv):
    if args.attacks:
        result = _no_nan(run_attacks(args))
        save_json_atomic(result, result_path("attacks", args.model))
        return result
    if args.validation_check:
        result = validation_check(os.path.join(args.sae_dir, CONTEXT_SAE + ".safetensors"), args.validation_check,
                                  threads=args.threads, steps=args.steps, model=args.model, dit_path=args.dit)
        save_json_atomic(result, result_path("validation_check", args.model))
        return result
    if args.merge:
        parts = []
        for path in args.merge:
            with open(path, encoding="utf-8") as f:
                parts.append(json.load(f))
        results = merge(parts)
    elif args.workers > 1 and not args.targets:
        results = run_split(args, sys.argv[1:] if argv is None else argv)  # the workers get the same options
    else:
        results = run(args)
    results = _no_nan(results)
    save_json_atomic(results, args.out)
    if os.path.exists(partial_path(args.out)):
        os.remove(partial_path(args.out))
    plot(results, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return results


if __name__ == "__main__":
    main()
