# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""How the trainer talks to each pipeline family: one table row per diffusers pipeline class.

A row says where the denoiser is, how captions become the cached text embeddings the denoiser takes, and how to call
the denoiser on a batch of noisy latents so that it returns a prediction shaped like the latents, in the convention of
the family's objective (`peft_slider.training.objectives`). Everything else in the trainer is family-agnostic: adding a family
is adding a row (and a tiny pipeline to the smoke test).

The calls mirror what each pipeline's own `__call__` does in diffusers 0.42 (pipelines/*/pipeline_*.py):

- SD 1.x/2.x and SDXL (`UNet2DConditionModel`): integer timesteps; SDXL adds the pooled text embedding and the six
  size/crop numbers as `added_cond_kwargs`.
- FLUX.1: latents packed into 2x2 patches, `timestep` is sigma, `guidance` embeds a distilled guidance scale.
- SD3: `timestep` is sigma * 1000.
- Z-Image: list inputs with a frame axis, `t` is 1 - sigma, and the model predicts `x0 - noise` (its pipeline negates
  the output), so the prediction is negated here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from peft_slider.training import NoisyBatch

# A batch of cached text embeddings: name -> a (batch, ...) tensor, or a list of per-sample tensors (Z-Image's
# variable-length caption features).
Conditioning = dict[str, torch.Tensor | list[torch.Tensor]]


@dataclass(frozen=True)
class Family:
    """One supported pipeline family.

    Attributes:
        name (`str`): Short name used in messages and metadata (`"flux"`).
        denoiser (`str`): The pipeline attribute holding the denoiser (`"unet"` or `"transformer"`).
        encode_prompts (`Callable`): `(pipe, captions, device, max_sequence_length) -> Conditioning`, batch-first.
        predict (`Callable`): `(pipe, denoiser, noisy_batch, conditioning, options) -> prediction` shaped like
            `noisy_batch.noisy`. `denoiser` may be wrapped (DDP), so read configs from `pipe`.
        max_sequence_length (`int`, *optional*): The family's default text length for T5/LLM encoders.
        call_kwargs (`Callable`): `(options) -> dict` of extra `pipe(...)` arguments for validation.
        output_latents (`Callable`): `(pipe, latents, height, width) -> latents` turns `output_type="latent"` output
            into `(batch, channels, h, w)` latents (unpacks FLUX.1's tokens).
    """

    name: str
    denoiser: str
    encode_prompts: Callable[..., Conditioning]
    predict: Callable[..., torch.Tensor]
    max_sequence_length: int | None = None
    call_kwargs: Callable[[Any], dict[str, Any]] = field(default=lambda options: {})
    output_latents: Callable[..., torch.Tensor] = field(default=lambda pipe, latents, height, width: latents)


# ---------------------------------------------------------------------------------------------------------------------
# Images -> latents, the inverse of what the pipelines do before `vae.decode` (generic across these families).


def latent_normalization(vae: Any, channels: int) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """`(shift, scale)` such that the denoiser's latents are `(vae_latents - shift) * scale`.

    SDXL-style VAEs with `latents_mean`/`latents_std` use them; the others use `shift_factor` (FLUX.1, SD3, Z-Image)
    and `scaling_factor`.
    """
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, channels, 1, 1)
        return torch.tensor(mean).view(shape), torch.tensor(config.scaling_factor) / torch.tensor(std).view(shape)
    return float(getattr(config, "shift_factor", None) or 0.0), float(config.scaling_factor)


