"""Erase overhead: KSampler time with and without Erase Concepts, alternating, in one run.

sd15: SD1.5 shape at SAeUron's setting: 512x512 px (64x64 latent), the SAE on
output_blocks.4.1 (16x16 positions x 1280 channels), 20480 latents, k = 32, both CFG halves
edited (random SAE and checkpoint weights: the cost depends on the shapes).
demo: the bundled MiniCanvas demo model as the Load MiniCanvas Demo Model node gives it,
32x32 px (EmptyChromaRadianceLatentImage), ddim / ddim_uniform, 25 steps, CFG 4; an SAE
trained here on the demo model's output_blocks.3.1 (16x16 positions x 64 channels, 1024
latents, k 32, supervised, on the activations benchmarks/training_throughput.py caches),
erasing 'stripes' in each mode; plus each shipped MiniCanvas SAE in models/sae/ (if any)
in its own default mode. The demo runs are short (about a second), so their overhead is taken
from the process's CPU time (one thread), which other jobs on a shared machine disturb far
less than wall time; the wall-time medians are kept next to it.
Writes benchmarks/results/overhead.json (--only keeps the other setting's numbers, with the
date each was measured). Timing goals live here, not in the tests.

    .venv/bin/python benchmarks/overhead.py [--only sd15|demo] [--steps 3] [--repeats 3] [--demo-repeats 15]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import comfy_env  # noqa: E402


def build_sae(hook, d_in=1280, n_latents=20480, k=32, n_selected=2, seed=0):
    import torch

    from saemnesia_core import LoadedSAE, SAEInfo, TopKSAE
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    sae = TopKSAE(d_in, n_latents, k)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    sae.requires_grad_(False)
    ts = [float(t) for t in range(999, -1, -20)]  # 50 DDIM-like buckets, as SAeUron collects
    sel = [Selection(list(range(i % 7, i % 7 + n_selected)), [1.0] * n_selected, [1.0] * n_selected,
                     [0.0] * n_selected) for i in range(len(ts))]
    index = ConceptIndex(timesteps=ts, default_mode="ablate", default_multiplier=-5.0,
                         concepts={"thing": Concept("thing", "object", 3, sel)})
    return LoadedSAE(sae, SAEInfo(hook, "sd1", index, {}))


def timed_variants(run, variants, repeats):
    """Warm up every variant, then time them alternately (drift hits all alike)."""
    for m in variants.values():
        run(m)
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for name, m in variants.items():
            times[name].append(run(m))
    return times


def summary(times, prefix=""):
    base = statistics.median(times["none"])
    return {f"{prefix}seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
            f"{prefix}seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
            f"{prefix}overhead_percent": {k: round(100 * (statistics.median(v) / base - 1), 2)
                                          for k, v in times.items() if k != "none"}}


def run_sd15(args, pack):
    import torch

    import comfy.sample
    import comfy.sd

    from saemnesia_core import ConceptEraser
    mp = sys.modules[pack.__name__ + ".nodes.model_patch"]

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(comfy_env.sd15_random_checkpoint())
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(1, 4, args.size // 8, args.size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    loaded = build_sae("output_blocks.4.1")

    def run(m):
        t0 = time.perf_counter()
        with torch.inference_mode():
            comfy.sample.sample(m, noise, args.steps, 7.5, "euler", "normal", cond, neg, latent, seed=0,
                                disable_pbar=True)
        return time.perf_counter() - t0

    variants = {"none": model}
    for mode in ("ablate", "neuron", "replace"):
        eraser = ConceptEraser(loaded.sae, loaded.index, ["thing"], mode=mode)
        variants[mode] = mp.erase_patch(model, loaded, lambda member, e=eraser: e, False, 0.0, 1.0)
    times = timed_variants(run, variants, args.repeats)
    return {"setting": {"model": "SD1.5-shaped (random weights)", "image": args.size, "steps": args.steps, "cfg": 7.5,
                        "sampler": "euler / normal", "hook": "output_blocks.4.1", "positions": (args.size // 32) ** 2,
                        "d_in": 1280, "n_latents": 20480, "k": 32, "repeats": args.repeats, "device": "cpu",
                        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
            **summary(times), "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_after": list(os.getloadavg())}


def demo_sae(hook="output_blocks.3.1"):
    """A supervised SAE on the demo model's output_blocks.3.1, trained once on the activations
    the training benchmark caches (16x expansion, k 32), then kept next to them."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import training_throughput as tt

    from saemnesia_core import load_sae
    from saemnesia_core.checkpoint import SAEInfo, save_sae
    from saemnesia_core.training import TrainConfig, train_sae
    path = os.path.join(tt.CACHE, "demo", "overhead_sae_3.1.safetensors")
    if not os.path.isfile(path):
        train, _ = tt.collect_demo()
        work = os.path.join(tt.CACHE, "demo", "overhead_sae_work")
        sae, index, record = train_sae(train, TrainConfig(expansion=16, k=32, batch_size=4096, steps=400, lr=1e-3),
                                       work, restart_on_mismatch=True)
        save_sae(path, sae, SAEInfo(hook, "minicanvas", index, record))
    return load_sae(path)


