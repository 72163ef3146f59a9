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
    from tools import comfy_env
    import comfy.sd
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
