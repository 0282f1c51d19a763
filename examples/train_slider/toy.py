# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The built-in toy run: a synthetic contrastive dataset, a tiny local base pipeline, and the concept's statistic.

The concept is the direction of the light. Every image is a 32x32 textured scene with a left-to-right brightness ramp:
the positive bucket (`slider_strength` +1) is lit from the right, the negative bucket (-1) from the left, and the
neutral bucket is lit evenly. All buckets share the same captions, so only the slider's sign can tell the two directions
apart, as in Concept Sliders' image-pair training.

Why lighting direction and not overall brightness: the tiny pipelines' VAE encoders have random weights, and their
GroupNorm layers normalise a global brightness shift away (a bright and a dark image encode to nearly the same latents),
while a spatial ramp survives encoding. Two statistics show the slider working: the projection of generated latents
onto the direction from the negative bucket's mean latent to the positive one's (where the denoiser works), and the
brightness of the right half of generated images minus the left half (what a person sees in the sweep image).

The tiny base: a random-weight denoiser has not learned to denoise anything, so a slider trained on it mostly learns to
denoise (the same at +s and -s) rather than a signed direction, and a random VAE decoder draws noise whatever the
latents. `build_toy_base` therefore first does what pretraining does for a real base model: it calibrates the VAE's
scaling to unit-variance latents (as SD's 0.18215 was calibrated), fits the VAE decoder to reconstruct the toy images
and fits the denoiser to them, for a few seconds each. The result is saved with `save_pretrained` and loaded back by the
trainer through `DiffusionPipeline.from_pretrained`, like any model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

# Captions shared by every bucket (words of the tiny tokenizers' vocabulary).
CAPTIONS = ("a photo of a room", "a picture of a house", "a photo of a street", "a picture of a room")
VALIDATION_PROMPT = "a photo of a room"
# (backend id, folder, slider_strength or None, sign of the brightness ramp)
BUCKETS = (
    ("lit_from_right", "lit_from_right", 1.0, 1.0),
    ("lit_from_left", "lit_from_left", -1.0, -1.0),
    ("evenly_lit", "evenly_lit", None, 0.0),
)
CONCEPT = "light from the right"
DEFAULT_SEEDS = (0, 1, 2, 3)


def _toy_images(sign: float, count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """`count` images in [-1, 1]: a left-to-right ramp of slope `sign * U(0.6, 0.9)` on a scene (`toy_scenes`)."""
    x = torch.linspace(-1.0, 1.0, resolution).view(1, 1, 1, resolution)
    slope = sign * (0.6 + 0.3 * torch.rand(count, 1, 1, 1, generator=generator))
    return (toy_scenes(count, resolution, generator) + slope * x).clamp(-1.0, 1.0)


def toy_scenes(count: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """`count` unlit scenes: a random level, a colour tint and a texture, before any light ramp is added."""
    level = 0.2 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    tint = 0.1 * (torch.rand(count, 3, 1, 1, generator=generator) - 0.5)
    texture = 0.1 * torch.randn(count, 3, resolution, resolution, generator=generator)
    return level + tint + texture


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = ((image + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array, mode="RGB").save(path)


def _caption(mode: str, index: int, sign: float) -> str:
    caption = CAPTIONS[index % len(CAPTIONS)]
    if mode == "prompts" and sign != 0:
        # The prompts mode's base must tie the light to words, so its prompt sets can select it.
        caption += f" with light from the {'right' if sign > 0 else 'left'}"
    return caption


def write_toy_dataset(
    folder: str | Path,
    *,
    images_per_bucket: int = 8,
    resolution: int = 32,
    seed: int = 0,
    data_dir: str | Path | None = None,
    mode: str = "images",
) -> Path:
    """Write the toy dataset (PNG + .txt captions per bucket), its dataloader JSON and a validation prompt library.

    Args:
        folder (`str` or `pathlib.Path`): Where to write; created if needed.
        images_per_bucket (`int`, *optional*, defaults to `8`): Images per bucket (the same in each, as sliders need).
        resolution (`int`, *optional*, defaults to `32`): Image edge in pixels.
        seed (`int`, *optional*, defaults to `0`): Seed of the images.
        data_dir (`str` or `pathlib.Path`, *optional*): Where the JSON says the buckets are, when `folder` is a
            staging folder that will be renamed to `data_dir`; defaults to `folder`.
        mode (`str`, *optional*, defaults to `"images"`): The trainer's mode. `"images"`: the buckets share their
            captions. `"pairs"`: also `pairs/before/` (lit from the left) and `pairs/after/` (the same scene lit from
            the right), matched by file name, captions in `after/`. `"prompts"`: the lit buckets' captions name the
            light ("... with light from the right"), so the base fitted to them ties the light to those words, and
            `prompts.yaml` asks for a slider between the two.

    Returns:
        `pathlib.Path`: the SimpleTuner-style dataloader JSON (`multidatabackend.json`), with absolute folder paths.
        `prompt_library.json` is written beside it.
    """
    folder = Path(folder).resolve()
    data_dir = folder if data_dir is None else Path(data_dir).resolve()
    generator = torch.Generator().manual_seed(seed)
    entries: list[dict[str, Any]] = []
    for backend_id, subfolder, strength, sign in BUCKETS:
        target = folder / subfolder
        target.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(_toy_images(sign, images_per_bucket, resolution, generator)):
            stem = f"{subfolder}_{index:03d}"
            _save_png(image, target / f"{stem}.png")
            (target / f"{stem}.txt").write_text(_caption(mode, index, sign) + "\n", encoding="utf-8")
        entry: dict[str, Any] = {
            "id": backend_id,
            "type": "local",
            "instance_data_dir": str(data_dir / subfolder),
            "caption_strategy": "textfile",
            "resolution": resolution,
            "resolution_type": "pixel",
        }
        if strength is not None:
            entry["slider_strength"] = strength
        entries.append(entry)
    entries.append({"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True})
    config = folder / "multidatabackend.json"
    config.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    library = {"room": VALIDATION_PROMPT, "street": "a photo of a street"}
    (folder / "prompt_library.json").write_text(json.dumps(library, indent=2) + "\n", encoding="utf-8")
    if mode == "pairs":
        write_toy_pairs(folder / "pairs", count=images_per_bucket, resolution=resolution, seed=seed)
    if mode == "prompts":
        (folder / "prompts.yaml").write_text(PROMPTS_YAML.format(resolution=resolution), encoding="utf-8")
    return config


# peft_slider's prompt file format (Concept Sliders' prompt YAML and ai-toolkit's slider section are read too). The
# base fitted to the toy images ties the light to these words.
PROMPTS_YAML = """\
peft_slider_prompts: 1
prompt_sets:
  - target: "a photo of a room"
    positive: "a photo of a room with light from the right"
    negative: "a photo of a room with light from the left"
    neutral: "a photo of a room"
    action: enhance
    guidance_scale: 1.0
    resolution: {resolution}
    batch_size: 2
    strength: 2.0
    mirror: true
"""


def write_toy_pairs(folder: str | Path, *, count: int = 8, resolution: int = 32, seed: int = 0) -> Path:
    """Write `count` before/after pairs: the same scene lit from the left (`before/`) and from the right (`after/`).

    Each pair shares its scene (level, tint, texture) and its ramp's steepness; only the side the light comes from
    differs, which is what paired training needs. Captions are `after/<stem>.txt`. Returns `folder`.
    """
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed + 1)
    scenes = toy_scenes(count, resolution, generator)
    slopes = 0.6 + 0.3 * torch.rand(count, 1, 1, 1, generator=generator)
    x = torch.linspace(-1.0, 1.0, resolution).view(1, 1, 1, resolution)
    for side, sign in (("before", -1.0), ("after", 1.0)):
        (folder / side).mkdir(parents=True, exist_ok=True)
        images = (scenes + sign * slopes * x).clamp(-1.0, 1.0)
        for index, image in enumerate(images):
            _save_png(image, folder / side / f"pair_{index:03d}.png")
    for index in range(count):
        caption = CAPTIONS[index % len(CAPTIONS)]
        (folder / "after" / f"pair_{index:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def _load_images(dataloader_config: Path, resolution: int) -> tuple[torch.Tensor, list[str], list[float]]:
    from peft_slider.training import SliderConcatDataset, load_simpletuner_backends

    dataset = SliderConcatDataset(load_simpletuner_backends(dataloader_config, resolution=resolution))
    samples = [dataset[i] for i in range(len(dataset))]
    pixels = torch.stack([sample["pixel_values"] for sample in samples])
    return pixels, [sample["caption"] for sample in samples], [sample["slider_strength"] for sample in samples]


@torch.no_grad()
def _calibrate_vae(vae: Any, pixels: torch.Tensor) -> None:
    """Set the VAE's scaling (and shift, where the family has one) so the toy images give unit-variance latents."""
    if getattr(vae.config, "latents_mean", None) is not None:
        return
    raw = vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float()
    if getattr(vae.config, "shift_factor", None) is not None:
        shift = raw.mean().item()
        vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / (raw - shift).std().item())
    else:
        vae.register_to_config(scaling_factor=1.0 / raw.pow(2).mean().sqrt().item())


def _fit_decoder(
    vae: Any, pixels: torch.Tensor, *, steps: int, batch_size: int, seed: int, progress: bool = False
) -> None:
    """Fit the VAE decoder to reconstruct the toy images from the (random, fixed) encoder's latents.

    A random decoder turns any latent into noise; fitted, it draws the light, so sweep images show what the slider does.
    The encoder, and so the latents the denoiser is trained on, stay as they are.
    """
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    parameters = [*vae.decoder.parameters(), *(vae.post_quant_conv.parameters() if vae.post_quant_conv else [])]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for _ in _progress(range(steps), "fit tiny VAE decoder", progress):
        index = torch.randperm(len(latents), generator=generator)[:batch_size].tolist()
        loss = torch.nn.functional.mse_loss(vae.decode(latents[index]).sample.float(), pixels[index].float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    vae.eval()
    vae.requires_grad_(False)


def build_toy_base(
    family_name: str,
    folder: str | Path,
    *,
    dataloader_config: str | Path,
    fit_steps: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    resolution: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Build a tiny pipeline of a family, fit it to the toy images, and save it for `from_pretrained`.

    Args:
        family_name (`str`): A tiny family (`"flux"`, `"sd15"`, `"sdxl"`, `"sd3"`, `"zimage"`, ...).
        folder (`str` or `pathlib.Path`): Where to save the pipeline.
        dataloader_config (`str` or `pathlib.Path`): The dataset to fit the base to (every bucket).
        fit_steps (`int`, *optional*, defaults to `300`): Full fine-tuning steps of the denoiser; 0 keeps the random
            weights (and still calibrates the VAE).
        learning_rate, batch_size, resolution, seed: Options of the fit.
        progress (`bool`, *optional*, defaults to `False`): Show progress bars for the two fits.

    Returns:
        `pathlib.Path`: `folder`.
    """
    from families import encode_images, family_of, split_conditioning

    from peft_slider.testing import build_tiny_pipeline, tiny_call_kwargs
    from peft_slider.training import objective_from_scheduler, stack_conditioning

    pipe = build_tiny_pipeline(family_name, seed=seed)
    family = family_of(pipe)
    pixels, captions, _ = _load_images(Path(dataloader_config), resolution)
    _calibrate_vae(pipe.vae, pixels)
    if fit_steps > 0:
        _fit_decoder(pipe.vae, pixels, steps=fit_steps, batch_size=batch_size, seed=seed, progress=progress)
        latents, _ = encode_images(pipe.vae, pixels)
        max_length = tiny_call_kwargs(family_name).get("max_sequence_length")
        with torch.no_grad():
            embeds = split_conditioning(family.encode_prompts(pipe, captions, torch.device("cpu"), max_length))
        denoiser = getattr(pipe, family.denoiser)
        denoiser.train()
        objective = objective_from_scheduler(pipe.scheduler)
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=learning_rate, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        options = SimpleNamespace(flux_guidance_value=1.0)

        for _ in _progress(range(fit_steps), f"fit tiny {family_name} denoiser", progress):
            index = torch.randperm(len(latents), generator=generator)[:batch_size].tolist()
            batch = objective.add_noise(latents[index], generator=generator)
            cond = stack_conditioning([embeds[i] for i in index])
            loss = objective.loss(family.predict(pipe, denoiser, batch, cond, options), batch.target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        denoiser.eval()
        denoiser.requires_grad_(False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def _progress(iterable, description: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------------
# The concept statistic


@torch.no_grad()
def concept_direction(pipe: Any, dataloader_config: str | Path, *, resolution: int = 32) -> torch.Tensor:
    """The unit direction, in the denoiser's latent space, from the negative bucket's mean latent to the positive one's."""
    from families import encode_images

    pixels, _, strengths = _load_images(Path(dataloader_config), resolution)
    latents, _ = encode_images(pipe.vae, pixels)
    strengths_t = torch.tensor(strengths)
    direction = latents[strengths_t > 0].mean(0) - latents[strengths_t < 0].mean(0)
    return direction / direction.norm()


@torch.no_grad()
def sweep_outputs(
    pipe: Any,
    strengths: Sequence[float],
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    prompt: str = VALIDATION_PROMPT,
    adapter_names: str | None = None,
    output_type: str = "latent",
    progress: bool = False,
    **call_kwargs: Any,
) -> list[torch.Tensor]:
    """What `pipe` generates at each strength for `seeds` (the same noise at every strength).

    Returns one tensor per strength: `(len(seeds), channels, h, w)` latents for `output_type="latent"` (FLUX.1's
    packed tokens unpacked), or `(len(seeds), 3, H, W)` images in [0, 1] for `output_type="pt"`. A pipeline without
    adapters is called as it is (the base model; strengths must then be `[0]`). With a slider, each strength goes
    through the pipeline mixin's `generate_at`, strength 0 included (the slider's scale set to 0).
    """
    from families import family_of

    from peft_slider.inference import enable_sliders
    from peft_slider.training.adapters import adapter_names as model_adapter_names

    family = family_of(pipe)
    has_adapters = bool(model_adapter_names(getattr(pipe, family.denoiser)))
    if not has_adapters and any(strength != 0 for strength in strengths):
        raise ValueError(f"`pipe` carries no slider, so it can only be run at strength 0, got {list(strengths)}.")
    enable_sliders(pipe)
    height = call_kwargs.pop("height", 32)
    width = call_kwargs.pop("width", 32)
    results = []
    description = f"concept statistic ({'latents' if output_type == 'latent' else 'images'})"
    for strength in _progress(strengths, description, progress):
        kwargs = dict(call_kwargs, height=height, width=width, output_type=output_type)
        kwargs["generator"] = [torch.Generator().manual_seed(seed) for seed in seeds]
        kwargs["num_images_per_prompt"] = len(seeds)
        if has_adapters:
            output = pipe.generate_at(prompt, strength=float(strength), adapter_names=adapter_names, **kwargs)
        else:
            output = pipe(prompt, **kwargs)
        images = output.images
        results.append(family.output_latents(pipe, images, height, width) if output_type == "latent" else images)
    return results


def concept_statistic(latents: Sequence[torch.Tensor], direction: torch.Tensor) -> list[float]:
    """Per entry of `latents` (one per strength), the mean projection of its samples onto the unit `direction`."""
    flat = direction.flatten().float()
    return [(batch.float().flatten(1) @ flat).mean().item() for batch in latents]


def lighting_statistic(images: Sequence[torch.Tensor]) -> list[float]:
    """Per entry of `images` (one per strength, values in [0, 1]), the mean brightness of the right half minus the left."""
    values = []
    for batch in images:
        half = batch.shape[-1] // 2
        values.append((batch[..., half:].float().mean() - batch[..., :half].float().mean()).item())
    return values


def is_increasing(values: Sequence[float]) -> bool:
    """Strictly increasing, and every value finite."""
    return all(math.isfinite(v) for v in values) and all(a < b for a, b in zip(values, values[1:]))
