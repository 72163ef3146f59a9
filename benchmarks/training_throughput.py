"""SAE training throughput and quality: ours vs EleutherAI's TopK SAE (PyPI eai-sparsify),
on the same stored activations, same width, k, batch, number of tokens and batch order.

Two settings, each collected once into a cached activation store (sharded fp16 safetensors,
our ActivationWriter) under .cache/bench-activations/:

* demo: the bundled MiniCanvas demo model (a trained 2M-parameter UNet), output_blocks.3.1
  (16x16 positions x 64 channels), sampled in ComfyUI with the stock sampler (ddim /
  ddim_uniform, 25 steps, CFG 4), cond half, every step: real activations of a real model.
* sd15: the SD1.5-shaped checkpoint with random weights that the tests build (no trained
  SD1.5 weights here), output_blocks.4.1 (1280 channels) at 256 px (8x8 positions). Sampling
  it is too slow on this CPU (about 19 vectors/s), so the UNet is run once per (noise,
  timestep) on pure-noise latents and stopped right after the block, in bf16 autocast
  (about 100 vectors/s): these vectors have SD1.5's width and the random net's statistics,
  not a trained SD1.5's.

Each trainer reads the same batches in the same order (our store's shuffled stream, seed 0)
with the same optimiser and schedule (torch's fused Adam as our Trainer builds it, lr with
our linear decay over the last 80%, eps 6.25e-10, grad clip 1.0, unit-norm decoder, gradient
parallel to the decoder rows removed, AuxK 1/32 after 10M silent tokens); what differs is
the SAE code and its initialisation (ours: geometric-median b_dec, encoder = decoder
transpose scaled to the data; sparsify: its own init, b_dec = batch mean as its trainer
does). sparsify's own trainer would use torch's default Adam, about 10x slower per step on
this CPU than the fused one: giving it the fused one keeps the comparison on the SAE code.

Ours runs through its real Trainer twice: as configured by default (BatchTopK while
training) and with per-token TopK while training (batch_topk=False), which is how every SAE
is used at inference; sparsify's SparseCoder (per-token TopK) runs in the same loop its own
trainer uses. Runs alternate (A B C C B A) so load changes on this shared machine hit all
alike; tokens/s is tokens over the process's CPU time (one thread: the compute each trainer
needed, from set-up to its last step, data reading included), which other jobs on a shared
machine disturb far less than wall time (kept next to it), averaged over each trainer's two
runs. FVU is per-token TopK (inference) on held-out activations (another seed, or other prompts).
Writes benchmarks/results/training.json.

    .venv/bin/python benchmarks/training_throughput.py [--only demo|sd15] [--sd15-steps 20]
"""
import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU: sparsify's Triton decoder cannot run

CACHE = os.path.join(REPO, ".cache", "bench-activations")

DEMO_COLLECT = {"hook": "output_blocks.3.1", "steps": 25, "cfg": 4.0, "sampler": "ddim", "scheduler": "ddim_uniform",
                "train_seeds": [0, 1], "heldout_seeds": [2], "version": 1}
SD15_COLLECT = {"hook": "output_blocks.4.1", "size": 256, "timesteps": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
                "train_prompts": 16, "heldout_prompts": 4, "noise_per_prompt": 2, "batch": 8, "bf16": True, "version": 1}


def _cached(folder, settings):
    from saemnesia_core.activations import INDEX, ActivationStore
    marker = os.path.join(folder, "collected.json")
    parts = ("train", "heldout")
    if os.path.isfile(marker) and all(os.path.isfile(os.path.join(folder, p, INDEX)) for p in parts):
        with open(marker) as f:
            if json.load(f) == settings:
                return tuple(ActivationStore(os.path.join(folder, p)) for p in parts)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _mark(folder, settings, seconds):
    with open(os.path.join(folder, "collected.json"), "w") as f:
        json.dump(settings, f)
    with open(os.path.join(folder, "collect_seconds.json"), "w") as f:
        json.dump({"seconds": round(seconds, 1)}, f)


