"""Where does a concept live in the demo UNet, and what can an edit at each site reach?

Oracle interventions, before any SAE: for each target concept, on the target's own prompts
only (so IRA stays at the unedited model's), replace the cond half of chosen transformer-block
outputs with what those blocks output

* ``uncond``: for the empty prompt (the CFG uncond half of the same forward pass);
* ``without``: for the prompt with the concept's word dropped ("a in stripes style"), from a
  parallel forward pass of that prompt on the same noisy input;

at single blocks, at sets of blocks and at all seven. Two text-side rows edit what every
cross-attention reads: ``tokens`` swaps the concept word's token states for the empty prompt's
states at the same positions (a K/V swap of the concept token in every attn2), ``context``
swaps the whole text for the dropped-word prompt's (= prompting without the concept), and
``anchor`` for the prompt with the concept's word replaced by its anchor's (the shipped text
SAE's anchors: what its anchored erasure aims at).

Scored as the benchmark scores (v4: a broken picture fails UA and CRA), on the target's prompts
x seeds: UA, CRA on those pictures, and ``avg`` = the benchmark's mean of UA, IRA, CRA if the
other 30 prompts stay as the unedited model draws them (the oracle touches only the target's).

    HF_HUB_OFFLINE=1 .venv/bin/python -m saemnesia_demo.ceilings --out benchmarks/results/ceilings.json
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from saemnesia_core.checkpoint import load_sae
from saemnesia_core.fileio import save_json_atomic

from . import data
from .bench import DENOISE_MARGIN, NOISE_MARGIN, Bench, kind_of
from .sampling import ddim_sample
from .text_encoder import get_text_encoder

ANCHOR_SAE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "models", "sae", "minicanvas_context_saemnesia.safetensors")
SETS = {
    "down (16x16 + 8x8)": ["input_blocks.3.1", "input_blocks.5.1"],
    "mid (8x8)": ["middle_block.1"],
    "up 8x8": ["output_blocks.0.1", "output_blocks.1.1"],
    "up 16x16": ["output_blocks.2.1", "output_blocks.3.1"],
    "up (8x8 + 16x16)": ["output_blocks.0.1", "output_blocks.1.1", "output_blocks.2.1", "output_blocks.3.1"],
}


def dropped(o: int, s: int, target: str) -> str:
    words = data.prompt_for(o, s).split()
    return " ".join(w for w in words if w != target)


class Oracle:
    """Sampling with oracle swaps of block outputs or text states (see the module docstring)."""

    def __init__(self, bench: Bench, anchors: dict | None = None):
        self.bench = bench
        self.anchors = anchors or {}
        self.unet = bench.unet
        self.blocks = bench.blocks

    def _positions(self, prompt: str, word: str) -> list[int]:
        tok = get_text_encoder().tokenizer
        ids = tok(prompt, padding="max_length", max_length=16, truncation=True)["input_ids"]
        wid = tok(word, add_special_tokens=False)["input_ids"]
        out = []
        for i in range(len(ids) - len(wid) + 1):
            if ids[i:i + len(wid)] == wid:
                out += range(i, i + len(wid))
        return out

    @torch.no_grad()
    def sample(self, prompts, seeds, target, kind, blocks=()):
        b = self.bench
        t0 = time.perf_counter()
        cond = b.text(prompts)
        alt = b.text([dropped(*data.parse_prompt(p), target) for p in prompts])
        if kind == "tokens":
            cond = cond.clone()
            empty = b.text([""])[0]
            for i, p in enumerate(prompts):
                for j in self._positions(p, target):
                    cond[i, j] = empty[j]
        elif kind == "context":
            cond = alt
        elif kind == "anchor":
            cond = b.text([p.replace(f" {target} ", f" {self.anchors[target]} ") for p in prompts])
        record: dict[str, torch.Tensor] = {}
        mode = {"m": "pass"}
        n = len(prompts)

        def make_hook(name):
            def hook(_m, _i, out):
                h = out[0] if isinstance(out, tuple) else out.sample
                if mode["m"] == "record":
                    record[name] = h[:n].clone()
                    return None
                if mode["m"] == "pass":
                    return None
                h = h.clone()
                h[:n] = h[n:2 * n] if kind == "uncond" else record[name]
                if isinstance(out, tuple):
                    return (h,) + tuple(out[1:])
                out.sample = h
                return out
            return hook

        handles = [self.unet.get_submodule(self.blocks[name]).register_forward_hook(make_hook(name)) for name in blocks]
        uncond = b.text([""]).expand(n, -1, -1)

        def eps(x, t, ctx):
            if kind == "without" and blocks:
                mode["m"] = "record"
                self.unet(x, t, encoder_hidden_states=torch.cat([alt, uncond])).sample
            mode["m"] = "swap" if blocks else "pass"
            out = self.unet(x, t, encoder_hidden_states=ctx).sample
            mode["m"] = "pass"
            return out
        try:
            imgs = ddim_sample(eps, cond, b.text([""]), steps=b.steps, cfg=b.cfg, seeds=seeds)
        finally:
            for h in handles:
                h.remove()
        b.images += n
        b.seconds += time.perf_counter() - t0
        return imgs


def evaluate(bench: Bench, oracle: Oracle, kind: str, blocks, targets, seeds, base) -> dict:
    per = {}
    for t in targets:
        k = kind_of(t)
        pairs = ([(data.OBJECTS.index(t), s) for s in range(6)] if k == "objects"
                 else [(o, data.STYLES.index(t)) for o in range(6)])
        rows = [(o, s, sd) for sd in seeds for o, s in pairs]
        prompts = [data.prompt_for(o, s) for o, s, _ in rows]
        sds = [sd for _, _, sd in rows]
        imgs = oracle.sample(prompts, sds, t, kind, blocks)
        rise = bench.quality(imgs) - bench.unedited_quality(prompts, sds)
        broken = (rise[:, 0] > NOISE_MARGIN) | (rise[:, 1] > DENOISE_MARGIN)
        a = bench.judge(imgs, [o for o, _, _ in rows], [s for _, s, _ in rows], broken)
        m = a.metrics([t])  # IRA is nan (only the target's prompts); CRA on these pictures
        cra_target = m["CRA"]
        # the other 30 prompts stay unedited: their CRA and IRA are the unedited model's
        b = base.metrics([t])
        cra_all = (cra_target * 6 + b["CRA_rest"] * 30) / 36
        per[t] = {"UA": m["UA"], "CRA_target_prompts": cra_target, "broken": round(100 * float(broken.float().mean()), 2),
                  "avg": round((m["UA"] + b["IRA"] + cra_all) / 3, 2)}
    out = {"targets": per}
    for k in ("objects", "styles"):
        rows = [v for t, v in per.items() if kind_of(t) == k]
        if rows:
            out[k] = {key: round(sum(r[key] for r in rows) / len(rows), 2) for key in rows[0]}
    return out


class Baseline:
    """The unedited model's IRA and its CRA on the prompts that do not hold the target."""

    def __init__(self, answers):
        self.a = answers

    def metrics(self, targets):
        a = self.a
        m = a.metrics(targets)
        kind = kind_of(targets[0])
        truth = a.objs if kind == "objects" else a.styles
        names = data.OBJECTS if kind == "objects" else data.STYLES
        other_truth, other_pred = (a.styles, a.pred_style) if kind == "objects" else (a.objs, a.pred_obj)
        off = truth != names.index(targets[0])
        m["CRA_rest"] = 100 * float((other_pred[off] == other_truth[off]).float().mean())
        return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", nargs="*")
    ap.add_argument("--singles", action="store_true", help="also every block alone")
    ap.add_argument("--out", default="benchmarks/results/ceilings.json")
    args = ap.parse_args(argv)
    bench = Bench(threads=args.threads, steps=args.steps)
    anchors = {}
    if os.path.isfile(ANCHOR_SAE):
        anchors = {c.name: c.anchor for c in load_sae(ANCHOR_SAE).index.concepts.values() if c.anchor}
    oracle = Oracle(bench, anchors)
    seeds = list(range(args.seeds))
    targets = args.targets or list(data.OBJECTS) + list(data.STYLES)
    base = Baseline(bench.answer_set(seeds))
    t0 = time.perf_counter()
    plan = [("context", "all (text)", ()), ("tokens", "all (text)", ())]
    if anchors:
        plan.insert(1, ("anchor", "all (text)", ()))
    plan += [("uncond", "all 7 blocks", tuple(bench.blocks)), ("without", "all 7 blocks", tuple(bench.blocks))]
    for name, bl in SETS.items():
        plan += [("uncond", name, tuple(bl)), ("without", name, tuple(bl))]
    if args.singles:
        plan += [("without", name, (name,)) for name in bench.blocks]
    results = {"settings": {"seeds": seeds, "steps": args.steps, "cfg": bench.cfg, "oracle": "target's prompts only"},
               "rows": []}
    for kind, label, blocks in plan:
        r = evaluate(bench, oracle, kind, blocks, targets, seeds, base)
        results["rows"].append({"swap": kind, "where": label, "blocks": list(blocks), **r})
        print(f"{kind:8s} {label:22s} objects {r.get('objects')} styles {r.get('styles')}", flush=True)
        save_json_atomic(results, args.out)
    results["run"] = {"images": bench.images, "seconds": round(time.perf_counter() - t0, 1),
                      "date": time.strftime("%Y-%m-%d %H:%M")}
    save_json_atomic(results, args.out)


if __name__ == "__main__":
    main()
