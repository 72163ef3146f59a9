import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


@pytest.fixture()
def one_torch_thread():
    """One torch thread for tiny tests: no oversubscription on a shared machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def comfy():
    from tools import comfy_env
    comfy_env.import_comfy()
    import comfy.sd
    return comfy


@pytest.fixture(scope="session")
def sd15(comfy):
    """(MODEL, CLIP, VAE) of an SD1.5-shaped random checkpoint, loaded by ComfyUI."""
    import comfy.sd

    from tools import comfy_env
    path = comfy_env.sd15_random_checkpoint()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    return model, clip, vae


@pytest.fixture(scope="session")
def pack(comfy):
    from tools import comfy_env
    return comfy_env.import_pack()


@pytest.fixture(scope="session")
def env(sd15, pack):
    """The SD1.5-shaped model with a prompt encoded once, shared by the integration and node tests."""
    model, clip, vae = sd15
    from saemnesia_pack.nodes import model_patch
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return {"model": model, "clip": clip, "vae": vae, "cond": cond, "neg": neg, "mp": model_patch}


@pytest.fixture(scope="session")
def block_outputs(env):
    """What the two SAeUron blocks output during one small sampling run (sampled once per session)."""
    from test_comfy_integration import capture
    return {hook: capture(env, env["model"], hook) for hook in ("output_blocks.4.1", "output_blocks.5.1")}


SD15_LATENT = 1234  # the raw latent the shipped SD 1.5 workflow erases (neuron:1234)
HOSTILE_CONCEPT = "<img src=x onerror=saemnesiaXss()>"  # a concept name that is markup in the browser


def write_sparsify_sae(folder: str, d_in: int = 1280, n_latents: int = 2048, k: int = 8):
    """A random SAE in the published SAeUron/sparsify layout whose latent SD15_LATENT fires on
    every position (large encoder bias), so erasing it must change the picture."""
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(n_latents, d_in, generator=g) / d_in ** 0.5
    b_enc = torch.zeros(n_latents)
    b_enc[SD15_LATENT] = 100.0
    W_dec = torch.randn(n_latents, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    os.makedirs(folder, exist_ok=True)
    save_file({"encoder.weight": W_enc, "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": torch.zeros(d_in)},
              os.path.join(folder, "sae.safetensors"))
    with open(os.path.join(folder, "cfg.json"), "w", encoding="utf-8") as f:
        json.dump({"expansion_factor": n_latents // d_in, "normalize_decoder": True, "num_latents": n_latents,
                   "k": k, "d_in": d_in}, f)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfy, pack):
    """One real ComfyUI server for every e2e and browser test (starting one and loading the 4 GB
    SD1.5-shaped checkpoint into it is the most expensive setup there is). Its models:
    - checkpoints: the random SD1.5-shaped checkpoint, under the name the shipped SD 1.5 workflow picks;
    - sae: thing.safetensors (concepts 'thing', an object, and 'ink', a style, on output_blocks.5.1),
      hostile.safetensors (a concept named HOSTILE_CONCEPT: the server must refuse it), the random
      SAeUron-layout SAE the SD 1.5 workflow picks, the pack's shipped SAEs (or candidates, see
      tools/workflows.py)."""
    from saemnesia_core import SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    from tools import comfy_env
    from tools import workflows as wf
    from tools.comfy_server import ComfyServer
    base = tmp_path_factory.mktemp("comfy-server")
    sae_dir = base / "models" / "sae"
    os.makedirs(sae_dir, exist_ok=True)  # files written in it: the sae folder lists only what is inside it
    sae = TopKSAE(1280, 2560, 16)
    sae.requires_grad_(False)
    sel = [Selection([1, 2], [1, 1], [1, 1], [0, 0])] * 2
    for name, concepts in (("thing", {"thing": "object", "ink": "style"}), ("hostile", {"cat": "object", HOSTILE_CONCEPT: "object"})):
        index = ConceptIndex(timesteps=[999.0, 0.0], default_mode="ablate", default_multiplier=-3.0,
                             concepts={n: Concept(n, kind, None, sel) for n, kind in concepts.items()})
        save_sae(str(sae_dir / f"{name}.safetensors"), sae, SAEInfo("output_blocks.5.1", "sd1", index, {}))
    write_sparsify_sae(str(sae_dir / wf.SD15_SAE.split("/")[0]))
    wf.write_returning_user_settings(str(base))
    # one torch thread: on a shared CPU, a second spinning OpenMP thread made sampling 20x slower
    srv = ComfyServer(str(base), {"checkpoints": {wf.SD15_CHECKPOINT: comfy_env.sd15_random_checkpoint()},
                                  "sae": wf.candidate_saes()}, threads=1)
    srv.start()
    yield srv
    srv.stop()
