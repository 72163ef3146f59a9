"""Attacks on MiniCanvas erasure: can someone who tries on purpose get an erased concept back?

Two attacks a ComfyUI user can mount, both against the *erased* model (the method's edits,
negative prompt and prompt rewrite all in place), both fitted on their own seeds:

* **Words** (UnlearnDiffAtk-style, Zhang et al. 2023): a short prefix of real words put in
  front of the concept's prompts, found by gradient-guided search over the text encoder's
  vocabulary (GCG-like: the gradient of the loss with respect to a one-hot token choice names
  the top-k candidates per position; a handful of single-token swaps are evaluated exactly and
  the best kept). Only whole lower-case words are candidates, so the prefix is plain text that a
  user types and that tokenises back to the same tokens.
* **An embedding** (textual inversion, as CCE, arXiv 2308.01508): one input embedding in
  MiniLM's word-embedding space, in place of one word of the prompt (the concept's name,
  replaced by a neutral placeholder word), learned with Adam. ComfyUI loads such embedding
  files in prompts; a text rewrite never sees it.

Objective of both: the erased model's denoising loss (epsilon MSE) on target pictures that the
*unedited* model drew from the concept's prompts, at fixed timesteps and fixed noises (so
candidates are compared on one deterministic objective). The loss is the conditional
prediction's, as UnlearnDiffAtk's: a negative prompt acts only through guidance, so against a
negative prompt the attack is the one found on the unedited model, then sampled with it. On
MiniCanvas-DiT (a rectified flow) the same loss is its flow-matching loss at the same
signal-to-noise ratios, on the noise scale (`DitBench.noise_prediction`), and the attacked
prompts are sampled with its Euler sampler.

The gradient flows through the eraser: `ConceptEraser.__call__` is a no-grad function, so the
attacks call the function it wraps under `torch.enable_grad()`. The gradient passes through
the residual (the eraser adds a change to its input) and through every edit that is a
continuous function of the input: the SAE latent's activation, the handover map's linear move,
the anchor shift's share. It does not pass through discrete choices (which rows fire above a
threshold, top-k membership, PER's choice of positions) nor where a share is clamped at its cap.

Prompts come from the `TRAIN` vocabulary only (its name templates, through
`TRAIN.prompts_for`), and target pictures, timesteps and noises from seeds that are never test
seeds (700 and up), so nothing about the test wordings or test seeds leaks into the attack. The
attacked prompts are then sampled at the benchmark's seeds and judged by the classifiers, with
the benchmark's scoring: a picture the edit broke is not an erased one.

Plain torch: no ComfyUI import.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from saemnesia_core.checkpoint import CONTEXT
from saemnesia_core.intervention import ConceptEraser

from . import data
from .bench import DENOISE_MARGIN, NOISE_MARGIN, TEST_SEEDS, Bench, kind_of
from .sampling import alphas_cumprod
from .text_encoder import TOKEN_LENGTH, get_text_encoder
from .vocabulary import TRAIN


class Clock:
    """Wall and CPU seconds since it was made: the machine may be shared, and CPU time says what
    the work itself costs."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"seconds": round(time.perf_counter() - self.wall, 1), "cpu_seconds": round(time.process_time() - self.cpu, 1)}


PLACEHOLDER = "thing"  # the word whose input embedding the embedding attack replaces: no concept's wording
KINDS = ("words", "embedding")


@dataclass
class AttackSettings:
    """Sized so that one (method, concept) takes a few minutes on one CPU thread."""
    fit_seed: int = 700  # target pictures, timesteps, noises and candidate draws: seeds from here on
    prompts: int = 6  # the concept with each concept of the other kind, one TRAIN name template each
    target_tries: int = 2  # seeds tried per prompt for a picture that shows the concept
    timesteps: int = 3  # fixed timesteps of the loss, one per stratum of the schedule
    prefix_tokens: int = 4
    word_steps: int = 10
    top_k: int = 32  # candidate tokens per position, by the one-hot gradient
    candidates: int = 8  # single-token swaps evaluated exactly per step
    embedding_steps: int = 80
    embedding_lr: float = 3e-3  # MiniLM's word embeddings have a per-coordinate spread of about 0.055


