"""The `peft-slider` command line (also `python -m peft_slider`).

Only the standard library and the architecture table are imported up front, so `--help` and `--version` start at
once; each command imports what it uses. Results (a report, the path written) go to stdout; messages go through
`logging` to stderr, at INFO by default, WARNING with `--quiet`, DEBUG with `--verbose` (which also shows
third-party warnings and logs, hidden otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .. import __version__
from ..targeting.architectures import ARCHITECTURES, FAMILY_ALIASES, SCOPES

__all__ = ["build_parser", "main"]

logger = logging.getLogger("peft_slider.cli")

_PACKAGE_DIR = Path(__file__).resolve().parent
# The verbosity environment variables that transformers and diffusers read when they set up their loggers.
_THIRD_PARTY_VERBOSITY = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")


def _inspect(args: argparse.Namespace) -> int:
    if args.list:
        return _inspect_list(as_json=args.json)
    from ..targeting.inspect_model import format_report, inspect_report, load_meta_model

    logger.debug("building the module tree of %r on the meta device", args.model)
    model, source = load_meta_model(args.model)
    scopes = SCOPES if args.scope == "both" else (args.scope,)
    report = inspect_report(model, scopes=scopes, rank=args.rank, variant=args.variant)
    if args.json:
        print(json.dumps({"source": source, **report}, indent=2))
    else:
        print(format_report(report, source=source))
    return 0


def _inspect_list(*, as_json: bool) -> int:
    from ..targeting.full_size import FULL_SIZE_MODELS

    if as_json:
        listing = {
            "models": [
                {"name": name, "class_name": model.class_name, "description": model.description}
                for name, model in FULL_SIZE_MODELS.items()
            ],
            "architectures": [
                {"class_name": class_name, "aliases": list(spec.aliases), "family": spec.family}
                for class_name, spec in ARCHITECTURES.items()
            ],
        }
        print(json.dumps(listing, indent=2))
        return 0
    print("Built-in real-size models:")
    for name, model in FULL_SIZE_MODELS.items():
        print(f"  {name:<10} {model.class_name:<32} {model.description}")
    print("Architectures (class names, family aliases):")
    for class_name, spec in ARCHITECTURES.items():
        print(f"  {class_name:<32} {', '.join(spec.aliases):<24} {spec.family}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..formats.writers import convert_slider

    path = convert_slider(
        args.src,
        args.dst,
        to=args.to,
        architecture=args.architecture,
        weight_name=args.weight_name,
        lora_alpha=args.lora_alpha,
    )
    print(f"wrote {path}")  # the command's result, like inspect's report: stdout, whatever the verbosity
    return 0


def _rank(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or value > 2**20:
        raise argparse.ArgumentTypeError(f"must be an int in [1, 1048576] (the LoRA rank), got {text!r}")
    return value


def _add_verbosity(parser: argparse.ArgumentParser, *, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    for flags, level, help_text in (
        (("-v", "--verbose"), logging.DEBUG, "log details, and third-party warnings and logs (hidden otherwise)"),
        (("-q", "--quiet"), logging.WARNING, "log warnings and errors only"),
    ):
        group.add_argument(
            *flags, dest="verbosity", action="store_const", const=level, default=default, help=help_text
        )


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
    from ..formats.loading import load_slider
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
    """The argument parser of `peft-slider`."""
    parser = argparse.ArgumentParser(prog="peft-slider", description="Concept-slider LoRAs for diffusers and PEFT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, default=logging.INFO)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{inspect,convert}")

    inspect = commands.add_parser(
        "inspect",
        help="show what a slider adapts on a model (no weights are loaded)",
        description="Show what a slider adapts on a model: grouped patterns, counts, trainable parameters of the "
        "chosen variant, and what is skipped as text path. MODEL is a built-in name ("
        + ", ".join(sorted(FAMILY_ALIASES))
        + "), a diffusers class name, a local model or pipeline folder, or a Hub id (needs network or the local "
        "Hub cache; HF_HUB_OFFLINE=1 reads the cache only).",
    )
    inspect.add_argument("model", nargs="?", help="built-in name, class name, local folder or Hub id")
    inspect.add_argument("--scope", choices=(*SCOPES, "both"), default="both")
    inspect.add_argument("--rank", type=_rank, default=16, help="adapter rank for the parameter count (default 16)")
    inspect.add_argument(
        "--variant",
        choices=("lora", "lokr", "loha", "full"),
        default="lora",
        help="what the parameter count is for: PEFT LoRA, LoKr or LoHa at --rank (their defaults otherwise), or "
        "the full weights of the targets",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON for machines (also with --list)")
    inspect.add_argument("--list", action="store_true", help="list the built-in models and known architectures")
    _add_verbosity(inspect, default=argparse.SUPPRESS)
    inspect.set_defaults(handler=_inspect, check=_check_inspect)

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
    _add_verbosity(convert, default=argparse.SUPPRESS)
    convert.set_defaults(handler=_convert, check=None)
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
    _add_verbosity(evaluate, default=argparse.SUPPRESS)
    evaluate.set_defaults(handler=_evaluate, check=None)
    # Usage errors of a command print that command's usage.
    for command in (inspect, convert, evaluate):
        command.set_defaults(command_parser=command)
    return parser


def _check_inspect(args: argparse.Namespace) -> str | None:
    if args.list and args.model is not None:
        return f"give a MODEL or --list, not both (got MODEL {args.model!r} and --list)"
    if not args.list and args.model is None:
        return "give a MODEL (e.g. `peft-slider inspect flux`), or --list for the built-in names"
    if args.list and (args.scope != "both" or args.rank != 16 or args.variant != "lora"):
        return "--scope, --rank and --variant apply to a MODEL, not to --list"
    return None


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and not record.name.startswith("peft_slider.cli"):
            message = f"{record.levelname.lower()}: {message}"
        return message


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Route peft_slider's logs and warnings to stderr at `verbosity`; third-party ones only with --verbose."""
    package = logging.getLogger("peft_slider")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = (package.level, package.propagate, {key: os.environ.get(key) for key in _THIRD_PARTY_VERBOSITY})
    package.addHandler(handler)
    package.setLevel(verbosity)
    package.propagate = False
    quiet_third_party = verbosity > logging.DEBUG
    if quiet_third_party:
        for key in _THIRD_PARTY_VERBOSITY:
            os.environ[key] = "error"

    def show(message, category, filename, lineno, file=None, line=None):
        if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
            package.warning("%s", message)
        elif not quiet_third_party:
            package.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, or 2 for an error in the arguments or the files they name).

    Usage errors exit with argparse's message and code 2, without a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    check = args.check
    problem = check(args) if check is not None else None
    if problem is not None:
        args.command_parser.error(problem)  # exits 2
    with _logging(args.verbosity):
        try:
            code = args.handler(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
            return code
        except BrokenPipeError:
            # The reader went away (`peft-slider inspect flux | head`): not an error of ours. Point stdout at devnull
            # so the interpreter's final flush does not fail again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            logger.error("peft-slider %s: error: %s", args.command, error)
            logger.debug("details", exc_info=True)
            return 2


if __name__ == "__main__":
    sys.exit(main())
