"""Target resolution: turn the architecture table into PEFT `target_modules` for one model, family or any model."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from torch import nn

from .architectures import ARCHITECTURES, FAMILY_ALIASES, SCOPES, ArchitectureSpec

__all__ = [
    "DENOISER_ATTRIBUTES",
    "SliderTargets",
    "TargetingError",
    "base_modules",
    "count_lora_parameters",
    "denoiser_attr",
    "denoiser_of",
    "find_architecture",
    "group_module_names",
    "resolve_targets",
    "text_path_modules",
    "universal_target_regex",
    "unwrap_denoiser",
]

# Module types each adapter variant can wrap (PEFT 0.21: LoRA handles Conv3d, LoKr/LoHa do not).
_ADAPTABLE: dict[str, tuple[type[nn.Module], ...]] = {
    "lora": (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "lokr": (nn.Linear, nn.Conv1d, nn.Conv2d),
    "loha": (nn.Linear, nn.Conv1d, nn.Conv2d),
    "full": (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d),
}


class TargetingError(ValueError):
    """A slider's targets cannot be resolved as asked (unknown family, a rule matching nothing, ...)."""


@dataclass(frozen=True)
class SliderTargets:
    """The result of resolving a slider's targets.

    Args:
        class_name (`str` or `None`): The diffusers class of the architecture, `None` for the universal rules.
        scope (`str`): ``"visual"`` or ``"joint"``.
        regex (`str`): One regular expression (PEFT `re.fullmatch` semantics) covering every rule in force.
        modules (`tuple[str, ...]` or `None`): The exact module names, when resolved against a model. `regex`
            matches exactly these there (a plain name list would not: PEFT also matches a name's `.`-suffixes, so
            `proj_out` would hit Flux's single-stream `single_transformer_blocks.N.proj_out`).
        text_path (`tuple[str, ...]`): Module names skipped as text path, when resolved against a model.
    """

    class_name: str | None
    scope: str
    regex: str
    modules: tuple[str, ...] | None = None
    text_path: tuple[str, ...] = ()


def _join(patterns: Iterable[str]) -> str:
    return "(?:" + "|".join(f"(?:{pattern})" for pattern in patterns) + ")"


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise TargetingError(f"`scope` must be one of {list(SCOPES)}, got {scope!r}.")


def _check_variant(variant: str) -> None:
    if variant not in _ADAPTABLE:
        raise TargetingError(f"`variant` must be one of {sorted(_ADAPTABLE)}, got {variant!r}.")


def _unknown_architecture_message(what: str) -> str:
    known = ", ".join(sorted(ARCHITECTURES))
    aliases = ", ".join(sorted(FAMILY_ALIASES))
    return (
        f"{what} is not in peft_slider's architecture table. Known classes: {known}. Known family names: {aliases}. "
        "For another model pass `target_modules=[...]` by hand (for example its self-attention q/k/v/out "
        "projections), or open an issue with the output of `peft-slider inspect`."
    )


def find_architecture(obj: object) -> ArchitectureSpec:
    """Look up the table row for a model, a pipeline, a class, a class name or a family alias.

    Args:
        obj (`nn.Module`, `DiffusionPipeline`, `type` or `str`):
            A diffusers denoiser (PEFT-wrapped or not), a pipeline (its `transformer` or `unet` is used), a class, a
            class name (``"FluxTransformer2DModel"``) or a family alias (``"flux"``, ``"sdxl"``).

    Raises:
        `TargetingError`: the architecture is not in the table; the message lists the known ones.

    Example:

    ```py
    >>> from peft_slider.targeting import find_architecture
    >>> find_architecture("flux").class_name
    'FluxTransformer2DModel'
    ```
    """
    if isinstance(obj, str):
        name = FAMILY_ALIASES.get(obj.lower(), obj)
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
        raise TargetingError(_unknown_architecture_message(f"`architecture` {obj!r}"))
    cls = obj if isinstance(obj, type) else type(unwrap_denoiser(obj))
    for klass in cls.__mro__:
        if klass.__name__ in ARCHITECTURES:
            return ARCHITECTURES[klass.__name__]
    raise TargetingError(_unknown_architecture_message(f"Model class {cls.__name__!r}"))


DENOISER_ATTRIBUTES = ("transformer", "unet", "prior", "decoder")
"""The pipeline components that hold a denoiser, in order of preference (`prior`/`decoder`: Stable Cascade)."""


def _find_denoiser_attr(pipe: object) -> str | None:
    if isinstance(pipe, nn.Module):
        return None  # a model, whose submodules may be named so, is not a pipeline
    for attribute in DENOISER_ATTRIBUTES:
        if isinstance(getattr(pipe, attribute, None), nn.Module):
            return attribute
    return None


