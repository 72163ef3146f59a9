import hashlib
import json
import logging
import os
import shutil
from types import SimpleNamespace

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from saemnesia_core import LoadedSAE, SAEError, SAEInfo, TrainingCancelled, save_sae
from saemnesia_core.activations import INDEX, ActivationStore, ActivationWriter
from saemnesia_core.fileio import save_json_atomic
from saemnesia_core.prompts import DEFAULT_TEMPLATES, assemble_prompts
from saemnesia_core.training import TrainConfig, train_sae

from . import model_patch, sae_folder
from .sae_type import CATEGORY, PREFIX, SAE

log = logging.getLogger("saemnesia")


def _send(event: str, data: dict):
    try:
        from server import PromptServer
        PromptServer.instance.send_sync(event, data)
    except Exception:  # noqa: BLE001 - no server (scripts, tests): nothing to show
        pass


def _default_hook(model) -> str:
    blocks = [b for b in model_patch.transformer_blocks(model) if b.startswith("output_blocks")]
    if "output_blocks.4.1" in blocks:
        return "output_blocks.4.1"  # SAeUron's object block on SD1.x
    if not blocks:
        raise SAEError("This model has no output transformer blocks to train an SAE on; set hook_point explicitly.")
    return blocks[len(blocks) // 2 - 1] if len(blocks) > 1 else blocks[0]


class TrainSAEFromPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}TrainSAEFromPrompts",
            display_name="Train SAE from Prompts",
            category=CATEGORY,
            description="Sample the model on labelled prompts, collect one transformer block's output over all "
                        "denoising steps, train a TopK SAE on it (SAEmnesia-supervised when prompts carry labels), "
                        "build its concept index and save it into models/sae. Cancel keeps the last checkpoint; "
                        "running again with the same name and settings resumes.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Latent.Input("latent", tooltip="An empty latent: activations are collected at its size."),
                io.String.Input("name", default="my_sae", tooltip="File name in models/sae."),
                io.String.Input("objects", default="", multiline=True, placeholder="cat, dog, car"),
                io.String.Input("styles", default="", multiline=True, placeholder="van gogh, watercolor"),
                io.String.Input("templates", default="\n".join(DEFAULT_TEMPLATES), multiline=True,
                                tooltip="One per line; {object} and {style} are filled in."),
                io.String.Input("labelled_prompts", default="", multiline=True,
                                placeholder="cat: a cat on a sofa\nstyle/ink: a house, ink drawing",
                                tooltip="'label: prompt' lines (prefix 'object/' or 'style/' to set the kind); "
                                        "lines without a label are unlabelled prompts."),
                io.String.Input("hook_point", default="auto", tooltip="Transformer block, e.g. output_blocks.4.1 "
                                "(SD1.x objects) or output_blocks.5.1 (styles); auto picks one."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps per prompt."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.Int.Input("seeds_per_prompt", default=1, min=1, max=64),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
                io.Int.Input("expansion", default=16, min=1, max=64, tooltip="Latents = channels x expansion."),
                io.Int.Input("k", default=32, min=1, max=1024, tooltip="Active latents per position."),
                io.Int.Input("train_steps", default=2000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=4096, min=16, max=65536),
                io.Float.Input("learning_rate", default=4e-4, min=1e-6, max=1e-1, step=1e-5),
                io.Boolean.Input("supervised", default=True, tooltip="SAEmnesia: tie each labelled concept to one latent."),
                io.Boolean.Input("overwrite", default=False),
            ],
            outputs=[SAE.Output(display_name="SAE"), io.String.Output(display_name="report")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, latent, name, objects, styles, templates, labelled_prompts, hook_point, steps, cfg,
                sampler_name, scheduler, seeds_per_prompt, seed, expansion, k, train_steps, batch_size,
                learning_rate, supervised, overwrite) -> io.NodeOutput:
        r = plan_run(model, latent, name, objects, styles, templates, labelled_prompts, hook_point, steps, cfg,
                     sampler_name, scheduler, seeds_per_prompt, seed, expansion, k, train_steps, batch_size,
                     learning_rate, supervised, overwrite)
        out_path, prompts, hook, d_in, samples = r.out_path, r.prompts, r.hook, r.d_in, r.samples
        collect_settings, cfg_train, runs, run_dir = r.collect_settings, r.cfg_train, r.runs, r.run_dir
        jobs = len(prompts) * seeds_per_prompt
        total = jobs + train_steps + 1
        node = cls.hidden.unique_id if cls.hidden is not None else None
        pbar = comfy.utils.ProgressBar(total, node_id=node)

        store = _collect(model, clip, prompts, hook, d_in, samples, collect_settings, run_dir, pbar)
        # depends on the number of collected tokens, which the settings above fix: part of the same key
        cfg_train.dead_tokens = max(batch_size * 50, min(10_000_000, store.n_tokens * 4))

        cancelled = {"flag": False}

        def progress(step, n, metrics):
            try:
                pbar.update_absolute(jobs + step, total)
            except comfy.model_management.InterruptProcessingException:
                cancelled["flag"] = True  # let the trainer save its checkpoint first
            if step % max(1, n // 100) == 0 or step == n:
                _send("saemnesia.train", {"node": node, "step": step, "total": n,
                                          **{k: metrics[k] for k in ("loss", "fvu", "dead_fraction") if k in metrics}})

        def should_cancel():
            return cancelled["flag"] or comfy.model_management.processing_interrupted()

        try:
            with torch.inference_mode(False), torch.enable_grad():
                # the folder is keyed by the settings: a checkpoint found there is this run's, so it resumes
                sae, index, record = train_sae(store, cfg_train, os.path.join(run_dir, "train"), progress, should_cancel)
        except TrainingCancelled:
            log.info("SAEmnesia: training cancelled; last checkpoint kept in %s", run_dir)
            raise comfy.model_management.InterruptProcessingException()
        except SAEError as e:
            # name the run folder as the user sees it (output/...), not as a path on the server
            raise SAEError(str(e).replace(runs, "output/saemnesia_runs")) from None
        record.update(hook_point=hook, sampler=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg)
        family = getattr(getattr(model.model, "model_config", None), "__class__", type(None)).__name__.lower()
        info = SAEInfo(hook, family, index, record, out_path)
        save_sae(out_path, sae, info)
        sae_folder.forget(out_path)
        pbar.update_absolute(total, total)
        loaded = LoadedSAE(sae, info)
        report = (f"Saved {os.path.basename(out_path)} in {sae_folder.folder_label(os.path.dirname(out_path))}\n{loaded.describe()}\nFVU {record['fvu']:.3f}, dead latents "
                  f"{record['dead_fraction'] * 100:.1f}%, {record['tokens_seen']} tokens in {record['seconds']:.0f}s"
                  + (" (resumed)" if record.get("resumed") else ""))
        return io.NodeOutput(loaded, report, ui={"text": [report]})


def plan_run(model, latent, name, objects, styles, templates, labelled_prompts, hook_point, steps, cfg, sampler_name,
             scheduler, seeds_per_prompt, seed, expansion, k, train_steps, batch_size, learning_rate, supervised,
             overwrite) -> SimpleNamespace:
    """Everything a run is decided by, checked before any work: where it saves, its prompts and
    block, and its work folder (scripts use this to find a run's folder)."""
    out_path = sae_folder.output_path(name, overwrite)
    prompts = assemble_prompts(objects, styles, templates, labelled_prompts)
    hook = _default_hook(model) if hook_point.strip() in ("", "auto") else hook_point.strip()
    module = model_patch.diffusion_module(model, hook)
    if module is None:
        raise SAEError(f"This model has no transformer block '{hook}'. Its blocks: "
                       f"{', '.join(model_patch.transformer_blocks(model))}.")
    d_in = model_patch.block_width(module)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"][:1])
    stem = os.path.splitext(os.path.basename(out_path))[0]
    collect_settings = {"prompts": [[p.text, p.labels] for p in prompts], "hook": hook, "steps": steps, "cfg": cfg,
                        "sampler": sampler_name, "scheduler": scheduler, "seeds": seeds_per_prompt, "seed": seed, "noise": "one batch per prompt",
                        "shape": list(samples.shape)}
    cfg_train = TrainConfig(expansion=expansion, k=k, steps=train_steps, batch_size=batch_size, lr=learning_rate,
                            supervised=supervised, seed=seed % (2 ** 31),
                            checkpoint_every=max(20, train_steps // 20))
    runs = os.path.join(folder_paths.get_output_directory(), "saemnesia_runs")
    run_dir = os.path.join(runs, run_folder(stem, collect_settings, cfg_train))
    return SimpleNamespace(out_path=out_path, prompts=prompts, hook=hook, d_in=d_in, samples=samples,
                           collect_settings=collect_settings, cfg_train=cfg_train, runs=runs, run_dir=run_dir)


def run_folder(stem: str, collect_settings: dict, cfg: TrainConfig) -> str:
    """The work folder of one run: the SAE's name and a digest of every setting that shapes the
    result. Same name and settings: the same folder, so a cancelled run resumes. Other settings:
    another folder, so a cancelled run is never deleted by a different one and stays resumable."""
    identity = cfg.identity()
    identity.pop("dead_tokens")  # derived from the collection, which collect_settings already fix
    blob = json.dumps({"collect": collect_settings, "train": identity}, sort_keys=True, default=str)
    return f"{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _collect(model, clip, prompts, hook, d_in, samples, settings, run_dir, pbar) -> ActivationStore:
    """Sample every prompt and store the block's cond-half outputs at every step.
    Reuses a finished collection of this run (so a cancelled training resumes)."""
    act_dir = os.path.join(run_dir, "activations")
    stamp = os.path.join(run_dir, "collect.json")
    if os.path.isfile(os.path.join(act_dir, INDEX)) and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == json.loads(json.dumps(settings)):
                return ActivationStore(act_dir)
    # an interrupted collection: only its partial activations go (a training checkpoint, which
    # needs a finished collection, cannot exist yet in this folder)
    shutil.rmtree(act_dir, ignore_errors=True)
    writer = ActivationWriter(act_dir, d_in, prompts, hook_point=hook)
    current = {"prompt": 0}
    probe = model_patch.capture_patch(
        model, hook, lambda h, info: writer.add(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), info["timestep"], current["prompt"]))
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))

    def check_interrupt(*_):
        comfy.model_management.throw_exception_if_processing_interrupted()

    # all seeds of a prompt in one batch (prepare_noise draws each batch item from the seed)
    batch = samples[:1].repeat(settings["seeds"], *([1] * (samples.dim() - 1)))
    for pid, p in enumerate(prompts):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(p.text))
        current["prompt"] = pid
        noise = comfy.sample.prepare_noise(batch, settings["seed"])
        comfy.sample.sample(probe, noise, settings["steps"], settings["cfg"], settings["sampler"], settings["scheduler"],
                            cond, empty, batch, callback=check_interrupt, disable_pbar=True, seed=settings["seed"])
        pbar.update_absolute((pid + 1) * settings["seeds"])
    store = writer.close()
    save_json_atomic(settings, stamp)
    return store
