"""Write the benchmark tables into README.md from benchmarks/results/*.json (between
<!-- bench:NAME --> and <!-- /bench:NAME --> markers), so no number is typed by hand."""
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def _calibrated(s: dict) -> str:
    """The supervised SAEs' calibrated settings, as the run used them."""
    sup = {kind: v["saemnesia"] for kind, v in s["saes"].items()}
    text = "SAEmnesia: the SAE's calibrated multiplier (" + ", ".join(
        f"{kind} x{v['default_multiplier']}" for kind, v in sup.items()) + ")"
    if all("detect_scale" in v for v in sup.values()):
        text += "; PER: its calibrated detection scale (" + ", ".join(
            f"{kind} {v['detect_scale']}" for kind, v in sup.items()) + "; 0 = wherever the latent is active)"
    if "context_sae" in s:
        c = s["context_sae"]
        text += (f"; SAEmnesia on the text states: one SAE ({c['latents']} latents, k {c['k']}) for objects and styles, "
                 f"each erased prompt moved to its anchor by the concept's handover map where the latent fires "
                 f"(calibrated multiplier x{c['default_multiplier']} for what the latent still sees, and where no map applies)")
    return text + ". "


def _overhead_sd15(d):
    s = d["setting"]
    rows = ["| variant | median seconds | overhead |", "|---|---|---|",
            f"| no erase | {d['seconds_median']['none']} | - |"]
    for k, v in d["overhead_percent"].items():
        rows.append(f"| Erase Concepts, {k} | {d['seconds_median'][k]} | {v:+.2f}% |")
    return (f"KSampler on the SD1.5 shape ({s['image']} px, {s['steps']} steps, CFG {s['cfg']}, SAE on "
            f"{s['hook']}: {s['positions']} positions x {s['d_in']} channels, {s['n_latents']} latents, k {s['k']}), "
            f"{s['repeats']} alternating repeats, {s['device']}, {s['threads']} threads; measured {d['date']}:\n\n"
            + "\n".join(rows))


def _overhead_demo(d):
    s = d["setting"]
    hook = d.get("hook_only", {})
    rows = ["| variant | SAE | median CPU s | overhead (CPU) | median wall s | overhead (wall) | hook alone, ms/step |",
            "|---|---|---|---|---|---|---|",
            f"| no erase | - | {d['seconds_median']['none']} | - | {d['wall_seconds_median']['none']} | - | "
            f"(UNet step {hook.get('unet_step_ms', '-')}) |"]
    for k, v in d["overhead_percent"].items():
        e = d["saes"][k]
        h = hook.get("variants", {}).get(k)
        rows.append(f"| Erase Concepts, {e['mode']}, '{e['concept']}' | {k.split(', ')[0]}: {e['n_latents']} latents, "
                    f"k {e['k']} | {d['seconds_median'][k]} | {v:+.2f}% | {d['wall_seconds_median'][k]} | "
                    f"{d['wall_overhead_percent'][k]:+.2f}% | "
                    + (f"{h['ms_per_step']} (= {h['percent_of_a_step']:+.2f}%)" if h else "-") + " |")
    load = [x[0] for x in (d.get("loadavg_before"), d.get("loadavg_after")) if x]
    return (f"KSampler on the MiniCanvas demo model ({s['image']} px, {s['steps']} steps {s['sampler']}, CFG {s['cfg']}, "
            f"'{s['prompt']}'), {s['repeats']} alternating repeats, {s['device']}, {s['threads']} thread, overhead from "
            f"the process's CPU time; measured {d['date']}"
            + (f", 1-min load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores" if load else "")
            + ":\n\n" + "\n".join(rows))


def overhead(d):
    if "setting" in d:  # the first format: one SD1.5 result
        d = {"sd15": {**d, "date": "2026-11-23"}}
    return "\n\n".join(fn(d[k]) for k, fn in (("sd15", _overhead_sd15), ("demo", _overhead_demo)) if k in d)