def _check_fit_seeds(settings: AttackSettings, eval_seeds=()):
    used = set(range(settings.fit_seed, settings.fit_seed + settings.target_tries))
    clash = sorted(used & (set(TEST_SEEDS) | set(eval_seeds)))
    if clash:
        raise ValueError(f"the attack's fitting seeds {sorted(used)} include seeds it is evaluated on ({clash}); "
                         f"give AttackSettings(fit_seed=...) a seed far from them, e.g. 700")


# --- the model as the attacker sees it -----------------------------------------------------
def _differentiable(fn):
    """The edit with the gradient flowing through it: an eraser's undecorated edit under
    enable_grad (its __call__ is no-grad for sampling); any other edit as it is."""
    if isinstance(fn, ConceptEraser):
        wrapped = ConceptEraser.__call__.__wrapped__

        def edit(h, t):
            with torch.enable_grad():
                return wrapped(fn, h, t)
        return edit
    return fn


class EditedModel:
    """eps(x, t, ctx) of the bench's model with a plan's edits, negative prompt and rewrite: the
    erased model as sampling runs it (`Bench.sample`), usable with or without the gradient."""

    def __init__(self, bench: Bench, plan: dict):
        unknown = set(plan) - {"edits", "negative", "rewrite"}
        if unknown:
            raise ValueError(f"plan has unknown keys {sorted(unknown)}; a plan has 'edits', 'negative' and/or 'rewrite'")
        self.bench = bench
        self.edits = list(plan.get("edits", ()))
        self.negative = plan.get("negative", "")
        self.rewrites = plan.get("rewrite") is not None
        self.rewrite: Callable[[str], str] = plan.get("rewrite") or (lambda p: p)
        self._runs: list[tuple[int, int]] = []  # (timestep, rows) of the current batch, in order

    @contextmanager
    def hooked(self, grad: bool, native: bool = False):
        """Inside: the edited model's eps(x, t, ctx) (x noised as DDPM noises at timesteps t, on
        either model: `Bench.noise_prediction`), or with `native` its own call as its sampler makes
        it (the DiT's velocity at sigma t), block edits hooked as in `Bench.sample`. Rows may have
        different timesteps (the attacks' loss batches its timesteps): each edit then runs once per
        run of rows with the same timestep, as an eraser needs."""
        fns = [(b, _differentiable(fn) if grad else fn) for b, fn in self.edits]
        handles = []
        try:
            for block, fn in fns:
                if block != CONTEXT:
                    handles.append(self.bench.hook_block(block, lambda h, fn=fn: self._per_timestep(fn, h)))
            context = [fn for b, fn in fns if b == CONTEXT]

            def net(x, t, ctx, *_):
                steps, counts = torch.unique_consecutive(t, return_counts=True)
                self._runs = list(zip(steps.tolist(), counts.tolist()))
                for fn in context:  # what the model reads of the prompt
                    ctx = self._per_timestep(fn, ctx)
                return self.bench.net(x, t, ctx)
            yield net if native else (lambda x, t, ctx: self.bench.noise_prediction(net, x, t, ctx))
        finally:
            for h in handles:
                h.remove()

    def _per_timestep(self, fn, h):
        if len(self._runs) == 1:
            return fn(h, float(self._runs[0][0]))
        return torch.cat([fn(part, float(t)) for part, (t, _) in zip(h.split([n for _, n in self._runs]), self._runs)])


