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

    path = convert_slider(
        args.src,
        args.dst,
        to=args.to,
        architecture=args.architecture,
        weight_name=args.weight_name,
        lora_alpha=args.lora_alpha,
    )
    print(f"wrote {path}")
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
    convert.add_argument("src", help="slider file or folder, or a trainer checkpoint folder (checkpoint-N)")
    convert.add_argument("dst", help="output folder (for --to comfyui also a .safetensors path)")
    convert.add_argument("--to", required=True, choices=("diffusers", "peft", "comfyui"))
    convert.add_argument(
        "--architecture", help="diffusers class or family (e.g. sdxl, flux) for files without metadata"
    )
    convert.add_argument("--weight_name", help="the file to read when SRC is a folder holding several")
    convert.add_argument(
        "--lora_alpha",
        type=float,
        help="for a trainer checkpoint without a finished slider beside it: the training's --lora_alpha",
    )
    convert.set_defaults(handler=_convert)
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
