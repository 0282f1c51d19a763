# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tiny, real diffusers denoisers for tests: one table of cases, each with a config and an input builder.

Every case builds a real diffusers model class from a small config (well under a second on CPU) and knows how to call
its `forward`: which latents, timestep, text embeddings, ids, masks and conditioning tensors it needs. Text inputs
carry exactly `text_tokens` tokens; the image size is chosen so that the number of image tokens reaching attention
differs from the text count, so a test can tell from an activation's token dimension whether a module saw image
tokens, text tokens, or both concatenated.

`image_size` is always the side length of the (square) latent in the layout the model's `forward` takes: the latent
grid for models that patchify internally (UNets, SD3, AuraFlow, Lumina2, Wan, Sana, PixArt, ...), the packed token
grid for models that take already-packed tokens (Flux, Flux2, Chroma, Qwen-Image, LTX). Video models get
`NUM_FRAMES` latent frames.

Example:

```python
>>> from tests.denoisers import DENOISERS
>>> case = DENOISERS["flux"]
>>> model = case.build()
>>> inputs = case.make_inputs(model, batch_size=2, text_tokens=7)
>>> case.output_tensor(model(**inputs)).shape
torch.Size([2, 16, 16])
>>> case.image_tokens(), case.context_tokens(text_tokens=7)
(16, 7)

```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "DENOISERS",
    "NUM_FRAMES",
    "DenoiserCase",
    "output_tensor",
    "randomize_zero_parameters",
]

# Latent frames given to video models (Wan, LTX, Cosmos, Kandinsky5): two, so the temporal axis is not trivial.
NUM_FRAMES = 2

# Z-Image pads caption and image sequences to a multiple of this many tokens before attention.
_ZIMAGE_SEQ_MULTIPLE = 32

# Wan's I2V attention processor takes the last 512 context tokens as text (hard-coded in diffusers), so the pipeline
# always zero-pads prompt embeddings to 512 tokens; the I2V case does the same.
_WAN_TEXT_LEN = 512


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen)


def _timesteps_1000(gen: torch.Generator, batch_size: int) -> torch.Tensor:
    # Models that embed the raw scheduler timestep (0..1000); kept away from the ends.
    return 100.0 + 800.0 * _rand(gen, batch_size)


def _timesteps_unit(gen: torch.Generator, batch_size: int) -> torch.Tensor:
    # Models that take sigma-like timesteps in [0, 1] (and multiply by 1000 internally).
    return 0.1 + 0.8 * _rand(gen, batch_size)


def _grid_ids(height: int, width: int) -> torch.Tensor:
    """Flux-style position ids `(height * width, 3)`: axis 0 unused for a single image, then row and column."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def output_tensor(out: Any) -> torch.Tensor:
    """Pulls one tensor out of a denoiser's forward output, for backward passes and comparisons.

    An output with a `sample` gives that sample (a per-sample list, as Z-Image returns, is stacked). ControlNet
    outputs, which hold residuals of different shapes, are flattened per batch row and concatenated to `(batch, -1)`.
    Meant for the default `return_dict=True` outputs; a plain tuple is read the same way.

    Args:
        out (`Any`):
            What the model's `forward` returned (a diffusers `BaseOutput`, a tuple or a tensor).

    Returns:
        `torch.Tensor`: one tensor that depends on every output of the forward pass.

    Example:

    ```python
    >>> import torch
    >>> output_tensor((torch.ones(2, 3),)).shape
    torch.Size([2, 3])
    >>> output_tensor({"down": (torch.ones(2, 3, 4), torch.ones(2, 5)), "mid": torch.ones(2, 1)}).shape
    torch.Size([2, 18])

    ```
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):  # diffusers' BaseOutput is an OrderedDict
        if list(out.keys()) == ["sample"]:
            return _sample_tensor(out["sample"])
        return _flatten_cat(list(out.values()))
    if isinstance(out, (tuple, list)):
        if len(out) == 1:
            return _sample_tensor(out[0])
        return _flatten_cat(list(out))
    raise TypeError(f"`out` must be a diffusers output, a tuple or a tensor, got {type(out).__name__}.")


def _sample_tensor(sample: Any) -> torch.Tensor:
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(sample, (tuple, list)) and sample and all(isinstance(s, torch.Tensor) for s in sample):
        return torch.stack(list(sample))
    raise TypeError(f"a sample must be a tensor or a list of per-sample tensors, got {type(sample).__name__}.")


