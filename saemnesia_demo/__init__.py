"""MiniCanvas: a CPU-sized UnlearnCanvas analogue (6 objects x 6 styles, 32x32 RGB).

Submodules (import them directly; nothing heavy is imported here):

* ``data``               seeded image generator, OBJECTS / STYLES, prompts and labels
* ``classifier``         object and style CNN judges (safetensors I/O)
* ``train_classifiers``  ``python -m saemnesia_demo.train_classifiers``
* ``text_encoder``       frozen MiniLM per-token states [B, 16, 384], offline
* ``unet``               the demo SD1-layout UNet: config, ``load_demo_unet``
* ``sampling``           SD1 schedule + plain-torch DDIM sampler with CFG
* ``train_diffusion``    ``python -m saemnesia_demo.train_diffusion`` (resumable)
* ``train_dit``          ``python -m saemnesia_demo.train_dit``: the Flux-layout DiT (``dit``)
* ``trainer``            the training run both trainers share; ``weights``: their files
* ``evaluate``           ``python -m saemnesia_demo.evaluate``

See docs/minicanvas.md.
"""
