import torch

import comfy.sample
import comfy.samplers
from comfy_api.latest import io, ui

from saemnesia_core import SAEError
from saemnesia_core.checkpoint import CONTEXT
from saemnesia_core.heatmap import overlay, with_legend
from saemnesia_core.intervention import resolve_spec
from saemnesia_core.neuron_report import activation_map, describe_concept, describe_latent

from . import model_patch
from .sae_type import CATEGORY, PREFIX, SAE, schema

SHOW = ["concept", "neuron"]


class InspectNeuron(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["neuron heatmap", "where does a concept fire", "sae latent", "feature visualization", "interpret"],
            node_id=f"{PREFIX}InspectNeuron",
            display_name="Inspect Neuron",
            category=CATEGORY,
            description="Where does a concept (or one SAE latent) fire on a picture? Runs the denoiser once at the "
                        "chosen step and overlays the activation as a heatmap with its colour scale; the summary "
                        "explains the numbers.",
            inputs=[
                io.Model.Input("model", tooltip="The model the picture came from (erased or not)."),
                SAE.Input("sae", tooltip="The SAE whose latents to show; its block must exist in the model."),
                io.Vae.Input("vae", tooltip="Decodes the latent for the picture under the heatmap (or encodes the image)."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning, as given to KSampler."),
                io.Combo.Input("show", options=SHOW, default=SHOW[0],
                               tooltip="concept: the latents of the concept named below. neuron: one latent by its index."),
                io.String.Input("concept", default="",
                                tooltip="A concept from the SAE's index (see Load SAE's info), for show = concept."),
                io.Int.Input("neuron", default=0, min=0, max=1 << 24,
                             tooltip="Latent index (0 .. latents-1), for show = neuron."),
                io.Int.Input("step", default=10, min=0, max=1000,
                             tooltip="Which denoising step to look at: 0 = the first (most noise) .. steps-1 = the last."),
                io.Int.Input("steps", default=20, min=1, max=1000,
                             tooltip="Length of the schedule 'step' counts in; use the KSampler's steps."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The KSampler's scheduler, so the noise level at 'step' matches."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise added to the picture at that step."),
                io.Latent.Input("latent", optional=True, tooltip="The picture to inspect, as a latent..."),
                io.Image.Input("image", optional=True, tooltip="...or as an image (encoded with the VAE)."),
            ],
            outputs=[io.Image.Output(display_name="heatmap",
                                     tooltip="The picture with the activation overlaid (dark = 0, yellow = strongest), "
                                             "enlarged to at least 256 px, with its colour scale below."),
                     io.String.Output(display_name="summary",
                                      tooltip="What was shown, where it fires, and the concept scores explained.")],
            is_output_node=True,  # runs (and shows its heatmap) even with nothing connected
        )

    @classmethod
    def execute(cls, model, sae, vae, positive, show, concept, neuron, step, steps, scheduler, seed,
                latent=None, image=None) -> io.NodeOutput:
        model_patch.check_compatible(model, sae)
        sae = _spatial_member(sae)
        by_concept = show == "concept"
        if by_concept and not concept.strip():
            raise SAEError("show is 'concept' but no concept is named: type one from the SAE's index "
                           "(Load SAE's info lists them), or set show to 'neuron'.")
        if not by_concept and neuron >= sae.sae.n_latents:
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
        sigmas = comfy.samplers.calculate_sigmas(model_patch.model_sampling(model), scheduler, steps).cpu()
        noise = comfy.sample.prepare_noise(samples, seed)
        # one Euler step from sigma[step]: a single denoiser call through ComfyUI's own sampling path
        comfy.sample.sample_custom(probe, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas[step:step + 2],
                                   positive, positive, samples, disable_pbar=True, seed=seed)
        if not captured:
            raise SAEError(f"The block {sae.info.hook_point} never ran; is this the model the SAE was made for?")
        h, timestep = captured[0]
        # the neuron widget is always a raw latent; the concept text follows the erase rule (names first)
        spec = resolve_spec(sae.index, concept.strip()) if by_concept else neuron
        act, latents = activation_map(sae, h, spec, timestep)
        if picture is None:
            picture = vae.decode(samples)
            if picture.dim() == 5:
                picture = picture.reshape(-1, *picture.shape[-3:])
        where = f"step {step} of {steps}"  # the widgets' words; the model's timestep means nothing to an artist
        vmax = float(act.max())
        with torch.no_grad():  # also when called outside ComfyUI's inference_mode (scripts, tests)
            heat = overlay(picture.detach().cpu().float(), act.detach(), vmax=vmax or None)
            caption = f"{'latent ' + str(spec) if isinstance(spec, int) else spec.name}, {where}"
            heat = with_legend(heat, vmax, caption)
        if isinstance(spec, int):
            text = describe_latent(sae, spec, act, timestep, where)
        else:
            text = describe_concept(sae, spec.name, latents, act, timestep, where)
        # the heatmap is also shown on the node itself (ComfyUI's preview mechanism)
        return io.NodeOutput(heat, text, ui=ui.PreviewImage(heat, cls=cls))


def _spatial_member(sae):
    """The SAE (of a set: the first member on a block's image activations) whose latents have a map to show."""
    for member in sae.blocks:
        if model_patch.is_spatial(member.info.hook_point):
            return member
    what = "the text states ('context')" if sae.info.hook_point == CONTEXT else f"a text stream ({sae.info.hook_point})"
    raise SAEError(f"This SAE reads {what}, which have no spatial map to show. Inspect a concept with an SAE trained "
                   "on a block's image activations, e.g. minicanvas_objects_saemnesia.safetensors.")
