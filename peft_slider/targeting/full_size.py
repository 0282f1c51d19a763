"""Real-size module trees of known models, built on the meta device (no weights, no download).

Most diffusers classes default to their flagship's config (FluxTransformer2DModel() is FLUX.1 with 19 double and 38
single blocks). This table names the models whose class defaults are not a real model, or that share a class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import ARCHITECTURES, FAMILY_ALIASES

__all__ = ["FULL_SIZE_MODELS", "FullSizeModel", "build_meta_model"]


@dataclass(frozen=True)
class FullSizeModel:
    """A named real-size configuration of a diffusers class."""

    class_name: str
    description: str
    config: dict = field(default_factory=dict)


FULL_SIZE_MODELS: dict[str, FullSizeModel] = {
    # Stable Diffusion 1.5 UNet.
    "sd15": FullSizeModel("UNet2DConditionModel", "Stable Diffusion 1.5 UNet", {"cross_attention_dim": 768}),
    # SDXL base UNet.
    "sdxl": FullSizeModel(
        "UNet2DConditionModel",
        "SDXL base UNet",
        {
            "sample_size": 128,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "block_out_channels": (320, 640, 1280),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
    ),
    # FLUX.1 [dev]/[schnell]: the class default.
    "flux": FullSizeModel("FluxTransformer2DModel", "FLUX.1 transformer (19 double + 38 single blocks)"),
    # Wan 2.1 T2V 14B: the class default.
    "wan": FullSizeModel("WanTransformer3DModel", "Wan 2.1 T2V 14B transformer"),
    # HiDream-I1: the class has no usable default for its Llama layers and caption channels.
    "hidream": FullSizeModel(
        "HiDreamImageTransformer2DModel",
        "HiDream-I1 transformer",
        {
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "caption_channels": [4096, 4096],
            "axes_dims_rope": (64, 32, 32),
            "llama_layers": list(range(48)),
        },
    ),
}


def build_meta_model(name: str) -> tuple[nn.Module, str]:
    """Build a real-size denoiser on the meta device.

    Args:
        name (`str`): A key of `FULL_SIZE_MODELS`, a family alias or a diffusers class name from the table.

    Returns:
        `(model, description)`.

    Example:

    ```py
    >>> from peft_slider.targeting import build_meta_model
    >>> model, description = build_meta_model("flux")
    >>> len(model.single_transformer_blocks), next(model.parameters()).device.type
    (38, 'meta')
    ```
    """
    import diffusers

    key = name.lower()
    entry = FULL_SIZE_MODELS.get(key)
    if entry is None:
        class_name = FAMILY_ALIASES.get(key, name)
        if class_name not in ARCHITECTURES:
            known = ", ".join(sorted(FULL_SIZE_MODELS) + sorted(ARCHITECTURES))
            raise ValueError(f"`name` {name!r} is not a built-in model. Known: {known}.")
        matching = [model for model in FULL_SIZE_MODELS.values() if model.class_name == class_name]
        entry = matching[0] if matching else FullSizeModel(class_name, f"{class_name} (class default config)")
    cls = getattr(diffusers, entry.class_name)
    with torch.device("meta"):
        model = cls.from_config(dict(entry.config))
    return model, entry.description