def denoiser_attr(pipe: object) -> str:
    """The name of a pipeline's denoiser component: `"transformer"` (DiTs), `"unet"`, or Stable Cascade's `"prior"`
    / `"decoder"`, the first of `DENOISER_ATTRIBUTES` the pipeline holds.

    Args:
        pipe (`diffusers.DiffusionPipeline`):
            The pipeline.

    Raises:
        `TypeError`: `pipe` is not a pipeline. `ValueError`: the pipeline has no denoiser component; the message
        names its class and lists its components.

    Example:

    ```py
    >>> from peft_slider.targeting import denoiser_attr
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> denoiser_attr(build_tiny_pipeline("sd15"))
    'unet'

    ```
    """
    attribute = _find_denoiser_attr(pipe)
    if attribute is not None:
        return attribute
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"`pipe` must be a diffusers DiffusionPipeline, got {type(pipe).__name__}.")
    names = ", ".join(f"`{name}`" for name in DENOISER_ATTRIBUTES)
    raise ValueError(
        f"{type(pipe).__name__} has no denoiser component ({names}) to carry slider adapters; its components are "
        f"{sorted(components)}. Pass a text-to-image pipeline with its denoiser loaded."
    )


def denoiser_of(pipe: object) -> nn.Module:
    """A pipeline's denoiser, the module sliders are trained on: `pipe.transformer`, `pipe.unet`, ... (see
    [`denoiser_attr`]).

    Example:

    ```py
    >>> from peft_slider.targeting import denoiser_of
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> type(denoiser_of(build_tiny_pipeline("flux"))).__name__
    'FluxTransformer2DModel'

    ```
    """
    return getattr(pipe, denoiser_attr(pipe))


def unwrap_denoiser(obj: object) -> nn.Module:
    """The plain denoiser behind a pipeline or a `PeftModel`."""
    attribute = _find_denoiser_attr(obj)
    if attribute is not None:
        obj = getattr(obj, attribute)
    get_base_model = getattr(obj, "get_base_model", None)
    if callable(get_base_model):
        obj = get_base_model()
    if not isinstance(obj, nn.Module):
        raise TypeError(f"`model` must be a torch module or a diffusers pipeline, got {type(obj).__name__}.")
    return obj


def base_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of `model` by name as they were before any adapter was injected: a PEFT tuner layer stands for its
    base layer, and the layers inside it (`base_layer`, `lora_A`, ...) are left out. So a second slider resolves
    against a model that already carries one exactly as against the bare model.

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, inject_adapter_in_model
    >>> from peft_slider.targeting.targets import base_modules
    >>> model = inject_adapter_in_model(LoraConfig(target_modules=["0"]), torch.nn.Sequential(torch.nn.Linear(4, 4)))
    >>> {name: type(module).__name__ for name, module in base_modules(model).items()}
    {'': 'Sequential', '0': 'Linear'}

    ```
    """
    tuners_utils = sys.modules.get("peft.tuners.tuners_utils")
    if tuners_utils is None:
        # PEFT was never imported, so no module is a tuner layer; resolving targets on a bare model (`peft-slider
        # inspect`) stays free of PEFT's import.
        return dict(model.named_modules())
    BaseTunerLayer = tuners_utils.BaseTunerLayer  # noqa: N806

    modules: dict[str, nn.Module] = {}
    inside: str | None = None  # the prefix of the tuner layer whose submodules are being skipped
    for name, module in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue  # named_modules is depth-first, so a tuner layer's submodules follow it
        if isinstance(module, BaseTunerLayer):
            modules[name] = module.get_base_layer()
            inside = name + "."
        else:
            modules[name] = module
    return modules


@cache
def universal_target_regex(*, scope: str = "visual", variant: str = "lora") -> str:
    """One regex for every architecture in the table, for when the model is not known in advance.

    It is the union of every row's rules, less the rules marked ``universal=False`` (names that mean a text-path
    module on another family: SD3.5's second self-attention ``attn2`` is text cross-attention on PixArt), and less
    ``Conv3d`` rules for LoKr/LoHa. Passing ``model=`` or ``architecture=`` resolves those too.
    """
    _check_scope(scope)
    _check_variant(variant)
    patterns: list[str] = []
    for spec in ARCHITECTURES.values():
        for rule in spec.rules_for(scope):
            if rule.universal and not (rule.conv3d and variant in ("lokr", "loha")) and rule.pattern not in patterns:
                patterns.append(rule.pattern)
    return _join(patterns)


def _spec_regex(spec: ArchitectureSpec, scope: str, variant: str) -> str:
    rules = spec.rules_for(scope)
    return _join(rule.pattern for rule in rules if not (rule.conv3d and variant in ("lokr", "loha")))


def text_path_modules(names: Iterable[str], spec: ArchitectureSpec) -> list[str]:
    """The names among `names` that `spec` classes as text path."""
    pattern = re.compile(_join(spec.text_path))
    return [name for name in names if pattern.fullmatch(name)]


def group_module_names(names: Iterable[str]) -> dict[str, int]:
    """Group module names by pattern, block indices replaced by ``*``: ``{"transformer_blocks.*.attn.to_q": 19}``."""
    counts: Counter[str] = Counter()
    for name in names:
        counts[re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name)] += 1
    return dict(counts)


