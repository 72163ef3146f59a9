"""The benchmark's metrics follow UnlearnCanvas's definitions; merged worker results equal one run's."""
import pytest
import torch

from saemnesia_demo import data
from saemnesia_demo.bench import (
    DENOISE_MARGIN,
    METHODS,
    NOISE_MARGIN,
    Answers,
    Methods,
    denoising_error,
    merge,
    noise_level,
    plot,
    record,
    summarize,
    unseen_rows,
    validation_pairs,
    views,
)
from saemnesia_demo.text_encoder import encode_prompts
from saemnesia_demo.unet import load_demo_unet


def answers(pred_obj, pred_style, broken=None, confident=None):
    pairs = [(o, s) for o in range(6) for s in range(6)]
    objs = torch.tensor([o for o, _ in pairs])
    styles = torch.tensor([s for _, s in pairs])
    broken = torch.zeros(36, dtype=torch.bool) if broken is None else broken(objs, styles)
    confident = torch.ones(36, dtype=torch.bool) if confident is None else confident(objs, styles)
    return Answers(objs, styles, pred_obj(objs, styles), pred_style(objs, styles), confident, broken)


def test_a_picture_drowned_in_noise_fails_every_metric():
    """Classifiers trained to be robust to noise still name the shape under heavy noise, and a
    ruined picture is no erasure: it must score worse than leaving the concept in."""
    star = data.OBJECTS.index("star")
    # star pictures: 3 ruined, 3 cleanly erased (read as circles); one circle ruined too
    a = answers(lambda o, s: torch.where((o == star) & (s >= 3), 0, o), lambda o, s: s,
                broken=lambda o, s: ((o == star) & (s < 3)) | ((o == 0) & (s == 0)))
    m = a.metrics(["star"])
    assert m["UA"] == 50.0  # only the clean erasures count
    assert m["IRA"] == round(100 * 29 / 30, 2)  # the broken circle is not a circle any more
    assert m["CRA"] == round(100 * 32 / 36, 2)  # and the broken pictures lost their style
    assert a.artifact_rate == round(100 * 4 / 36, 2)  # confident, yet artifacts
    kept = answers(lambda o, s: o, lambda o, s: s).metrics(["star"])  # no erasure at all
    ruined = answers(lambda o, s: o, lambda o, s: s, broken=lambda o, s: o == star).metrics(["star"])
    assert ruined["avg"] < kept["avg"]