def _training_setting(name, d):
    s = d["setting"]
    rows = ["| trainer | tokens/s (CPU time) | held-out FVU | CPU seconds | wall seconds |", "|---|---|---|---|---|"]
    for k, v in d["results"].items():
        rows.append(f"| {k} | {v['tokens_per_s']} | {v['held_out_fvu']} | {v.get('cpu_seconds', v.get('seconds'))} | "
                    f"{v.get('wall_seconds', '-')} |")
    loads = [x for v in d["results"].values() for r in v["runs"] for x in r["loadavg_1min_before_after"]]
    speedups = d["speedup"] if isinstance(d["speedup"], dict) else {"saemnesia": d["speedup"]}
    return (f"**{name}**: {s['activations']}; {s['stored_tokens']} training vectors of {s['d_in']}, "
            f"{s['held_out_tokens']} held out; {s['n_latents']} latents, k {s['k']}, batch {s['batch']}, "
            f"{s['steps']} steps ({s['tokens']} tokens), lr {s['lr']}, {s['threads']} thread, runs in the order "
            f"{' -> '.join(s['order'])}; 1-min load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; "
            f"measured {d['date']}. Speed vs eai-sparsify: "
            + ", ".join(f"{who} **{r}x**" for who, r in speedups.items()) + ":\n\n" + "\n".join(rows))


def training(d):
    if "setting" in d:
        d = {"settings": {"sd15": d}}
    return "\n\n".join(_training_setting(n, v) for n, v in d["settings"].items())


def _v(x):
    return "-" if x is None else str(x)


def _name(d: dict, key: str) -> str:
    return d["settings"].get("methods", {}).get(key, key)


