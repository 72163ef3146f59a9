"""Hostile input found against a real server (issue 27), core side: names that deceive, files that
are not what they declare, text without bounds, repeats, full disks. No ComfyUI here; the node,
route and cache side is tests/test_comfy_hostile_inputs.py."""
import json
import os
import struct
import time

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from test_core_bad_names_and_files import _index
from test_core_sae import make_sae

from saemnesia_core import ConceptEraser, SAEError, SAEFileError, SAEInfo, load_sae, save_sae
from saemnesia_core.cache import SAECache, sae_bytes, sae_fingerprint
from saemnesia_core.checkpoint import MAX_SAE_BYTES, plan_sae, read_safetensors_metadata, save_sae_set
from saemnesia_core.concepts import Concept, ConceptIndex, Selection, check_concept_name
from saemnesia_core.errors import MESSAGE_QUOTE_CHARS, WriteFailed, quoted
from saemnesia_core.fileio import WHOLE_FILE_HASH_BYTES, content_fingerprint, save_json_atomic
from saemnesia_core.prompts import (
    MAX_ERASE_ENTRIES,
    MAX_ERASE_TEXT_CHARS,
    MAX_TRAIN_BOX_CHARS,
    MAX_TRAIN_PROMPTS,
    assemble_prompts,
    erase_entries,
    planned_concepts,
)

CYRILLIC_A = "\u0430"
# names that look like another, or hide what they are (each was accepted in SAE files and in training)
DECEIVING = {
    "right-to-left override": "star\u202egpj.exe",
    "zero-width joiner": "st\u200dar",
    "zero-width space": "st\u200bar",
    "byte order mark": "\ufeffstar",
    "bidi isolates": "star\u2066x\u2069",
    "line separator": "star\u2028moon",
    "soft hyphen": "st\u00adar",
    "variation selector": "star\ufe0f",
    "Latin and Cyrillic": f"st{CYRILLIC_A}r",
    "Latin and Greek": "st\u03b1r",
}


def sae_file(path, names: dict, sae=None):
    save_sae(str(path), sae or make_sae(), SAEInfo("output_blocks.4.1", "sd1", _index(names), {}))
    return str(path)


# --- one Unicode rule for concept names, in files and in training ---------------------------------
@pytest.mark.parametrize("case", sorted(DECEIVING))
def test_a_deceiving_name_is_refused_in_a_file_and_in_training(tmp_path, case):
    name = DECEIVING[case]
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_file(tmp_path / "s.safetensors", {"cat": 1, name: 2}))
    assert "s.safetensors" in str(e.value) and quoted(name) in str(e.value), str(e.value)
    for boxes in ((name, "ink", "", ""), ("cat", name, "", ""), ("", "", "", f"style/{name}: a picture")):
        with pytest.raises(SAEError) as e:
            assemble_prompts(*boxes)
        assert quoted(name) in str(e.value) and "Rename" in str(e.value), str(e.value)


def test_the_message_says_what_is_hidden():
    with pytest.raises(SAEError, match="U\\+202E RIGHT-TO-LEFT OVERRIDE"):
        check_concept_name(DECEIVING["right-to-left override"], "fix")
    with pytest.raises(SAEError, match="mixes Cyrillic and Latin letters"):
        check_concept_name(DECEIVING["Latin and Cyrillic"], "fix")


def test_look_alike_names_in_one_sae_are_refused_in_a_file_and_in_training(tmp_path):
    look_alike = "\u0441\u0430\u0442"  # Cyrillic 'сат', one script, drawn as 'cat'
    check_concept_name(look_alike, "fix")  # alone it is a fine (Cyrillic) name
    with pytest.raises(SAEFileError, match="look alike"):
        load_sae(sae_file(tmp_path / "s.safetensors", {"cat": 1, look_alike: 2}))
    with pytest.raises(SAEError, match="look alike"):
        assemble_prompts("cat", look_alike, "", "")
    with pytest.raises(SAEError, match="look alike"):
        assemble_prompts("HAT", "", "a {object}", "\u0397\u0391\u03a4: a greek word")  # Greek capitals 'ΗΑΤ'
    with pytest.raises(SAEFileError, match="differ only in case"):  # the rule files now follow too
        load_sae(sae_file(tmp_path / "c.safetensors", {"cat": 1, "Cat": 2}))


