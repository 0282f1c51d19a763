"""Real-size module trees of known models, built on the meta device (no weights, no download).

Most diffusers classes default to their flagship's config (FluxTransformer2DModel() is FLUX.1 with 19 double and 38
single blocks). This table names the models whose class defaults are not a real model, or that share a class.

Importing diffusers costs seconds, so `peft-slider inspect` reads the module trees of the built-in models from a
stored copy, `full_size_trees.txt` beside this file: every module's name, and the type and shape of each Linear and
Conv, as read off diffusers on the meta device (`python -m peft_slider.targeting.full_size` writes it again).
`build_module_tree` uses the stored copy when the installed diffusers is the version it was read off, and builds the
model with diffusers otherwise.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .architectures import ARCHITECTURES, FAMILY_ALIASES

__all__ = [
    "FULL_SIZE_MODELS",
    "TREES_FILE",
    "FullSizeModel",
    "build_meta_model",
    "build_module_tree",
    "write_module_trees",
]

TREES_FILE = Path(__file__).with_name("full_size_trees.txt")
"""The stored module trees of every built-in name (see `write_module_trees`)."""


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


def _entry(name: str) -> tuple[str, FullSizeModel]:
    # (key of the stored tree, entry): a FULL_SIZE_MODELS key, or a class name built with its default config.
    key = name.lower()
    if key in FULL_SIZE_MODELS:
        return key, FULL_SIZE_MODELS[key]
    class_name = FAMILY_ALIASES.get(key, name)
    if class_name not in ARCHITECTURES:
        known = ", ".join(sorted(FULL_SIZE_MODELS) + sorted(ARCHITECTURES))
        raise ValueError(f"`name` {name!r} is not a built-in model. Known: {known}.")
    for model_key, model in FULL_SIZE_MODELS.items():
        if model.class_name == class_name:
            return model_key, model
    return class_name, FullSizeModel(class_name, f"{class_name} (class default config)")


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

    _, entry = _entry(name)
    cls = getattr(diffusers, entry.class_name)
    with torch.device("meta"):
        model = cls.from_config(dict(entry.config))
    return model, entry.description


def build_module_tree(name: str) -> tuple[nn.Module, str]:
    """Build a built-in model's module tree on the meta device, without importing diffusers when possible.

    The tree has the real model's module names, and its Linear and Conv modules have the real types and shapes; the
    other modules are plain containers (`nn.ModuleList` where the children are numbered) and the root's class has the
    diffusers class's name, so `resolve_targets`, `find_architecture` and the parameter counts see what they see on
    the real model. It has no forward. When the installed diffusers is not the version `TREES_FILE` was read off,
    this is `build_meta_model(name)`; the arguments and the returned `(model, description)` are as there.

    Example:

    ```py
    >>> from peft_slider.targeting.full_size import build_module_tree
    >>> from peft_slider.targeting.targets import resolve_targets
    >>> model, description = build_module_tree("flux")
    >>> type(model).__name__, len(model.single_transformer_blocks), len(resolve_targets(model=model).modules)
    ('FluxTransformer2DModel', 38, 80)
    ```
    """
    key, entry = _entry(name)
    version, trees = _stored_trees()
    if version != _diffusers_version() or key not in trees:
        return build_meta_model(name)
    return _instantiate(entry.class_name, _parse(trees[key])), entry.description


def write_module_trees(path: str | Path = TREES_FILE) -> Path:
    """Write the module tree of every built-in name, read off the installed diffusers, to `path` (`TREES_FILE`).

    Run it (`python -m peft_slider.targeting.full_size`) after a diffusers upgrade; `tests/test_cli.py` checks that the stored
    trees equal the live ones.
    """
    import diffusers

    lines = [
        "# Module trees of peft_slider's built-in models (peft_slider/full_size.py), read off diffusers on the meta",
        "# device: one line per module, indented by depth; `a..b` stands for the identical children a to b; Linear:",
        "# in out; Conv: in out kernel groups. Written by `python -m peft_slider.targeting.full_size`; do not edit.",
        f"diffusers {diffusers.__version__}",
    ]
    for key in tree_keys():
        model, _ = build_meta_model(key)
        lines.append(f"= {key} {type(model).__name__}")
        lines.extend(_encode(model, 1))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_keys() -> list[str]:
    """The keys `TREES_FILE` holds: every `FULL_SIZE_MODELS` key, then every other class of the table."""
    covered = {model.class_name for model in FULL_SIZE_MODELS.values()}
    return list(FULL_SIZE_MODELS) + [name for name in ARCHITECTURES if name not in covered]


def _diffusers_version() -> str | None:
    try:
        return importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return None


_TREES: tuple[str | None, dict[str, list[str]]] | None = None


def _stored_trees() -> tuple[str | None, dict[str, list[str]]]:
    global _TREES
    if _TREES is None:
        version, trees, lines = None, {}, []
        if TREES_FILE.is_file():
            for line in TREES_FILE.read_text().splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line.startswith("diffusers "):
                    version = line.split()[1]
                elif line.startswith("= "):
                    lines = trees.setdefault(line.split()[1], [line])
                else:
                    lines.append(line)
        _TREES = version, trees
    return _TREES


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _spec(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f" Linear {module.in_features} {module.out_features}"
    for conv in _CONVS:
        if isinstance(module, conv):
            kernel = "x".join(map(str, module.kernel_size))
            return f" {conv.__name__} {module.in_channels} {module.out_channels} {kernel} {module.groups}"
    return ""


def _encode(module: nn.Module, depth: int) -> list[str]:
    lines: list[str] = []
    children = list(module.named_children())
    i = 0
    while i < len(children):
        name, child = children[i]
        spec, body = _spec(child), _encode(child, depth + 1)
        j = i + 1
        if name.isdigit():  # fold a run of numbered, identical siblings (the blocks of a ModuleList) into `a..b`
            while (
                j < len(children)
                and children[j][0] == str(int(name) + j - i)
                and _spec(children[j][1]) == spec
                and _encode(children[j][1], depth + 1) == body
            ):
                j += 1
        # Module names never hold a dot, so `a..b` cannot be a name (`2-1` is one, in Z-Image's ModuleDicts).
        label = name if j == i + 1 else f"{name}..{int(name) + j - i - 1}"
        lines.append("  " * depth + label + spec)
        lines.extend(body)
        i = j
    return lines


# A parsed tree node: (spec words, [(label, child node), ...]).
_Node = tuple[list[str], list]
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def _parse(lines: list[str]) -> _Node:
    root: _Node = ([], [])
    stack: list[tuple[int, _Node]] = [(0, root)]
    for line in lines[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        label, *spec = line.split()
        while stack[-1][0] >= depth:
            stack.pop()
        node: _Node = (spec, [])
        stack[-1][1][1].append((label, node))
        stack.append((depth, node))
    return root


_TREE_CLASSES: dict[str, type[nn.Module]] = {}


def _instantiate(class_name: str, root: _Node) -> nn.Module:
    # The root's class bears the diffusers class's name: `find_architecture` looks a model up by its class name.
    cls = _TREE_CLASSES.setdefault(class_name, type(class_name, (nn.Module,), {"__module__": __name__}))
    model = cls()
    with torch.device("meta"):
        _add_children(model, root[1])
    return model


def _add_children(module: nn.Module, children: list) -> None:
    for label, (spec, grandchildren) in children:
        match = _RANGE.fullmatch(label)
        names = [str(i) for i in range(int(match[1]), int(match[2]) + 1)] if match else [label]
        for name in names:
            module.add_module(name, _build(spec, grandchildren))


def _build(spec: list[str], children: list) -> nn.Module:
    if not spec:
        numbered = bool(children) and all(label.isdigit() or _RANGE.fullmatch(label) for label, _ in children)
        module = nn.ModuleList() if numbered else nn.Module()
        _add_children(module, children)
        return module
    kind, *numbers = spec
    if kind == "Linear":
        return nn.Linear(int(numbers[0]), int(numbers[1]), bias=False)
    conv = {cls.__name__: cls for cls in _CONVS}[kind]
    kernel = tuple(int(k) for k in numbers[2].split("x"))
    return conv(int(numbers[0]), int(numbers[1]), kernel, groups=int(numbers[3]), bias=False)


if __name__ == "__main__":
    print(f"wrote {write_module_trees()}")