# --- text states from text, a placeholder embedding, or one-hot token choices --------------
class TextStates:
    """MiniLM's per-token states computed from input embeddings, so that a token position can
    hold a learned vector or carry the gradient of a one-hot token choice."""

    def __init__(self):
        enc = get_text_encoder()
        self.encoder, self.tokenizer = enc, enc.tokenizer
        self.table = enc.model.embeddings.word_embeddings.weight  # [V, 384]
        vocab = self.tokenizer.get_vocab()
        self.placeholder_id = vocab[PLACEHOLDER]
        # whole lower-case words only: typed as text, they tokenise back to themselves
        self.word_ids = torch.tensor(sorted(i for w, i in vocab.items() if re.fullmatch(r"[a-z]+", w)))

    def length(self, text: str) -> int:
        """Tokens of `text` with [CLS] and [SEP], uncut."""
        return len(self.tokenizer(text)["input_ids"])

    def tokens(self, texts: list[str]):
        too_long = [t for t in texts if self.length(t) > TOKEN_LENGTH]
        if too_long:
            raise ValueError(f"'{too_long[0]}' is longer than the text encoder's {TOKEN_LENGTH} tokens and would be "
                             f"cut; use a shorter prompt or fewer prefix tokens")
        tok = self.encoder.tokenize(texts)
        return tok["input_ids"], tok["attention_mask"]

    def states(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state.float()

    def encode(self, texts: list[str], vector: torch.Tensor | None = None) -> torch.Tensor:
        """[B, TOKEN_LENGTH, 384]; `vector` (if given) takes the place of the placeholder word."""
        ids, mask = self.tokens(texts)
        embeds = self.table[ids]
        if vector is not None:
            at = (ids == self.placeholder_id).unsqueeze(-1)
            embeds = torch.where(at, vector.to(embeds.dtype).view(1, 1, -1), embeds)
        return self.states(embeds, mask)


# --- target pictures and the objective -------------------------------------------------------
@dataclass
class Targets:
    """What the attack aims at for one concept: pictures the unedited model drew from TRAIN
    prompts naming it, and the fixed timesteps and noises of the loss."""
    concept: str
    prompts: list[str]  # one per picture, each naming the concept by its name
    pictures: torch.Tensor  # [P, 3, 32, 32]
    timesteps: list[int]
    noises: torch.Tensor  # [len(timesteps), P, 3, 32, 32]
    time: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # pairs without a picture that shows the concept


def _pairs(concept: str) -> list[tuple[str, str]]:
    if kind_of(concept) == "objects":
        return [(concept, s) for s in data.STYLES]
    return [(o, concept) for o in data.OBJECTS]


def _shows(bench: Bench, images: torch.Tensor, concept: str) -> torch.Tensor:
    with torch.no_grad():
        x = images.float().clamp(-1, 1)
        if kind_of(concept) == "objects":
            return bench.clf.object(x).argmax(1) == data.OBJECTS.index(concept)
        return bench.clf.style(x).argmax(1) == data.STYLES.index(concept)


def sample(bench: Bench, model: EditedModel, cond: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """What sampling draws from these text states (Bench.sample's sampler, steps, CFG, batches)."""
    uncond = bench.text([model.negative])
    out = []
    with model.hooked(grad=False, native=True) as net:
        for i in range(0, len(cond), bench.batch):
            out.append(bench.draw(net, cond[i:i + bench.batch], uncond, seeds[i:i + bench.batch]))
    return torch.cat(out)


def build_targets(bench: Bench, concept: str, text: TextStates, settings: AttackSettings) -> Targets:
    """Per pair (the concept with each concept of the other kind), the first TRAIN name template
    (a different one first for each pair) whose unedited picture at a fitting seed shows the concept."""
    clock = Clock()
    _check_fit_seeds(settings)
    unedited = EditedModel(bench, {})
    templates = len(TRAIN.name_templates)
    pairs = _pairs(concept)[:settings.prompts]
    room = TOKEN_LENGTH - settings.prefix_tokens  # the word attack puts its prefix in front
    options = {i: [(p, settings.fit_seed + r) for r in range(settings.target_tries) for k in range(templates)
                   for p in [TRAIN.prompts_for(o, s, templates, settings.fit_seed)[(i + k) % templates]]
                   if text.length(p) <= room]
               for i, (o, s) in enumerate(pairs)}
    found: dict[int, tuple[str, torch.Tensor]] = {}
    while True:  # rounds: each pair still looking tries its next (template, seed)
        trying = [(i, opts.pop(0)) for i, opts in options.items() if i not in found and opts]
        if not trying:
            break
        prompts, seeds = [p for _, (p, _) in trying], [sd for _, (_, sd) in trying]
        images = sample(bench, unedited, text.encode(prompts), seeds)
        for (i, (p, _)), img, ok in zip(trying, images, _shows(bench, images, concept)):
            if ok:
                found[i] = (p, img)
    if not found:
        raise RuntimeError(f"the unedited model drew '{concept}' from none of its TRAIN prompts at seeds "
                           f"{settings.fit_seed}..{settings.fit_seed + settings.target_tries - 1}; raise "
                           f"AttackSettings.target_tries")
    order = sorted(found)
    gen = torch.Generator().manual_seed(settings.fit_seed)
    span = 1000 / settings.timesteps
    steps = [int(k * span + float(torch.rand((), generator=gen)) * span) for k in range(settings.timesteps)]
    pictures = torch.stack([found[i][1] for i in order])
    noises = torch.randn((len(steps), *pictures.shape), generator=gen)
    return Targets(concept, [found[i][0] for i in order], pictures, steps, noises, clock.read(),
                   [f"{o}/{s}" for i, (o, s) in enumerate(pairs) if i not in found])


def denoising_loss(eps, targets: Targets, cond: torch.Tensor) -> torch.Tensor:
    """Per candidate: the epsilon MSE over targets and the fixed timesteps, in one model call.
    `cond` holds n_candidates x P text states, candidate-major, P = the number of target pictures."""
    acp = alphas_cumprod()[targets.timesteps].view(-1, 1, 1, 1, 1)
    p, k = len(targets.pictures), len(targets.timesteps)
    n = cond.shape[0] // p
    noisy = acp.sqrt() * targets.pictures + (1 - acp).sqrt() * targets.noises  # [k, P, ...]
    # rows timestep-major, so that each timestep is one run of rows
    x = noisy.unsqueeze(1).expand(k, n, *noisy.shape[1:]).reshape(k * n * p, *noisy.shape[2:])
    t = torch.tensor(targets.timesteps).repeat_interleave(n * p)
    pred = eps(x, t, cond.repeat(k, 1, 1)).view(k, n, p, -1)
    return ((pred - targets.noises.flatten(2).unsqueeze(1)) ** 2).mean((0, 2, 3))


# --- the two attacks -------------------------------------------------------------------------
@dataclass
class Attack:
    kind: str
    prompts: list[str]  # what the user types (before the method's rewrite); the embedding goes where PLACEHOLDER is
    vector: torch.Tensor | None = None
    loss_before: float = 0.0
    loss_after: float = 0.0
    time: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)


def _with_prefix(prefix: list[str], prompts: list[str]) -> list[str]:
    return [" ".join([*prefix, p]) for p in prompts]


def word_attack(bench: Bench, model: EditedModel, targets: Targets, text: TextStates,
                settings: AttackSettings) -> Attack:
    """A prefix of `prefix_tokens` whole words, greedy-GCG against the erased model's loss."""
    clock = Clock()
    tok = text.tokenizer
    gen = torch.Generator().manual_seed(settings.fit_seed + 1)
    allowed = torch.zeros(len(text.table), dtype=torch.bool)
    allowed[text.word_ids] = True
    prefix = ["a"] * settings.prefix_tokens  # a function word: the prompt says what it said

    def exact(prefixes: list[list[str]]) -> torch.Tensor:
        texts = [model.rewrite(p) for pre in prefixes for p in _with_prefix(pre, targets.prompts)]
        with torch.no_grad(), model.hooked(grad=False) as eps:
            return denoising_loss(eps, targets, text.encode(texts))

    best = float(exact([prefix])[0])
    before, history = best, [round(best, 5)]
    n = settings.prefix_tokens
    for _ in range(settings.word_steps):
        # one-hot gradient at the prefix positions, on the rewritten prompts behind the prefix
        prefix_ids = torch.tensor(tok.convert_tokens_to_ids(prefix))
        ids, mask = text.tokens(_with_prefix(prefix, [model.rewrite(p) for p in targets.prompts]))
        one_hot = torch.nn.functional.one_hot(prefix_ids, len(text.table)).float().requires_grad_(True)
        with torch.enable_grad(), model.hooked(grad=True) as eps:
            embeds = text.table[ids].detach()
            embeds = torch.cat([embeds[:, :1], (one_hot @ text.table).expand(len(ids), -1, -1), embeds[:, 1 + n:]], 1)
            loss = denoising_loss(eps, targets, text.states(embeds, mask)).sum()
            grad, = torch.autograd.grad(loss, one_hot)
        grad = grad.masked_fill(~allowed, float("inf"))
        top = grad.topk(settings.top_k, dim=1, largest=False).indices  # [n, k]
        tried, proposals = {tuple(prefix)}, []
        for c in range(settings.candidates):
            pos = c % n
            cand = list(prefix)
            cand[pos] = tok.convert_ids_to_tokens(int(top[pos, int(torch.randint(settings.top_k, (), generator=gen))]))
            if tuple(cand) not in tried:
                tried.add(tuple(cand))
                proposals.append(cand)
        if not proposals:
            continue
        losses = exact(proposals)
        i = int(losses.argmin())
        if float(losses[i]) < best:
            best, prefix = float(losses[i]), proposals[i]
        history.append(round(best, 5))
    return Attack("words", _with_prefix(prefix, targets.prompts), None, before, best, clock.read(),
                  {"prefix": " ".join(prefix), "loss_by_step": history})


def _placeholder_prompts(targets: Targets) -> list[str]:
    name = targets.concept
    return [re.sub(rf"(?<![a-z]){re.escape(name)}(?![a-z])", PLACEHOLDER, p, count=1) for p in targets.prompts]


def embedding_attack(bench: Bench, model: EditedModel, targets: Targets, text: TextStates,
                     settings: AttackSettings) -> Attack:
    """One input embedding in place of the concept's name (the placeholder word), from the
    placeholder's own embedding, by Adam on the erased model's loss."""
    clock = Clock()
    prompts = _placeholder_prompts(targets)
    texts = [model.rewrite(p) for p in prompts]
    start = text.table[text.placeholder_id].detach().clone()
    vector = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([vector], lr=settings.embedding_lr)
    history = []
    with torch.enable_grad(), model.hooked(grad=True) as eps:
        for _ in range(settings.embedding_steps):
            loss = denoising_loss(eps, targets, text.encode(texts, vector))[0]
            vector.grad, = torch.autograd.grad(loss, [vector])  # no weight of any model collects one
            opt.step()
            history.append(loss.item())
    vector = vector.detach()
    with torch.no_grad(), model.hooked(grad=False) as eps:
        after = float(denoising_loss(eps, targets, text.encode(texts, vector))[0])
    near = torch.nn.functional.cosine_similarity(text.table[text.word_ids], vector.view(1, -1)).topk(3).indices
    return Attack("embedding", prompts, vector, history[0] if history else after, after, clock.read(),
                  {"moved": round(float((vector - start).norm()), 4), "norm": round(float(vector.norm()), 4),
                   "nearest_words": text.tokenizer.convert_ids_to_tokens(text.word_ids[near].tolist()),
                   "loss_every_10_steps": [round(v, 5) for v in history[::10]]})


def attack_prompts(bench: Bench, plan: dict, targets: Targets, settings: AttackSettings | None = None,
                   text: TextStates | None = None, kinds=KINDS) -> dict[str, Attack]:
    """The attacks of `kinds` on one method's plan for one concept, plus the unattacked prompts ("none")."""
    settings = settings or AttackSettings()
    text = text or TextStates()
    model = EditedModel(bench, plan)
    out = {"none": Attack("none", list(targets.prompts))}
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown attack '{kind}'; use one of {', '.join(KINDS)}")
        out[kind] = (word_attack if kind == "words" else embedding_attack)(bench, model, targets, text, settings)
    return out


# --- measurement -------------------------------------------------------------------------------
def _mean(xs):
    xs = [x for x in xs if x == x]
    return round(sum(xs) / len(xs), 2) if xs else float("nan")


class _Reference:
    """The unedited model's pictures of the base prompts at the evaluation seeds: which ones show
    the concept (drawn-and-removed UA counts only those) and their picture quality (the twin a
    broken picture is measured against, as in the benchmark)."""

    def __init__(self, bench: Bench, targets: Targets, text: TextStates, seeds: list[int]):
        rows = [(p, sd) for sd in seeds for p in targets.prompts]
        self.seeds = [sd for _, sd in rows]
        self.images = sample(bench, EditedModel(bench, {}), text.encode([p for p, _ in rows]), self.seeds)
        self.quality = bench.quality(self.images)
        self.drawn = _shows(bench, self.images, targets.concept)


def _judge(bench: Bench, concept: str, images: torch.Tensor, ref: _Reference, prompts: list[str]) -> dict:
    rise = bench.quality(images) - ref.quality
    broken = (rise[:, 0] > NOISE_MARGIN) | (rise[:, 1] > DENOISE_MARGIN)
    pairs = [_pair_of(concept, p) for p in prompts]
    answers = bench.judge(images, [o for o, _ in pairs], [s for _, s in pairs], broken)
    return {"UA": answers.metrics([concept])["UA"], **answers.drawn_metrics([concept], ref.drawn),
            "broken": int(broken.sum())}


def _pair_of(concept: str, prompt: str) -> tuple[int, int]:
    """(object index, style index) named by a base prompt (TRAIN name templates name both by name)."""
    found = [(o, s) for o, s in _pairs(concept)
             if re.search(rf"(?<![a-z]){re.escape(o)}(?![a-z])", prompt) and re.search(rf"(?<![a-z]){re.escape(s)}(?![a-z])", prompt)]
    if len(found) != 1:
        raise ValueError(f"cannot tell which pair '{prompt}' names")
    return data.OBJECTS.index(found[0][0]), data.STYLES.index(found[0][1])


def attack_results(bench: Bench, plans: dict, targets: list[str], seeds: list[int], log=print,
                   settings: AttackSettings | None = None, kinds=KINDS) -> dict:
    """Per method (the unedited model first, as control, unless `plans` has "none") and concept:
    UA with no attack, under the word attack and under the embedding attack, on the same base
    prompts (TRAIN wordings) at `seeds`; per-kind means; settings; seconds.

    plans: name -> fn(list of concepts) -> plan dict ({"edits": [(block, fn)], "negative": str,
    "rewrite": fn(prompt) -> prompt}). An attack on a rewrite attacks what the rewrite makes of
    the attacked text."""
    settings = settings or AttackSettings()
    _check_fit_seeds(settings, seeds)
    text = TextStates()
    plans = {"none": lambda ts: {}, **plans}
    clock = Clock()
    out = {"settings": {**asdict(settings), "kinds": list(kinds), "eval_seeds": list(seeds),
                        "placeholder": PLACEHOLDER, "steps": bench.steps, "cfg": bench.cfg,
                        "prompts": "TRAIN name templates (TRAIN.prompts_for), the concept with each concept of the "
                                   "other kind", "loss": "conditional epsilon MSE of the erased model on the "
                                                         "unedited model's pictures, fixed timesteps and noises"
                                                         + ("" if bench.model == "unet" else
                                                            " (the DiT: its velocity's implied noise at DDPM's "
                                                            "signal-to-noise ratios, the flow-matching loss x (1-s)^2)"),
                        "gradient": "through the eraser's undecorated edit (residual, latent activation, handover "
                                    "map); not through thresholds, top-k membership or capped shares"},
           "targets": {}, "methods": {}}
    for concept in targets:
        tg = build_targets(bench, concept, text, settings)
        ref = _Reference(bench, tg, text, seeds)
        out["targets"][concept] = {"prompts": tg.prompts, "skipped_pairs": tg.skipped, "timesteps": tg.timesteps,
                                   "drawn_at_eval_seeds": int(ref.drawn.sum()), "rows": len(ref.drawn),
                                   **tg.time}
        log(f"attack targets {concept}: {len(tg.prompts)} pictures, {tg.time}; skipped {tg.skipped}")
        control: dict[str, Attack] = {}
        for name, make_plan in plans.items():
            clock_method = Clock()
            plan = make_plan([concept])
            model = EditedModel(bench, plan)
            if control and not model.edits and not model.rewrites:
                attacks = control  # same objective as the unedited model's (a negative prompt only guides)
            else:
                attacks = attack_prompts(bench, plan, tg, settings, text, kinds)
                if name == "none":
                    control = attacks
            row = {}
            for kind, attack in attacks.items():
                clock_sample = Clock()
                prompts = [p for _ in seeds for p in attack.prompts]
                cond = text.encode([model.rewrite(p) for p in prompts], attack.vector)
                images = ref.images if name == "none" and kind == "none" else \
                    sample(bench, model, cond, ref.seeds)
                row[kind] = {**_judge(bench, concept, images, ref, [p for _ in seeds for p in tg.prompts]),
                             "sampling": clock_sample.read()}
                if kind != "none":
                    row[kind].update({"loss_before": round(attack.loss_before, 5),
                                      "loss_after": round(attack.loss_after, 5),
                                      "attack": attack.time, **attack.detail})
                    if kind == "words":
                        row[kind]["example"] = model.rewrite(attack.prompts[0])
            row["time"] = clock_method.read()
            out["methods"].setdefault(name, {"concepts": {}})["concepts"][concept] = row
            log(f"attack {name:16s} {concept:9s} UA none {row['none']['UA']}"
                + "".join(f", {k} {row[k]['UA']}" for k in kinds) + f" ({row['time']})")
    for m in out["methods"].values():
        m["mean"] = {}
        for kind in ("objects", "styles"):
            rows = [r for c, r in m["concepts"].items() if kind_of(c) == kind]
            if rows:
                m["mean"][kind] = {a: {"UA": _mean([r[a]["UA"] for r in rows]),
                                       "UA_drawn": _mean([r[a]["UA_drawn"] for r in rows])}
                                   for a in ("none", *kinds)}
    out["time"] = clock.read()
    return out
