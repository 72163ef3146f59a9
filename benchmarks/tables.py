"""Write the benchmark tables into README.md from benchmarks/results/*.json (between
<!-- bench:NAME --> and <!-- /bench:NAME --> markers), so no number is typed by hand."""
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def overhead(d):
    s = d["setting"]
    rows = ["| variant | median seconds | overhead |", "|---|---|---|",
            f"| no erase | {d['seconds_median']['none']} | - |"]
    for k, v in d["overhead_percent"].items():
        rows.append(f"| Erase Concepts, {k} | {d['seconds_median'][k]} | {v:+.2f}% |")
    return (f"KSampler on the SD1.5 shape ({s['image']} px, {s['steps']} steps, CFG {s['cfg']}, SAE on "
            f"{s['hook']}: {s['positions']} positions x {s['d_in']} channels, {s['n_latents']} latents, k {s['k']}), "
            f"{s['repeats']} alternating repeats, {s['device']}, {s['threads']} threads:\n\n" + "\n".join(rows))


def training(d):
    s = d["setting"]
    rows = ["| trainer | tokens/s | held-out FVU | seconds |", "|---|---|---|---|"]
    for k, v in d["results"].items():
        rows.append(f"| {k} | {v['tokens_per_s']} | {v['held_out_fvu']} | {v['seconds']} |")
    return (f"Same stored activations ({s['activations']}, {s['stored_tokens']} vectors of {s['d_in']}), "
            f"{s['n_latents']} latents, k {s['k']}, batch {s['batch']}, {s['steps']} steps ({s['tokens']} tokens), "
            f"lr {s['lr']}, {s['threads']} threads; speed ratio ours/eai-sparsify = {d['speedup']}:\n\n" + "\n".join(rows))


def main():
    readme = os.path.join(REPO, "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for name, fn in (("overhead", overhead), ("training", training)):
        path = os.path.join(RESULTS, f"{name}.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            table = fn(json.load(f))
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        text = pat.sub(lambda m: m.group(1) + table + m.group(2), text)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