def _flatten_cat(parts: list[Any]) -> torch.Tensor:
    tensors: list[torch.Tensor] = []

    def collect(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            tensors.append(x.reshape(x.shape[0], -1))
        elif isinstance(x, (tuple, list)):
            for item in x:
                collect(item)
        elif x is not None:
            raise TypeError(f"cannot read a tensor out of a {type(x).__name__} in a model output.")

    collect(parts)
    if not tensors:
        raise ValueError("the model output holds no tensors.")
    return torch.cat(tensors, dim=1)


@torch.no_grad()
def randomize_zero_parameters(model: torch.nn.Module, *, seed: int = 0, std: float = 0.1) -> list[str]:
    """Replaces every parameter that is exactly zero everywhere by small seeded random values.

    Freshly initialised denoisers zero their adaLN-zero modulations, ControlNet zero convolutions and some output
    layers, which makes LoRA on the modules behind them have no effect and no gradient. Tests that check effects or
    gradients need those paths open.

    Args:
        model (`torch.nn.Module`):
            The model to change in place.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generator the new values are drawn from.
        std (`float`, *optional*, defaults to `0.1`):
            Standard deviation of the new values.

    Returns:
        `list[str]`: the names of the parameters that were replaced.

    Example:

    ```python
    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> _ = torch.nn.init.zeros_(layer.bias)
    >>> randomize_zero_parameters(layer)
    ['bias']

    ```
    """
    gen = torch.Generator().manual_seed(seed)
    changed = []
    for name, param in model.named_parameters():
        if param.numel() and not param.any():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32).to(param.dtype) * std)
            changed.append(name)
    return changed


