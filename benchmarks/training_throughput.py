"""SAE training throughput and quality: ours vs EleutherAI's TopK SAE (PyPI eai-sparsify),
side by side on the same stored activations, same width, k, batch and number of tokens.

Activations: SD1.5-shaped model (random weights) at output_blocks.4.1, 1280 channels,
collected by our activation store (sharded fp16 safetensors). Both trainers read the same
batches in the same order; both use Adam (lr 4e-4, eps 6.25e-10), grad clip 1.0, unit-norm
decoder, AuxK 1/32. Writes benchmarks/results/training.json.

    .venv/bin/python benchmarks/training_throughput.py [--steps 20] [--latents 20480] [--k 32]
"""
import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import comfy_env  # noqa: E402

STORE = os.path.join(REPO, ".cache", "bench-activations")


def collect(n_prompts: int, size: int, steps: int):
    """Sample the SD1.5-shaped model and store output_blocks.4.1 (cond half, every step)."""
    from saemnesia_core.activations import INDEX, ActivationStore, ActivationWriter
    from saemnesia_core.prompts import build_prompts
    if os.path.isfile(os.path.join(STORE, INDEX)):
        return ActivationStore(STORE)
    pack = comfy_env.import_pack()
    import torch
    import comfy.sample
    import comfy.sd
    mp = sys.modules[pack.__name__ + ".nodes.model_patch"]
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(comfy_env.sd15_random_checkpoint())
    objects = ["cat", "dog", "car", "tree", "house", "boat", "bird", "horse"]
    prompts = build_prompts(objects, ["ink", "oil", "pixel art", "watercolor"])[:n_prompts]
    writer = ActivationWriter(STORE, 1280, prompts, hook_point="output_blocks.4.1", shard_tokens=16384)
    current = {"pid": 0}
    probe = mp.capture_patch(model, "output_blocks.4.1", lambda h, info: writer.add(
        h.permute(0, 2, 3, 1).reshape(-1, 1280), info["timestep"], current["pid"]))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    lat = torch.zeros(1, 4, size // 8, size // 8)
    for pid, p in enumerate(prompts):
        current["pid"] = pid
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(p.text))
        with torch.inference_mode():
            comfy.sample.sample(probe, comfy.sample.prepare_noise(lat, pid), steps, 7.5, "euler", "normal", cond, neg,
                                lat, seed=pid, disable_pbar=True)
    return writer.close()


def batches(store, batch, steps, seed=0):
    out, epoch = [], 0
    while len(out) < steps:
        for x, _, _ in store.batches(batch, seed, epoch):
            out.append(x)
            if len(out) == steps:
                break
        epoch += 1
    return out


def eval_fvu(encode_decode, xs):
    import torch
    err = var = 0.0
    with torch.no_grad():
        for x in xs:
            err += float((x - encode_decode(x)).pow(2).sum())
            var += float((x - x.mean(0)).pow(2).sum())
    return err / var


def train_ours(data, held, n_latents, k, lr):
    import torch
    from saemnesia_core.sae import TopKSAE, geometric_median
    from saemnesia_core.training import TrainConfig, _sae_loss_terms
    cfg = TrainConfig(n_latents=n_latents, k=k, lr=lr, batch_topk=True, dead_tokens=10_000_000)
    sae = TopKSAE(data[0].shape[1], n_latents, k)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(data[0]))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=cfg.adam_eps)
    since = torch.zeros(n_latents, dtype=torch.long)
    t0 = time.perf_counter()
    for x in data:
        z, fvu, aux = _sae_loss_terms(sae, x, cfg, since > cfg.dead_tokens)
        loss = fvu + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            since += x.shape[0]
            since[(z > 0).any(0)] = 0
    secs = time.perf_counter() - t0
    return secs, eval_fvu(lambda x: sae(x), held)


def train_sparsify(data, held, n_latents, k, lr):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig
    d_in = data[0].shape[1]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=n_latents, k=k), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
    since = torch.zeros(n_latents, dtype=torch.long)
    t0 = time.perf_counter()
    for x in data:
        dead = since > 10_000_000
        out = sae(x, dead_mask=dead if dead.any() else None)
        loss = out.fvu + out.auxk_loss / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            since += x.shape[0]
            since[out.latent_indices.flatten().unique()] = 0
    secs = time.perf_counter() - t0
    with torch.no_grad():
        fvu = eval_fvu(lambda x: sae.decode(*sae.encode(x)[:2]) if hasattr(sae, "decode") else sae(x).sae_out, held)
    return secs, fvu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--latents", type=int, default=20480)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "training.json"))
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    store = collect(args.prompts, args.size, args.sample_steps)
    data = batches(store, args.batch, args.steps + 1)
    held, data = data[-1:], data[:-1]  # one batch held out for FVU
    tokens = args.steps * args.batch
    results = {}
    for name, fn in (("saemnesia", train_ours), ("eai-sparsify", train_sparsify)):
        secs, fvu = fn(data, held, args.latents, args.k, args.lr)
        results[name] = {"seconds": round(secs, 2), "tokens_per_s": round(tokens / secs, 1), "held_out_fvu": round(fvu, 4)}
        print(name, results[name], flush=True)
    report = {"setting": {"activations": "SD1.5-shaped (random weights) output_blocks.4.1", "stored_tokens": store.n_tokens,
                          "d_in": store.d_in, "n_latents": args.latents, "k": args.k, "batch": args.batch,
                          "steps": args.steps, "tokens": tokens, "lr": args.lr, "threads": torch.get_num_threads(),
                          "machine": platform.processor() or platform.machine()},
              "results": results,
              "speedup": round(results["saemnesia"]["tokens_per_s"] / results["eai-sparsify"]["tokens_per_s"], 3)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
