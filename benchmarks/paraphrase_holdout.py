"""Reworded prompts that neither training, calibration nor the main benchmark ever used.

The MiniCanvas benchmark's paraphrase part (saemnesia_demo/bench.py) has one fixed set of
synonyms and word orders; a number tuned on it, even by accident, says little about the next
wording an artist types. This run repeats that part, scored the same way ("drawn and removed"
UA, IRA and CRA on the reworded prompts, seed 0) with wordings disjoint from the benchmark's and
from every word the text SAE is trained on, for no erasure and for the shipped text-state SAE.
Two sets: `holdout` (looked at while the training synonyms were chosen) and `fresh` (run once,
on the final SAE, and used for nothing).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paraphrase_holdout.py [--wordings fresh]

Writes benchmarks/results/paraphrase_holdout.json (or paraphrase_fresh.json).
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from saemnesia_core import load_sae  # noqa: E402
from saemnesia_core.fileio import save_json_atomic  # noqa: E402
from saemnesia_core.intervention import erasers_for_set  # noqa: E402
from saemnesia_demo import bench as B  # noqa: E402
from saemnesia_demo import data  # noqa: E402

HOLDOUT_OBJECTS = {"circle": "round shape", "square": "four-cornered block", "triangle": "pyramid shape",
                   "cross": "plus symbol", "star": "starry shape", "heart": "heart symbol"}
HOLDOUT_STYLES = {"solid": "flat filled", "stripes": "striped lines", "dots": "dotted", "checker": "chequered",
                  "outline": "line drawing", "gradient": "smooth gradient"}

# A second set, written after the first had been looked at while the synonyms for training were
# chosen, and run once, on the final SAE: the first set's results guided that work, this one's
# guided nothing.
FRESH_OBJECTS = {"circle": "bubble", "square": "squarish slab", "triangle": "three-cornered sign",
                 "cross": "crossbar figure", "star": "starburst", "heart": "heart-shaped locket"}
FRESH_STYLES = {"solid": "evenly tinted", "stripes": "streaked", "dots": "dappled", "checker": "plaid",
                "outline": "traced border", "gradient": "colour ramp"}


def holdout_wording(obj: str, style: str, i: int) -> str:
    o, s = HOLDOUT_OBJECTS[obj], HOLDOUT_STYLES[style]
    return [f"{s} {o}", f"an illustration: {o}, {s}", f"{style} pattern on a {obj}", f"{o} with {s} look"][i % 4]


def fresh_wording(obj: str, style: str, i: int) -> str:
    o, s = FRESH_OBJECTS[obj], FRESH_STYLES[style]
    return [f"artwork showing a {s} {o}", f"{o}, {s} treatment", f"a {obj} that looks {s}", f"{s}: {o}"][i % 4]


WORDINGS = {"holdout": holdout_wording, "fresh": fresh_wording}
OUT = {"holdout": "paraphrase_holdout.json", "fresh": "paraphrase_fresh.json"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default=os.path.join(REPO, "models", "sae", "minicanvas_context_saemnesia.safetensors"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wordings", choices=sorted(WORDINGS), default="holdout",
                    help="holdout: the first held-out set; fresh: the second, never used for any choice")
    ap.add_argument("--out", help="default: benchmarks/results/paraphrase_<wordings>.json")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(REPO, "benchmarks", "results", OUT[args.wordings])
    wording = WORDINGS[args.wordings]
    t0 = time.perf_counter()
    bench = B.Bench(threads=args.threads)
    sae = load_sae(args.sae)
    words = lambda o, s, seed: wording(data.OBJECTS[o], data.STYLES[s], o + s)  # noqa: E731
    plans = {"none": lambda ts: {}, "saemnesia_context": lambda ts: {"edits": erasers_for_set(sae, ts, mode="neuron")}}
    targets = list(data.OBJECTS) + list(data.STYLES)
    drawn, results = {}, {}
    for name, plan in plans.items():
        per_target = {}
        for t in targets:
            a = bench.answer_set([0], pairs=B.validation_pairs(t), words=words, **plan([t]))
            if name == "none":  # which pictures show the target at all: only those test its erasure
                truth, pred = (a.objs, a.pred_obj) if B.kind_of(t) == "objects" else (a.styles, a.pred_style)
                drawn[t] = pred == truth
            per_target[t] = {**a.metrics([t]), **a.drawn_metrics([t], drawn[t])}
        results[name] = {"targets": per_target, "summary": B.summarize_paraphrases(per_target)}
        print(name, results[name]["summary"], flush=True)
    out = {"wordings": args.wordings, "examples": [wording("star", "stripes", i) for i in range(4)], "seeds": [0],
           "sae": os.path.basename(args.sae), "results": results,
           "run": {"images": bench.images, "seconds": round(time.perf_counter() - t0, 1),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    save_json_atomic(out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