def minicanvas(d):
    """The headline: every method on TEST wordings (drawn-and-removed UA, IRA, CRA), then the seen
    wording, several concepts at once and in sequence."""
    s, dm, run = d["settings"], d["demo_model"], d["run"]
    rows = ["| method | objects UA (drawn) | IRA | CRA | **avg** | styles UA (drawn) | IRA | CRA | **avg** | failed "
            "| seen wording: objects avg / styles avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, m in d["test"].items():
        cells = []
        for kind in ("objects", "styles"):
            v = m["summary"].get(kind, {})
            cells += [f"{_v(v.get('UA_drawn'))} (of {_v(v.get('drawn'))})", _v(v.get("IRA")), _v(v.get("CRA")),
                      f"**{_v(v.get('avg_drawn'))}**"]
        seen = d.get("seen", {}).get(key, {}).get("summary", {})
        seen_cell = " / ".join(_v(seen.get(k, {}).get("avg")) for k in ("objects", "styles"))
        rows.append(f"| {_name(d, key)} | " + " | ".join(cells) + f" | {m['failed_rate']}% | {seen_cell} |")
    mk = [k for k in d["test"] if k != "none"]
    multi = ["| erased at once | " + " | ".join(_name(d, k).split(" (")[0] for k in mk) + " |", "|---|" + "---|" * len(mk)]
    for group, res in d["multi"].items():
        multi.append(f"| {group.replace('_', ' ')} | " + " | ".join(
            f"{_v(res[k]['UA_drawn'])} / {_v(res[k]['IRA'])} / {_v(res[k]['CRA'])}" if k in res else "-" for k in mk) + " |")
    seq = ["| objects erased | " + " | ".join(_name(d, k).split(" (")[0] for k in d["sequential"]) + " |",
           "|---|" + "---|" * len(d["sequential"])]
    n_steps = max((len(v) for v in d["sequential"].values()), default=0)
    for i in range(n_steps):
        seq.append(f"| {i + 1} | " + " | ".join(f"{_v(v[i]['UA_drawn'])} / {_v(v[i]['IRA'])} / {_v(v[i]['CRA'])}"
                                                 for v in d["sequential"].values()) + " |")
    tw = s["test_wordings"]
    g = d.get("saeuron_search")
    return (f"**Test wordings** ({tw['per_pair']} per object x style pair from the `TEST` vocabulary, which nothing was "
            f"trained, fitted, calibrated or chosen on; e.g. {'; '.join(repr(e) for e in tw['examples'])}), seeds "
            f"{s['test_seeds']}, {s['steps']} DDIM steps, CFG {s['cfg']}; per target {s['rows_per_target']}. "
            f"UA counts the target's pictures whose unedited twin shows the target (drawn and removed; how many in "
            f"brackets). The unedited model on these wordings: object {dm['test']['object_acc']}%, style "
            f"{dm['test']['style_acc']}% (on the seen wording: {dm['seen']['object_acc']}% / {dm['seen']['style_acc']}%). "
            f"*Failed*: pictures no classifier is confident about (p >= {s['artifact_confidence']}) or that the edit "
            f"broke against their unedited twin (noise level +{s['broken_noise_margin']}, or the demo model's own "
            f"denoising error +{s['broken_denoise_margin']}); a failed picture counts as neither erased nor kept. "
            f"*Seen wording*: the same on the training template '{s['seen_wording']}', which the text SAE and its maps "
            f"were fitted on: the mean of UA, IRA and CRA."
            + (f" SAeUron: {g['settings_per_concept']} (tau, gamma) settings per concept chosen on validation seeds "
               f"{s['validation_seeds']} in the seen wording. " if g else " ") + _calibrated(s)
            + f" Run: {run['images']} images in {run['seconds']:.0f} s, {run['threads']} threads, {run['date']}.\n\n"
            + "\n".join(rows)
            + "\n\nSeveral concepts at once, test wordings (UA drawn / IRA / CRA, seed 0):\n\n" + "\n".join(multi)
            + "\n\nSequential erasure of the objects in the order circle, square, triangle, cross, star, heart, test "
              "wordings (UA drawn over the erased ones / IRA over the rest / CRA; seed 0):\n\n" + "\n".join(seq)
            + "\n\n![MiniCanvas benchmark](benchmarks/results/minicanvas.png)")


def attacks(d):
    """UA with no attack and under each attack, per method and kind (attacks.py)."""
    kinds = d["settings"]["kinds"]
    head = " | ".join(f"{k} UA ({a})" for k in ("objects", "styles") for a in ("no attack", *kinds))
    rows = [f"| method | {head} |", "|---|" + "---|" * (2 * (1 + len(kinds)))]
    for name, m in d["methods"].items():
        cells = [_v(m["mean"].get(k, {}).get(a, {}).get("UA")) for k in ("objects", "styles") for a in ("none", *kinds)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    s = d["settings"]
    return (f"Attacks fitted on seeds that are never test seeds, on TRAIN prompts; UA of the attacked prompts at "
            f"seeds {s['eval_seeds']} ({s['steps']} steps, CFG {s['cfg']}); time {d['time']}:\n\n" + "\n".join(rows))


SWAPS = {"context": "prompt without the concept's word, as every cross-attention reads it",
         "anchor": "prompt with the concept's word replaced by its anchor's",
         "tokens": "the concept word's token states replaced by the empty prompt's (K/V of every attn2)",
         "uncond": "cond half of the block outputs replaced by the uncond half",
         "without": "cond half of the block outputs replaced by those of the prompt without the concept's word"}


def ceilings(d):
    s = d["settings"]
    rows = ["| swap | where | objects UA | CRA (target prompts) | broken | **avg** | styles UA | CRA (target prompts) | broken | **avg** |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        cells = []
        for kind in ("objects", "styles"):
            v = r.get(kind, {})
            cells += [_v(v.get("UA")), _v(v.get("CRA_target_prompts")), _v(v.get("broken")), f"**{_v(v.get('avg'))}**"]
        rows.append(f"| {r['swap']} | {r['where']} | " + " | ".join(cells) + " |")
    legend = "; ".join(f"`{k}`: {v}" for k, v in SWAPS.items() if any(r["swap"] == k for r in d["rows"]))
    run = d.get("run", {})
    return (f"Oracle swaps on the target's own prompts only (seeds {s['seeds']}, {s['steps']} DDIM steps, CFG {s['cfg']}); "
            f"avg = the benchmark's mean of UA, IRA and CRA with the other 30 prompts left as the unedited model draws "
            f"them; broken = scoring v4. {legend}."
            + (f" Run: {run['images']} images, {run['seconds']:.0f} s, {run['date']}." if run else "")
            + "\n\n" + "\n".join(rows))


def _fill(path, jobs):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name, fn in jobs:
        src = os.path.join(RESULTS, f"{name}.json")
        if not os.path.isfile(src):
            continue
        with open(src) as f:
            table = fn(json.load(f))
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        text = pat.sub(lambda m: m.group(1) + table + m.group(2), text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    _fill(os.path.join(REPO, "README.md"), (("overhead", overhead), ("training", training), ("minicanvas", minicanvas),
                                            ("attacks", attacks)))
    _fill(os.path.join(REPO, "docs", "minicanvas.md"), (("ceilings", ceilings),))


if __name__ == "__main__":
    main()
