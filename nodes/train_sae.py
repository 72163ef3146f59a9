import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import io

from saemnesia_core import SAEError, SAEInfo, TrainingCancelled, load_sae
from saemnesia_core.activations import INDEX, ActivationStore, ActivationWriter, positions
from saemnesia_core.checkpoint import CONTEXT, save_sae_set
from saemnesia_core.errors import WriteFailed
from saemnesia_core.fileio import save_json_atomic
from saemnesia_core.handover import fit_concept_handovers
from saemnesia_core.intervention import pooled_record
from saemnesia_core.progress import TimeWeightedProgress, guess_step_seconds
from saemnesia_core.prompts import (
    DEFAULT_TEMPLATES,
    MAX_TRAIN_BOX_CHARS,
    MAX_TRAIN_PROMPTS,
    LabelledPrompt,
    assemble_prompts,
    split_list,
)
from saemnesia_core.text import check_text
from saemnesia_core.training import TrainConfig, train_sae

from . import model_patch, sae_folder
from .sae_type import CATEGORY, PREFIX, SAE, schema

log = logging.getLogger("saemnesia")


def _send(event: str, data: dict):
    try:
        from server import PromptServer
        PromptServer.instance.send_sync(event, data)
    except Exception:  # noqa: BLE001 - no server (scripts, tests): nothing to show
        pass


def _say(node, text: str):
    """A line of text on the node itself (ComfyUI's progress text, shown under the widgets)."""
    if node is None:
        return
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(text, node)
    except Exception:  # noqa: BLE001 - no server (scripts, tests)
        pass


BAR = 1000  # progress bar resolution: the bar is a time fraction, not an item count
# The most model steps one run samples to collect activations (prompts x seeds_per_prompt x steps),
# checked before the first: 1,000 prompts x 50 steps (the UnlearnCanvas grid, as SAeUron samples it)
# is 50,000; a day of sampling on a fast GPU is about this many
MAX_COLLECTION_STEPS = 1_000_000
RUNS = "saemnesia_runs"  # the work folders of runs, in ComfyUI's output folder


class TrainSAEFromPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["train sae", "train sparse autoencoder", "unlearn", "forget", "remove concept"],
            node_id=f"{PREFIX}TrainSAEFromPrompts",
            display_name="Train SAE from Prompts",
            category=CATEGORY,
            description="Sample the model on labelled prompts, collect one transformer block's output over all "
                        "denoising steps, train a TopK SAE on it (SAEmnesia-supervised when prompts carry labels), "
                        "build its concept index and save it into models/sae. Cancel keeps the last checkpoint; "
                        "running again with the same name and settings resumes.",
            inputs=[
                io.Model.Input("model", tooltip="The model to train the SAE for (sampled, never changed)."),
                io.Clip.Input("clip", tooltip="Its text encoder: turns each prompt into conditioning."),
                io.Latent.Input("latent", tooltip="An empty latent: activations are collected at its size (width x height in px)."),
                io.String.Input("name", default="my_sae",
                                tooltip="File name in models/sae (without .safetensors); also names the work folder "
                                        "output/saemnesia_runs/<name>."),
                io.String.Input("objects", default="", multiline=True, placeholder="objects: cat, dog, car",
                                tooltip="Objects to learn, comma or line separated; each fills {object} in the templates."),
                io.String.Input("styles", default="", multiline=True, placeholder="styles: van gogh, watercolor",
                                tooltip="Styles to learn, comma or line separated; each fills {style} in the templates."),
                io.String.Input("templates", default="\n".join(DEFAULT_TEMPLATES), multiline=True,
                                placeholder="templates: a {object} in {style} style",
                                tooltip="Prompt templates, one per line; {object} and {style} are filled in (every object x every style)."),
                io.String.Input("labelled_prompts", default="", multiline=True,
                                placeholder="labelled prompts:\ncat: a cat on a sofa\nstyle/ink: a house, ink drawing",
                                tooltip="'label: prompt' lines (prefix 'object/' or 'style/' to set the kind; several "
                                        "labels, comma separated: 'circle, stripes: a striped ball'); "
                                        "lines without a label are unlabelled prompts."),
                io.String.Input("hook_point", default="auto", tooltip="Where the SAE reads: 'auto' = the model "
                                "family's default block; a block, e.g. output_blocks.4.1 (SD1.x objects), "
                                "input_blocks.8.1:update (SDXL), double_blocks.18 (Flux), in ComfyUI's or diffusers' "
                                "names; ':update' reads the block's output minus its input, ':txt' a DiT block's text "
                                "stream; 'context' = the text states the model reads; several, comma separated, train "
                                "one SAE set (one file, erased at every one of them)."),
                io.Int.Input("steps", default=20, min=1, max=200,
                             tooltip="Denoising steps per prompt while collecting (the block output is recorded at every step)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale while collecting, as in KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler used while collecting, as in KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule while collecting, as in KSampler."),
                io.Int.Input("seeds_per_prompt", default=1, min=1, max=64,
                             tooltip="Pictures sampled per prompt (collection time grows with it)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the collection noise and of the SAE's initialisation."),
                io.Int.Input("expansion", default=16, min=1, max=64,
                             tooltip="SAE size: latents = block channels x expansion (16 = SAeUron's 20480 on SD1.5)."),
                io.Int.Input("k", default=32, min=1, max=1024, tooltip="Latents active per position (TopK); 32 in SAeUron."),
                io.Int.Input("train_steps", default=2000, min=1, max=1_000_000,
                             tooltip="Optimiser steps (batches); supervision starts after 30% of them."),
                io.Int.Input("batch_size", default=4096, min=16, max=65536,
                             tooltip="Activation vectors (positions) per training step."),
                io.Float.Input("learning_rate", default=4e-4, min=1e-6, max=1e-1, step=1e-5,
                               tooltip="Adam learning rate, decayed linearly to 0 (4e-4 in SAeUron)."),
                io.Boolean.Input("supervised", default=True,
                                 tooltip="SAEmnesia: tie each labelled concept to one latent (from 30% of the steps on); "
                                         "off = plain SAeUron SAE."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing models/sae/<name>.safetensors; off = refuse."),
            ],
            outputs=[SAE.Output(display_name="SAE", tooltip="The trained SAE (also saved in models/sae), for Erase Concepts."),
                     io.String.Output(display_name="report",
                                      tooltip="Where it was saved, its concepts, FVU (share of the block output it fails to "
                                              "reconstruct, lower is better), dead latents and time.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, latent, *settings, **named) -> io.NodeOutput:
        """settings: the node's other inputs, in its order or by name (TrainSettings)."""
        run = plan_run(model, latent, TrainSettings(*settings, **named))
        s, prompts, hooks, widths = run.settings, run.prompts, run.hooks, run.widths
        run_label = f"output/{RUNS}/{os.path.basename(run.run_dir)}"  # as the user finds it, not a server path
        d_in = max(widths.values())
        node = cls.hidden.unique_id if cls.hidden is not None else None
        pbar = comfy.utils.ProgressBar(BAR, node_id=node)
        timing = TimeWeightedProgress(len(prompts), s.train_steps * len(hooks),
                                      guess_step_seconds(d_in, d_in * s.expansion, s.batch_size))
        _say(node, run.estimate)
        log.info("SAEmnesia: training %s: %s", os.path.basename(run.out_path), run.estimate)

        def show(fraction_text):
            fraction, text = fraction_text
            _say(node, text)
            pbar.update_absolute(round(fraction * BAR), BAR)

        try:
            stores = _collect(model, clip, prompts, widths, run.samples, run.collect_settings, run.run_dir,
                              lambda done: show(timing.collected(done)), lambda: show(timing.reused_collection()))
        except comfy.model_management.InterruptProcessingException:
            # _collect removed the partial activations: a collection cannot resume, only start over
            msg = (f"stopped while collecting ({timing.text}); its partial activations were removed from "
                   f"{run_label}: queue again to collect again")
            log.info("SAEmnesia: training %s %s", os.path.basename(run.out_path), msg)
            _say(node, msg)
            raise
        except WriteFailed as e:
            raise SAEError(e.says(run_label) + " The partial activations were removed.") from None

        # where the curve marks the start of supervision (the loss jumps there: docs/SAEmnesiaTrainSAEFromPrompts.md)
        supervise_at = int(TrainConfig.assign_after * s.train_steps) if s.supervised and prompts_have_labels(prompts) else None
        member = {"i": 0}
        cancelled = {"flag": False}

        def progress(step, n, metrics):
            try:
                show(timing.trained(member["i"] * n + step, n * len(hooks)))
            except comfy.model_management.InterruptProcessingException:
                cancelled["flag"] = True  # let the trainer save its checkpoint first
            if step % max(1, n // 100) == 0 or step == n:
                _send("saemnesia.train", {"node": node, "step": step, "total": n, "supervise_at": supervise_at,
                                          "text": timing.text,
                                          **{k: metrics[k] for k in ("loss", "fvu", "dead_fraction") if k in metrics}})

        def should_cancel():
            return cancelled["flag"] or comfy.model_management.processing_interrupted()

        family = model_patch.model_family(model)
        members, records = [], {}
        try:
            with torch.inference_mode(False), torch.enable_grad():
                for i, hook in enumerate(hooks):
                    member["i"] = i
                    store = stores[hook]
                    # the text states of a few hundred prompts are far fewer vectors than a block's maps
                    batch = min(s.batch_size, _floor_pow2(store.n_tokens))
                    cfg_train = s.train_config(k=min(s.k, widths[hook] * s.expansion), batch_size=batch,
                                               dead_tokens=max(batch * 50, min(10_000_000, store.n_tokens * 4)))
                    # the folder is keyed by the settings: a checkpoint found there is this run's, so it resumes
                    sae, index, record = train_sae(store, cfg_train, _member_dir(run.run_dir, "train", hook, hooks),
                                                   progress, should_cancel)
                    record.update(hook_point=hook, sampler=s.sampler_name, scheduler=s.scheduler, steps=s.steps, cfg=s.cfg)
                    if hook == CONTEXT and s.supervised:
                        with torch.inference_mode():
                            skipped = fit_concept_handovers(index, prompts, lambda texts: _encode_with_ids(clip, texts))
                        record["handovers"] = {"fitted": sum(c.handover is not None for c in index.concepts.values()),
                                               "skipped": skipped}
                    if hook == CONTEXT:
                        record.update(_text_record(model, clip, prompts))
                    members.append((sae, SAEInfo(hook, family, index, record, run.out_path)))
                    records[hook] = record
        except (TrainingCancelled, comfy.model_management.InterruptProcessingException):
            # an interrupt, not an error: the frontend shows it as such, and the node says how to go on
            msg = (f"paused at {timing.text}: queue again to resume (same name and settings). The run's work "
                   f"({_megabytes(run.run_dir)}) is kept in {run_label}; delete that folder to free the space (the run "
                   "then starts over).")
            log.info("SAEmnesia: training %s", msg)
            _say(node, msg)
            _send("saemnesia.train", {"node": node, "paused": True, "text": msg})
            raise comfy.model_management.InterruptProcessingException() from None
        except WriteFailed as e:
            raise SAEError(e.says(run_label) + " The last checkpoint is kept: queue again to resume.") from None
        except SAEError as e:
            # name the run folder as the user sees it (output/...), not as a path on the server
            raise SAEError(str(e).replace(run.runs, f"output/{RUNS}")) from None
        training = records[hooks[0]] if len(hooks) == 1 else {"members": records, "hook_points": hooks}
        try:
            save_sae_set(run.out_path, members, training)
        except WriteFailed as e:
            raise SAEError(e.says(sae_folder.folder_label(os.path.dirname(run.out_path))) + " The trained SAE is kept in "
                           f"{run_label}: queue again with the same settings and it is saved without training "
                           "again.") from None
        sae_folder.forget(run.out_path)
        pbar.update_absolute(BAR, BAR)
        _say(node, f"saved {os.path.basename(run.out_path)}")
        loaded = load_sae(run.out_path)
        where = sae_folder.folder_label(os.path.dirname(run.out_path))
        report = f"Saved {os.path.basename(run.out_path)} in {where}\n{loaded.describe()}\n" + "\n".join(
            f"{h}: FVU {r['fvu']:.3f}, dead latents {r['dead_fraction'] * 100:.1f}%, {r['tokens_seen']} tokens in "
            f"{r['seconds']:.0f}s" + (" (resumed)" if r.get("resumed") else "") for h, r in records.items())
        return io.NodeOutput(loaded, report, ui={"text": [report]})


@dataclass(frozen=True)
class TrainSettings:
    """The node's settings (every input but model, clip and latent), in its order, built once."""

    name: str
    objects: str
    styles: str
    templates: str
    labelled_prompts: str
    hook_point: str
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    seeds_per_prompt: int
    seed: int
    expansion: int
    k: int
    train_steps: int
    batch_size: int
    learning_rate: float
    supervised: bool
    overwrite: bool

    def train_config(self, **changes) -> TrainConfig:
        """The trainer's settings; `changes` fit them to one SAE of the run (k, batch, dead_tokens)."""
        cfg = TrainConfig(expansion=self.expansion, k=self.k, steps=self.train_steps, batch_size=self.batch_size,
                          lr=self.learning_rate, supervised=self.supervised, seed=self.seed % (2 ** 31),
                          checkpoint_every=max(20, self.train_steps // 20))
        return replace(cfg, **changes)


@dataclass
class RunPlan:
    """Everything a run is decided by, checked before any work."""

    settings: TrainSettings
    out_path: str  # where the SAE is saved
    prompts: list[LabelledPrompt]
    hooks: list[str]  # canonical hook points
    widths: dict[str, int]  # activation width at each hook point
    samples: torch.Tensor  # the latent every prompt is sampled at
    collect_settings: dict  # what the collected activations depend on (a finished collection is reused)
    runs: str  # output/saemnesia_runs
    run_dir: str  # this run's work folder, keyed by name and settings
    estimate: str  # what the run will do, said once before it starts


def plan_run(model, latent, s: TrainSettings) -> RunPlan:
    """The plan of a run (scripts use it to find a run's folder)."""
    out_path = sae_folder.output_path(s.name, s.overwrite)
    prompts = assemble_prompts(s.objects, s.styles, s.templates, s.labelled_prompts)
    model_steps = len(prompts) * s.seeds_per_prompt * s.steps
    sampling = f"{len(prompts):,} prompts x {s.seeds_per_prompt} seeds x {s.steps} steps = {model_steps:,} model steps to sample"
    if model_steps > MAX_COLLECTION_STEPS:
        raise SAEError(f"This run would sample {sampling}; Train SAE from Prompts samples at most "
                       f"{MAX_COLLECTION_STEPS:,} per run (and at most {MAX_TRAIN_PROMPTS:,} prompts). Use fewer "
                       "prompts, seeds_per_prompt or steps.")
    estimate = f"{sampling}, then {s.train_steps:,} training steps"
    hooks = _hook_points(model, check_text(s.hook_point, "hook_point", MAX_TRAIN_BOX_CHARS))
    widths = {h: _width(model, h) for h in hooks}
    for h, w in widths.items():
        if s.k > s.expansion * w:
            # TopKSAE would refuse this too, but only after every prompt has been sampled
            raise SAEError(f"k={s.k} is more than the SAE's {s.expansion * w} latents ({w} channels at {h} x "
                           f"expansion {s.expansion}); lower k or raise expansion.")
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"][:1])
    stem = os.path.splitext(os.path.basename(out_path))[0]
    collect_settings = {"prompts": [[p.text, p.labels] for p in prompts], "hook": ",".join(hooks), "steps": s.steps,
                        "cfg": s.cfg, "sampler": s.sampler_name, "scheduler": s.scheduler, "seeds": s.seeds_per_prompt,
                        "seed": s.seed, "noise": "one batch per prompt", "shape": list(samples.shape)}
    if CONTEXT in hooks:
        collect_settings["empty_prompt_copies"] = empty_prompt_copies(len(prompts))
    runs = os.path.join(folder_paths.get_output_directory(), RUNS)
    run_dir = os.path.join(runs, run_folder(stem, collect_settings, s.train_config()))
    return RunPlan(s, out_path, prompts, hooks, widths, samples, collect_settings, runs, run_dir, estimate)


def run_folder(stem: str, collect_settings: dict, cfg: TrainConfig) -> str:
    """The work folder of one run: the SAE's name and a digest of every setting that shapes the
    result. Same name and settings: the same folder, so a cancelled run resumes. Other settings:
    another folder, so a cancelled run is never deleted by a different one and stays resumable."""
    identity = cfg.identity()
    identity.pop("dead_tokens")  # derived from the collection, which collect_settings already fix
    blob = json.dumps({"collect": collect_settings, "train": identity}, sort_keys=True, default=str)
    return f"{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def prompts_have_labels(prompts) -> bool:
    return any(p.labels for p in prompts)


def _floor_pow2(n: int) -> int:
    return 1 << max(4, int(n).bit_length() - 1)


def _hook_points(model, text: str) -> list[str]:
    """'auto', one hook point, or several (comma separated): each a block of the model's family
    (in ComfyUI's or diffusers' naming, ':txt' / ':update' qualified) or 'context'."""
    return model_patch.resolve_hooks(model, split_list(text) or ["auto"])


def _width(model, hook: str) -> int:
    return model_patch.hook_width(model, hook)


def _collect(model, clip, prompts, widths: dict[str, int], samples, settings, run_dir, on_prompt, on_reuse) -> dict[str, ActivationStore]:
    """Store, per hook point, what it sees for every prompt: a block's cond-half outputs at every
    denoising step (one sampling pass feeds every block), or the prompt's text states ('context',
    plus the empty prompt's, so the SAE also knows the unconditional half).
    Reuses a finished collection of this run (so a cancelled training resumes)."""
    act_root = os.path.join(run_dir, "activations")
    stamp = os.path.join(run_dir, "collect.json")
    hooks = list(widths)
    if os.path.isfile(stamp) and all(os.path.isfile(os.path.join(_member_dir(run_dir, "activations", h, hooks), INDEX))
                                     for h in widths):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == json.loads(json.dumps(settings)):
                on_reuse()
                return {h: ActivationStore(_member_dir(run_dir, "activations", h, hooks)) for h in widths}
    # an earlier collection that did not finish: only its partial activations go (a training
    # checkpoint, which needs a finished collection, cannot exist yet in this folder)
    shutil.rmtree(act_root, ignore_errors=True)
    try:
        return _collect_anew(model, clip, prompts, widths, samples, settings, run_dir, on_prompt)
    except BaseException:
        # interrupted or failed: a collection cannot resume, so what it wrote is only disk used up
        shutil.rmtree(act_root, ignore_errors=True)
        _remove_if_empty(run_dir)
        raise


def _collect_anew(model, clip, prompts, widths: dict[str, int], samples, settings, run_dir, on_prompt) -> dict[str, ActivationStore]:
    stamp = os.path.join(run_dir, "collect.json")
    hooks = list(widths)
    blocks = [h for h in widths if h != CONTEXT]
    writers = {h: ActivationWriter(_member_dir(run_dir, "activations", h, hooks), widths[h], prompts, hook_point=h)
               for h in blocks}
    current = {"prompt": 0}

    def sink(hook):
        return lambda h, info: writers[hook].add(positions(h), info["timestep"], current["prompt"])
    probe = model_patch.capture_patches(model, {h: sink(h) for h in blocks}) if blocks else None
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    if CONTEXT in widths:
        text_prompts = list(prompts) + [LabelledPrompt("", {})]
        writers[CONTEXT] = ActivationWriter(_member_dir(run_dir, "activations", CONTEXT, hooks), widths[CONTEXT],
                                            text_prompts, hook_point=CONTEXT)

    def check_interrupt(*_):
        comfy.model_management.throw_exception_if_processing_interrupted()

    # all seeds of a prompt in one batch (prepare_noise draws each batch item from the seed)
    batch = samples[:1].repeat(settings["seeds"], *([1] * (samples.dim() - 1)))
    for pid, p in enumerate(prompts):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(p.text))
        current["prompt"] = pid
        if CONTEXT in writers:
            writers[CONTEXT].add(_text_states(cond), 0.0, pid)
        if probe is not None:
            noise = comfy.sample.prepare_noise(batch, settings["seed"])
            comfy.sample.sample(probe, noise, settings["steps"], settings["cfg"], settings["sampler"], settings["scheduler"],
                                cond, empty, batch, callback=check_interrupt, disable_pbar=True, seed=settings["seed"])
        else:
            check_interrupt()
        on_prompt(pid + 1)
    if CONTEXT in writers:
        # The eraser edits the unconditional half too: the empty prompt is half of what it sees at
        # every step. Given once among hundreds of prompts, it weighed nothing in training, and
        # concept latents fired on it (dots at 1.3x its mean), moving every picture's baseline.
        empty_states = _text_states(empty)
        for _ in range(settings["empty_prompt_copies"]):
            writers[CONTEXT].add(empty_states, 0.0, len(prompts))
    stores = {h: w.close() for h, w in writers.items()}
    save_json_atomic(settings, stamp)
    return stores


def _remove_if_empty(folder: str):
    try:
        os.rmdir(folder)
    except OSError:
        pass  # not empty (a checkpoint of an earlier training), or already gone


def _megabytes(folder: str) -> str:
    """How much disk a run folder takes, for the message that says where it is."""
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    return f"{total / 1e6:.0f} MB" if total >= 1e6 else f"{total / 1e3:.0f} kB"


def empty_prompt_copies(n_prompts: int) -> int:
    """How many times the text SAE sees the empty prompt's states: one in nine of its prompts."""
    return max(1, n_prompts // 8)


def _member_dir(run_dir: str, part: str, hook: str, hooks: list[str]) -> str:
    """run/<part> for a one-SAE run (the layout runs of earlier versions resume from);
    run/<part>/<hook point> for each member of a set."""
    return os.path.join(run_dir, part) if len(hooks) == 1 else os.path.join(run_dir, part, hook)


def _text_record(model, clip, prompts) -> dict:
    """What a text SAE records about its text (model_patch refuses it on other text encoders):
    the family, encoders and widths; and, where the family reads a pooled text vector, each
    concept's pooled shift (PooledShift), from the prompts' pooled vectors."""
    pooled = []
    if model_patch.family_of(model).pooled:
        with torch.inference_mode():
            for p in prompts:
                comfy.model_management.throw_exception_if_processing_interrupted()
                cond = clip.encode_from_tokens_scheduled(clip.tokenize(p.text))
                vector = cond[0][1].get("pooled_output")
                if vector is None:
                    break
                pooled.append(vector.reshape(-1).float().cpu())
    if len(pooled) != len(prompts):
        return {"text": model_patch.text_record(model)}
    vectors = torch.stack(pooled)
    return {"text": model_patch.text_record(model, {"pooled_width": int(vectors.shape[1])}),
            "pooled": pooled_record(prompts, vectors)}


def _token_ids(tokens: dict, n_states: int) -> list[int]:
    """The token ids at the positions of a prompt's text states. Encoders of one model may
    tokenise apart (Flux: CLIP-L 77 and T5 256; SD3: CLIP 77 then T5): the first tokenizer whose
    length is the states', or the first's then the last's (SD3); by position when none fits."""
    def ids(chunks):
        # an embedding (textual inversion) stands where an id would: it is no word of the pair
        return [tok[0] if isinstance(tok[0], int) else -2 for chunk in chunks for tok in chunk]
    lists = [ids(chunks) for chunks in tokens.values()]
    for candidate in [*lists, lists[0] + lists[-1]]:
        if len(candidate) == n_states:
            return candidate
    return [-3] * n_states  # all alike: the twin's tokens pair by position


def _encode_with_ids(clip, texts: list[str]) -> list[tuple[list[int], torch.Tensor]]:
    """(token ids, text states) of each prompt, to pair a prompt's tokens with its twin's."""
    out = []
    for text in texts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        tokens = clip.tokenize(text)
        states = _text_states(clip.encode_from_tokens_scheduled(tokens))
        out.append((_token_ids(tokens, states.shape[0]), states))
    return out


def _text_states(cond) -> torch.Tensor:
    """[tokens, width] of a CLIPTextEncode-style conditioning (all its entries, every token)."""
    return torch.cat([c[0].reshape(-1, c[0].shape[-1]) for c in cond]).float().cpu()
