"""Produce the SAEs shipped for the MiniCanvas demo model, through the Train SAE from Prompts node.

    .venv/bin/python scripts/train_demo_saes.py            # train all four, then calibrate
    .venv/bin/python scripts/train_demo_saes.py --only minicanvas_styles_saemnesia
    .venv/bin/python scripts/train_demo_saes.py --calibrate-only

The node runs inside the real ComfyUI (imported headless, on the CPU) exactly as in a graph:
it samples the 36 labelled prompts, collects the block's output at every step, trains, builds
the concept index and saves. Work files go to scratch/demo_saes/ (ignored; a re-run with the
same settings resumes from there); the finished files are copied into models/sae/.

Blocks (measured with per-token linear probes on the demo model's activations, 3 seeds x 36
prompts): objects are linearly readable at output_blocks.1.1 (8x8; 99% per token) but not at
the 16x16 blocks (72% at .2.1, 57% at .3.1), where an object is a layout, not a local feature;
styles are readable at .2.1/.3.1 (99.5% / 98%), and output_blocks.3.1 is the last block where
the prompt enters (nothing at 32x32 attends to text), so an edit there is not drawn back in.

Calibration picks ONE multiplier per supervised SAE (the same for all its concepts, as
SAEmnesia prescribes) on validation seeds that the benchmark never uses, and stores it as the
index's default; the unsupervised SAEs keep SAeUron's per-concept search, done by the benchmark.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from saemnesia_demo.vocabulary import TRAIN  # noqa: E402

OBJECTS = "circle, square, triangle, cross, star, heart"
STYLES = "solid, stripes, dots, checker, outline, gradient"
SPECS = {  # name: (hook point(s), supervised)
    "minicanvas_objects_saemnesia": ("output_blocks.1.1", True),
    "minicanvas_objects_saeuron": ("output_blocks.1.1", False),
    "minicanvas_styles_saemnesia": ("output_blocks.3.1", True),
    "minicanvas_styles_saeuron": ("output_blocks.3.1", False),
    # the text states every cross-attention of all seven transformer blocks reads: one SAE for
    # objects and styles alike (see docs/minicanvas.md, "Where concepts live")
    "minicanvas_context_saemnesia": ("context", True),
}
# The text SAE's other words for each concept and its carrier sentences are the TRAIN vocabulary
# (saemnesia_demo/vocabulary.py): the MiniLM text encoder gives a word and its synonyms nearby
# states, but a latent trained on one word per concept learns that word (on "round shape" the
# circle latent stayed silent). The benchmark tests on the TEST vocabulary, which shares no word
# with these; tests/test_minicanvas_vocabulary.py checks the shipped files' recorded prompts.


def synonym_lines(per_pair: int = 4, seed: int = 0) -> str:
    """'object, style: prompt' lines: every object x style pair in per_pair wordings, each mixing a
    synonym or the name of the object with one of the style, in a carrier sentence (seeded)."""
    import random

    from saemnesia_core.prompts import split_list
    rng = random.Random(seed)
    lines = []
    for obj in split_list(OBJECTS):
        for style in split_list(STYLES):
            for _ in range(per_pair):
                o = rng.choice(TRAIN.wordings(obj))
                s = rng.choice(TRAIN.wordings(style))
                lines.append(f"{obj}, {style}: " + rng.choice(TRAIN.carriers).format(object=o, style=s))
    return "\n".join(lines)


# Per-file settings over NODE_SETTINGS. The text SAE sees each prompt once (no sampling), so it
# gets several wordings of the labelled prompts, and the synonyms above.
OVERRIDES = {
    "minicanvas_context_saemnesia": dict(
        templates="\n".join(TRAIN.name_templates),
        labelled_prompts=synonym_lines(), expansion=4, k=16, train_steps=1500, batch_size=512),
}
NODE_SETTINGS = dict(templates="a {object} in {style} style", labelled_prompts="", steps=25, cfg=4.0,
                     sampler_name="ddim", scheduler="ddim_uniform", seeds_per_prompt=3, seed=1000, expansion=8, k=16,
                     train_steps=1500, batch_size=2048, learning_rate=1e-3, overwrite=True)
WORK = os.path.join(REPO, "scratch", "demo_saes")
SHIPPED = os.path.join(REPO, "models", "sae")


def train(names: list[str], threads: int):
    import torch
    torch.set_num_threads(threads)
    from tools import comfy_env
    folder_paths = comfy_env.import_comfy()
    comfy_env.import_pack()
    from saemnesia_pack.nodes.demo.demo_model import LoadDemoModel
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts

    from saemnesia_core.fileio import copy_atomic

    os.makedirs(os.path.join(WORK, "sae"), exist_ok=True)
    folder_paths.folder_names_and_paths["sae"] = ([os.path.join(WORK, "sae")], {".safetensors"})
    folder_paths.set_output_directory(os.path.join(WORK, "output"))
    model, clip, _ = LoadDemoModel.execute("demo_unet.safetensors").args
    latent = {"samples": torch.zeros(1, 3, 32, 32)}
    for name in names:
        block, supervised = SPECS[name]
        _share_collection(model, latent, name)
        print(f"== {name}: {block}, {'supervised' if supervised else 'unsupervised'}", flush=True)
        with torch.inference_mode():  # as ComfyUI runs a prompt
            out = TrainSAEFromPrompts.execute(model, clip, latent, name, OBJECTS, STYLES, hook_point=block,
                                              supervised=supervised, **{**NODE_SETTINGS, **OVERRIDES.get(name, {})})
        print(out.args[1], flush=True)
        copy_atomic(os.path.join(WORK, "sae", name + ".safetensors"), os.path.join(SHIPPED, name + ".safetensors"))



def _share_collection(model, latent, name: str):
    """Both SAEs of a block are trained on the same collected activations: give this run the
    finished collection of its sibling (the node reuses a finished collection in its run folder,
    which is keyed by the run's name and settings)."""
    from saemnesia_pack.nodes.train_sae import TrainSettings, plan_run

    def run_dir(n):
        block, supervised = SPECS[n]
        return plan_run(model, latent, TrainSettings(n, OBJECTS, STYLES, hook_point=block, supervised=supervised,
                                                     **{**NODE_SETTINGS, **OVERRIDES.get(n, {})})).run_dir
    mine = run_dir(name)
    for other, (b, _) in SPECS.items():
        if other == name or b != SPECS[name][0]:
            continue
        src = run_dir(other)
        if os.path.isfile(os.path.join(src, "collect.json")) and not os.path.isfile(os.path.join(mine, "collect.json")):
            os.makedirs(mine, exist_ok=True)
            shutil.copytree(os.path.join(src, "activations"), os.path.join(mine, "activations"), dirs_exist_ok=True)
            shutil.copyfile(os.path.join(src, "collect.json"), os.path.join(mine, "collect.json"))
            return


def calibrate(names: list[str], threads: int):
    from saemnesia_demo.bench import calibrate_shipped
    for name in names:
        if SPECS[name][1]:
            kinds = [k for k in ("objects", "styles") if k in name] or ["objects", "styles"]
            calibrate_shipped(os.path.join(SHIPPED, name + ".safetensors"), kinds, threads=threads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(SPECS), help="train just these (repeatable)")
    ap.add_argument("--calibrate-only", action="store_true")
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    names = args.only or list(SPECS)
    os.makedirs(SHIPPED, exist_ok=True)
    if not args.calibrate_only:
        train(names, args.threads)
    if not args.no_calibrate:
        calibrate(names, args.threads)


if __name__ == "__main__":
    main()