InputBuilder = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class DenoiserCase:
    """One tiny denoiser: how to build it, how to call it, and what its attention modules see.

    Args:
        class_name (`str`):
            Name of the diffusers model class (`getattr(diffusers, class_name)`).
        config (`Mapping[str, Any]`):
            Keyword arguments for the class (read-only).
        inputs (`Callable`):
            `inputs(model, gen, batch_size, text_tokens, image_size) -> dict` building the forward kwargs.
        grid_tokens (`Callable[[int], tuple[int, ...]]`):
            Image tokens at each attention level for an `image_size`, highest resolution first.
        default_image_size (`int`):
            The `image_size` used when none is given.
        image_query (`str`):
            Regex (`re.fullmatch`) for modules that see image tokens only (image self-attention query projections).
        text_key (`str`, *optional*):
            Regex for modules that see only the context (text) tokens.
        joint_key (`str`, *optional*):
            Regex for modules that see image and context tokens concatenated.
        context_tokens_fn (`Callable[[int], int]`, *optional*):
            How many context (text) tokens attention sees for `text_tokens` given ones; identity by default.
        fixed_probes (`Mapping[str, int]`, *optional*):
            Regex -> token count for other modules whose token count does not depend on the inputs' sizes.
        notes (`str`, *optional*):
            What a test author should know about this model.
    """

    class_name: str
    config: Mapping[str, Any]
    inputs: InputBuilder
    grid_tokens: Callable[[int], tuple[int, ...]]
    default_image_size: int
    image_query: str
    text_key: str | None = None
    joint_key: str | None = None
    context_tokens_fn: Callable[[int], int] | None = None
    fixed_probes: Mapping[str, int] = field(default_factory=dict)
    notes: str = ""

    def __post_init__(self) -> None:
        # Read-only, so one test cannot change the config another test builds from.
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "fixed_probes", MappingProxyType(dict(self.fixed_probes)))

    @property
    def model_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.class_name)

    def build(self, seed: int = 0, *, randomize_zeros: bool = True) -> torch.nn.Module:
        """Builds the model after `torch.manual_seed(seed)`, in eval mode, with zero parameters randomised."""
        torch.manual_seed(seed)
        model = self.model_class.from_config(dict(self.config))
        if randomize_zeros:
            randomize_zero_parameters(model, seed=seed)
        return model.eval()

    def make_inputs(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int = 2,
        text_tokens: int = 7,
        image_size: int | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The keyword arguments of `model.forward` for a batch, drawn from a generator seeded with `seed`."""
        if batch_size < 1 or text_tokens < 1:
            raise ValueError(
                f"`batch_size` and `text_tokens` must be positive, got batch_size={batch_size!r}, "
                f"text_tokens={text_tokens!r}."
            )
        size = self.default_image_size if image_size is None else image_size
        gen = torch.Generator().manual_seed(seed)
        return self.inputs(model, gen, batch_size, text_tokens, size)

    def image_tokens(self, *, image_size: int | None = None, **_: Any) -> int:
        """Image tokens seen by the first (highest-resolution) image attention, after patchify and padding."""
        return self.all_image_tokens(image_size=image_size)[0]

    def all_image_tokens(self, *, image_size: int | None = None, **_: Any) -> tuple[int, ...]:
        """Image tokens at every attention level (UNets have several), highest resolution first."""
        return self.grid_tokens(self.default_image_size if image_size is None else image_size)

    def context_tokens(self, *, text_tokens: int = 7, **_: Any) -> int:
        """Context tokens attention sees when the text inputs carry `text_tokens` tokens (padding, registers,
        pooled tokens and several text encoders included)."""
        return text_tokens if self.context_tokens_fn is None else self.context_tokens_fn(text_tokens)

    @staticmethod
    def output_tensor(out: Any) -> torch.Tensor:
        return output_tensor(out)


# ----------------------------------------------------------------------------------------------------------------
# Input builders. Each takes (model, gen, batch_size, text_tokens, image_size) and reads sizes from model.config.
# ----------------------------------------------------------------------------------------------------------------


def _unet_inputs(model, gen, b, t, s):
    cfg = model.config
    kwargs = {
        "sample": _randn(gen, b, cfg.in_channels, s, s),
        "timestep": _timesteps_1000(gen, b),
        "encoder_hidden_states": _randn(gen, b, t, cfg.cross_attention_dim),
    }
    if cfg.addition_embed_type == "text_time":
        # SDXL: pooled text embeds + (original size, crop top-left, target size), 6 numbers per sample.
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        time_ids = torch.tensor([s * 8, s * 8, 0, 0, s * 8, s * 8], dtype=torch.float32).repeat(b, 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": _randn(gen, b, text_dim), "time_ids": time_ids}
    return kwargs


def _controlnet_inputs(model, gen, b, t, s):
    kwargs = _unet_inputs(model, gen, b, t, s)
    # The conditioning encoder downsamples by 2 for every block after the first.
    factor = 2 ** (len(model.config.conditioning_embedding_out_channels) - 1)
    kwargs["controlnet_cond"] = _randn(gen, b, model.config.conditioning_channels, s * factor, s * factor)
    return kwargs


def _sd3_inputs(model, gen, b, t, s):
    cfg = model.config
    kwargs = {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "encoder_hidden_states": _randn(gen, b, t, cfg.joint_attention_dim),
        "pooled_projections": _randn(gen, b, cfg.pooled_projection_dim),
        "timestep": _timesteps_1000(gen, b),
    }
    if "extra_conditioning_channels" in cfg:
        channels = cfg.in_channels + cfg.extra_conditioning_channels
        kwargs["controlnet_cond"] = _randn(gen, b, channels, s, s)
    return kwargs


def _flux_inputs(model, gen, b, t, s):
    cfg = model.config
    kwargs = {
        "hidden_states": _randn(gen, b, s * s, cfg.in_channels),
        "encoder_hidden_states": _randn(gen, b, t, cfg.joint_attention_dim),
        "timestep": _timesteps_unit(gen, b),
        "img_ids": _grid_ids(s, s),
        "txt_ids": torch.zeros(t, 3),
    }
    if "pooled_projection_dim" in cfg:  # Flux and its ControlNet; Chroma has no pooled text
        kwargs["pooled_projections"] = _randn(gen, b, cfg.pooled_projection_dim)
    if cfg.get("guidance_embeds", False):
        kwargs["guidance"] = torch.full((b,), 3.5)
    if "conditioning_embedding_channels" in cfg:  # FluxControlNetModel, packed conditioning latents
        kwargs["controlnet_cond"] = _randn(gen, b, s * s, cfg.in_channels)
    return kwargs


def _flux2_inputs(model, gen, b, t, s):
    cfg = model.config
    # Flux2 ids have four axes (time, height, width, layer); the pipeline passes them batched.
    img_ids = torch.zeros(s, s, 4)
    img_ids[..., 1] = torch.arange(s)[:, None]
    img_ids[..., 2] = torch.arange(s)[None, :]
    txt_ids = torch.zeros(t, 4)
    txt_ids[:, 3] = torch.arange(t)
    kwargs = {
        "hidden_states": _randn(gen, b, s * s, cfg.in_channels),
        "encoder_hidden_states": _randn(gen, b, t, cfg.joint_attention_dim),
        "timestep": _timesteps_unit(gen, b),
        "img_ids": img_ids.reshape(1, s * s, 4).repeat(b, 1, 1),
        "txt_ids": txt_ids.reshape(1, t, 4).repeat(b, 1, 1),
    }
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((b,), 4.0)
    return kwargs


def _auraflow_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "encoder_hidden_states": _randn(gen, b, t, cfg.joint_attention_dim),
        "timestep": _timesteps_unit(gen, b),
    }


def _zimage_inputs(model, gen, b, t, s):
    cfg = model.config
    # Z-Image takes per-sample lists: latents (C, F, H, W) and captions (T, cap_feat_dim).
    return {
        "x": [_randn(gen, cfg.in_channels, 1, s, s) for _ in range(b)],
        "t": _timesteps_unit(gen, b),
        "cap_feats": [_randn(gen, t, cfg.cap_feat_dim) for _ in range(b)],
    }


def _qwenimage_inputs(model, gen, b, t, s):
    cfg = model.config
    kwargs = {
        "hidden_states": _randn(gen, b, s * s, cfg.in_channels),
        "encoder_hidden_states": _randn(gen, b, t, cfg.joint_attention_dim),
        "encoder_hidden_states_mask": torch.ones(b, t, dtype=torch.long),
        "timestep": _timesteps_unit(gen, b),
        "img_shapes": [[(1, s, s)]] * b,
    }
    if "extra_condition_channels" in cfg:  # QwenImageControlNetModel
        kwargs["controlnet_cond"] = _randn(gen, b, s * s, cfg.in_channels + cfg.extra_condition_channels)
    elif cfg.guidance_embeds:
        kwargs["guidance"] = torch.full((b,), 4.0)
    return kwargs


def _lumina2_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "timestep": _timesteps_unit(gen, b),
        "encoder_hidden_states": _randn(gen, b, t, cfg.cap_feat_dim),
        "encoder_attention_mask": torch.ones(b, t, dtype=torch.bool),
    }


def _wan_inputs(model, gen, b, t, s):
    cfg = model.config
    text = _randn(gen, b, t, cfg.text_dim)
    kwargs = {
        "hidden_states": _randn(gen, b, cfg.in_channels, NUM_FRAMES, s, s),
        "timestep": _timesteps_1000(gen, b),
    }
    if cfg.image_dim is not None:
        # I2V: zero-pad the prompt to the 512 tokens the attention processor splits off, as the pipeline does.
        text = torch.cat([text, text.new_zeros(b, _WAN_TEXT_LEN - t, cfg.text_dim)], dim=1)
        kwargs["encoder_hidden_states_image"] = _randn(gen, b, _WAN_I2V_IMAGE_TOKENS, cfg.image_dim)
    kwargs["encoder_hidden_states"] = text
    return kwargs


def _hidream_inputs(model, gen, b, t, s):
    cfg = model.config
    t5_dim, llama_dim = cfg.caption_channels
    num_llama = max(cfg.llama_layers) + 1
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "timesteps": _timesteps_1000(gen, b),
        "encoder_hidden_states_t5": _randn(gen, b, t, t5_dim),
        # One hidden state per Llama layer, stacked on a leading axis, each with the same `t` tokens.
        "encoder_hidden_states_llama3": _randn(gen, num_llama, b, t, llama_dim),
        "pooled_embeds": _randn(gen, b, cfg.text_emb_dim),
    }


def _ltx_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, NUM_FRAMES * s * s, cfg.in_channels),
        "encoder_hidden_states": _randn(gen, b, t, cfg.caption_channels),
        "timestep": _timesteps_1000(gen, b),
        "encoder_attention_mask": torch.ones(b, t),
        "num_frames": NUM_FRAMES,
        "height": s,
        "width": s,
        "rope_interpolation_scale": (1.0, 1.0, 1.0),
    }


def _cosmos_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, NUM_FRAMES, s, s),
        "timestep": _timesteps_unit(gen, b),
        "encoder_hidden_states": _randn(gen, b, t, cfg.text_embed_dim),
        "fps": 24,
    }


def _kandinsky5_inputs(model, gen, b, t, s):
    cfg = model.config
    _, ph, pw = cfg.patch_size
    # Channels-last video latents (B, F, H, W, C); RoPE positions per axis of the patchified grid, as the pipeline.
    return {
        "hidden_states": _randn(gen, b, NUM_FRAMES, s, s, cfg.in_visual_dim),
        "encoder_hidden_states": _randn(gen, b, t, cfg.in_text_dim),
        "timestep": _timesteps_1000(gen, b),
        "pooled_projections": _randn(gen, b, cfg.in_text_dim2),
        "visual_rope_pos": [torch.arange(NUM_FRAMES), torch.arange(s // ph), torch.arange(s // pw)],
        "text_rope_pos": torch.arange(t),
        "scale_factor": (1.0, 1.0, 1.0),
        "sparse_params": None,
    }


def _sana_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "encoder_hidden_states": _randn(gen, b, t, cfg.caption_channels),
        "timestep": _timesteps_1000(gen, b),
        "encoder_attention_mask": torch.ones(b, t),
    }


def _pixart_inputs(model, gen, b, t, s):
    cfg = model.config
    return {
        "hidden_states": _randn(gen, b, cfg.in_channels, s, s),
        "encoder_hidden_states": _randn(gen, b, t, cfg.caption_channels),
        "timestep": _timesteps_1000(gen, b),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        "encoder_attention_mask": torch.ones(b, t),
    }


def _stable_cascade_inputs(model, gen, b, t, s):
    cfg = model.config
    # Stage C (prior): clip_text is only used together with clip_img; both are mapped into the attention context.
    return {
        "sample": _randn(gen, b, cfg.in_channels, s, s),
        "timestep_ratio": _timesteps_unit(gen, b),
        "clip_text_pooled": _randn(gen, b, 1, cfg.clip_text_pooled_in_channels),
        "clip_text": _randn(gen, b, t, cfg.clip_text_in_channels),
        "clip_img": _randn(gen, b, 1, cfg.clip_image_in_channels),
    }


# ----------------------------------------------------------------------------------------------------------------
# Token counts.
# ----------------------------------------------------------------------------------------------------------------


def _square(patch: int, frames: int = 1) -> Callable[[int], tuple[int, ...]]:
    return lambda s: (frames * (s // patch) ** 2,)


def _unet_levels(first_attention_level: int, num_levels: int) -> Callable[[int], tuple[int, ...]]:
    # Each level after the first halves the side; attention runs from `first_attention_level` down to the mid block.
    def tokens(s: int) -> tuple[int, ...]:
        return tuple((s // 2**level) ** 2 for level in range(first_attention_level, num_levels))

    return tokens


def _zimage_tokens(s: int) -> tuple[int, ...]:
    n = (s // 2) ** 2
    return (n + (-n) % _ZIMAGE_SEQ_MULTIPLE,)


_WAN_I2V_IMAGE_TOKENS = 5
_CASCADE_CLIP_SEQ = 2


# ----------------------------------------------------------------------------------------------------------------
# The table. Configs follow diffusers' own unit tests where they exist, shrunk where that keeps the model valid.
# ----------------------------------------------------------------------------------------------------------------

_UNET_SD15 = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

_UNET_SDXL = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    # 6 size/crop numbers x addition_time_embed_dim + the pooled text width (32).
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
    "norm_num_groups": 1,
}

_CONTROLNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "in_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "conditioning_embedding_out_channels": (16, 32),
}

_SD3 = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 24,
    "out_channels": 4,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}

_SD3_CONTROLNET = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 24,
    "out_channels": 4,
    "pos_embed_max_size": 16,
    "extra_conditioning_channels": 0,
}

_FLUX = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 4, 8),
}

# FluxControlNetModel takes the same sizes as the transformer it steers.
_FLUX_CONTROLNET = {**_FLUX}

_FLUX2 = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "timestep_guidance_channels": 32,
    "axes_dims_rope": (4, 4, 4, 4),
    "guidance_embeds": True,
}

_CHROMA = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "axes_dims_rope": (4, 4, 8),
    "approximator_num_channels": 8,
    "approximator_hidden_dim": 16,
    "approximator_layers": 1,
}

_AURAFLOW = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "num_mmdit_layers": 1,
    "num_single_dit_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "out_channels": 4,
    "pos_embed_max_size": 64,
}

_ZIMAGE = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 4,
    "dim": 32,
    "n_layers": 1,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "qk_norm": True,
    "cap_feat_dim": 16,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": (8, 4, 4),
    "axes_lens": (256, 32, 32),
}

_QWENIMAGE = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 4, 4),
}

_QWENIMAGE_CONTROLNET = {k: v for k, v in _QWENIMAGE.items() if k != "guidance_embeds"} | {
    "extra_condition_channels": 0
}

_LUMINA2 = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 24,
    "num_layers": 2,
    "num_refiner_layers": 1,
    "num_attention_heads": 3,
    "num_kv_heads": 1,
    "multiple_of": 16,
    "norm_eps": 1e-5,
    "scaling_factor": 1.0,
    "axes_dim_rope": (4, 2, 2),
    "axes_lens": (128, 128, 128),
    "cap_feat_dim": 32,
}

_WAN = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}

_WAN_I2V = {
    **_WAN,
    "in_channels": 8,  # noisy latents + image-conditioning latents, as I2V checkpoints concatenate them
    "image_dim": 8,
    "added_kv_proj_dim": 24,  # = num_attention_heads * attention_head_dim, as in Wan2.1 I2V
}

_HIDREAM = {
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_channels": (32, 16),
    "text_emb_dim": 24,
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": (4, 2, 2),
    "max_resolution": (32, 32),
    "llama_layers": (0, 1),
}

_LTX = {
    "in_channels": 8,
    "out_channels": 8,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 16,
    "num_layers": 1,
    "caption_channels": 32,
}

_COSMOS = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "num_layers": 2,
    "mlp_ratio": 2,
    "text_embed_dim": 16,
    "adaln_lora_dim": 4,
    "max_size": (4, 32, 32),
    "patch_size": (1, 2, 2),
    "rope_scale": (2.0, 1.0, 1.0),
    # The real checkpoints concatenate a padding mask, which needs torchvision (not installed here).
    "concat_padding_mask": False,
    "extra_pos_embed_type": "learnable",
}

_KANDINSKY5 = {
    "in_visual_dim": 4,
    "in_text_dim": 32,
    "in_text_dim2": 16,
    "time_dim": 16,
    "out_visual_dim": 4,
    "patch_size": (1, 2, 2),
    "model_dim": 16,
    "ff_dim": 32,
    "num_text_blocks": 1,
    "num_visual_blocks": 2,
    "axes_dims": (2, 2, 4),
    "visual_cond": False,
}

_SANA = {
    "patch_size": 1,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 1,
    "attention_head_dim": 4,
    "num_attention_heads": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 4,
    "cross_attention_dim": 8,
    "caption_channels": 8,
    "sample_size": 32,
}

_PIXART = {
    "sample_size": 8,
    "num_layers": 1,
    "patch_size": 2,
    "attention_head_dim": 4,
    "num_attention_heads": 2,
    "in_channels": 4,
    "cross_attention_dim": 8,
    "out_channels": 8,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 8,
}

_STABLE_CASCADE = {
    "in_channels": 4,
    "out_channels": 4,
    "timestep_ratio_embedding_dim": 8,
    "patch_size": 1,
    "conditioning_dim": 16,
    "block_out_channels": (16, 32),
    "num_attention_heads": (2, 2),
    "down_num_layers_per_block": (1, 1),
    "up_num_layers_per_block": (1, 1),
    "down_blocks_repeat_mappers": (1, 1),
    "up_blocks_repeat_mappers": (1, 1),
    "block_types_per_layer": (
        ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
        ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
    ),
    "clip_text_in_channels": 12,
    "clip_text_pooled_in_channels": 12,
    "clip_image_in_channels": 8,
    "clip_seq": _CASCADE_CLIP_SEQ,
    "kernel_size": 3,
    "dropout": (0.0, 0.0),
    "self_attn": True,
    "timestep_conditioning_type": ("sca",),
    "switch_level": (False,),
}

_MMDIT_IMAGE_Q = r"transformer_blocks\.\d+\.attn\.to_q"
_MMDIT_TEXT = r"transformer_blocks\.\d+\.attn\.add_q_proj"

DENOISERS: dict[str, DenoiserCase] = {
    # Stable Diffusion 1.x/2.x: conv proj_in, text enters through cross-attention K/V only.
    "sd15": DenoiserCase(
        class_name="UNet2DConditionModel",
        config=_UNET_SD15,
        inputs=_unet_inputs,
        grid_tokens=_unet_levels(0, 2),
        default_image_size=8,
        image_query=r".*attn1\.to_q",
        text_key=r".*attn2\.to_k",
    ),
    # SDXL: linear proj_in, two transformer layers in the attention block, pooled text + size ids via add_embedding.
    "sdxl": DenoiserCase(
        class_name="UNet2DConditionModel",
        config=_UNET_SDXL,
        inputs=_unet_inputs,
        grid_tokens=_unet_levels(1, 2),
        default_image_size=8,
        image_query=r".*attn1\.to_q",
        text_key=r".*attn2\.to_k",
    ),
    # SD ControlNet: a UNet encoder copy plus the conditioning-image encoder (`controlnet_cond_embedding`).
    "controlnet": DenoiserCase(
        class_name="ControlNetModel",
        config=_CONTROLNET,
        inputs=_controlnet_inputs,
        grid_tokens=_unet_levels(0, 2),
        default_image_size=8,
        image_query=r".*attn1\.to_q",
        text_key=r".*attn2\.to_k",
        notes="Output is a tuple of residuals; `output_tensor` concatenates them flattened.",
    ),
    "sd3_controlnet": DenoiserCase(
        class_name="SD3ControlNetModel",
        config=_SD3_CONTROLNET,
        inputs=_sd3_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
    ),
    "flux_controlnet": DenoiserCase(
        class_name="FluxControlNetModel",
        config=_FLUX_CONTROLNET,
        inputs=_flux_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
        joint_key=r"single_transformer_blocks\.\d+\.attn\.to_q",
    ),
    "qwenimage_controlnet": DenoiserCase(
        class_name="QwenImageControlNetModel",
        config=_QWENIMAGE_CONTROLNET,
        inputs=_qwenimage_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
    ),
    # SD3.5-like MMDiT: attn2 in dual-attention layers is a second IMAGE self-attention.
    "sd3": DenoiserCase(
        class_name="SD3Transformer2DModel",
        config=_SD3,
        inputs=_sd3_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=r"transformer_blocks\.\d+\.attn2?\.to_q",
        text_key=_MMDIT_TEXT,
    ),
    "flux": DenoiserCase(
        class_name="FluxTransformer2DModel",
        config=_FLUX,
        inputs=_flux_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
        joint_key=r"single_transformer_blocks\.\d+\.attn\.to_q",
    ),
    "flux2": DenoiserCase(
        class_name="Flux2Transformer2DModel",
        config=_FLUX2,
        inputs=_flux2_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
        joint_key=r"single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj",
    ),
    "chroma": DenoiserCase(
        class_name="ChromaTransformer2DModel",
        config=_CHROMA,
        inputs=_flux_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
        joint_key=r"single_transformer_blocks\.\d+\.attn\.to_q",
    ),
    # AuraFlow prepends 8 learned register tokens to the text.
    "auraflow": DenoiserCase(
        class_name="AuraFlowTransformer2DModel",
        config=_AURAFLOW,
        inputs=_auraflow_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=r"joint_transformer_blocks\.\d+\.attn\.to_q",
        text_key=r"joint_transformer_blocks\.\d+\.attn\.add_q_proj",
        joint_key=r"single_transformer_blocks\.\d+\.attn\.to_q",
        context_tokens_fn=lambda t: t + 8,
    ),
    # Z-Image pads caption and image sequences to multiples of 32 tokens; main `layers` run on both.
    "zimage": DenoiserCase(
        class_name="ZImageTransformer2DModel",
        config=_ZIMAGE,
        inputs=_zimage_inputs,
        grid_tokens=_zimage_tokens,
        # 10 x 10 patches = 100 tokens, padded to 128: clear of the padded caption (32, 64 or 96 tokens for up to 96).
        default_image_size=20,
        image_query=r"noise_refiner\.\d+\.attention\.to_q",
        text_key=r"context_refiner\.\d+\.attention\.to_q",
        joint_key=r"layers\.\d+\.attention\.to_q",
        context_tokens_fn=lambda t: t + (-t) % _ZIMAGE_SEQ_MULTIPLE,
        notes="Inputs and output are per-sample lists; `output_tensor` stacks the output.",
    ),
    "qwenimage": DenoiserCase(
        class_name="QwenImageTransformer2DModel",
        config=_QWENIMAGE,
        inputs=_qwenimage_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=_MMDIT_IMAGE_Q,
        text_key=_MMDIT_TEXT,
    ),
    "lumina2": DenoiserCase(
        class_name="Lumina2Transformer2DModel",
        config=_LUMINA2,
        inputs=_lumina2_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=r"noise_refiner\.\d+\.attn\.to_q",
        text_key=r"context_refiner\.\d+\.attn\.to_q",
        joint_key=r"layers\.\d+\.attn\.to_q",
    ),
    "wan": DenoiserCase(
        class_name="WanTransformer3DModel",
        config=_WAN,
        inputs=_wan_inputs,
        grid_tokens=_square(2, NUM_FRAMES),
        default_image_size=8,
        image_query=r"blocks\.\d+\.attn1\.to_q",
        text_key=r"blocks\.\d+\.attn2\.to_k",
    ),
    # Wan2.1 I2V: CLIP image tokens reach cross-attention through attn2.add_k_proj/add_v_proj.
    "wan_i2v": DenoiserCase(
        class_name="WanTransformer3DModel",
        config=_WAN_I2V,
        inputs=_wan_inputs,
        grid_tokens=_square(2, NUM_FRAMES),
        default_image_size=8,
        image_query=r"blocks\.\d+\.attn1\.to_q",
        text_key=r"blocks\.\d+\.attn2\.to_k",
        context_tokens_fn=lambda t: _WAN_TEXT_LEN,
        fixed_probes={r"blocks\.\d+\.attn2\.add_[kv]_proj": _WAN_I2V_IMAGE_TOKENS},
        notes=(
            f"Text is zero-padded to {_WAN_TEXT_LEN} tokens (diffusers hard-codes that split); "
            f"attn2.add_k_proj sees {_WAN_I2V_IMAGE_TOKENS} CLIP-image tokens."
        ),
    ),
    # HiDream: the text stream is T5 + the last Llama layer + the current block's Llama layer (3 x text_tokens).
    "hidream": DenoiserCase(
        class_name="HiDreamImageTransformer2DModel",
        config=_HIDREAM,
        inputs=_hidream_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=r"double_stream_blocks\.\d+\.block\.attn1\.to_q",
        text_key=r"double_stream_blocks\.\d+\.block\.attn1\.to_q_t",
        joint_key=r"single_stream_blocks\.\d+\.block\.attn1\.to_q",
        context_tokens_fn=lambda t: 3 * t,
        notes="In eval mode the routed MoE experts run under torch.no_grad (diffusers' moe_infer): no gradient there.",
    ),
    "ltx": DenoiserCase(
        class_name="LTXVideoTransformer3DModel",
        config=_LTX,
        inputs=_ltx_inputs,
        grid_tokens=_square(1, NUM_FRAMES),
        default_image_size=4,
        image_query=r"transformer_blocks\.\d+\.attn1\.to_q",
        text_key=r"transformer_blocks\.\d+\.attn2\.to_k",
    ),
    "cosmos": DenoiserCase(
        class_name="CosmosTransformer3DModel",
        config=_COSMOS,
        inputs=_cosmos_inputs,
        grid_tokens=_square(2, NUM_FRAMES),
        default_image_size=8,
        image_query=r"transformer_blocks\.\d+\.attn1\.to_q",
        text_key=r"transformer_blocks\.\d+\.attn2\.to_k",
    ),
    # Kandinsky5: a separate text encoder stack (`text_transformer_blocks`) with the same leaf names as the visual one.
    "kandinsky5": DenoiserCase(
        class_name="Kandinsky5Transformer3DModel",
        config=_KANDINSKY5,
        inputs=_kandinsky5_inputs,
        grid_tokens=_square(2, NUM_FRAMES),
        default_image_size=8,
        image_query=r"visual_transformer_blocks\.\d+\.self_attention\.to_query",
        text_key=r"(text_transformer_blocks\.\d+\.self_attention|visual_transformer_blocks\.\d+\.cross_attention)"
        r"\.to_key",
        notes="RoPE is applied in bfloat16 inside diffusers: compare outputs with loose tolerances.",
    ),
    "sana": DenoiserCase(
        class_name="SanaTransformer2DModel",
        config=_SANA,
        inputs=_sana_inputs,
        grid_tokens=_square(1),
        default_image_size=4,
        image_query=r"transformer_blocks\.\d+\.attn1\.to_q",
        text_key=r"transformer_blocks\.\d+\.attn2\.to_k",
    ),
    "pixart": DenoiserCase(
        class_name="PixArtTransformer2DModel",
        config=_PIXART,
        inputs=_pixart_inputs,
        grid_tokens=_square(2),
        default_image_size=8,
        image_query=r"transformer_blocks\.\d+\.attn1\.to_q",
        text_key=r"transformer_blocks\.\d+\.attn2\.to_k",
    ),
    # Stable Cascade stage C (prior): clip_text (T tokens) + pooled text + CLIP image, each pooled input expanded to
    # `clip_seq` tokens, form the context; self_attn blocks concatenate the image tokens in front of it for K/V.
    "stable_cascade": DenoiserCase(
        class_name="StableCascadeUNet",
        config=_STABLE_CASCADE,
        inputs=_stable_cascade_inputs,
        # switch_level=(False,) keeps one resolution (as in the real prior): every attention sees the same grid.
        grid_tokens=_square(1),
        default_image_size=8,
        image_query=r"(down|up)_blocks\.\d+\.\d+\.attention\.to_q",
        text_key=r"(down|up)_blocks\.\d+\.\d+\.kv_mapper\.1",
        joint_key=r"(down|up)_blocks\.\d+\.\d+\.attention\.to_k",
        context_tokens_fn=lambda t: t + 2 * _CASCADE_CLIP_SEQ,
        notes="Attention K/V see image tokens + context; Q sees image tokens only.",
    ),
}
