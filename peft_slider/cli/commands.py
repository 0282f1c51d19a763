"""The `peft-slider` command line (also `python -m peft_slider`)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..targeting.architectures import ARCHITECTURES, FAMILY_ALIASES, SCOPES

__all__ = ["main"]


def _inspect(args: argparse.Namespace) -> int:
    from ..targeting.full_size import FULL_SIZE_MODELS
    from ..targeting.inspect_model import format_report, inspect_report, load_meta_model

    if args.list:
        print("Built-in real-size models:")
        for name, model in FULL_SIZE_MODELS.items():
            print(f"  {name:<10} {model.class_name:<32} {model.description}")
        print("Architectures (class names, family aliases):")
        for class_name, spec in ARCHITECTURES.items():
            print(f"  {class_name:<32} {', '.join(spec.aliases):<24} {spec.family}")
        return 0
    if args.model is None:
        raise SystemExit("peft-slider inspect: give a model (e.g. `flux`), or --list.")
    model, source = load_meta_model(args.model)
    scopes = SCOPES if args.scope == "both" else (args.scope,)
    report = inspect_report(model, scopes=scopes, rank=args.rank, variant=args.variant)
    if args.json:
        print(json.dumps({"source": source, **report}, indent=2))
    else:
        print(format_report(report, source=source))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..formats.export import convert_slider

    path = convert_slider(args.src, args.dst, to=args.to, architecture=args.architecture, weight_name=args.weight_name)
    print(f"wrote {path}")
    return 0


def _calibrated_strengths(raw: list[float], calibrated_range: tuple[float, float]) -> list[float]:
    """Evenly spaced calibrated strengths (the raw sweep's smallest step) across the calibrated range, holding 0."""
    step = min(b - a for a, b in zip(raw, raw[1:]))
    low, high = calibrated_range
    count_low, count_high = int(-low / step + 1e-9), int(high / step + 1e-9)
    strengths = [k * step for k in range(-count_low, count_high + 1)]
    # A range narrower than one step still gets its two ends.
    return strengths if len(strengths) > 1 else sorted({low, 0.0, high})


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusers import DiffusionPipeline

    from ..evaluation.calibration import write_calibration
    from ..evaluation.evaluate import evaluate_slider
    from ..evaluation.metrics import NoEffectError
    from ..formats.export import load_slider
    from ..inference.pipeline import enable_sliders

    try:
        extra = json.loads(args.call)
    except json.JSONDecodeError as error:
        raise ValueError(f"--call must be a JSON object such as '{{\"max_sequence_length\": 16}}': {error}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"--call must be a JSON object such as '{{\"max_sequence_length\": 16}}', got {args.call!r}.")
    call = {"num_inference_steps": args.steps, **extra}
    for name in ("height", "width", "guidance_scale"):
        if getattr(args, name) is not None:
            call[name] = getattr(args, name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = enable_sliders(DiffusionPipeline.from_pretrained(args.base))
    pipe.set_progress_bar_config(disable=True)
    load_slider(pipe, args.slider, adapter_name=args.adapter_name)
    options = {
        "seeds": args.seeds,
        "concept": args.concept,
        "distance": args.distance,
        "max_distance": args.max_distance,
        "slider_start": args.slider_start,
        "progress": not args.no_progress,
        **call,
    }
    evaluation = evaluate_slider(pipe, args.prompt, strengths=args.strengths, **options)
    print(evaluation.table())
    evaluation.save_json(out / "evaluation.json")
    evaluation.plot(out / "evaluation.png")
    print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.png'}")
    if not args.calibrate:
        return 0 if evaluation.metrics.effect else 1
    try:
        strength_map = evaluation.strength_map()
    except NoEffectError as error:
        print(f"calibration: {error}")
        return 1
    knots = ", ".join(f"{u:+.3f}->{s:+.3f}" for u, s in zip(strength_map.calibrated, strength_map.raw))
    print(
        f"\ncalibration: recommended range {evaluation.metrics.recommended_range}, calibrated range "
        f"({strength_map.range[0]:+.3f}, {strength_map.range[1]:+.3f}); knots (calibrated->raw): {knots}"
    )
    strengths = _calibrated_strengths(evaluation.strengths, strength_map.range)
    calibrated = evaluate_slider(pipe, args.prompt, strengths=strengths, calibrated=strength_map, **options)
    print("\nre-evaluated at calibrated strengths:\n" + calibrated.table())
    before, after = evaluation.metrics.range_smoothness, calibrated.metrics.range_smoothness
    print(
        f"\nstep evenness within the recommended range (smoothness, 1 = even): raw {before:.4f} -> calibrated {after:.4f}"
    )
    calibrated.save_json(out / "evaluation_calibrated.json")
    calibrated.plot(out / "evaluation_calibrated.png")
    raw_strengths = [s for s in evaluation.strengths if strength_map.raw_range[0] <= s <= strength_map.raw_range[1]]
    grid = {"seeds": args.seeds[0], "slider_start": args.slider_start, **call}
    pipe.sweep_grid(args.prompt, raw_strengths, path=out / "sweep_raw.png", title="raw strengths", **grid)
    pipe.sweep_grid(
        args.prompt, strengths, calibrated=strength_map, path=out / "sweep_calibrated.png", title="calibrated", **grid
    )
    print(
        f"wrote {out / 'evaluation_calibrated.json'}, {out / 'evaluation_calibrated.png'}, "
        f"{out / 'sweep_raw.png'}, {out / 'sweep_calibrated.png'}"
    )
    if args.save_calibration:
        for path in write_calibration(args.slider, evaluation.metrics, strength_map):
            print(f"wrote the calibration into {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-slider", description="Concept-slider LoRAs for diffusers and PEFT.")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="show what a slider adapts on a model (no weights are loaded)",
        description="Show what a slider adapts on a model: grouped patterns, counts, LoRA parameters, and what is "
        "skipped as text path. MODEL is a built-in name (" + ", ".join(sorted(FAMILY_ALIASES)) + "), a diffusers "
        "class name, a local model or pipeline folder, or a Hub id (needs network).",
    )
    inspect.add_argument("model", nargs="?", help="built-in name, class name, local folder or Hub id")
    inspect.add_argument("--scope", choices=(*SCOPES, "both"), default="both")
    inspect.add_argument("--rank", type=int, default=16, help="LoRA rank for the parameter count (default 16)")
    inspect.add_argument("--variant", choices=("lora", "lokr", "loha", "full"), default="lora")
    inspect.add_argument("--json", action="store_true", help="print JSON for machines")
    inspect.add_argument("--list", action="store_true", help="list the built-in models and known architectures")
    inspect.set_defaults(handler=_inspect)

    convert = commands.add_parser(
        "convert",
        help="convert a slider between the diffusers, PEFT and ComfyUI formats",
        description="Convert a slider file or folder (diffusers pytorch_lora_weights.safetensors, PEFT "
        "adapter_model.safetensors + adapter_config.json, kohya/ComfyUI .safetensors) to another format. The file is "
        "checked as it is read; the slider metadata is carried over.",
    )
    convert.add_argument("src", help="slider file or folder")
    convert.add_argument("dst", help="output folder (for --to comfyui also a .safetensors path)")
    convert.add_argument("--to", required=True, choices=("diffusers", "peft", "comfyui"))
    convert.add_argument(
        "--architecture", help="diffusers class or family (e.g. sdxl, flux) for files without metadata"
    )
    convert.add_argument("--weight_name", help="the file to read when SRC is a folder holding several")
    convert.set_defaults(handler=_convert)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure a slider: concept range, monotonicity, smoothness, preservation, saturation; calibrate it",
        description="Sweep a slider over strengths for every prompt and seed (one batched pass each), score the "
        "concept and the distance to the strength-0 image with built-in scorers (no weights needed), print the "
        "metrics and write evaluation.json and evaluation.png to --out. With --calibrate also compute the recommended "
        "range and the calibrated strength map, re-evaluate at even calibrated steps and write raw and calibrated "
        "sweep grids; --save_calibration stores the map in the slider's files. Exit code 1: the slider has no effect.",
    )
    evaluate.add_argument("slider", help="slider file or folder (any format load_slider reads)")
    evaluate.add_argument("--base", required=True, help="the base pipeline: a local folder or a Hub id")
    evaluate.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    evaluate.add_argument(
        "--strengths", type=float, nargs="+", default=[-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    )
    evaluate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    evaluate.add_argument(
        "--concept",
        default="brightness",
        help="concept scorer: brightness, contrast, colorfulness, ink, horizontal_balance, vertical_balance, "
        "or module:function",
    )
    evaluate.add_argument("--distance", default="ssim", help="preservation distance: ssim, mae, or module:function")
    evaluate.add_argument(
        "--max_distance",
        type=float,
        default=None,
        help="distance beyond which preservation collapses (saturation); off by default",
    )
    evaluate.add_argument("--adapter_name", default="slider")
    evaluate.add_argument("--slider_start", type=float, default=0.0)
    evaluate.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    evaluate.add_argument("--height", type=int, default=None)
    evaluate.add_argument("--width", type=int, default=None)
    evaluate.add_argument("--guidance_scale", type=float, default=None)
    evaluate.add_argument("--call", default="{}", help="further pipeline arguments as a JSON object")
    evaluate.add_argument("--out", default="slider-evaluation", help="output folder (default slider-evaluation)")
    evaluate.add_argument("--calibrate", action="store_true", help="compute and check the calibrated strength map")
    evaluate.add_argument(
        "--save_calibration", action="store_true", help="with --calibrate: write the map into the slider's files"
    )
    evaluate.add_argument("--no_progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "rank", 1) < 1:
        parser.error(f"--rank must be >= 1, got {args.rank}")
    with warnings.catch_warnings():
        # diffusers' own deprecation notices are not the user's concern at the command line.
        warnings.simplefilter("ignore", category=FutureWarning)
        try:
            return args.handler(args)
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            print(f"peft-slider {args.command}: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
