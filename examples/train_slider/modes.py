# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The trainer's three modes: what a batch holds and how it becomes a loss. The loop, the checkpoints and the saving
are the same for all three (train_slider.py); the objectives are peft_slider's.

- `images`: signed image buckets (SimpleTuner's slider datasets). A batch comes from one bucket and trains at its
  strength toward its images (`peft_slider.training.objectives`).
- `pairs`: before/after image pairs. A batch of B pairs trains 2B samples in one pass: the "after" images at `+s`, the
  "before" images at `-s`, each pair with one noise and one timestep (`peft_slider.training.paired_images`).
- `prompts`: prompt sets, no images. The frozen base's predictions for the neutral, positive and negative prompts
  make the target of the slider's prediction for the target prompt at `+s` (and mirrored at `-s`), at latents from
  the base's own trajectories for the target prompt (`peft_slider.training.text_prompts`).

Every mode caches what does not change (VAE latents, text embeddings, rollout trajectories) once, before training.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from families import Conditioning, encode_images, move_conditioning, split_conditioning
from torch.utils.data import Dataset

from peft_slider.training import stack_conditioning

logger = logging.getLogger("train_slider")

MODES = ("images", "prompts", "pairs")


class CachedSamples(Dataset):
    """Precomputed samples (dicts of tensors, numbers and conditionings), indexed like the dataset they came from, so
    the same `SliderBatchSampler` drives them."""

    def __init__(self, samples: list[dict[str, Any]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch cached samples: tensors stacked, conditionings batched, numbers as tensors (strengths in float64)."""
    batch: dict[str, Any] = {}
    for key, value in samples[0].items():
        values = [sample[key] for sample in samples]
        if key == "conditioning":
            batch[key] = stack_conditioning(values)
        elif isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif key == "slider_strength":
            batch[key] = torch.tensor(values, dtype=torch.float64)
        else:
            batch[key] = torch.tensor(values)
    return batch


def repeat_conditioning(cond: Conditioning, times: int) -> Conditioning:
    """A batch of conditionings repeated `times` times along the batch: `[c, c, ...]` (lists, Z-Image's, concatenated)."""
    return {
        key: list(value) * times if isinstance(value, list) else torch.cat([value] * times)
        for key, value in cond.items()
    }


@torch.no_grad()
def encode_captions(run: Any, captions: list[str], *, chunk: int = 16) -> dict[str, Conditioning]:
    """Every distinct caption's text embeddings (on the CPU, without the batch axis), encoded once."""
    from tqdm.auto import tqdm

    distinct = list(dict.fromkeys(captions))
    embeds: dict[str, Conditioning] = {}
    for start in tqdm(
        range(0, len(distinct), chunk), desc="cache text embeddings", leave=False, disable=run.args.quiet
    ):
        part = distinct[start : start + chunk]
        encoded = run.family.encode_prompts(run.pipe, part, run.device, run.args.max_sequence_length)
        cpu = {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in encoded.items()}
        embeds.update(zip(part, split_conditioning(cpu)))
    return embeds


@torch.no_grad()
def cache_dataset(run: Any, dataset: Any, images: dict[str, str], *, chunk: int = 16) -> CachedSamples:
    """Every sample of `dataset` as cached tensors: the VAE latents of its images (`images` maps a cached name to the
    sample's image key; posterior stds too with `--latent_sampling sample`), its caption's embeddings (each distinct
    caption encoded once) and its `slider_strength`. Indexed like `dataset`, so the same sampler drives both."""
    from tqdm.auto import tqdm

    samples: list[dict[str, Any]] = []
    captions: list[str] = []
    for start in tqdm(range(0, len(dataset), chunk), desc="cache latents", leave=False, disable=run.args.quiet):
        items = [dataset[i] for i in range(start, min(start + chunk, len(dataset)))]
        rows: list[dict[str, Any]] = [{} for _ in items]
        for name, key in images.items():
            mean, std = encode_images(run.pipe.vae, torch.stack([item[key] for item in items]).to(run.device))
            for row, value in zip(rows, mean.float().cpu().unbind(0)):
                row[name] = value
            if run.args.latent_sampling == "sample":
                for row, value in zip(rows, std.float().cpu().unbind(0)):
                    row[f"{name}_std"] = value
        samples += [{**row, "slider_strength": float(item["slider_strength"])} for row, item in zip(rows, items)]
        captions += [item["caption"] for item in items]
    embeds = encode_captions(run, captions)
    for sample, caption in zip(samples, captions):
        sample["conditioning"] = embeds[caption]
    return CachedSamples(samples)


def sample_latents(run: Any, batch: dict[str, Any], key: str, generator: torch.Generator) -> torch.Tensor:
    """A batch's cached latents for `key`, or with `--latent_sampling sample` a fresh posterior sample of them."""
    latents = batch[key].to(run.device)
    if f"{key}_std" in batch:
        noise = torch.randn(latents.shape, generator=generator, device=run.device)
        latents = latents + batch[f"{key}_std"].to(run.device) * noise
    return latents.to(run.weight_dtype)


def _predictor(run: Any, cond: Conditioning | None = None):
    """`predict(noisy[, conditioning])`: the denoiser on `conditioning`, or on `cond` when none is given. Under no_grad (the frozen base) the unwrapped denoiser is called, so
    a DDP wrapper only sees the passes that train."""

    def predict(noisy, conditioning: Conditioning | None = None):
        model = run.model if torch.is_grad_enabled() else run.denoiser
        return run.family.predict(run.pipe, model, noisy, cond if conditioning is None else conditioning, run.args)

    return predict


# ---------------------------------------------------------------------------------------------------------------------
# images


class ImagesMode:
    """Signed image buckets from a SimpleTuner-style dataloader JSON (`--dataloader_config`)."""

    name = "images"

    def __init__(self, run: Any):
        self.run = run

    def load(self) -> tuple[list[Any], Dataset]:
        from peft_slider.training import SliderConcatDataset, load_simpletuner_backends

        run, args = self.run, self.run.args
        with run.usage("--dataloader_config", args.dataloader_config, OSError):
            backends = load_simpletuner_backends(
                args.dataloader_config, resolution=args.resolution, base_dir=args.data_root
            )
        dataset = SliderConcatDataset(backends)
        listing = ", ".join(f"{b.name} ({len(b)} samples, strength {b.slider_strength})" for b in backends)
        logger.info("Backends: %s", listing)
        return dataset.backends, cache_dataset(run, dataset, {"latents": "pixel_values"})

    def loss(self, batch: dict[str, Any], step_plan: Any, generator: torch.Generator, *, measure_base: bool):
        """One forward and backward pass at the batch's strength; returns the loss and, with `measure_base`, the
        frozen base's loss on the same noisy batch and target."""
        run = self.run
        latents = sample_latents(run, batch, "latents", generator)
        noisy = run.objective.add_noise(latents, generator=generator)
        predict = _predictor(run, move_conditioning(batch["conditioning"], run.device, run.weight_dtype))
        if step_plan.target == "base":
            # The frozen base model's prediction: the slider at 0 (the assistant, if any, stays on).
            with torch.no_grad(), run.scaler.at(0.0):
                target = predict(noisy).detach()
        else:
            target = noisy.target
        base_loss = None
        if measure_base and step_plan.target != "base":
            # The denoising loss barely moves while a slider learns (most of it is noise no model can predict); how
            # much the slider at this batch's strength beats the base on the same batch shows what it has learnt.
            with torch.no_grad(), run.scaler.at(0.0):
                base_loss = run.objective.loss(predict(noisy), target).detach()
        # The batch's strength holds for the forward and the backward pass (gradient checkpointing re-runs the
        # forward inside backward), and the previous scale is restored exactly on exit.
        with run.scaler.at(step_plan.strength):
            loss = run.objective.loss(predict(noisy), target)
            run.accelerator.backward(loss)
        return loss.detach(), base_loss


# ---------------------------------------------------------------------------------------------------------------------
# pairs


class PairsMode:
    """Before/after image pairs (`--pairs`: a folder with `before/` and `after/`, or a JSON/CSV manifest)."""

    name = "pairs"

    def __init__(self, run: Any):
        self.run = run

    def load(self) -> tuple[list[Any], Dataset]:
        from peft_slider.training import load_image_pairs

        run, args = self.run, self.run.args
        with run.usage("--pairs", args.pairs, OSError):
            dataset = load_image_pairs(
                args.pairs,
                resolution=args.resolution,
                slider_strength=args.pair_strength,
                caption=args.pair_caption,
                name="pairs",
            )
        logger.info("Pairs: %d from %s, trained at +/-%s", len(dataset), args.pairs, args.pair_strength)
        return [dataset.backend], cache_dataset(run, dataset, {"after": "after", "before": "before"}, chunk=8)

    def loss(self, batch: dict[str, Any], step_plan: Any, generator: torch.Generator, *, measure_base: bool):
        from peft_slider.training import paired_slider_loss

        run = self.run
        after = sample_latents(run, batch, "after", generator)
        before = sample_latents(run, batch, "before", generator)
        cond = move_conditioning(batch["conditioning"], run.device, run.weight_dtype)
        result = paired_slider_loss(
            _predictor(run, repeat_conditioning(cond, 2)),  # [after..., before...] share their captions
            run.scaler,
            after,
            before,
            objective=run.objective,
            strength=step_plan.strength,
            generator=generator,
            backward=run.accelerator.backward,
        )
        return result.loss.detach(), result.base_loss


# ---------------------------------------------------------------------------------------------------------------------
# prompts


class PromptsMode:
    """Prompt sets (`--prompts_file`: Concept Sliders' prompt YAML, an ai-toolkit slider config, or ours)."""

    name = "prompts"

    def __init__(self, run: Any):
        self.run = run

    def load(self) -> tuple[list[Any], Dataset]:
        from peft_slider.training import RolloutPool, SliderBackend, load_prompt_slider

        run, args = self.run, self.run.args
        with run.usage("--prompts_file", args.prompts_file, OSError):
            self.spec = load_prompt_slider(args.prompts_file, resolution=args.resolution)
        groups: dict[int, list[int]] = {}
        for index, prompt_set in enumerate(self.spec.prompt_sets):
            if prompt_set.resolution is None:
                raise run.usage_error(
                    f"`--prompts_file` {args.prompts_file!r}: {prompt_set.name or 'a prompt set'} gives no resolution; "
                    "give one in the file or pass `--resolution`."
                )
            groups.setdefault(prompt_set.resolution, []).append(index)
        self.embeddings = {
            text: move_conditioning(cond, run.device, run.weight_dtype)
            for text, cond in encode_captions(run, self.spec.prompts()).items()
        }
        backends, samples, self.pools = [], [], {}
        for resolution, indices in sorted(groups.items()):
            strength = max(self.spec.prompt_sets[i].strength for i in indices)
            name = f"prompts_{resolution}px"
            backends.append(SliderBackend(len(indices), slider_strength=strength, name=name, paired=True))
            samples += [{"prompt_set": i, "slider_strength": strength} for i in indices]
            pixels = torch.zeros(1, 3, resolution, resolution, device=run.device, dtype=run.weight_dtype)
            latent_shape = tuple(encode_images(run.pipe.vae, pixels)[0].shape[1:])
            targets = list(dict.fromkeys(self.spec.prompt_sets[i].target for i in indices))
            logger.info(
                "Rollouts at %dpx: %d trajectories x %d steps for %d target prompt(s), with the base model",
                resolution,
                args.rollout_trajectories,
                args.rollout_steps,
                len(targets),
            )
            self.pools[resolution] = RolloutPool.build(
                _predictor(run),
                run.objective,
                run.scaler,
                self.embeddings,
                targets,
                trajectories_per_prompt=args.rollout_trajectories,
                num_steps=args.rollout_steps,
                latent_shape=latent_shape,
                seed=args.seed,
                device=run.device,
                dtype=run.weight_dtype,
            )
            if args.cache_frozen_predictions:
                # The prepared denoiser runs its frozen passes under autocast (mixed precision): so does the cache.
                with run.accelerator.autocast():
                    self.pools[resolution].cache_predictions(
                        _predictor(run),
                        run.scaler,
                        self.embeddings,
                        [self.spec.prompt_sets[i] for i in indices],
                        anchors=self.spec.anchors,
                    )
        listing = ", ".join(f"{b.name} ({b.num_samples} prompt sets)" for b in backends)
        logger.info("Prompt sets from %s (%s): %s", args.prompts_file, self.spec.format, listing)
        return backends, CachedSamples(samples)

    def loss(self, batch: dict[str, Any], step_plan: Any, generator: torch.Generator, *, measure_base: bool):
        from peft_slider.training import prompt_slider_loss

        run = self.run
        sets = [self.spec.prompt_sets[i] for i in batch["prompt_set"].tolist()]
        sets = [prompt_set for prompt_set in sets for _ in range(prompt_set.batch_size)]
        pool = self.pools[sets[0].resolution]
        targets = [prompt_set.target for prompt_set in sets]
        # The pool draws on the CPU (where it is stored), from the step's seed, whatever the training device.
        generator = torch.Generator().manual_seed(generator.initial_seed())
        if run.args.cache_frozen_predictions:
            noisy, frozen = pool.draw_cached(targets, generator=generator)
        else:
            noisy, frozen = pool.draw(targets, generator=generator), None
        result = prompt_slider_loss(
            _predictor(run),
            run.scaler,
            noisy,
            sets,
            self.embeddings,
            anchors=self.spec.anchors,
            backward=run.accelerator.backward,
            frozen=frozen,
        )
        return result.loss.detach(), result.base_loss


MODE_CLASSES = {"images": ImagesMode, "pairs": PairsMode, "prompts": PromptsMode}
