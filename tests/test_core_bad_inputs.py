"""Hostile SAE files and bad numbers: every one is a clear SAEError naming the file and the
problem, never a raw exception (issue 13, items 4 and 5)."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from saemnesia_core import ConceptEraser, SAEError, SAEFileError, SAEInfo, TopKSAE, load_sae, save_sae
from saemnesia_core.checkpoint import read_safetensors_metadata
from saemnesia_core.concepts import Concept, ConceptIndex, Selection
from saemnesia_core.intervention import check_window, window_problem

DEEP = 100_000  # far past Python's recursion limit: json.loads raises RecursionError


def make_sae(d=16, n=64, k=4):
    sae = TopKSAE(d, n, k)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.requires_grad_(False)
    return sae


def index():
    sel = Selection([1, 2], [0.5, 0.4], [2.0, 1.5], [0.3, 0.2])
    return ConceptIndex(timesteps=[999.0, 0.0], default_mode="ablate", default_multiplier=-3.0,
                        concepts={"cat": Concept("cat", "object", 5, [sel, sel], multiplier=-2.0)})


def write(path, edit=None, raw_record=None):
    """A valid SAE file whose JSON record is changed by `edit(record)` (or replaced by raw text)."""
    sae = make_sae()
    save_sae(str(path), sae, SAEInfo("output_blocks.4.1", "sd1", index(), {}))
    record = json.loads(read_safetensors_metadata(str(path))["saemnesia"])
    if edit:
        edit(record)
    text = raw_record if raw_record is not None else json.dumps(record)  # json.dumps writes NaN/Infinity as given
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    save_file(tensors, str(path), metadata={"format": "saemnesia-sae", "saemnesia": text})
    return path


def concept(record):
    return record["concept_index"]["concepts"]["cat"]


def nested(depth):
    return "[" * depth + "]" * depth


CASES = {
    # name: (edit or raw record, words the message must contain)
    "record nested too deep": (None, '{"format_version": 1, "training": ' + nested(DEEP) + "}", "nested too deeply"),
    "record is a list": (None, "[1, 2, 3]", "JSON list, not an object"),
    "record is a string": (None, '"hello"', "JSON str, not an object"),
    "record is not JSON": (None, "{oops", "not valid JSON"),
    "format version is a string": (lambda r: r.update(format_version="1"), None, "format_version is '1', not a whole number"),
    "format version is true": (lambda r: r.update(format_version=True), None, "format_version is True"),
    "k is text": (lambda r: r.update(k="many"), None, "k is 'many', not a whole number"),
    "k is a fraction": (lambda r: r.update(k=2.5), None, "k is 2.5, not a whole number"),
    "k is missing": (lambda r: r.pop("k"), None, "k is None"),
    "k above the latents": (lambda r: r.update(k=1000), None, "k=1000 is not between 1 and the number of latents (64)"),
    "k above the latents, no n_latents": (lambda r: (r.update(k=1000), r.pop("n_latents")), None, "k=1000 is not between 1"),
    "n_latents is text": (lambda r: r.update(n_latents="64x"), None, "n_latents is '64x', not a whole number"),
    "reserved latents is a string": (lambda r: r.update(reserved_latents="abc"), None, "reserved_latents is 'abc', not a list"),
    "reserved latent is text": (lambda r: r.update(reserved_latents=["a"]), None, "a reserved latent is 'a'"),
    "index is a list": (lambda r: r.update(concept_index=[1]), None, "concept index must be a JSON object"),
    "concepts is a string": (lambda r: r["concept_index"].update(concepts="cat"), None, "concepts is a JSON str"),
    "concept is a string": (lambda r: r["concept_index"]["concepts"].update(cat="object"), None, "concept 'cat' is a JSON str"),
    "selection is a list": (lambda r: concept(r).update(selections=[[1, 2], [3]]), None, "selection is a JSON list"),
    "latent is text": (lambda r: concept(r).update(latent="five"), None, "concept 'cat' latent is 'five'"),
    "selected latent is a fraction": (lambda r: concept(r)["selections"][0].update(latents=[1.5, 2]), None, "selected latent is 1.5"),
    "kind is a number": (lambda r: concept(r).update(kind=3), None, "kind 3, not text"),
    "NaN default multiplier": (lambda r: r["concept_index"].update(default_multiplier=math.nan), None, "default_multiplier is nan"),
    "inf concept multiplier": (lambda r: concept(r).update(multiplier=math.inf), None, "concept 'cat' multiplier is inf"),
    "NaN threshold": (lambda r: concept(r)["selections"][1].update(threshold=[math.nan, 0.2]), None, "threshold is nan"),
    "-inf concept mean": (lambda r: concept(r)["selections"][0].update(concept_mean=[-math.inf, 1.0]), None, "concept_mean is -inf"),
    "inf detect scale": (lambda r: r["concept_index"].update(detect_scale=math.inf), None, "detect_scale is inf"),
    "NaN timestep": (lambda r: r["concept_index"].update(timesteps=[math.nan, 0.0]), None, "timesteps is nan"),
    "huge integer multiplier": (lambda r: concept(r).update(multiplier=10 ** 400), None, "not a finite number"),
    "threshold is text": (lambda r: concept(r)["selections"][0].update(threshold=["high", 0.2]), None, "threshold is 'high'"),
    "model family is a list": (lambda r: r.update(model_family=["sd1"]), None, "model_family must be text"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_metadata_is_a_clear_file_error(tmp_path, case):
    edit, raw, words = CASES[case]
    path = write(tmp_path / "hostile.safetensors", edit, raw)
    with pytest.raises(SAEFileError) as e:
        load_sae(str(path))
    msg = str(e.value)
    assert msg.startswith("hostile.safetensors"), msg  # the file, by its name in the folder
    assert str(tmp_path) not in msg  # not the server's absolute path
    assert words in msg, msg
    assert any(fix in msg for fix in ("Re-create", "re-create", "Re-download")), msg  # and what to do


def test_a_deeply_nested_safetensors_header_is_corrupt_not_a_recursion_error(tmp_path):
    header = ('{"x": ' + nested(DEEP) + "}").encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(SAEFileError, match="deep.safetensors: the safetensors header is corrupt"):
        load_sae(str(path))


def test_a_metadata_block_that_is_not_an_object_is_corrupt(tmp_path):
    header = json.dumps({"__metadata__": ["saemnesia"]}).encode()
    path = tmp_path / "meta.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(SAEFileError, match="meta.safetensors: the safetensors header is corrupt"):
        load_sae(str(path))


@pytest.mark.parametrize("cfg, words", [
    (nested(DEEP), "nested too deeply"),
    ("[4]", "JSON list, not an object"),
    ('{"k": "four", "d_in": 16}', "k in cfg.json is 'four'"),
    ('{"k": 4, "d_in": "sixteen"}', "d_in in cfg.json is 'sixteen'"),
    ('{"k": 400, "d_in": 16}', "k=400 is not between 1 and the number of latents (64)"),
    ('{"k": 4, "hookpoint": 7}', "hookpoint is 7"),
])
def test_hostile_sparsify_cfg_is_a_clear_file_error(tmp_path, cfg, words):
    sae = make_sae()
    folder = tmp_path / "unet.up_blocks.1.attentions.1"
    folder.mkdir()
    save_file({"encoder.weight": sae.W_enc.detach().clone(), "encoder.bias": sae.b_enc.detach().clone(),
               "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_dec.detach().clone()}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(cfg)
    with pytest.raises(SAEFileError) as e:
        load_sae(str(folder / "sae.safetensors"))
    assert words in str(e.value) and "unet.up_blocks.1.attentions.1" in str(e.value)
    assert str(tmp_path) not in str(e.value)


# --- the eraser refuses non-finite numbers, whoever calls it --------------------------------
@pytest.mark.parametrize("kwargs, words", [
    ({"strength": math.nan}, "strength is nan"),
    ({"strength": math.inf}, "strength is inf"),
    ({"strength": -1.0}, "strength is -1.0"),
    ({"multiplier": math.nan}, "multiplier is nan"),
    ({"multiplier": -math.inf}, "multiplier is -inf"),
    ({"multiplier": 1e300}, "non-finite"),  # finite in Python, inf in the float32 target
    ({"detect_scale": math.nan, "mode": "replace"}, "detect_scale is nan"),
])
def test_eraser_refuses_non_finite_numbers(kwargs, words):
    with pytest.raises(SAEError, match=words):
        ConceptEraser(make_sae(), index(), ["cat"], **{"mode": "ablate", **kwargs})


def test_eraser_refuses_an_index_built_in_code_with_nan():
    idx = index()
    idx.concepts["cat"].selections[0].threshold = [math.nan, 0.2]
    with pytest.raises(SAEError, match="non-finite threshold, mean or multiplier for cat"):
        ConceptEraser(make_sae(), idx, ["cat"], mode="ablate")
    idx = index()
    idx.default_multiplier = math.nan
    with pytest.raises(SAEError, match="non-finite"):
        ConceptEraser(make_sae(), idx, ["neuron:3"], mode="neuron")


def test_a_good_eraser_still_builds_and_edits():
    er = ConceptEraser(make_sae(), index(), ["cat"], mode="ablate", strength=1.0, multiplier=-2.0)
    h = torch.randn(1, 16, 4, 4)
    assert torch.isfinite(er(h, 999.0)).all()


@pytest.mark.parametrize("start, end, words", [
    (math.nan, 1.0, "start_percent is nan"),
    (0.0, math.inf, "end_percent is inf"),
    (-0.1, 1.0, "start_percent is -0.1"),
    (0.0, 1.5, "end_percent is 1.5"),
    (0.8, 0.2, "start_percent (0.8) is after end_percent (0.2); swap them"),
])
def test_bad_windows_are_named(start, end, words):
    assert words in window_problem(start, end)
    with pytest.raises(SAEError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_window(start, end)


def test_window_checks_what_it_knows():
    assert window_problem(0.0, 1.0) is None and window_problem(0.3, 0.3) is None
    assert window_problem(None, 0.5) is None  # a linked input is not known at validation
    assert "start_percent is nan" in window_problem(math.nan, None)
