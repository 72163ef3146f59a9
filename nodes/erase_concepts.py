import comfy.model_management
from comfy_api.latest import io

from saemnesia_core import SAEError
from saemnesia_core.errors import quoted
from saemnesia_core.intervention import check_window, eraser_for, finite, window_problem
from saemnesia_core.prompts import MAX_ERASE_ENTRIES, erase_entries

from . import model_patch
from .sae_type import ALIASES, CATEGORY, PREFIX, SAE, schema

MODES = ["auto", "neuron", "ablate", "replace"]
HALVES = ["both", "cond only"]


class EraseConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=ALIASES,
            node_id=f"{PREFIX}EraseConcepts",
            display_name="Erase Concepts",
            category=CATEGORY,
            description="Erase concepts (objects, styles) from the model with an SAE on one transformer block. "
                        "Returns a patched copy; the input model is untouched.",
            inputs=[
                io.Model.Input("model", tooltip="The model to erase from (a patched copy is returned)."),
                SAE.Input("sae", tooltip="From Load SAE or Train SAE from Prompts; its block must exist in the model."),
                io.String.Input("concepts", default="", tooltip="Concept names from the SAE's index, comma separated; "
                                f"'neuron:123' for a raw latent. At most {MAX_ERASE_ENTRIES} at once; repeats count once."),
                io.Combo.Input("mode", options=MODES, default="auto",
                               tooltip="neuron: SAEmnesia, scale the concept's own latent. ablate: SAeUron, push the "
                                       "selected latents to a negative value where they fire. replace: PER, swap "
                                       "detected positions for undetected ones of the same image. auto: the SAE's default."),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="How hard to erase (x, no unit): 0 = no change, 1 = the method as published, >1 = stronger."),
                io.Float.Input("multiplier", default=0.0, min=-100.0, max=100.0, step=0.1,
                               tooltip="Factor (x) applied to the concept's latent in neuron/ablate modes, usually negative "
                                       "(e.g. -1.5). 0: see zero_uses_sae_value."),
                io.Combo.Input("apply_to", options=HALVES, default="both",
                               tooltip="Edit both CFG halves (as in the papers) or only the positive prompt."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the denoising schedule (0 = first step, 1 = last) where erasing starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                             tooltip="Fraction of the denoising schedule where erasing stops (1 = through the last step)."),
                # last and optional: graphs saved before it existed load with their widget values in place
                io.Boolean.Input("zero_uses_sae_value", default=True, optional=True,
                                 label_on="multiplier 0 = the SAE's calibrated value", label_off="multiplier 0 = latent off",
                                 tooltip="What a multiplier of 0 means. On: each concept's multiplier as calibrated "
                                         "in the SAE. Off: 0 itself (the concept's latent switched off). Any other "
                                         "multiplier is always used as given."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model with the concepts erased; wire it to KSampler.")],
        )

    # ComfyUI 0.3.75 attaches a validate_inputs failure to every input the method declares and
    # skips its own min/max checks for them, so only the window (checked as a pair) is declared:
    # its errors land on the two window widgets, and strength/multiplier keep ComfyUI's range
    # checks on their own widgets (those let NaN through; execute refuses it before any sampling).
    @classmethod
    def validate_inputs(cls, start_percent, end_percent):
        return window_problem(start_percent, end_percent) or True

    @classmethod
    def execute(cls, model, sae, concepts, mode, strength, multiplier, apply_to, start_percent, end_percent,
                zero_uses_sae_value=None) -> io.NodeOutput:
        # checked here as well: V3 combos are not checked against their options by ComfyUI
        # 0.3.75, NaN passes its range checks, and linked inputs are unknown at validation
        if apply_to not in HALVES:
            raise SAEError(f"apply_to is {quoted(apply_to)}; use one of: {', '.join(HALVES)}.")
        check_window(start_percent, end_percent)
        strength = finite(strength, "strength", "give 0 (off), 1 (as published) or more.")
        multiplier = chosen_multiplier(finite(multiplier, "multiplier", "give a number such as -1.5."), zero_uses_sae_value)
        names = erase_entries(concepts)  # bounded, without repeats, before any lookup
        if not names:
            return io.NodeOutput(model)  # nothing to erase: pass the model through unchanged
        # an SAE set erases at every block it covers; each block has its own latents for the names
        def make_eraser(member):
            return eraser_for(member, names, mode=mode, strength=strength, multiplier=multiplier,
                              check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        patched = model_patch.erase_patch(model, sae, make_eraser, apply_to == "cond only", start_percent, end_percent)
        return io.NodeOutput(patched)


def chosen_multiplier(multiplier: float, zero_uses_sae_value: bool | None) -> float | None:
    """The multiplier to erase with; None = each concept's calibrated one, from the SAE.

    Only 0 is ambiguous, so only 0 is switched: graphs saved before the switch existed (UI graphs
    get its default, API graphs lack it) keep their meaning, custom multipliers included."""
    if multiplier != 0:
        return multiplier
    return None if zero_uses_sae_value is None or zero_uses_sae_value else 0.0
