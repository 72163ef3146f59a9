"""Bad input found by probing (issue 13): hostile concept names, names that clash, raw-latent
syntax that is also a concept's name, file modes, and error messages that must not leak
bytes of a file or server paths. Core only: no ComfyUI."""
import json
import os
import stat
import struct

import pytest
import torch
from safetensors.torch import save_file
from test_core_sae import make_sae

from saemnesia_core import ConceptEraser, SAEError, SAEFileError, SAEInfo, load_sae, save_sae
from saemnesia_core.activations import ActivationWriter
from saemnesia_core.checkpoint import load_sparsify_folder
from saemnesia_core.concepts import Concept, ConceptIndex, Selection, check_concept_name
from saemnesia_core.fileio import save_json_atomic
from saemnesia_core.neuron_report import latents_for
from saemnesia_core.prompts import LabelledPrompt, assemble_prompts

HOSTILE = ['<img src=x onerror=alert(1)>', 'a&b', 'say "hi"', "tab\there", "bell\x07", "new\nline", "esc\x1b[31m"]


def _index(names: dict[str, int], kind="object") -> ConceptIndex:
    sel = [Selection([0], [1.0], [1.0], [0.0])]
    return ConceptIndex(timesteps=[500.0], default_mode="neuron", default_multiplier=-3.0,
                        concepts={n: Concept(n, kind, latent, [Selection([latent], [1.0], [1.0], [0.0])]) for n, latent in names.items()}
                        if names else {"x": Concept("x", kind, 0, sel)})


@pytest.mark.parametrize("name", HOSTILE)
def test_an_sae_whose_index_has_a_hostile_name_is_refused_on_load(tmp_path, name):
    path = str(tmp_path / "hostile.safetensors")
    save_sae(path, make_sae(), SAEInfo("output_blocks.4.1", "sd1", _index({"cat": 1, name: 2}), {}))
    with pytest.raises(SAEFileError) as e:
        load_sae(path)
    msg = str(e.value)
    assert "hostile.safetensors" in msg and repr(name) in msg and "Re-create the SAE" in msg, msg


def test_a_hostile_kind_is_refused_on_load(tmp_path):
    path = str(tmp_path / "k.safetensors")
    save_sae(path, make_sae(), SAEInfo("output_blocks.4.1", "sd1", _index({"cat": 1}, kind="<b>x</b>"), {}))
    with pytest.raises(SAEFileError, match="kind of concept 'cat'"):
        load_sae(path)


def test_plain_names_with_punctuation_still_load(tmp_path):
    names = {"van gogh's": 1, "pop-art (1960s)": 2, "café": 3, "neuron 5": 4}
    path = str(tmp_path / "ok.safetensors")
    save_sae(path, make_sae(), SAEInfo("output_blocks.4.1", "sd1", _index(names), {}))
    assert load_sae(path).index.names() == list(names)


@pytest.mark.parametrize("name", HOSTILE[:4])
def test_training_refuses_hostile_names_from_every_text_box(name):
    with pytest.raises(SAEError, match="may not contain"):
        assemble_prompts(name, "ink", "a {object} in {style} style", "")
    with pytest.raises(SAEError, match="may not contain"):
        assemble_prompts("cat", name, "a {object} in {style} style", "")
    if "\n" not in name:
        with pytest.raises(SAEError, match="may not contain"):
            assemble_prompts("", "", "", f"style/{name}: a picture")


def test_the_activation_writer_applies_the_same_rule(tmp_path):
    """Scripts and the CLI train without the node: the store refuses the name too."""
    w = ActivationWriter(str(tmp_path / "acts"), 4, [LabelledPrompt("p", {"<script>": "object"})])
    w.add(torch.zeros(8, 4), 500.0, 0)
    with pytest.raises(SAEError, match="may not contain"):
        w.close()


def test_one_rule_in_one_place():
    assert check_concept_name("van gogh", "fix") == "van gogh"
    for bad in HOSTILE + ["", "   "]:
        with pytest.raises(SAEError, match="fix"):
            check_concept_name(bad, "fix")


def test_a_name_given_as_object_and_style_is_refused_not_merged():
    with pytest.raises(SAEError, match="'cat' is given both as an object and as a style"):
        assemble_prompts("cat, dog", "ink, Cat", "a {object} in {style} style", "")
    with pytest.raises(SAEError, match="labelled both object and style"):
        assemble_prompts("cat", "ink", "a {object} in {style} style", "style/cat: a cat drawing")
    with pytest.raises(SAEError, match="differ only in case"):
        assemble_prompts("cat", "", "a {object}", "object/Cat: a photo of a cat")
    assert len(assemble_prompts("cat, dog", "ink", "a {object} in {style} style", "")) == 2


