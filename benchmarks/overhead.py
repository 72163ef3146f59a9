"""Erase overhead: KSampler time with and without Erase Concepts, alternating, in one run.

SD1.5 shape at SAeUron's setting: 512x512 px (64x64 latent), the SAE on output_blocks.4.1
(16x16 positions x 1280 channels), 20480 latents, k = 32, both CFG halves edited.
Writes benchmarks/results/overhead.json. Timing goals live here, not in the tests.

    .venv/bin/python benchmarks/overhead.py [--steps 4] [--repeats 3] [--size 512]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "overhead.json"))
    args = ap.parse_args()

    pack = comfy_env.import_pack()
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
        variants[mode] = mp.erase_patch(model, loaded, eraser, False, 0.0, 1.0)
    run(model)  # warm-up: first load, allocator
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, m in variants.items():  # alternate, so drift hits every variant alike
            times[name].append(run(m))
    base = statistics.median(times["none"])
    result = {
        "setting": {"model": "SD1.5-shaped (random weights)", "image": args.size, "steps": args.steps, "cfg": 7.5,
                    "hook": "output_blocks.4.1", "positions": (args.size // 32) ** 2, "d_in": 1280,
                    "n_latents": 20480, "k": 32, "repeats": args.repeats, "device": "cpu",
                    "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()},
        "seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "overhead_percent": {k: round(100 * (statistics.median(v) / base - 1), 2) for k, v in times.items() if k != "none"},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
