from comfy_api.latest import io

from . import sae_folder
from .sae_type import CATEGORY, PREFIX, SAE, schema


class LoadSAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            search_aliases=["sae loader", "sparse autoencoder", "load sparse autoencoder"],
            node_id=f"{PREFIX}LoadSAE",
            display_name="Load SAE",
            category=CATEGORY,
            description="Load a sparse autoencoder (SAEmnesia .safetensors, or a SAeUron/sparsify sae.safetensors "
                        "with its cfg.json) from the models/sae folder.",
            inputs=[io.Combo.Input("sae_name", options=sae_folder.list_saes(),
                                   tooltip="SAE files in models/sae (and paths set in extra_model_paths.yaml).")],
            outputs=[SAE.Output(display_name="SAE", tooltip="The SAE and its concept index, for Erase Concepts or Inspect Neuron."),
                     io.String.Output(display_name="info", tooltip="Its block, size and concepts as text.")],
        )

    @classmethod
    def fingerprint_inputs(cls, sae_name, **_):
        # by content: a file replaced under the same name (cp -p, rsync -a keep its time and size)
        # is loaded again and the graph after it runs again; a touched file changes nothing
        return sae_folder.fingerprint(sae_name)

    @classmethod
    def execute(cls, sae_name) -> io.NodeOutput:
        loaded = sae_folder.load(sae_name)
        return io.NodeOutput(loaded, loaded.describe())