def test_a_no_break_space_is_normalised_in_training_and_refused_in_a_file(tmp_path):
    """'star' + no-break space was listed by the picker but could not be erased."""
    prompts = assemble_prompts("star\u00a0, moon\u202f", "", "a {object}", "star\u00a0: a star in the sky")
    assert {n for p in prompts for n in p.labels} == {"star", "moon"}
    assert [p.text for p in prompts][:2] == ["a star", "a moon"]
    assert planned_concepts("star\u00a0", "", "a {object}", "") == [("star", "object")]
    with pytest.raises(SAEFileError, match="not in plain form.*write it as 'star'"):
        load_sae(sae_file(tmp_path / "s.safetensors", {"star\u00a0": 1}))
    # compatibility and decomposed forms: one concept, found however it is typed
    prompts = assemble_prompts("cafe\u0301, \uff53\uff54\uff41\uff52", "", "a {object}", "")
    assert [n for p in prompts for n in p.labels] == ["caf\u00e9", "star"]
    index = _index({"caf\u00e9": 1, "star": 2})
    assert index.find("cafe\u0301").name == "caf\u00e9" and index.find(" \uff33\uff34\uff21\uff32 ").name == "star"


def test_plain_names_in_every_script_still_pass():
    for name in ("van gogh's", "pop-art (1960s)", "caf\u00e9", "\u041a\u0430\u043d\u0434\u0438\u043d\u0441\u043a\u0438\u0439",
                 "\u6771\u4eac\u30bf\u30ef\u30fc", "tokyo \u6771\u4eac", "\u03b1\u03c3\u03c4\u03ad\u03c1\u03b9", "r2-d2"):
        assert check_concept_name(name, "fix") == name


@pytest.mark.parametrize("name, words", [("::", "no letter or digit"), ("x" * 81, "at most 80"), ("a  b", "plain form")])
def test_names_without_words_too_long_or_not_plain_are_refused(name, words):
    with pytest.raises(SAEError, match=words):
        check_concept_name(name, "fix")


# --- files: non-float weights, declared sizes, the picker's header-only read ---------------------
def raw_sae_file(path, tensors: dict, record: dict | None = None):
    save_file(tensors, str(path), metadata={"format": "saemnesia-sae", "saemnesia": json.dumps(
        record or {"format_version": 1, "hook_point": "output_blocks.4.1", "k": 4})})
    return str(path)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.int32])
def test_integer_and_boolean_weights_are_refused_not_converted(tmp_path, dtype):
    sae = make_sae()
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors["W_enc"] = (tensors["W_enc"] * 100).to(dtype)
    path = raw_sae_file(tmp_path / "q.safetensors", tensors)
    for read in (load_sae, plan_sae):
        with pytest.raises(SAEFileError, match="tensor W_enc is stored as .*, not floating point") as e:
            read(path)
        assert "Re-export the SAE in float32" in str(e.value)


def test_concept_states_that_are_not_floats_are_refused(tmp_path):
    path = sae_file(tmp_path / "s.safetensors", {"cat": 1})
    meta = read_safetensors_metadata(path)
    record = json.loads(meta["saemnesia"])
    record["concept_states"] = ["cat"]
    sae = make_sae()
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    tensors["concept_states"] = torch.ones(1, 1, 16, dtype=torch.int16)
    with pytest.raises(SAEFileError, match="concept_states is stored as I16"):
        load_sae(raw_sae_file(tmp_path / "s.safetensors", tensors, record))


def sparse_sae(path, n_latents: int, d_in: int, dtype="BF16"):
    """A real safetensors header declaring an SAE of this size, its data a hole: megabytes declared,
    kilobytes on disk."""
    size = {"BF16": 2, "F32": 4}[dtype]
    entries, offset = {}, 0
    for name, shape in (("W_enc", [n_latents, d_in]), ("b_enc", [n_latents]), ("W_dec", [n_latents, d_in]),
                        ("b_dec", [d_in])):
        n = size * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    record = {"format_version": 1, "hook_point": "output_blocks.4.1", "k": 32, "concept_index": {"concepts": {}}}
    header = json.dumps({"__metadata__": {"format": "saemnesia-sae", "saemnesia": json.dumps(record)}, **entries}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + offset)
    return str(path)


def test_a_sparse_file_is_refused_by_its_declared_sizes_before_anything_is_read(tmp_path):
    # 1 GiB of bf16 declared (2 GiB once float32), a few kB on disk
    path = sparse_sae(tmp_path / "sparse.safetensors", 1 << 17, 1 << 11)
    assert os.stat(path).st_blocks * 512 < 1 << 20
    for read in (plan_sae, load_sae):
        t = time.perf_counter()
        with pytest.raises(SAEFileError) as e:
            read(path)
        assert time.perf_counter() - t < 2.0  # refused from the header, nothing materialised
        msg = str(e.value)
        assert "sparse.safetensors declares tensors that take 2.0 GiB" in msg and f"{MAX_SAE_BYTES >> 30} GiB" in msg, msg


def test_the_picker_plan_reads_the_header_not_the_weights(tmp_path, monkeypatch):
    from saemnesia_core import checkpoint
    path = sae_file(tmp_path / "s.safetensors", {"cat": 1, "dog": 2})
    monkeypatch.setattr(checkpoint, "_load_tensors", lambda *a: pytest.fail("the weights were read"))
    plan = plan_sae(path)
    assert plan.index.names() == ["cat", "dog"] and plan.members[0].n_latents == 64 and plan.hook_points == ["output_blocks.4.1"]