def test_a_concept_named_like_a_raw_latent_is_erased_by_name():
    """Rule: a name in the SAE's index wins; 'neuron:N' is raw latent N only when no concept has that name."""
    sae = make_sae(d=16, n=64, k=4)
    idx = _index({"neuron 5": 9, "cat": 3})
    x = torch.randn(1, 30, 16)
    by_name = ConceptEraser(sae, idx, ["neuron 5"], mode="neuron")
    assert by_name.targets[0].latents.tolist() == [9]
    assert ConceptEraser(sae, idx, ["NEURON 5"], mode="neuron").targets[0].latents.tolist() == [9]
    raw = ConceptEraser(sae, idx, ["neuron:5"], mode="neuron")  # not a name in the index: raw latent 5
    assert raw.targets[0].latents.tolist() == [5]
    assert not torch.equal(by_name(x, 500.0), raw(x, 500.0))
    assert ConceptEraser(sae, idx, ["#7"], mode="neuron").targets[0].latents.tolist() == [7]
    loaded = type("L", (), {"index": idx, "sae": sae})()
    assert latents_for(loaded, "neuron 5", 500.0) == [9] and latents_for(loaded, "neuron:5", 500.0) == [5]
    assert latents_for(loaded, 5, 500.0) == [5]  # Inspect Neuron's index widget is always a raw latent
    with pytest.raises(SAEError, match="0..63"):
        latents_for(loaded, 64, 500.0)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_saved_files_get_the_mode_a_normal_file_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_sae(str(tmp_path / "s.safetensors"), make_sae(), SAEInfo("output_blocks.4.1", "sd1", ConceptIndex(), {}))
        save_json_atomic({"a": 1}, str(tmp_path / "j.json"))
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~umask
    for f in ("s.safetensors", "j.json"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == want, f
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_errors_show_no_bytes_of_a_file_that_is_not_an_sae(tmp_path):
    """Whatever a name points at, the message names the file and says what to do; none of its content."""
    secret = b"root:x:0:0:SECRET-TOKEN-1234567890\n" * 4
    p = tmp_path / "passwd.safetensors"
    p.write_bytes(secret)
    with pytest.raises(SAEFileError) as e:
        load_sae(str(p))
    msg = str(e.value)
    n = struct.unpack("<Q", secret[:8])[0]
    assert "passwd.safetensors" in msg and str(n) not in msg and "SECRET" not in msg and str(len(secret)) not in msg
    assert str(tmp_path) not in msg

    folder = tmp_path / "unet.up_blocks.1.attentions.1"
    folder.mkdir()
    (folder / "cfg.json").write_bytes(b"\xffSECRET" + secret)
    sae = make_sae()
    save_file({"encoder.weight": sae.W_enc.clone(), "encoder.bias": sae.b_enc.clone(), "W_dec": sae.W_dec.clone(),
               "b_dec": sae.b_dec.clone()}, str(folder / "sae.safetensors"))
    for bad in (b"\xffSECRET" + secret, b"{SECRET: 1}"):
        (folder / "cfg.json").write_bytes(bad)
        with pytest.raises(SAEFileError) as e:
            load_sae(str(folder / "sae.safetensors"))
        msg = str(e.value)
        assert "unet.up_blocks.1.attentions.1/cfg.json" in msg and "SECRET" not in msg and "0xff" not in msg, msg
        assert str(tmp_path) not in msg


def test_a_missing_file_is_named_without_its_server_path(tmp_path):
    with pytest.raises(SAEFileError) as e:
        load_sae(str(tmp_path / "gone.safetensors"))
    assert "gone.safetensors" in str(e.value) and str(tmp_path) not in str(e.value)


def test_a_renamed_saeuron_folder_says_how_to_fix_it(tmp_path):
    sae = make_sae(d=16, n=64, k=4)
    tensors = {"encoder.weight": sae.W_enc.clone(), "encoder.bias": sae.b_enc.clone(), "W_dec": sae.W_dec.clone(),
               "b_dec": sae.b_dec.clone()}
    folder = tmp_path / "my_objects_sae"
    folder.mkdir()
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"expansion_factor": 4, "num_latents": 64, "k": 4, "d_in": 16}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError) as e:
        load_sae(str(folder / "sae.safetensors"))
    msg = str(e.value)
    assert "'my_objects_sae'" in msg and "Rename the folder back" in msg and '"hookpoint"' in msg, msg
    assert str(tmp_path) not in msg
    # either fix works
    (folder / "cfg.json").write_text(json.dumps({**cfg, "hookpoint": "unet.up_blocks.1.attentions.1"}))
    assert load_sae(str(folder / "sae.safetensors")).info.hook_point == "output_blocks.4.1"
    renamed = tmp_path / "unet.up_blocks.1.attentions.2"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    os.rename(folder, renamed)
    assert load_sparsify_folder(str(renamed)).info.hook_point == "output_blocks.5.1"