def test_noise_level_separates_noisy_from_patterned_pictures():
    imgs, _, styles = data.make_dataset(72, seed=3)
    clean = noise_level(imgs)
    assert clean.max() < 3  # stripes, dots, checker edges are a minority of pixels
    noisy = noise_level((imgs + 0.12 * torch.randn(imgs.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1))
    assert (noisy > clean + NOISE_MARGIN).all()


def test_object_metrics_ua_ira_cra():
    star = data.OBJECTS.index("star")
    # star images now read as circles, half of the hearts are misread, styles of star images all lost
    a = answers(lambda o, s: torch.where(o == star, 0, torch.where((o == 5) & (s < 3), 0, o)),
                lambda o, s: torch.where(o == star, (s + 1) % 6, s))
    m = a.metrics(["star"])
    assert m["UA"] == 100.0  # every star image is no longer a star
    assert m["IRA"] == round(100 * (30 - 3) / 30, 2)  # the other 30 object images, 3 misread
    assert m["CRA"] == round(100 * 30 / 36, 2)  # style accuracy over all images
    assert m["avg"] == round((m["UA"] + m["IRA"] + m["CRA"]) / 3, 2)


def test_style_metrics_and_multiple_targets():
    a = answers(lambda o, s: o, lambda o, s: torch.where(s < 2, 5, s))  # solid + stripes read as gradient
    m = a.metrics(["solid", "stripes"])
    assert (m["UA"], m["IRA"], m["CRA"]) == (100.0, 100.0, 100.0)
    assert a.metrics(["dots"])["UA"] == 0.0
    assert a.metrics(["dots"])["IRA"] == round(100 * (30 - 12) / 30, 2)


def test_validation_pairs_hold_the_target_and_each_neighbour():
    for t in data.OBJECTS + data.STYLES:
        pairs = validation_pairs(t)
        assert len(pairs) == len(set(pairs)) == 11
        idx = 0 if t in data.OBJECTS else 1
        names = data.OBJECTS if t in data.OBJECTS else data.STYLES
        assert {p[idx] for p in pairs} == set(range(6))
        assert sum(p[idx] == names.index(t) for p in pairs) == 6


def test_a_picture_no_classifier_is_sure_of_is_no_erasure():
    """A blank or background-only picture names no class: it must fail UA like a broken one,
    and count in the artifact rate."""
    star = data.OBJECTS.index("star")
    # every star picture comes out blank: the classifiers still argmax some other class, unsure
    blank = answers(lambda o, s: torch.where(o == star, 0, o), lambda o, s: s, confident=lambda o, s: o != star)
    m = blank.metrics(["star"])
    assert m["UA"] == 0.0 and m["CRA"] == round(100 * 30 / 36, 2)
    assert blank.artifact_rate == round(100 * 6 / 36, 2)
    clean = answers(lambda o, s: torch.where(o == star, 0, o), lambda o, s: s).metrics(["star"])
    assert clean["UA"] == 100.0


def rec(section, method, target, ua):
    a = answers(lambda o, s: o, lambda o, s: s)
    drawn = torch.ones(36, dtype=torch.bool)
    r = record(section, method, [target], a, drawn)
    r.update(UA=ua, UA_drawn=ua)
    return r


def test_merged_worker_results_are_the_union_of_their_records():
    objects = {"records": [rec("test", "none", t, 0.0) for t in data.OBJECTS]
               + [rec("test", "word_filter", t, 50.0) for t in data.OBJECTS]
               + [{**rec("sequential", "word_filter", "star", 10.0), "step": 1}],
               "saeuron_search": {"settings_evaluated": 6, "chosen": {t: {} for t in data.OBJECTS}},
               "run": {"images": 10, "sampling_seconds": 1.0, "seconds": 2.0}, "demo_model": {}, "settings": {}}
    styles = {"records": [rec("test", "none", t, 0.0) for t in data.STYLES]
              + [rec("test", "word_filter", t, 30.0) for t in data.STYLES]
              + [{**rec("multi", "word_filter", "dots", 20.0), "group": "styles_2"}],
              "saeuron_search": {"settings_evaluated": 6, "chosen": {t: {} for t in data.STYLES}},
              "run": {"images": 20, "sampling_seconds": 1.0, "seconds": 3.0}, "demo_model": {}, "settings": {}}
    out = merge([objects, styles])
    assert set(out["test"]["none"]["targets"]) == set(data.OBJECTS + data.STYLES)
    wf = out["test"]["word_filter"]
    assert wf["summary"] == summarize(wf["targets"])
    assert wf["summary"]["objects"]["UA_drawn"] == 50.0 and wf["summary"]["styles"]["UA_drawn"] == 30.0
    assert wf["summary"]["objects"]["drawn"] == 6 * 6  # each record's 6 target pictures
    assert out["saeuron_search"]["settings_evaluated"] == 12 and len(out["saeuron_search"]["chosen"]) == 12
    assert out["sequential"]["word_filter"][0]["step"] == 1 and out["multi"]["styles_2"]["word_filter"]["UA"] == 20.0
    assert out["run"]["images"] == 30 and out["run"]["seconds"] == 3.0


def test_a_run_of_other_sections_writes_no_plot_and_does_not_fail(tmp_path):
    """A run of the seen, multi or sequential sections only has no test table to draw."""
    out = views({"records": [rec("seen", "none", "star", 0.0), {**rec("multi", "none", "star", 0.0), "group": "g"}]})
    plot(out, str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()
    plot(views({"records": [rec("test", "none", "star", 0.0)]}), str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").exists()


def test_unseen_rows_use_test_wordings_only():
    rows = unseen_rows([0, 1], validation_pairs("star"))
    assert len(rows) == 11 * 4 * 2
    assert all(p != data.prompt_for(o, s) for o, s, p, _ in rows)
    from saemnesia_demo.vocabulary import TRAIN, words_of
    names = set(data.OBJECTS) | set(data.STYLES)  # may stand in TEST templates
    assert not {w for _, _, p, _ in rows for w in words_of(p)} & (TRAIN.content_words() - names)


def test_rewrite_baselines_send_the_concept_to_its_anchor():
    m = Methods(bench=None, saes={})
    assert m.anchor("star") != "star" and m.anchor("star", avoid=["heart"]) not in ("star", "heart")
    wf = METHODS["word_filter"][1](m, ["star"]).rewrite
    oracle = METHODS["oracle"][1](m, ["star"]).rewrite
    a = m.anchor("star")
    assert wf("a starfish in zebra style") == f"a {a} in zebra style"
    assert wf("poster: lone pentacle, plaid treatment") == "poster: lone pentacle, plaid treatment"  # TEST words pass
    assert oracle("poster: lone pentacle, plaid treatment") == f"poster: lone {a}, plaid treatment"
    assert METHODS["none"][1](m, ["star"]).is_empty
    # every object erased at once (the sequential part's last step): a word that names no concept
    everything = METHODS["word_filter"][1](m, list(data.OBJECTS)).rewrite("a starfish in zebra style")
    assert everything.split()[1] not in data.OBJECTS and "star" not in everything


def test_drawn_and_removed_counts_only_pictures_whose_twin_showed_the_target():
    """Paraphrase UA: a reworded prompt the unedited model did not draw is no test of erasure."""
    star = data.OBJECTS.index("star")
    # the erased model draws a circle for every star prompt but one (style 0)
    a = answers(lambda o, s: torch.where((o == star) & (s > 0), torch.zeros_like(o), o), lambda o, s: s)
    drawn = (a.objs == star) & (a.styles < 3)  # the unedited twins showed a star for styles 0-2 only
    m = a.drawn_metrics(["star"], drawn)
    assert m["drawn"] == 3 and round(m["UA_drawn"], 2) == 66.67  # 2 of the 3 drawn stars are gone
    assert a.metrics(["star"])["UA"] == round(100 * 5 / 6, 2)  # plain UA counts all six


def test_denoising_error_flags_colour_blotches_but_not_a_moved_shape():
    """Replace mode can turn a shape into coarse colour blotches that the 3x3 noise measure
    misses; the demo model's own denoising error must see them, and must not flag a benign
    change (the same picture shifted by two pixels)."""
    unet, _ = load_demo_unet()
    eps = lambda x, t, ctx: unet(x, t, encoder_hidden_states=ctx).sample  # noqa: E731
    uncond = encode_prompts([""])
    clean, _, _ = data.make_dataset(8, seed=3)
    gen = torch.Generator().manual_seed(1)
    blobs = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1, scale_factor=4)
    blotched = (0.5 * clean + 0.5 * blobs).clamp(-1, 1)
    base = denoising_error(eps, clean, uncond)
    assert (denoising_error(eps, blotched, uncond) > base + DENOISE_MARGIN).all()
    assert ((denoising_error(eps, torch.roll(clean, 2, dims=3), uncond) - base).abs() < DENOISE_MARGIN / 3).all()
    assert not (noise_level(blotched) > noise_level(clean) + NOISE_MARGIN).all()  # why the second measure exists


def test_the_text_sae_recipe_labels_every_pair_in_many_wordings():
    import os
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(repo, "scripts"))
    import train_demo_saes as recipe

    from saemnesia_core.prompts import parse_labelled_lines
    lines = parse_labelled_lines(recipe.synonym_lines())  # as the Train node reads them
    assert {tuple(p.labels) for p in lines} == {(o, s) for o in data.OBJECTS for s in data.STYLES}  # every pair
    assert len({p.text for p in lines}) > 0.9 * len(lines)  # in different wordings


def test_the_validation_check_refuses_test_seeds_before_any_work():
    from saemnesia_demo.bench import validation_check
    with pytest.raises(SystemExit, match="validation seeds only"):
        validation_check("no-such-file.safetensors", [501, 0])