def test_only_the_tensors_an_sae_needs_are_read(tmp_path):
    """A file may hold other tensors (a sparse gigabyte here): they are never materialised."""
    sae = make_sae()
    tensors = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    path = raw_sae_file(tmp_path / "extra.safetensors", tensors)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header["junk"] = {"dtype": "F32", "shape": [1 << 28], "data_offsets": [len(data), len(data) + (1 << 30)]}
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
        f.truncate(8 + len(raw) + len(data) + (1 << 30))
    loaded = load_sae(path)
    assert torch.equal(loaded.sae.W_dec, sae.W_dec)


# --- content fingerprints and the cache bound ------------------------------------------------------
def test_the_fingerprint_follows_the_content_not_the_time(tmp_path):
    small = tmp_path / "small.safetensors"
    sae_file(small, {"cat": 1})
    st, before = os.stat(small), content_fingerprint(str(small))
    sae_file(small, {"dog": 1})  # same size, new content, old time restored: what cp -p or rsync -a leave
    assert os.stat(small).st_size == st.st_size
    os.utime(small, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_fingerprint(str(small)) != before
    os.utime(small)  # a touch changes nothing
    assert content_fingerprint(str(small)) == content_fingerprint(str(small))

    big = tmp_path / "big.safetensors"  # sampled, not hashed whole
    sparse_sae(big, 1 << 13, 1 << 10, dtype="F32")
    assert os.path.getsize(big) > WHOLE_FILE_HASH_BYTES
    first = content_fingerprint(str(big))
    with open(big, "r+b") as f:
        f.seek(os.path.getsize(big) - 100)  # the last bytes are always sampled
        f.write(b"\x01")
    assert content_fingerprint(str(big)) != first
    with open(big, "r+b") as f:
        f.seek(30)  # inside the header
        f.write(b" ")
    assert len({first, content_fingerprint(str(big))}) == 2


def test_the_cache_reads_a_replaced_file_again_and_counts_every_block(tmp_path):
    path = sae_file(tmp_path / "s.safetensors", {"cat": 1})
    cache = SAECache()
    cache.put(path, sae_fingerprint(path), load_sae(path))
    st = os.stat(path)
    sae_file(path, {"dog": 1})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.get(path, sae_fingerprint(path)) is None  # keyed by (mtime, size), the cat SAE answered

    members = [(make_sae(), SAEInfo(f"output_blocks.{i}.1", "sd1", _index({"cat": 1}), {})) for i in (4, 5, 6)]
    save_sae_set(str(tmp_path / "set.safetensors"), members)
    loaded = load_sae(str(tmp_path / "set.safetensors"))
    assert sae_bytes(loaded) == 3 * sae_bytes(type(loaded)(loaded.sae, loaded.info))  # every block, not the first


# --- Erase Concepts' text: bounded, without repeats, short messages ---------------------------------
def big_index(n: int) -> ConceptIndex:
    sel = [Selection([0], [1.0], [1.0], [0.0])] * 4
    return ConceptIndex(timesteps=[999.0, 600.0, 300.0, 0.0], default_mode="ablate", default_multiplier=-3.0,
                        concepts={f"concept {i}": Concept(f"concept {i}", "object", None, sel) for i in range(n)})


def test_the_concepts_text_is_bounded_and_repeats_removed():
    assert erase_entries("star, STAR , star;ｓｔａｒ\nmoon, star -> moon") == ["star", "moon", "star -> moon"]
    t = time.perf_counter()
    with pytest.raises(SAEError) as e:
        erase_entries("star, " * 170_000)  # 1 MB
    assert time.perf_counter() - t < 1.0
    assert f"the limit is {MAX_ERASE_TEXT_CHARS:,}" in str(e.value) and len(str(e.value)) < 300
    assert erase_entries(", ".join(["star"] * 3000)) == ["star"]  # repeats count once
    with pytest.raises(SAEError, match=f"takes at most {MAX_ERASE_ENTRIES:,} at once"):
        erase_entries(", ".join(f"c{i}" for i in range(MAX_ERASE_ENTRIES + 1)))
    with pytest.raises(SAEError, match="lone surrogate"):
        erase_entries("star, \ud800")


def test_many_names_against_a_large_index_resolve_fast_and_stop_on_interrupt():
    sae, index = make_sae(n=64), big_index(5000)
    names = [f"concept {i}" for i in range(0, 5000, 10)]  # 500, the most one node takes
    t = time.perf_counter()
    eraser = ConceptEraser(sae, index, names, mode="ablate")
    assert time.perf_counter() - t < 5.0  # a linear search per name and timestep took minutes
    assert len(eraser.concepts) == 500

    calls = []

    class Stop(Exception):
        pass

    def stop_after_ten():
        calls.append(1)
        if len(calls) > 10:
            raise Stop
    with pytest.raises(Stop):
        ConceptEraser(sae, index, names, mode="ablate", check_interrupt=stop_after_ten)
    assert len(calls) == 11


def test_unknown_names_get_a_short_message_with_near_names():
    index = big_index(5000)
    with pytest.raises(SAEError) as e:
        index.get("concept 12x")
    msg = str(e.value)
    assert len(msg) < 500 and "knows 5,000 concepts; the nearest: concept 12" in msg, msg
    with pytest.raises(SAEError) as e:
        index.get("x" * 1_000_000)
    assert len(str(e.value)) < 500 and "(1,000,000 characters)" in str(e.value)
    with pytest.raises(SAEError, match="U\\+200B ZERO WIDTH SPACE, which cannot be seen"):
        _index({"star": 1}).get("st\u200bar")
    with pytest.raises(SAEError, match="mixes Cyrillic and Latin letters.*knows: star"):
        _index({"star": 1}).get(f"st{CYRILLIC_A}r")


def test_quoted_cuts_every_echo():
    assert quoted("cat") == "'cat'" and quoted("st\u202er") == "'st\\u202er'"
    long = quoted("a" * 10_000)
    assert len(long) < MESSAGE_QUOTE_CHARS + 30 and long.endswith("(10,000 characters)")


# --- Train SAE from Prompts: bounded, without repeats, no prompt without words ----------------------
def test_repeated_lines_are_removed_and_the_boxes_are_bounded():
    lines = "star: a star in the sky\n" * 4000  # 96,000 characters of one line
    assert [(p.text, p.labels) for p in assemble_prompts("", "", "", lines)] == [("a star in the sky", {"star": "concept"})]
    assert len(assemble_prompts("cat, cat, dog", "ink, ink", "", "")) == 2
    with pytest.raises(SAEError) as e:
        assemble_prompts("", "", "", "star: a star in the sky\n" * 87_000)  # 2 MB
    assert f"The labelled_prompts box is 2,088,000 characters long; the limit is {MAX_TRAIN_BOX_CHARS:,}" in str(e.value)
    objects = ", ".join(f"o{i}" for i in range(100))
    styles = ", ".join(f"s{i}" for i in range(60))
    with pytest.raises(SAEError, match=f"make 6,000 different prompts .*takes at most {MAX_TRAIN_PROMPTS:,}"):
        assemble_prompts(objects, styles, "", "")


@pytest.mark.parametrize("lines, words", [
    (":", "a ':' without a label"),
    (":\n:\n:", "line 1"),
    ("cat:", "a label without a prompt"),
    ("cat: a cat\n  : a dog", "line 2"),
    ("style/: a painting", "gives a kind but no name"),
    ("cat: ...", "has no words"),
    ("---", "has no words"),
    ("a plain street\na quiet lane", "None of the prompts names a concept"),
])
def test_lines_that_train_on_nothing_are_refused(lines, words):
    with pytest.raises(SAEError, match=words):
        assemble_prompts("", "", "", lines)


def test_lone_surrogates_are_refused_before_the_tokenizer():
    for boxes in (("c\ud800t", "", "", ""), ("cat", "\udfff", "", ""), ("cat", "", "a {object} \ud83d", ""),
                  ("", "", "", "cat: a \ud800 cat"), ("", "", "", "c\ud800t: a cat")):
        with pytest.raises(SAEError, match="lone surrogate"):
            assemble_prompts(*boxes)


# --- a full disk while saving ---------------------------------------------------------------------
def test_a_full_disk_is_said_in_words_and_the_old_file_stays(tmp_path, monkeypatch):
    from saemnesia_core import fileio
    path = sae_file(tmp_path / "kept.safetensors", {"cat": 1})
    before = open(path, "rb").read()

    def full_disk(tensors, tmp, metadata=None):
        with open(tmp, "wb") as f:  # a part is written, then the disk is full (the error as safetensors raises it)
            f.write(b"\x00" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(fileio, "save_file", full_disk)
    with pytest.raises(WriteFailed) as e:
        sae_file(path, {"dog": 1})
    assert e.value.says("models/sae") == (
        "Could not save kept.safetensors in models/sae: the disk is full. Free space on that disk, or point the "
        "folder at another disk (extra_model_paths.yaml for model folders), then queue again. Nothing was "
        "overwritten: a file of that name already there is as it was.")
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["kept.safetensors"]

    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        with pytest.raises(WriteFailed, match="permission denied"):
            save_json_atomic({"a": 1}, str(tmp_path / "ro" / "x.json"))
    finally:
        os.chmod(tmp_path / "ro", 0o700)