def collect_demo():
    """The demo model sampled in ComfyUI with the capture patch: every step's cond output."""
    folder = os.path.join(CACHE, "demo")
    got = _cached(folder, DEMO_COLLECT)
    if got:
        return got
    from tools import comfy_env
    pack = comfy_env.import_pack()
    import torch

    import comfy.sample

    from saemnesia_core.activations import ActivationWriter
    from saemnesia_core.prompts import build_prompts
    from saemnesia_demo.data import OBJECTS, STYLES
    mp = sys.modules[pack.__name__ + ".nodes.model_patch"]
    mc = sys.modules.get(pack.__name__ + ".nodes.demo.minicanvas_model")
    if mc is None:
        import importlib
        mc = importlib.import_module(pack.__name__ + ".nodes.demo.minicanvas_model")
    t0 = time.perf_counter()
    model, clip, _ = mc.load_all()
    prompts = build_prompts(OBJECTS, STYLES)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(p.text)) for p in prompts]
    lat = torch.zeros(1, 3, 32, 32)  # EmptyChromaRadianceLatentImage 32x32
    for part, seeds in (("train", DEMO_COLLECT["train_seeds"]), ("heldout", DEMO_COLLECT["heldout_seeds"])):
        writer = ActivationWriter(os.path.join(folder, part), 64, prompts, hook_point=DEMO_COLLECT["hook"],
                                  model_family="minicanvas", shard_tokens=32768)
        current = {"pid": 0}
        probe = mp.capture_patch(model, DEMO_COLLECT["hook"], lambda h, info: writer.add(
            h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), info["timestep"], current["pid"]))
        for seed in seeds:
            for pid, cond in enumerate(conds):
                current["pid"] = pid
                noise = comfy.sample.prepare_noise(lat, 1000 * seed + pid)
                with torch.inference_mode():
                    comfy.sample.sample(probe, noise, DEMO_COLLECT["steps"], DEMO_COLLECT["cfg"], DEMO_COLLECT["sampler"],
                                        DEMO_COLLECT["scheduler"], cond, neg, lat, seed=seed, disable_pbar=True)
        writer.close()
    _mark(folder, DEMO_COLLECT, time.perf_counter() - t0)
    return _cached(folder, DEMO_COLLECT)


class _Stop(Exception):
    pass


def collect_sd15():
    """The random SD1.5-shaped UNet on noise latents, stopped after output_blocks.4.1."""
    folder = os.path.join(CACHE, "sd15")
    got = _cached(folder, SD15_COLLECT)
    if got:
        return got
    from tools import comfy_env
    comfy_env.import_pack()
    import torch

    import comfy.sd

    from saemnesia_core.activations import ActivationWriter
    from saemnesia_core.prompts import build_prompts
    s = SD15_COLLECT
    t0 = time.perf_counter()
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(comfy_env.sd15_random_checkpoint())
    unet = model.model.diffusion_model
    objects = ["cat", "dog", "car", "tree", "house", "boat", "bird", "horse", "chair", "cup"]
    prompts = build_prompts(objects, ["ink", "oil"])[: s["train_prompts"] + s["heldout_prompts"]]
    ctx = [clip.encode_from_tokens_scheduled(clip.tokenize(p.text))[0][0] for p in prompts]
    grabbed = {}

    def grab(module, args, out):
        grabbed["h"] = out
        raise _Stop  # nothing after the block is needed

    handle = unet.output_blocks[4][1].register_forward_hook(grab)
    g = torch.Generator().manual_seed(0)
    side = s["size"] // 8
    try:
        ranges = (("train", range(s["train_prompts"])), ("heldout", range(s["train_prompts"], len(prompts))))
        for part, pids in ranges:
            writer = ActivationWriter(os.path.join(folder, part), 1280, prompts, hook_point=s["hook"],
                                      model_family="sd1", shard_tokens=4096)
            jobs = [(pid, t) for pid in pids for _ in range(s["noise_per_prompt"]) for t in s["timesteps"]]
            for a in range(0, len(jobs), s["batch"]):
                chunk = jobs[a:a + s["batch"]]
                x = torch.randn(len(chunk), 4, side, side, generator=g)
                t = torch.tensor([float(j[1]) for j in chunk])
                c = torch.cat([ctx[j[0]] for j in chunk])
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=s["bf16"]):
                    try:
                        unet(x, t, context=c)
                    except _Stop:
                        pass
                h = grabbed.pop("h").float()
                for i, (pid, ts) in enumerate(chunk):
                    writer.add(h[i].permute(1, 2, 0).reshape(-1, 1280), float(ts), pid)
            writer.close()
    finally:
        handle.remove()
    _mark(folder, s, time.perf_counter() - t0)
    return _cached(folder, s)