def resolve_targets(
    *,
    model: object | None = None,
    architecture: str | None = None,
    scope: str = "visual",
    variant: str = "lora",
) -> SliderTargets:
    """Resolve what a slider adapts.

    With `model`, the rules are matched against its module names and checked: every rule that is not optional must
    match a module, every image-stream attention block (and, for ``scope="joint"``, every single-stream block) must
    receive a target, and no target may be on the text path. With only `architecture`, the row's regex is returned.
    With neither, the universal regex (see `universal_target_regex`).

    Args:
        model (`nn.Module` or pipeline, *optional*):
            The denoiser (or a pipeline, or a PEFT-wrapped denoiser) to resolve against.
        architecture (`str`, *optional*):
            A class name from the table or a family alias. Must agree with `model` when both are given.
        scope (`str`, *optional*, defaults to `"visual"`):
            ``"visual"``: image-token self-attention, image-only io and timestep layers. ``"joint"``: also the
            attention of single-stream blocks over concatenated text + image tokens.
        variant (`str`, *optional*, defaults to `"lora"`):
            ``"lora"``, ``"lokr"``, ``"loha"`` or ``"full"``: drops module types the variant cannot adapt.

    Example:

    ```py
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from peft_slider.targeting import resolve_targets
    >>> with torch.device("meta"):
    ...     flux = FluxTransformer2DModel()  # FLUX.1 layout: 19 double + 38 single blocks
    >>> targets = resolve_targets(model=flux)
    >>> len(targets.modules)
    80
    ```
    """
    _check_scope(scope)
    _check_variant(variant)
    spec = find_architecture(architecture) if architecture is not None else None
    if model is None:
        if spec is None:
            return SliderTargets(
                class_name=None, scope=scope, regex=universal_target_regex(scope=scope, variant=variant)
            )
        return SliderTargets(class_name=spec.class_name, scope=scope, regex=_spec_regex(spec, scope, variant))

    denoiser = unwrap_denoiser(model)
    model_spec = find_architecture(denoiser)
    if spec is not None and spec.class_name != model_spec.class_name:
        raise TargetingError(
            f"`architecture` {architecture!r} ({spec.class_name}) disagrees with `model`, a "
            f"{type(denoiser).__name__} ({model_spec.class_name}). Pass one of them, or matching ones."
        )
    spec = model_spec
    modules = base_modules(denoiser)  # a model that already carries adapters resolves like the bare model
    adaptable = _ADAPTABLE[variant]
    rules = [rule for rule in spec.rules_for(scope) if not (rule.conv3d and variant in ("lokr", "loha"))]
    matched: list[str] = []
    for rule in rules:
        pattern = re.compile(rule.pattern)
        hits = [name for name in modules if pattern.fullmatch(name)]
        if not hits and not rule.optional:
            raise TargetingError(
                f"Rule {rule.pattern!r} ({rule.role}) of {spec.class_name} matched no module of this "
                f"{type(denoiser).__name__}: its module names differ from the ones peft_slider knows. Pass "
                "`target_modules=[...]` by hand and report the model."
            )
        for name in hits:
            if not isinstance(modules[name], adaptable):
                raise TargetingError(
                    f"Rule {rule.pattern!r} of {spec.class_name} matched {name!r}, a {type(modules[name]).__name__}, "
                    f"which a {variant} adapter cannot wrap."
                )
        matched.extend(name for name in hits if name not in matched)

    skipped = text_path_modules(modules, spec)
    leaked = sorted(set(matched) & set(skipped))
    if leaked:
        raise TargetingError(f"Internal table error: {spec.class_name} rules hit text-path modules {leaked}.")
    _check_block_coverage(modules, matched, spec, scope)
    order = {name: index for index, name in enumerate(modules)}
    matched.sort(key=order.__getitem__)
    return SliderTargets(
        class_name=spec.class_name,
        scope=scope,
        regex=_spec_regex(spec, scope, variant),
        modules=tuple(matched),
        text_path=tuple(name for name in skipped if isinstance(modules[name], (nn.Linear, nn.Conv1d, nn.Conv2d))),
    )


def _check_block_coverage(modules: dict[str, nn.Module], matched: list[str], spec: ArchitectureSpec, scope: str):
    block_pattern = re.compile(_join(spec.blocks_for(scope)))
    blocks = [name for name in modules if block_pattern.fullmatch(name)]
    if not blocks:
        raise TargetingError(f"No image-stream attention block of {spec.class_name} was found in the model.")
    uncovered = [block for block in blocks if not any(name.startswith(block + ".") for name in matched)]
    if uncovered:
        raise TargetingError(
            f"Attention blocks of {spec.class_name} received no slider target: {uncovered[:5]}"
            f"{' ...' if len(uncovered) > 5 else ''}."
        )


def count_lora_parameters(model: nn.Module, names: Iterable[str], *, rank: int) -> int:
    """The number of LoRA parameters (A and B) that `rank`-`rank` adapters on `names` add. Works on meta tensors."""
    total = 0
    modules = base_modules(model)
    for name in names:
        module = modules[name]
        if isinstance(module, nn.Linear):
            total += rank * (module.in_features + module.out_features)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kernel = math.prod(module.kernel_size)
            total += rank * (module.in_channels * kernel + module.out_channels)
        else:
            raise TypeError(f"Cannot count LoRA parameters of {name!r}, a {type(module).__name__}.")
    return total