@torch.no_grad()
def encode_images(vae: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode images in [-1, 1] with the pipeline's VAE; returns the posterior mean and std in the denoiser's scale."""
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    posterior = vae.encode(pixel_values).latent_dist
    shift, scale = latent_normalization(vae, posterior.mean.shape[1])
    if isinstance(shift, torch.Tensor):
        shift, scale = shift.to(posterior.mean), scale.to(posterior.mean)
    return (posterior.mean - shift) * scale, posterior.std * scale


# ---------------------------------------------------------------------------------------------------------------------
# Text encoders


def _sd15_prompts(pipe, captions, device, max_sequence_length):
    prompt_embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"prompt_embeds": prompt_embeds}


def _sdxl_prompts(pipe, captions, device, max_sequence_length):
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _flux_prompts(pipe, captions, device, max_sequence_length):
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        captions, prompt_2=None, device=device, max_sequence_length=max_sequence_length
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _sd3_prompts(pipe, captions, device, max_sequence_length):
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        captions,
        prompt_2=None,
        prompt_3=None,
        device=device,
        do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def _zimage_prompts(pipe, captions, device, max_sequence_length):
    # A list: each caption's features without padding, as ZImagePipeline passes them.
    prompt_embeds, _ = pipe.encode_prompt(
        list(captions), device=device, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
    )
    return {"prompt_embeds": list(prompt_embeds)}


# ---------------------------------------------------------------------------------------------------------------------
# Denoiser calls


def _unet_predict(pipe, denoiser, batch: NoisyBatch, cond: Conditioning, options) -> torch.Tensor:
    kwargs = {}
    if "pooled_prompt_embeds" in cond:  # SDXL micro-conditioning: original size, crop (0, 0), target size
        noisy = batch.noisy
        height, width = noisy.shape[-2] * pipe.vae_scale_factor, noisy.shape[-1] * pipe.vae_scale_factor
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=noisy.device, dtype=noisy.dtype)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": cond["pooled_prompt_embeds"],
            "time_ids": time_ids.expand(noisy.shape[0], -1),
        }
    return denoiser(
        batch.noisy, batch.timesteps, encoder_hidden_states=cond["prompt_embeds"], return_dict=False, **kwargs
    )[0]


def _flux_predict(pipe, denoiser, batch: NoisyBatch, cond: Conditioning, options) -> torch.Tensor:
    noisy = batch.noisy
    size, channels, height, width = noisy.shape
    packed = pipe._pack_latents(noisy, size, channels, height, width)
    image_ids = pipe._prepare_latent_image_ids(size, height // 2, width // 2, noisy.device, noisy.dtype)
    prompt_embeds = cond["prompt_embeds"]
    text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full((size,), float(options.flux_guidance_value), device=noisy.device, dtype=torch.float32)
    output = denoiser(
        hidden_states=packed,
        timestep=batch.sigmas.to(noisy.dtype),
        guidance=guidance,
        pooled_projections=cond["pooled_prompt_embeds"],
        encoder_hidden_states=prompt_embeds,
        txt_ids=text_ids,
        img_ids=image_ids,
        return_dict=False,
    )[0]
    scale = pipe.vae_scale_factor
    return pipe._unpack_latents(output, height * scale, width * scale, scale)


def _flux_output_latents(pipe, latents, height, width):
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def _sd3_predict(pipe, denoiser, batch: NoisyBatch, cond: Conditioning, options) -> torch.Tensor:
    return denoiser(
        hidden_states=batch.noisy,
        timestep=batch.timesteps.to(batch.noisy.dtype),
        encoder_hidden_states=cond["prompt_embeds"],
        pooled_projections=cond["pooled_prompt_embeds"],
        return_dict=False,
    )[0]


def _zimage_predict(pipe, denoiser, batch: NoisyBatch, cond: Conditioning, options) -> torch.Tensor:
    frames = list(batch.noisy.unsqueeze(2).unbind(0))  # (channels, 1 frame, h, w) per sample
    output = denoiser(frames, (1 - batch.sigmas).to(batch.noisy.dtype), cond["prompt_embeds"], return_dict=False)[0]
    return -torch.stack(output).squeeze(2)


def _flux_call_kwargs(options) -> dict[str, Any]:
    return {"max_sequence_length": options.max_sequence_length}


# Keyed by pipeline class name. Img2img/inpaint variants share their text-to-image sibling's denoiser, but the trainer
# loads text-to-image pipelines, so only those are listed.
FAMILIES: dict[str, Family] = {
    # Stable Diffusion 1.x / 2.x: UNet2DConditionModel, one CLIP text encoder, epsilon or v-prediction.
    "StableDiffusionPipeline": Family("sd15", "unet", _sd15_prompts, _unet_predict),
    # Stable Diffusion XL: UNet2DConditionModel with text-time conditioning, two CLIP text encoders.
    "StableDiffusionXLPipeline": Family("sdxl", "unet", _sdxl_prompts, _unet_predict),
    # FLUX.1 (dev/schnell): packed latents, flow matching, distilled guidance embedding.
    "FluxPipeline": Family(
        "flux",
        "transformer",
        _flux_prompts,
        _flux_predict,
        max_sequence_length=512,
        call_kwargs=_flux_call_kwargs,
        output_latents=_flux_output_latents,
    ),
    # Stable Diffusion 3 / 3.5: MMDiT, flow matching, timestep = sigma * 1000.
    "StableDiffusion3Pipeline": Family(
        "sd3", "transformer", _sd3_prompts, _sd3_predict, max_sequence_length=256, call_kwargs=_flux_call_kwargs
    ),
    # Z-Image (Turbo): single-stream DiT, Qwen3 text features, flow matching with t = 1 - sigma and a negated output.
    "ZImagePipeline": Family(
        "zimage",
        "transformer",
        _zimage_prompts,
        _zimage_predict,
        max_sequence_length=512,
        call_kwargs=_flux_call_kwargs,
    ),
}


def family_of(pipe: Any) -> Family:
    """The table row for a pipeline, or a `ValueError` naming the supported pipeline classes."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    supported = ", ".join(f"{name} ({family.name})" for name, family in FAMILIES.items())
    raise ValueError(
        f"train_slider.py does not support {type(pipe).__name__}. Supported pipelines: {supported}. Other families "
        "need a row in examples/train_slider/families.py (how to encode prompts and call the denoiser)."
    )


def split_conditioning(cond: Conditioning) -> list[Conditioning]:
    """The inverse of `peft_slider.training.stack_conditioning`: one dict per caption, tensors without the batch axis, Z-Image lists of one."""
    size = len(next(iter(cond.values())))
    return [
        {key: [value[i]] if isinstance(value, list) else value[i] for key, value in cond.items()} for i in range(size)
    ]


def move_conditioning(cond: Conditioning, device: torch.device, dtype: torch.dtype) -> Conditioning:
    """Move a batch of embeddings to the training device and dtype."""
    moved: Conditioning = {}
    for key, value in cond.items():
        if isinstance(value, list):
            moved[key] = [item.to(device=device, dtype=dtype) for item in value]
        else:
            moved[key] = value.to(device=device, dtype=dtype)
    return moved
