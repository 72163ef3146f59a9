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


def _kind_cells(v: dict) -> list[str]:
    """UA (drawn, of how many), IRA, CRA, avg of one kind."""
    return [f"{_v(v.get('UA_drawn'))} (of {_v(v.get('drawn'))})", _v(v.get("IRA")), _v(v.get("CRA")),
            f"**{_v(v.get('avg_drawn'))}**"]


def _dit_cells(dit: dict, key: str) -> list[str]:
    """The DiT's column group for one method: objects and styles as UA (drawn) / IRA / CRA / avg, failed."""
    skipped = dit["settings"].get("skipped_methods", {})
    if key not in dit["test"]:
        return ["n/a (no DiT block SAEs)" if key in skipped else "-"] * 2 + ["-"]
    summary = dit["test"][key]["summary"]
    return [" / ".join(_kind_cells(summary[k])) if k in summary else "-" for k in ("objects", "styles")] + [
        f"{dit['test'][key]['failed_rate']}%"]


def _dit_note(dit: dict) -> str:
    s, dm, f = dit["settings"], dit["demo_model"], dit["settings"].get("model_file", {})
    skipped = ", ".join(_name(dit, k).split(" (")[0] if k in s.get("methods", {}) else k for k in s.get("skipped_methods", {}))
    return (f" **MiniCanvas-DiT** columns: the same measurement on the second demo model (Flux layout, "
            f"`{f.get('file')}` after {_v(f.get('training_steps'))} training steps; {s['sampler']}, {s['steps']} steps, "
            f"CFG {s['cfg']}; seeds {s['test_seeds']}), cells UA (drawn) / IRA / CRA / **avg**. Unedited on test "
            f"wordings: object {dm['test']['object_acc']}%, style {dm['test']['style_acc']}% (seen wording: "
            f"{dm['seen']['object_acc']}% / {dm['seen']['style_acc']}%). The text SAE edits the text states at the "
            f"DiT's input" + (f"; not run on it, for want of block SAEs on its blocks: {skipped}." if skipped else "."))


def minicanvas(d, dit=None):
    """The headline: every method on TEST wordings (drawn-and-removed UA, IRA, CRA), then the seen
    wording, several concepts at once and in sequence; with the DiT's results (`dit`), a column
    group per model."""
    s, dm, run = d["settings"], d["demo_model"], d["run"]
    head = ("| method | objects UA (drawn) | IRA | CRA | **avg** | styles UA (drawn) | IRA | CRA | **avg** | failed "
            "| seen wording: objects avg / styles avg |")
    rows = [head + (" DiT objects | DiT styles | DiT failed |" if dit else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if dit else "")]
    keys = list(d["test"]) + [k for k in (dit or {}).get("test", {}) if k not in d["test"]]
    for key in keys:
        m = d["test"].get(key)
        cells = ([c for k in ("objects", "styles") for c in _kind_cells(m["summary"].get(k, {}))]
                 + [f"{m['failed_rate']}%"] if m else ["-"] * 9)
        seen = d.get("seen", {}).get(key, {}).get("summary", {})
        cells.append(" / ".join(_v(seen.get(k, {}).get("avg")) for k in ("objects", "styles")))
        if dit:
            cells += _dit_cells(dit, key)
        rows.append(f"| {_name(d if m else dit, key)} | " + " | ".join(cells) + " |")
    runs = [("", d)] + ([(" (DiT)", dit)] if dit else [])
    mk = list(dict.fromkeys(k for _, r in runs for k in r["test"] if k != "none"))
    multi = ["| erased at once | " + " | ".join(_name(d, k).split(" (")[0] for k in mk) + " |", "|---|" + "---|" * len(mk)]
    for tag, r in runs:
        for group, res in r["multi"].items():
            multi.append(f"| {group.replace('_', ' ')}{tag} | " + " | ".join(
                f"{_v(res[k]['UA_drawn'])} / {_v(res[k]['IRA'])} / {_v(res[k]['CRA'])}" if k in res else "-"
                for k in mk) + " |")
    seqs = [(_name(r, k).split(" (")[0] + tag, v) for tag, r in runs for k, v in r["sequential"].items()]
    seq = ["| objects erased | " + " | ".join(n for n, _ in seqs) + " |", "|---|" + "---|" * len(seqs)]
    n_steps = max((len(v) for _, v in seqs), default=0)
    for i in range(n_steps):
        seq.append(f"| {i + 1} | " + " | ".join(f"{_v(v[i]['UA_drawn'])} / {_v(v[i]['IRA'])} / {_v(v[i]['CRA'])}"
                                                 if i < len(v) else "-" for _, v in seqs) + " |")
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
            + f" Run: {run['images']} images in {run['seconds']:.0f} s, {run['threads']} threads, {run['date']}."
            + (_dit_note(dit) + f" DiT run: {dit['run']['images']} images in {dit['run']['seconds']:.0f} s, "
               f"{dit['run']['date']}." if dit else "") + "\n\n"
            + "\n".join(rows)
            + "\n\nSeveral concepts at once, test wordings (UA drawn / IRA / CRA, seed 0):\n\n" + "\n".join(multi)
            + "\n\nSequential erasure of the objects in the order circle, square, triangle, cross, star, heart, test "
              "wordings (UA drawn over the erased ones / IRA over the rest / CRA; seed 0):\n\n" + "\n".join(seq)
            + "\n\n![MiniCanvas benchmark](benchmarks/results/minicanvas.png)"
            + ("\n\n![MiniCanvas-DiT benchmark](benchmarks/results/minicanvas_dit.png)" if dit else ""))