def run_demo(args, pack):
    import glob
    import importlib

    import torch

    import comfy.sample

    from saemnesia_core import ConceptEraser, load_sae
    mp = sys.modules[pack.__name__ + ".nodes.model_patch"]
    demo_model = importlib.import_module(pack.__name__ + ".nodes.demo.demo_model")
    model, clip, _ = demo_model.LoadDemoModel.execute(unet_name="demo_unet.safetensors").args
    prompt = "a star in stripes style"
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros(1, 3, 32, 32)  # EmptyChromaRadianceLatentImage 32x32
    noise = comfy.sample.prepare_noise(latent, 0)

    def run(m):  # (wall, CPU) seconds; with one thread, CPU time is what other jobs on the machine disturb least
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            comfy.sample.sample(m, noise, 25, 4.0, "ddim", "ddim_uniform", cond, neg, latent, seed=0, disable_pbar=True)
        return time.perf_counter() - t0, time.process_time() - c0

    saes, erasers = {}, {}
    trained = demo_sae()
    variants = {"none": model}

    def add(key, loaded, concept, mode, **extra):
        erasers[key] = (loaded.info.hook_point, ConceptEraser(loaded.sae, loaded.index, [concept], mode=mode))
        variants[key] = mp.erase_patch(model, loaded, lambda member: erasers[key][1], False, 0.0, 1.0)
        saes[key] = {"hook": loaded.info.hook_point, "n_latents": loaded.sae.n_latents, "k": loaded.sae.k,
                     "concept": concept, "mode": mode, **extra}

    for mode in ("ablate", "neuron", "replace"):
        add(f"bench SAE on output_blocks.3.1, {mode}", trained, "stripes", mode)
    for path in sorted(glob.glob(os.path.join(REPO, "models", "sae", "minicanvas_*.safetensors"))):
        loaded = load_sae(path)
        wanted = "stripes" if "styles" in os.path.basename(path) else "star"  # a concept of the SAE's own kind
        concept = wanted if wanted in loaded.index.names() else loaded.index.names()[0]
        mode = loaded.index.default_mode
        add(f"{os.path.basename(path)[:-len('.safetensors')]} on {loaded.info.hook_point}, {mode}", loaded, concept, mode,
            file=os.path.relpath(path, REPO))
    load0 = os.getloadavg()
    both = timed_variants(run, variants, args.demo_repeats)
    cpu = {k: [c for _, c in v] for k, v in both.items()}
    wall = {k: [w for w, _ in v] for k, v in both.items()}

    # The erase hook alone, on the block outputs of this very run (both CFG halves, all 25
    # steps), timed in CPU time over many passes: a precise cost per step next to the
    # UNet's own (the end-to-end medians above cannot resolve a few percent on a busy machine).
    captured = {}
    for hook in {h for h, _ in erasers.values()}:
        grabbed = []
        probe = mp.capture_patch(model, hook, lambda h, info: grabbed.append((h.clone(), info["timestep"])),
                                 cond_only=False)
        run(probe)
        captured[hook] = grabbed
    per_step = {k: [] for k in erasers}
    with torch.inference_mode():
        for _ in range(args.hook_passes):
            for key, (hook, eraser) in erasers.items():
                c0 = time.process_time()
                for h, t in captured[hook]:
                    eraser(h, t, None)
                per_step[key].append((time.process_time() - c0) / len(captured[hook]))
    step_cpu = statistics.median(cpu["none"]) / 25
    hook_only = {k: {"ms_per_step": round(1000 * statistics.median(v), 3),
                     "percent_of_a_step": round(100 * statistics.median(v) / step_cpu, 2)} for k, v in per_step.items()}
    return {"setting": {"model": "MiniCanvas demo model (bundled)", "image": 32, "steps": 25, "cfg": 4.0,
                        "sampler": "ddim / ddim_uniform", "prompt": prompt, "repeats": args.demo_repeats,
                        "device": "cpu", "threads": torch.get_num_threads(), "timer": "process CPU time",
                        "machine": platform.processor() or platform.machine()},
            "saes": saes, **summary(cpu), **summary(wall, "wall_"),
            "hook_only": {"unet_step_ms": round(1000 * step_cpu, 2), "passes": args.hook_passes, "variants": hook_only},
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["sd15", "demo"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-repeats", type=int, default=15)
    ap.add_argument("--hook-passes", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the first SD1.5 run used 2)")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "overhead.json"))
    args = ap.parse_args()

    pack = comfy_env.import_pack()
    import torch
    torch.set_num_threads(args.threads)
    results = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            results = json.load(f)
        if "setting" in results:  # the first format: one SD1.5 result, measured at commit 6403cc7
            results = {"sd15": {**results, "date": "2026-11-23, commit 6403cc7"}}
    if args.only in (None, "sd15"):
        results["sd15"] = run_sd15(args, pack)
    if args.only in (None, "demo"):
        results["demo"] = run_demo(args, pack)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps({k: v["overhead_percent"] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
