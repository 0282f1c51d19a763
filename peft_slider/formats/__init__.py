# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Formats: slider files in the layouts users load, and the Hub.

- `assistants`: `add_assistant_adapter`, a frozen adapter loaded beside the sliders from a PEFT folder, a LoRA file or
  a config.
- `files`: the file names, finding and reading a slider's weight file, `SliderFileError`.
- `slider_file`: the slider file model (`SliderFile`), its LoraConfig dict and the checks of its tensors and config.
- `writers`: `save_slider` and `convert_slider`, the diffusers / PEFT / ComfyUI writers, the staging of a save.
- `readers`: `read_slider`, the layout detection, trainer checkpoints.
- `loading`: `load_slider`, checked against the pipeline's denoiser.
- `kohya`: the kohya / ComfyUI key layouts.
- `metadata`: `SliderMetadata`, the `peft_slider.*` safetensors header keys.
- `hub`: model cards, `push_slider_to_hub`, `download_slider`.
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "COMFYUI_LAYOUTS",
    "COMFYUI_NAMES",
    "DIFFUSERS_WEIGHT_NAME",
    "FORMATS",
    "HEADER_KEY",
    "HEADER_PREFIX",
    "HubError",
    "LYCORIS_WEIGHTS",
    "PEFT_CONFIG_NAME",
    "PEFT_WEIGHT_NAME",
    "SliderFile",
    "SliderFileError",
    "SliderMetadata",
    "StrengthMap",
    "add_assistant_adapter",
    "build_model_card",
    "comfyui_names_header",
    "convert_slider",
    "download_slider",
    "from_comfyui_lycoris",
    "from_comfyui_transformer",
    "from_kohya",
    "get_strength_map",
    "kohya_header",
    "kohya_module_name",
    "load_slider",
    "public_model_name",
    "push_slider_to_hub",
    "read_safetensors_header",
    "read_slider",
    "save_slider",
    "set_strength_map",
    "slider_files_to_upload",
    "to_comfyui_lycoris",
    "to_comfyui_transformer",
    "to_kohya",
    "unet_module_name",
    "write_model_card",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "assistants": ["add_assistant_adapter"],
        "files": ["DIFFUSERS_WEIGHT_NAME", "PEFT_CONFIG_NAME", "PEFT_WEIGHT_NAME", "SliderFileError"],
        "hub": [
            "HubError",
            "build_model_card",
            "download_slider",
            "push_slider_to_hub",
            "slider_files_to_upload",
            "write_model_card",
        ],
        "kohya": [
            "COMFYUI_LAYOUTS",
            "COMFYUI_NAMES",
            "comfyui_names_header",
            "from_comfyui_transformer",
            "from_kohya",
            "kohya_header",
            "kohya_module_name",
            "to_comfyui_transformer",
            "to_kohya",
            "unet_module_name",
        ],
        "loading": ["load_slider"],
        "lycoris": ["HEADER_KEY", "LYCORIS_WEIGHTS", "from_comfyui_lycoris", "to_comfyui_lycoris"],
        "metadata": ["HEADER_PREFIX", "SliderMetadata", "public_model_name", "read_safetensors_header"],
        "readers": ["read_slider"],
        "slider_file": ["SliderFile"],
        "strength_map": ["StrengthMap", "get_strength_map", "set_strength_map"],
        "writers": ["FORMATS", "convert_slider", "save_slider"],
    },
)

if TYPE_CHECKING:
    from .assistants import add_assistant_adapter
    from .files import DIFFUSERS_WEIGHT_NAME, PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME, SliderFileError
    from .hub import (
        HubError,
        build_model_card,
        download_slider,
        push_slider_to_hub,
        slider_files_to_upload,
        write_model_card,
    )
    from .kohya import (
        COMFYUI_LAYOUTS,
        COMFYUI_NAMES,
        comfyui_names_header,
        from_comfyui_transformer,
        from_kohya,
        kohya_header,
        kohya_module_name,
        to_comfyui_transformer,
        to_kohya,
        unet_module_name,
    )
    from .loading import load_slider
    from .lycoris import HEADER_KEY, LYCORIS_WEIGHTS, from_comfyui_lycoris, to_comfyui_lycoris
    from .metadata import HEADER_PREFIX, SliderMetadata, public_model_name, read_safetensors_header
    from .readers import read_slider
    from .slider_file import SliderFile
    from .strength_map import StrengthMap, get_strength_map, set_strength_map
    from .writers import FORMATS, convert_slider, save_slider
