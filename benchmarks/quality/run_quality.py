# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Quality benchmark on real data: a stroke-thickness slider on scikit-learn's handwritten digits, three recipes.

What it does, on a CPU, in a few minutes:

1. Data: the 1,797 real 8x8 scans of `sklearn.datasets.load_digits`, upscaled to 16 px, drawn as dark ink on a white
   page. Each digit gets a thick version (morphological dilation with a 3x3 cross) and a thin one (erosion with it).
2. Base model: a tiny FLUX.1-style pipeline (`peft_slider.testing.build_tiny_pipeline("flux")`) whose tokenizers learn
   the words of the prompts ("a handwritten 3"). As in `examples/train_slider/toy.py`, its VAE decoder is fitted to
   draw the digits (all three thicknesses) and its denoiser is fitted to the original digits, class-conditioned by the
   prompt. It is saved to a temporary folder and every recipe loads it back with `from_pretrained`.
3. Three recipes, the same LoRA and the same number of optimizer steps:
   - `peft_slider`: positive = thick (+1), negative = thin (-1), neutral = original, neutral objective `preserve`;
   - `simpletuner`: the same buckets, neutral batches at strength 0 (zero gradient; the optimizer still steps);
   - `plain_lora`: a LoRA trained on the thick digits only (at scale 1), scaled at inference.
4. Scores at a few checkpoints with `peft_slider.evaluation.evaluate_slider` (concept scorer `ink`, distance `ssim`):
   range, monotonicity, smoothness, and identity kept (a logistic-regression classifier trained on the real 8x8 digits,
   applied to generated images averaged back down to 8x8: the % of images whose predicted digit is the one at
   strength 0; also interpolated at the same thickness change for every recipe). "Steps to target" is the first
   checkpoint where ink(+1) - ink(-1) reaches a quarter of the real data's thick-minus-thin ink gap. Every recipe is
   trained from `--train_seeds` seeds; the table gives their means.

Writes `quality.json`, `quality.md` (the table) and `quality_grid.png` to `--output_dir`.

Usage:
    python benchmarks/quality/run_quality.py            # the full run (about 2.5 minutes on 2 CPU cores)
    python benchmarks/quality/run_quality.py --quick    # a smoke run (well under a minute)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "train_slider"))  # families.py: how to call each pipeline family's denoiser