def _load(name: str):
    """benchmarks/results/NAME.json, or None where that run has not been made."""
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def attacks(d):
    """UA with no attack and under each attack, per method and kind (attacks.py)."""
    kinds = d["settings"]["kinds"]
    head = " | ".join(f"{k} UA ({a})" for k in ("objects", "styles") for a in ("no attack", *kinds))
    rows = [f"| method | {head} |", "|---|" + "---|" * (2 * (1 + len(kinds)))]
    for name, m in d["methods"].items():
        cells = [_v(m["mean"].get(k, {}).get(a, {}).get("UA")) for k in ("objects", "styles") for a in ("none", *kinds)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    s = d["settings"]
    measured = list(d.get("targets", {}))
    on = f"Concepts attacked: {', '.join(measured)} (each method x concept is a fit of its own). " if measured else ""
    return (on + f"Attacks fitted on seeds that are never test seeds, on TRAIN prompts; UA of the attacked prompts at "
            f"seeds {s['eval_seeds']} ({s['steps']} steps, CFG {s['cfg']}); {_took(d['time'])}:\n\n" + "\n".join(rows))


def _took(time) -> str:
    if isinstance(time, dict) and "seconds" in time:
        return f"{time['seconds']:.0f} s ({time.get('cpu_seconds', 0):.0f} CPU s)"
    return f"time {time}"


def attacks_per_model(unet, dit=None):
    """The UNet's attack table, then the DiT's when it was measured."""
    if dit is None:
        return attacks(unet)
    return f"**Demo UNet.** {attacks(unet)}\n\n**MiniCanvas-DiT.** {attacks(dit)}"


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
        d = _load(name)
        if d is None:
            continue
        table = fn(d)
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        text = pat.sub(lambda m: m.group(1) + table + m.group(2), text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    _fill(os.path.join(REPO, "README.md"), (("overhead", overhead), ("training", training),
                                            ("minicanvas", lambda d: minicanvas(d, _load("minicanvas_dit"))),
                                            ("attacks", lambda d: attacks_per_model(d, _load("attacks_dit")))))
    _fill(os.path.join(REPO, "docs", "minicanvas.md"), (("ceilings", ceilings),))


if __name__ == "__main__":
    main()
