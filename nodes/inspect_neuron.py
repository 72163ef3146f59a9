import torch
from comfy_api.latest import io, ui

import comfy.sample
import comfy.samplers

from saemnesia_core import SAEError
from saemnesia_core.heatmap import overlay
from saemnesia_core.inspect import activation_map, describe_concept, describe_latent
from saemnesia_core.intervention import resolve_spec

from . import model_patch
from .sae_type import CATEGORY, PREFIX, SAE


class InspectNeuron(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"{PREFIX}InspectNeuron",
            display_name="Inspect Neuron",
            category=CATEGORY,
            description="Where does an SAE latent (or a concept's latents) fire on a picture? Runs the denoiser once "
                        "at the chosen step and overlays the activation as a heatmap.",
            inputs=[
                io.Model.Input("model"),
                SAE.Input("sae"),
                io.Vae.Input("vae"),
                io.Conditioning.Input("positive"),
                io.Int.Input("neuron", default=-1, min=-1, max=1 << 24, tooltip="Latent index; -1 = use 'concept'."),
                io.String.Input("concept", default="", tooltip="A concept from the SAE's index (used when neuron is -1)."),
                io.Int.Input("step", default=10, min=0, max=1000, tooltip="Which denoising step of 'steps' to look at."),
                io.Int.Input("steps", default=20, min=1, max=1000),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Latent.Input("latent", optional=True, tooltip="The picture to inspect, as a latent..."),
                io.Image.Input("image", optional=True, tooltip="...or as an image (encoded with the VAE)."),
            ],
            outputs=[io.Image.Output(display_name="heatmap"), io.String.Output(display_name="summary")],
            is_output_node=True,  # runs (and shows its heatmap) even with nothing connected
        )

    @classmethod
    def execute(cls, model, sae, vae, positive, neuron, concept, step, steps, scheduler, seed,
                latent=None, image=None) -> io.NodeOutput:
        model_patch.check_compatible(model, sae)
        if neuron < 0 and not concept.strip():
            raise SAEError("Give a neuron index (>= 0) or a concept name to inspect.")
        if neuron >= sae.sae.n_latents:
            raise SAEError(f"neuron {neuron} does not exist: this SAE has latents 0..{sae.sae.n_latents - 1}.")
        if step >= steps:
            raise SAEError(f"step {step} is past the schedule of {steps} steps; pick 0..{steps - 1}.")
        if image is not None:
            samples = vae.encode(image[:, :, :, :3])
            picture = image[:, :, :, :3]
        elif latent is not None:
            samples = latent["samples"]
            picture = None
        else:
            raise SAEError("Connect the picture to inspect: a LATENT (e.g. from KSampler) or an IMAGE.")
        samples = comfy.sample.fix_empty_latent_channels(model, samples)

        captured = []
        probe = model_patch.capture_patch(model, sae.info.hook_point, lambda h, info: captured.append((h.detach().float().cpu(), info["timestep"])))
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
        noise = comfy.sample.prepare_noise(samples, seed)
        # one Euler step from sigma[step]: a single denoiser call through ComfyUI's own sampling path
        comfy.sample.sample_custom(probe, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas[step:step + 2],
                                   positive, positive, samples, disable_pbar=True, seed=seed)
        if not captured:
            raise SAEError(f"The block {sae.info.hook_point} never ran; is this the model the SAE was made for?")
        h, timestep = captured[0]
        # the neuron widget is always a raw latent; the concept text follows the erase rule (names first)
        spec = resolve_spec(sae.index, concept.strip()) if neuron < 0 else neuron
        act, latents = activation_map(sae, h, spec, timestep)
        if picture is None:
            picture = vae.decode(samples)
            if picture.dim() == 5:
                picture = picture.reshape(-1, *picture.shape[-3:])
        with torch.no_grad():  # also when called outside ComfyUI's inference_mode (scripts, tests)
            heat = overlay(picture.detach().cpu().float(), act.detach())
        if isinstance(spec, int):
            text = describe_latent(sae, spec, act, timestep)
        else:
            text = describe_concept(sae, spec.name, latents, act, timestep)
        # the heatmap is also shown on the node itself (ComfyUI's preview mechanism)
        return io.NodeOutput(heat, text, ui=ui.PreviewImage(heat, cls=cls))