RECIPES = {
    "peft_slider": "ours: thick +1 / thin -1 / neutral original, neutral objective `preserve`",
    "simpletuner": "SimpleTuner's recipe: the same buckets, neutral batches at strength 0 (no gradient)",
    "plain_lora": "a plain LoRA on the thick digits only (scale 1), scaled at inference",
}
STRENGTHS = (-2.0, -1.0, 0.0, 1.0, 2.0)
PROMPT = "a handwritten {}"
NEW_WORDS = ["handwritten", *(str(digit) for digit in range(10))]
ADAPTER = "thickness"
CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # the structuring element of dilation and erosion: (dy, dx)
TARGET_FRACTION = 0.25  # "steps to target": ink(+1) - ink(-1) reaches this fraction of the data's thick - thin gap


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: few steps, one seed, few digits.")
    parser.add_argument("--output_dir", default="quality-output", help="Where to write the JSON, table and grid.")
    parser.add_argument("--resolution", type=int, default=16, help="Image edge in pixels (a multiple of 8).")
    parser.add_argument("--base_steps", type=int, default=None, help="Fitting steps of the base (decoder, denoiser).")
    parser.add_argument("--slider_steps", type=int, default=None, help="Optimizer steps per recipe.")
    parser.add_argument("--checkpoints", type=int, default=None, help="How many evenly spaced evaluations per recipe.")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per prompt in the evaluation.")
    parser.add_argument("--train_seeds", type=int, default=None, help="Training runs per recipe (from --seed on).")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (lora_alpha = rank).")
    parser.add_argument("--base_learning_rate", type=float, default=1e-3, help="Learning rate of the base's fit.")
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="Learning rate of the sliders.")
    parser.add_argument("--inference_steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(input_args)
    quick = args.quick
    for name, full, smoke in (
        ("base_steps", 2000, 60),
        ("slider_steps", 300, 30),
        ("checkpoints", 4, 1),
        ("seeds", 3, 1),
        ("train_seeds", 2, 1),
    ):
        if getattr(args, name) is None:
            setattr(args, name, smoke if quick else full)
    args.digits = list(range(10)) if not quick else [0, 1, 7]
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Data: real digits and their thick and thin versions


def _cross_filter(ink: torch.Tensor, reduce: str, pad_value: float) -> torch.Tensor:
    """Max (dilation) or min (erosion) of each pixel and its 4 neighbours (a 3x3 cross structuring element)."""
    size = ink.shape[-1]
    padded = F.pad(ink, (1, 1, 1, 1), value=pad_value)
    shifts = [padded[..., 1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size] for dy, dx in CROSS]
    stacked = torch.stack(shifts)
    return stacked.amax(0) if reduce == "max" else stacked.amin(0)


def load_digit_ink(resolution: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The real 8x8 digits as ink in [0, 1] `(n, 64)`, their labels, and `{original, thick, thin}` ink at `resolution`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    ink = F.interpolate(small, size=resolution, mode="bilinear", align_corners=False).clamp(0, 1)
    variants = {
        "original": ink,
        "thick": _cross_filter(ink, "max", 0.0),
        "thin": _cross_filter(ink, "min", 1.0),
    }
    return small.flatten(1), torch.tensor(digits.target), variants


def ink_to_pixels(ink: torch.Tensor) -> torch.Tensor:
    """Ink `(n, 1, H, W)` in [0, 1] -> RGB pixels in [-1, 1] (dark strokes on a white page), as a VAE takes them."""
    return (1.0 - 2.0 * ink).expand(-1, 3, -1, -1).contiguous()


def images_to_small_ink(images: torch.Tensor) -> torch.Tensor:
    """Generated images `(n, 3, H, W)` in [0, 1] -> ink `(n, 64)` at 8x8, the classifier's input."""
    luminance = images[:, 0] * 0.299 + images[:, 1] * 0.587 + images[:, 2] * 0.114
    return F.adaptive_avg_pool2d((1.0 - luminance).unsqueeze(1), 8).flatten(1).clamp(0, 1)


def fit_classifier(small_ink: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[Any, float]:
    """A logistic-regression digit classifier on the real 8x8 digits; returns it and its held-out accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        small_ink.numpy(), labels.numpy(), test_size=0.3, random_state=seed, stratify=labels.numpy()
    )
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return classifier, float(classifier.score(x_test, y_test))


# ---------------------------------------------------------------------------------------------------------------------
# The base model


def teach_words(pipe: Any, seed: int) -> None:
    """Add the prompts' words to the tiny tokenizers, with random embeddings of the existing ones' scale.

    The tiny tokenizers are word-level: an unknown word is the unknown token, so "a handwritten 3" and "a handwritten 4"
    would look alike. New rows get random embeddings as large as the old ones (a resize's default, the old rows' mean,
    would make the ten digits nearly the same prompt).
    """
    generator = torch.Generator().manual_seed(seed)
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        old = len(tokenizer)
        tokenizer.add_tokens(NEW_WORDS)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[old:] = torch.randn(len(tokenizer) - old, weight.shape[1], generator=generator) * weight[:old].std()


def _batches(count: int, batch_size: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randperm(count, generator=generator)[:batch_size]


def encode_digit_prompts(pipe: Any, family: Any) -> dict[str, torch.Tensor]:
    """The conditioning of the ten prompts, `{name: (10, ...)}`: row `d` is "a handwritten d"."""
    with torch.no_grad():
        return family.encode_prompts(pipe, [PROMPT.format(d) for d in range(10)], torch.device("cpu"), 16)


def conditioning_of(prompts: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: value[labels] for name, value in prompts.items()}


def fit_base(folder: Path, data: dict[str, torch.Tensor], labels: torch.Tensor, args: argparse.Namespace) -> Path:
    """Build the tiny FLUX.1 pipeline, fit its VAE decoder and denoiser to the digits, and save it to `folder`."""
    from families import encode_images, family_of

    from peft_slider.testing import build_tiny_pipeline
    from peft_slider.training import objective_from_scheduler

    torch.manual_seed(args.seed)
    pipe = build_tiny_pipeline("flux", seed=args.seed)
    teach_words(pipe, args.seed)
    family = family_of(pipe)
    vae = pipe.vae
    generator = torch.Generator().manual_seed(args.seed)

    # The VAE: its scaling calibrated to unit-variance latents, its decoder fitted to draw every thickness.
    pixels = ink_to_pixels(torch.cat([data["original"], data["thick"], data["thin"]]))
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mean
    shift = raw.mean().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / (raw - shift).std().item())
    optimizer = torch.optim.AdamW(vae.decoder.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for index in _batches(len(raw), args.batch_size, args.base_steps, generator):
        loss = F.mse_loss(vae.decode(raw[index]).sample, pixels[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    vae.eval().requires_grad_(False)

    # The denoiser: fitted to the original digits, conditioned on "a handwritten <digit>".
    latents, _ = encode_images(vae, ink_to_pixels(data["original"]))
    prompts = encode_digit_prompts(pipe, family)
    denoiser = pipe.transformer.train()
    objective = objective_from_scheduler(pipe.scheduler)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=args.base_learning_rate, weight_decay=0.0)
    options = SimpleNamespace(flux_guidance_value=1.0)
    for index in _batches(len(latents), args.batch_size, args.base_steps, generator):
        batch = objective.add_noise(latents[index], generator=generator)
        prediction = family.predict(pipe, denoiser, batch, conditioning_of(prompts, labels[index]), options)
        loss = objective.loss(prediction, batch.target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    denoiser.eval().requires_grad_(False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The recipes


def load_base(folder: Path) -> Any:
    from diffusers import DiffusionPipeline

    from peft_slider.inference import enable_sliders

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return enable_sliders(pipe)


def recipe_plan(
    recipe: str, sizes: dict[str, int], args: argparse.Namespace, seed: int
) -> list[tuple[str, float, list[int]]]:
    """`(bucket, strength, indices)` per optimizer step, from `SliderBatchSampler` and the recipe's neutral objective."""
    from peft_slider.training import NeutralObjective, SliderBackend, SliderBatchSampler

    if recipe == "plain_lora":
        backends = [SliderBackend(sizes["thick"], slider_strength=1.0, name="thick")]
        neutral = NeutralObjective("skip")
    else:
        backends = [
            SliderBackend(sizes["thick"], slider_strength=1.0, name="thick"),
            SliderBackend(sizes["thin"], slider_strength=-1.0, name="thin"),
            SliderBackend(sizes["original"], name="original"),
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 'zero' warns that its neutral batches teach nothing
            neutral = NeutralObjective("preserve" if recipe == "peft_slider" else "zero", backends=backends)
    offsets = {}
    total = 0
    for backend in backends:
        offsets[backend.name] = total
        total += backend.num_samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the plain LoRA has no negative bucket, on purpose
        sampler = SliderBatchSampler(backends, batch_size=args.batch_size, seed=seed, drop_last=True)
    plan, neutral_index, epoch = [], 0, 0
    while len(plan) < args.slider_steps:
        sampler.set_epoch(epoch)
        for info, indices in zip(sampler.plan(), sampler):
            step = neutral.step(info.slider_strength, neutral_index=neutral_index)
            neutral_index += info.slider_strength == 0
            plan.append((info.backend, step.strength, [i - offsets[info.backend] for i in indices]))
            if len(plan) == args.slider_steps:
                break
        epoch += 1
    return plan


def evaluate(pipe: Any, classifier: Any, args: argparse.Namespace, *, keep_images: bool = False) -> dict[str, Any]:
    """`evaluate_slider` on the digit prompts, plus the classifier's identity kept per strength."""
    from peft_slider.evaluation import evaluate_slider

    evaluation = evaluate_slider(
        pipe,
        [PROMPT.format(d) for d in args.digits],
        strengths=STRENGTHS,
        seeds=list(range(args.seeds)),
        concept="ink",
        distance="ssim",
        adapter_names=ADAPTER,
        keep_images=True,
        progress=False,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=args.inference_steps,
        guidance_scale=1.0,
        max_sequence_length=16,
        output_type="pt",
    )
    predictions = []  # per sample, the predicted digit at each strength
    for images in evaluation.images:
        small = images_to_small_ink(torch.stack([torch.as_tensor(image) for image in images]))
        predictions.append([int(p) for p in classifier.predict(small.numpy())])
    zero = STRENGTHS.index(0.0)
    prompted = [int(prompt.split()[-1]) for prompt, _ in evaluation.samples]
    kept = {
        f"{s:+g}": 100.0 * sum(row[j] == row[zero] for row in predictions) / len(predictions)
        for j, s in enumerate(STRENGTHS)
    }
    correct = sum(row[zero] == digit for row, digit in zip(predictions, prompted))
    m = evaluation.metrics
    scores = dict(zip(STRENGTHS, m.mean_scores))
    result = {
        "mean_ink": {f"{s:+g}": v for s, v in scores.items()},
        "ink_change": m.concept_change,
        "range_seed_spreads": m.concept_range,
        "ink_gap_pm1": scores[1.0] - scores[-1.0],
        "monotonicity": m.monotonicity,
        "smoothness": m.smoothness,
        "ssim_distance": m.preservation,
        "identity_kept_pct": kept,
        "prompt_accuracy_at_0_pct": 100.0 * correct / len(prompted),
        "diagnosis": m.diagnosis,
    }
    if keep_images:
        result["images"] = evaluation.images
    return result


def train_recipe(
    recipe: str,
    base: Path,
    latents: dict[str, torch.Tensor],
    labels: torch.Tensor,
    classifier: Any,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """Train one recipe for `args.slider_steps` steps from `seed`, evaluating at evenly spaced checkpoints."""
    from families import family_of

    from peft_slider import SliderLoraConfig
    from peft_slider.training import SliderScaler, objective_from_scheduler

    pipe = load_base(base)
    family = family_of(pipe)
    denoiser = pipe.transformer
    torch.manual_seed(seed)
    config = SliderLoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights=True, model=denoiser)
    denoiser.add_adapter(config, adapter_name=ADAPTER)
    parameters = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.0)
    scaler = SliderScaler(denoiser, adapter_names=ADAPTER)
    objective = objective_from_scheduler(pipe.scheduler)
    prompts = encode_digit_prompts(pipe, family)
    options = SimpleNamespace(flux_guidance_value=1.0)
    generator = torch.Generator().manual_seed(seed)
    plan = recipe_plan(recipe, {name: len(value) for name, value in latents.items()}, args, seed)
    checkpoints = {round(args.slider_steps * (k + 1) / args.checkpoints) for k in range(args.checkpoints)}

    history, start, train_seconds = [], time.perf_counter(), 0.0
    for step, (bucket, strength, indices) in enumerate(plan, start=1):
        tick = time.perf_counter()
        denoiser.train()
        batch = objective.add_noise(latents[bucket][indices], generator=generator)
        cond = conditioning_of(prompts, labels[indices])
        with scaler.at(strength):
            loss = objective.loss(family.predict(pipe, denoiser, batch, cond, options), batch.target)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - tick
        if step in checkpoints:
            denoiser.eval()
            with torch.no_grad():
                evaluation = evaluate(pipe, classifier, args, keep_images=step == args.slider_steps)
            history.append({"step": step, **evaluation})
    return {"seed": seed, "history": history, "train_seconds": train_seconds, "seconds": time.perf_counter() - start}


def average_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints of several training runs, their numbers averaged (a `None` or text: the first run's)."""
    history = []
    for checkpoints in zip(*(run["history"] for run in runs)):
        merged = {}
        for key, first in checkpoints[0].items():
            values = [checkpoint[key] for checkpoint in checkpoints]
            if isinstance(first, dict):
                merged[key] = {name: statistics.fmean(value[name] for value in values) for name in first}
            elif key != "step" and isinstance(first, float) and None not in values:
                merged[key] = statistics.fmean(values)
            else:
                merged[key] = first
        history.append(merged)
    return history


# ---------------------------------------------------------------------------------------------------------------------
# Report


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def matched_identity(checkpoint: dict[str, Any], level: float) -> tuple[float | None, float | None]:
    """Identity kept (%) where the ink has moved by `level` from strength 0, on the thin and the thick side.

    Linear interpolation between the sweep's strengths (strength 0 keeps 100%); `None` for a side that never moves the
    ink that far. A slider that moves less keeps more digits at a given strength; this compares recipes at the same
    thickness change instead.
    """
    ink, kept = checkpoint["mean_ink"], checkpoint["identity_kept_pct"]
    sides = []
    for side in (("+0", "-1", "-2"), ("+0", "+1", "+2")):
        moved = [abs(ink[s] - ink["+0"]) for s in side]
        found = None
        for j in range(1, len(side)):
            if moved[j] >= level > moved[j - 1]:
                t = (level - moved[j - 1]) / (moved[j] - moved[j - 1])
                found = kept[side[j - 1]] + t * (kept[side[j]] - kept[side[j - 1]])
                break
        sides.append(found)
    return sides[0], sides[1]


def markdown_table(report: dict[str, Any]) -> str:
    target = report["target_ink_gap"]
    level = report["matched_ink_change"]
    lines = [
        "| recipe | ink change -2..+2 | range (seed spreads) | monotonicity | smoothness | SSIM distance | "
        f"identity kept -2 / -1 / +1 / +2 (%) | identity kept at ink -{level:.3f} / +{level:.3f} (%) | "
        "steps to target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        result = report["recipes"][recipe]
        final = result["history"][-1]
        changes = [run["history"][-1]["ink_change"] for run in result["runs"]]
        change = _number(final["ink_change"])
        if len(changes) > 1:
            change += f" ± {statistics.stdev(changes):.3f}"
        kept = final["identity_kept_pct"]
        matched = " / ".join(_number(value, 0) for value in matched_identity(final, level))
        reached = next((h["step"] for h in result["history"] if h["ink_gap_pm1"] >= target), None)
        checked = ", ".join(str(h["step"]) for h in result["history"])
        lines.append(
            f"| {recipe} | {change} | {_number(final['range_seed_spreads'], 1)} | "
            f"{_number(final['monotonicity'], 2)} | {_number(final['smoothness'], 2)} | "
            f"{_number(final['ssim_distance'])} | "
            f"{' / '.join(f'{kept[s]:.0f}' for s in ('-2', '-1', '+1', '+2'))} | {matched} | "
            f"{reached if reached is not None else f'not reached ({checked})'} |"
        )
    return "\n".join(lines)


def save_grid(
    report: dict[str, Any], images: dict[str, list[list[Any]]], path: Path, args: argparse.Namespace
) -> None:
    """Seed 0 of each digit, one row per recipe and digit, one column per strength."""
    from peft_slider.inference.grid import make_sweep_grid

    rows, labels = [], []
    for recipe, sweeps in images.items():
        for index, sweep in enumerate(sweeps[:: args.seeds]):
            rows.append(sweep)
            labels.append(f"{recipe} {args.digits[index]}")
    grid = make_sweep_grid(
        rows,
        row_labels=labels,
        column_labels=[f"{s:+g}" for s in STRENGTHS],
        title=f"stroke thickness, {report['slider_steps']} steps",
        cell_size=48,
    )
    grid.save(path)


def main(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import transformers

    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError(
            "The quality benchmark needs scikit-learn (the digits and the classifier): pip install scikit-learn, or "
            'pip install -e ".[quality]"'
        ) from None

    torch.set_num_threads(1)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    from families import encode_images

    small_ink, labels, ink = load_digit_ink(args.resolution)
    classifier, accuracy = fit_classifier(small_ink, labels, args.seed)
    # The classifier on the real digits at the benchmark's resolution, averaged back to 8x8 (what generated images go
    # through), per thickness: the identity a perfect slider could keep.
    real_accuracy = {
        name: 100.0 * float(classifier.score(F.adaptive_avg_pool2d(value, 8).flatten(1).numpy(), labels.numpy()))
        for name, value in ink.items()
    }
    data_ink = {name: float(value.mean()) for name, value in ink.items()}
    report: dict[str, Any] = {
        "command": "python benchmarks/quality/run_quality.py" + (" --quick" if args.quick else ""),
        "resolution": args.resolution,
        "base_steps": args.base_steps,
        "slider_steps": args.slider_steps,
        "seeds": args.seeds,
        "train_seeds": args.train_seeds,
        "digits": args.digits,
        "strengths": list(STRENGTHS),
        "classifier_test_accuracy_pct": 100.0 * accuracy,
        "classifier_accuracy_on_real_pct": real_accuracy,
        "data_mean_ink": data_ink,
        "target_ink_gap": TARGET_FRACTION * (data_ink["thick"] - data_ink["thin"]),
        # Identity is compared at this thickness change on each side: half the target gap, as at +1 and -1 on target.
        "matched_ink_change": TARGET_FRACTION * (data_ink["thick"] - data_ink["thin"]) / 2,
        "recipe_descriptions": RECIPES,
        "recipes": {},
    }
    print(f"classifier: {100 * accuracy:.1f}% held-out accuracy on the real 8x8 digits")

    images = {}
    with tempfile.TemporaryDirectory(prefix="quality-base-") as folder:
        tick = time.perf_counter()
        base = fit_base(Path(folder) / "base", ink, labels, args)
        report["base_seconds"] = time.perf_counter() - tick
        print(f"base fitted in {report['base_seconds']:.0f} s")
        vae = load_base(base).vae
        latents = {name: encode_images(vae, ink_to_pixels(value))[0] for name, value in ink.items()}
        for recipe in RECIPES:
            runs = []
            for seed in range(args.seed, args.seed + args.train_seeds):
                result = train_recipe(recipe, base, latents, labels, classifier, args, seed)
                final = result["history"][-1]
                images.setdefault(recipe, final.pop("images"))  # the grid shows the first training run
                print(
                    f"{recipe} (training seed {seed}): {result['seconds']:.0f} s, ink change {final['ink_change']:+.3f}"
                )
                runs.append(result)
            report["recipes"][recipe] = {"history": average_runs(runs), "runs": runs}

    report["seconds"] = time.perf_counter() - start
    table = markdown_table(report)
    (output_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "quality.md").write_text(
        f"{table}\n\nCommand: `{report['command']}`, {report['seconds']:.0f} s.\n", encoding="utf-8"
    )
    save_grid(report, images, output_dir / "quality_grid.png", args)
    print(table)
    print(f"total {report['seconds']:.0f} s; wrote {output_dir}/quality.json, quality.md, quality_grid.png")
    return report


if __name__ == "__main__":
    main(parse_args())