def heldout_batches(store, max_tokens=65536, chunk=4096):
    out, n = [], 0
    for acts, _, _ in store.iter_tokens(chunk):
        out.append(acts)
        n += acts.shape[0]
        if n >= max_tokens:
            break
    return out


def fvu(reconstruct, xs):
    """Held-out FVU: sum of squared errors over the summed variance around the held-out mean."""
    import torch
    mean = torch.cat(xs).mean(0)
    err = var = 0.0
    with torch.no_grad():
        for x in xs:
            err += float((x - reconstruct(x)).pow(2).sum())
            var += float((x - mean).pow(2).sum())
    return err / var


def stream(store, batch, seed):
    epoch = 0
    while True:
        for x, _, _ in store.batches(batch, seed, epoch):
            yield x
        epoch += 1


def train_ours(store, held, cfg):
    from saemnesia_core.training import Trainer
    work = tempfile.mkdtemp(prefix="bench-ours-")
    try:
        c0, w0 = time.process_time(), time.perf_counter()  # set-up, initialisation and the loop, as for sparsify
        trainer = Trainer(store, cfg, work)
        trainer.save_checkpoint = lambda: None  # no checkpoint files (GBs at this width)
        sae = trainer.train()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        sae.requires_grad_(False)
        return cpu, wall, fvu(lambda x: sae(x), held), trainer.state.history[-1]["fvu"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_sparsify(store, held, cfg):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    from saemnesia_core.training import Trainer, _adam
    n = cfg.latents_for(store.d_in)
    c0, w0 = time.process_time(), time.perf_counter()
    torch.manual_seed(cfg.seed)
    sae = SparseCoder(store.d_in, SparseCoderConfig(num_latents=n, k=cfg.k), device="cpu")
    batches = stream(store, cfg.batch_size, cfg.seed)
    first = next(stream(store, cfg.batch_size, cfg.seed))
    with torch.no_grad():
        sae.b_dec.copy_(first.mean(0))  # sparsify's trainer: b_dec = mean of the first batch
    opt = _adam(list(sae.parameters()), cfg)  # the optimiser our Trainer builds (fused Adam)
    holder = type("Schedule", (), {})()
    holder.cfg = cfg

    def lr_at(step):  # the same schedule as ours: Trainer's own function
        return Trainer._lr_at(holder, step)
    since = torch.zeros(n, dtype=torch.long)
    for step in range(cfg.steps):
        x = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        dead = since > cfg.dead_tokens
        out = sae(x, dead_mask=dead if bool(dead.any()) else None)
        loss = out.fvu + cfg.aux_coef * out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            since += x.shape[0]
            since[out.latent_indices.flatten()] = 0
        last = float(out.fvu.detach())
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    sae.requires_grad_(False)
    return cpu, wall, fvu(lambda x: sae(x).sae_out, held), last


def run_setting(name, stores, steps, batch, k, expansion, lr, order):
    import torch

    from saemnesia_core.training import TrainConfig
    train, heldout = stores
    held = heldout_batches(heldout)
    cfg = TrainConfig(expansion=expansion, k=k, batch_size=batch, steps=steps, lr=lr, supervised=False,
                      checkpoint_every=10 ** 9, seed=0)
    trainers = {"saemnesia": (train_ours, cfg),  # the Trainer's default: BatchTopK while training
                "saemnesia (per-token TopK)": (train_ours, dataclasses.replace(cfg, batch_topk=False)),
                "eai-sparsify": (train_sparsify, cfg)}
    runs = {k_: [] for k_ in trainers}
    for who in order:
        load0 = os.getloadavg()
        fn, c = trainers[who]
        cpu, wall, held_fvu, train_fvu = fn(train, held, c)
        runs[who].append({"cpu_seconds": round(cpu, 2), "tokens_per_s": round(steps * batch / cpu, 1),
                          "wall_seconds": round(wall, 2), "held_out_fvu": round(held_fvu, 4),
                          "last_batch_fvu": round(train_fvu, 4),
                          "loadavg_1min_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)]})
        print(name, who, runs[who][-1], flush=True)
    results = {}
    for who, rs in runs.items():
        results[who] = {"tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in rs), 1),
                        "cpu_seconds": round(statistics.mean(r["cpu_seconds"] for r in rs), 2),
                        "wall_seconds": round(statistics.mean(r["wall_seconds"] for r in rs), 2),
                        "held_out_fvu": rs[0]["held_out_fvu"], "runs": rs}
    return {"setting": {"activations": stores_description(name), "stored_tokens": train.n_tokens,
                        "held_out_tokens": sum(x.shape[0] for x in held), "d_in": train.d_in,
                        "n_latents": cfg.latents_for(train.d_in), "k": k, "batch": batch, "steps": steps,
                        "tokens": steps * batch, "lr": lr, "order": order, "threads": torch.get_num_threads()},
            "results": results,
            "speedup": {who: round(r["tokens_per_s"] / results["eai-sparsify"]["tokens_per_s"], 3)
                        for who, r in results.items() if who != "eai-sparsify"}}


def stores_description(name):
    if name == "demo":
        return ("MiniCanvas demo model output_blocks.3.1, ComfyUI ddim 25 steps CFG 4, 36 prompts x 2 seeds "
                "(held out: seed 2)")
    return ("random-weight SD1.5-shaped UNet output_blocks.4.1 at 256 px, noise latents x 10 timesteps, "
            "bf16, 16 prompts x 2 noises (held out: 4 other prompts)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["demo", "sd15"])
    ap.add_argument("--demo-steps", type=int, default=300)
    ap.add_argument("--sd15-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "training.json"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    order = ["saemnesia", "eai-sparsify", "saemnesia (per-token TopK)",
             "saemnesia (per-token TopK)", "eai-sparsify", "saemnesia"]
    report = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "settings": {}}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            old = json.load(f)
        report["settings"] = old.get("settings", {})  # --only keeps the other setting's numbers
    for name, collect, steps in (("demo", collect_demo, args.demo_steps), ("sd15", collect_sd15, args.sd15_steps)):
        if args.only and args.only != name:
            continue
        t0 = time.perf_counter()
        stores = collect()
        print(f"{name}: {stores[0].n_tokens} training vectors, {stores[1].n_tokens} held out "
              f"(ready in {time.perf_counter() - t0:.0f} s)", flush=True)
        report["settings"][name] = run_setting(name, stores, steps, args.batch, args.k, args.expansion, args.lr, order)
        report["settings"][name]["date"] = time.strftime("%Y-%m-%d %H:%M")
        report["settings"][name]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        with open(os.path.join(CACHE, name, "collect_seconds.json")) as f:
            report["settings"][name]["collect_seconds"] = json.load(f)["seconds"]  # when it was collected
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({n: {"speedup": s["speedup"], **{w: {k: r[k] for k in ("tokens_per_s", "held_out_fvu")}
                                                      for w, r in s["results"].items()}}
                      for n, s in report["settings"].items()}, indent=1))


if __name__ == "__main__":
    main()
