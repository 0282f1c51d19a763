"""ComfyUI's own LoRA loader, run on the ComfyUI files `save_slider` writes, for every family the README calls
ComfyUI-ready.

ComfyUI (GPL-3.0) is never imported by the package: this test unpacks its source (`../shared/clients/`, commit 3cd7b32f)
into a temporary folder once per session and runs, unchanged, its model detection, its LoRA key map
(`comfy.lora.model_lora_keys_unet`), its loader (`comfy.sd.load_lora_for_models`: `convert_lora`, `load_lora`,
`ModelPatcher.add_patches`) and its weight-adapter code (`comfy.lora.calculate_weight`). Every key of the file must be
consumed and the delta ComfyUI adds to each of its native weights must equal PEFT's delta on the same weights, at
strength +1 and -1.5.

The models are real-size (ComfyUI's detection does not recognise tiny configs), built on the meta device on both
sides; only the LoRA matrices and one native weight at a time are materialised. Which diffusers weight is which native
weight comes from ComfyUI's own conversion tables where it has one (`comfy.utils.*_to_diffusers`, the tables its
checkpoint and LoRA loaders use), from diffusers' own single-file converter for Lumina 2, and is the same name where the
two naming schemes agree (Qwen-Image, HiDream, Kandinsky 5, Chroma's guidance layer).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from peft_slider import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig, SliderScaler
from peft_slider.formats.writers import save_slider
from peft_slider.targeting.architectures import ARCHITECTURES, FAMILY_ALIASES
from peft_slider.targeting.full_size import build_meta_model

CLIENTS = Path(__file__).resolve().parents[1].parent / "shared" / "clients"
COMFYUI_TARBALL = CLIENTS / "comfyui-3cd7b32f.tgz"
COMFYUI_DEPS = ("einops", "scipy", "torchsde")

# family -> (ComfyUI model class it must be detected as, how diffusers names map to ComfyUI's native ones).
FAMILIES = {
    "sd15": ("SD15", "unet"),
    "sdxl": ("SDXL", "unet"),
    "sd3": ("SD3", "mmdit"),
    "flux": ("FluxSchnell", "flux"),
    "chroma": ("Chroma", "flux"),
    "auraflow": ("AuraFlow", "auraflow"),
    "zimage": ("ZImage", "zimage"),
    "lumina2": ("Lumina2", "lumina2"),
    "qwenimage": ("QwenImage", "same"),
    "hidream": ("HiDream", "same"),
    "kandinsky5": ("Kandinsky5", "same"),
}
STRENGTHS = (1.0, -1.5)
# Real-size configs where the diffusers class default is no released model: Kandinsky5Transformer3DModel() has 4 latent
# channels, ComfyUI's Kandinsky 5 the released models' 16. This is Kandinsky 5.0 T2V Lite (ComfyUI's defaults too).
REAL_CONFIGS = {
    "kandinsky5": {"in_visual_dim": 16, "out_visual_dim": 16, "model_dim": 1792, "ff_dim": 7168, "visual_cond": True},
}


class _StubModule(types.ModuleType):
    """An importable stand-in for torchvision/torchaudio: a few ComfyUI model modules import them at import time,
    the LoRA path never calls them."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        sub = _StubModule(f"{self.__name__}.{attr}")
        sub.__path__ = []
        sys.modules[sub.__name__] = sub
        setattr(self, attr, sub)
        return sub


class _StubFinder:
    names = ("torchvision", "torchaudio")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI's `comfy` package, unpacked once per session."""
    if not COMFYUI_TARBALL.is_file():
        pytest.skip(f"ComfyUI's source is not at {COMFYUI_TARBALL} (the shared clients folder beside the repo).")
    missing = [name for name in COMFYUI_DEPS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"ComfyUI needs {missing}: pip install einops scipy 'torch==2.13.0' && "
            "pip install --no-deps torchsde trampoline"
        )
    root = tmp_path_factory.mktemp("comfyui")
    with tarfile.open(COMFYUI_TARBALL) as archive:
        archive.extractall(root, filter="data")
    source = next(path.parent for path in root.glob("*/comfy/lora.py")).parent
    # Everything diffusers/transformers/peft decide about torchvision is decided before the stub exists.
    import diffusers.models  # noqa: F401
    import transformers  # noqa: F401

    stubbed = [name for name in _StubFinder.names if importlib.util.find_spec(name) is None]
    finder = _StubFinder()
    finder.names = tuple(stubbed)
    sys.path.append(str(source))
    sys.meta_path.insert(0, finder)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.lora
        import comfy.model_detection
        import comfy.model_patcher
        import comfy.sd
        import comfy.utils
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in sys.modules if name.split(".")[0] in stubbed]:
            del sys.modules[name]
    return comfy


# ---------------------------------------------------------------------------------------------------------------------
# ComfyUI's view of a real-size diffusers model


def _lumina2_map(native_sd):
    """diffusers name -> (native name, rows) for Lumina 2, from diffusers' own single-file converter run on each native
    weight alone (it splits `qkv` into to_q/to_k/to_v)."""
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    mapping = {}
    for native, tensor in native_sd.items():
        parts = convert_lumina2_to_diffusers({native: tensor})
        start = 0
        for name, part in parts.items():
            mapping[name] = (native, (0, start, part.shape[0]) if len(parts) > 1 else None)
            start += part.shape[0]
    return mapping


def _lumina2_native_for_detection(diffusers_sd):
    """The two facts ComfyUI's Lumina 2 detection reads (caption embedder shape, number of layers), in native names."""
    native = {"cap_embedder.1.weight": diffusers_sd["time_caption_embed.caption_embedder.1.weight"]}
    for key, tensor in diffusers_sd.items():
        if key.startswith("layers."):
            native[key] = tensor
    return native


def _comfyui_model(comfy, family):
    """(ComfyUI model patcher on the meta device, {diffusers weight: (native weight, offset)}, diffusers model)."""
    expected_class, naming = FAMILIES[family]
    model, _ = build_meta_model(family)
    if family in REAL_CONFIGS:
        with torch.device("meta"):
            model = type(model).from_config(REAL_CONFIGS[family])
    diffusers_sd = model.state_dict()
    detection = comfy.model_detection
    if naming == "unet":
        config = detection.model_config_from_diffusers_unet(diffusers_sd)
    elif naming == "lumina2":
        config = detection.model_config_from_unet(_lumina2_native_for_detection(diffusers_sd), "")
    elif naming in ("same", "zimage"):
        config = detection.model_config_from_unet(diffusers_sd, "")
    else:
        # What load_diffusion_model_state_dict does with a diffusers DiT; names it does not convert keep their own
        # (Chroma's guidance layer, where diffusers' RMSNorm `weight` is ComfyUI's `scale`).
        converted = detection.convert_diffusers_mmdit(dict(diffusers_sd), "")
        for key, tensor in diffusers_sd.items():
            if key.startswith("distilled_guidance_layer."):
                converted[re.sub(r"(norms\.\d+)\.weight$", r"\1.scale", key)] = tensor
        config = detection.model_config_from_unet(converted, "")
    assert config is not None and type(config).__name__ == expected_class, (family, type(config).__name__)
    with torch.device("meta"):
        comfy_model = config.get_model({}, "")
    patcher = comfy.model_patcher.ModelPatcher(comfy_model, load_device="cpu", offload_device="cpu")
    native_sd = {
        key.removeprefix("diffusion_model."): value
        for key, value in comfy_model.state_dict().items()
        if key.startswith("diffusion_model.")
    }

    utils, unet_config = comfy.utils, config.unet_config
    if naming == "unet":
        table = utils.unet_to_diffusers(unet_config)
    elif naming == "mmdit":
        table = utils.mmdit_to_diffusers(unet_config)
    elif naming == "flux":
        table = utils.flux_to_diffusers(unet_config)
    elif naming == "auraflow":
        table = utils.auraflow_to_diffusers(unet_config)
    elif naming == "zimage":
        table = utils.z_image_to_diffusers(unet_config)
    elif naming == "lumina2":
        table = _lumina2_map(native_sd)
    else:
        table = {}
    mapping = {}
    for key in diffusers_sd:
        target = table.get(key)
        if target is None and naming != "lumina2" and key in native_sd:
            target = key  # the same name in both
        if target is None:
            continue
        native, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        mapping[key] = (native, offset)
    return patcher, mapping, model


def _materialise_adapter(model, adapter):
    """Random adapter weights on CPU for an adapter injected into a meta-device model (LoRA B is not zero)."""
    generator = torch.Generator().manual_seed(0)
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for attr in module.adapter_layer_names:
            container = getattr(module, attr)
            if adapter not in container:
                continue
            shape = (
                container[adapter].weight.shape if isinstance(container, nn.ModuleDict) else container[adapter].shape
            )
            weight = nn.Parameter(torch.randn(shape, generator=generator) * 0.1)
            if isinstance(container, nn.ModuleDict):
                container[adapter].weight = weight
            else:
                container[adapter] = weight
            layers[name] = module
    return layers


# Every adapted weight is compared when this is set; by default one weight per distinct name (block numbers aside) is,
# which covers every role and layout (q/k/v/out, fused qkv, io and time layers, guidance layers) at a fraction of the
# time: real-size deltas of every block make the module take tens of minutes on two cores. The key map (every key
# consumed, every adapted weight patched) is always checked in full.
FULL = os.environ.get("PEFT_SLIDER_COMFYUI_FULL") == "1"


def _representatives(names):
    """The first name (sorted) of each group of names that differ only in their block numbers."""
    chosen = {}
    for name in sorted(names):
        chosen.setdefault(re.sub(r"\.\d+(?=\.)", ".N", name), name)
    return set(chosen.values())


def _comfyui_deltas(comfy, patcher, lora, strength):
    """(every native weight ComfyUI patches at `strength`, then per checked weight the delta it adds: its own
    `calculate_weight` on a zero weight, one weight at a time, as real-size weights are large)."""
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, strength, 0.0)
    model_sd = patched.model.state_dict()
    natives = {key.removeprefix("diffusion_model."): key for key in patched.patches}
    checked = natives if FULL else _representatives(natives)

    def deltas():
        for native in sorted(checked):
            key = natives[native]
            weight = torch.zeros(model_sd[key].shape, dtype=torch.float32)
            yield native, comfy.lora.calculate_weight(patched.patches[key], weight, key)

    return set(natives), deltas()


def _cases() -> list[tuple[str, str]]:
    """Every family at the default scope, and at the joint scope where it adapts more (single-stream blocks)."""
    cases = []
    for family in FAMILIES:
        cases.append((family, "visual"))
        if ARCHITECTURES[FAMILY_ALIASES[family]].joint_blocks:
            cases.append((family, "joint"))
    return cases


def _lycoris_cases() -> list[tuple[str, str, str]]:
    """LoKr and LoHa on each layout: kohya UNet keys, `transformer.` keys, and Chroma's `diffusion_model.` names."""
    return [
        ("sd15", "visual", "lokr"),
        ("sdxl", "visual", "loha"),
        ("flux", "visual", "loha"),
        ("chroma", "visual", "lokr"),
        ("zimage", "visual", "lokr"),
        ("qwenimage", "visual", "loha"),
    ]


ADAPTERS = {
    "lora": lambda **kwargs: SliderLoraConfig(r=4, lora_alpha=8, **kwargs),
    "lokr": lambda **kwargs: SliderLoKrConfig(r=4, alpha=8, **kwargs),
    "loha": lambda **kwargs: SliderLoHaConfig(r=4, alpha=8, **kwargs),
}


@pytest.mark.parametrize("family, scope, kind", [(*case, "lora") for case in _cases()] + _lycoris_cases())
def test_comfyui_loads_the_comfyui_file_exactly(comfy, family, scope, kind, tmp_path, caplog):
    _check_file_in_comfyui(comfy, family, scope, kind, "comfyui", tmp_path, caplog)


# The DiTs whose diffusers names ComfyUI maps (`transformer.<name>`): the diffusers file reads there too. (UNet files
# name attention `unet.<...>.to_q`, which ComfyUI maps only in the old `processor.to_q` form; Chroma's guidance layer
# and Lumina 2 have no `transformer.` names in ComfyUI.)
DIFFUSERS_FILE_FAMILIES = ("sd3", "flux", "auraflow", "zimage", "qwenimage", "hidream", "kandinsky5")


@pytest.mark.parametrize("family", DIFFUSERS_FILE_FAMILIES)
def test_comfyui_loads_the_diffusers_file_at_the_trained_scale(comfy, family, tmp_path, caplog):
    """ComfyUI ignores `lora_adapter_metadata`: the diffusers file must carry its scale in the weights (alpha = r)."""
    _check_file_in_comfyui(comfy, family, "visual", "lora", "diffusers", tmp_path, caplog)


def _check_file_in_comfyui(comfy, family, scope, kind, file_format, tmp_path, caplog):
    patcher, mapping, model = _comfyui_model(comfy, family)
    model.add_adapter(ADAPTERS[kind](model=model, scope=scope), adapter_name="s")
    layers = _materialise_adapter(model, "s")
    path = save_slider(model, tmp_path, adapter_name="s", formats=[file_format])[file_format]
    lora = load_file(path)

    unmapped = sorted(f"{name}.weight" for name in layers if f"{name}.weight" not in mapping)
    assert not unmapped, f"adapted weights ComfyUI's model has no counterpart for: {unmapped[:5]}"
    by_native: dict[str, list[tuple[str, tuple | None]]] = {}
    for name in layers:
        native, offset = mapping[f"{name}.weight"]
        by_native.setdefault(native, []).append((name, offset))
    scaler = SliderScaler(model, adapter_names=["s"])
    for strength in STRENGTHS:
        caplog.clear()
        with caplog.at_level(logging.WARNING), scaler.at(strength), torch.no_grad():
            patched, deltas = _comfyui_deltas(comfy, patcher, dict(lora), strength)
            extra = sorted(patched - set(by_native))
            assert not extra, f"ComfyUI patches {extra[:5]}, which PEFT does not adapt"
            for native, delta in deltas:
                for name, offset in by_native[native]:
                    got = delta if offset is None else delta.narrow(*offset)
                    expected = layers[name].get_delta_weight("s")
                    # float32 products of rank-4 matrices, summed in another order (baked scale, fused blocks).
                    torch.testing.assert_close(
                        got,
                        expected.reshape(got.shape),
                        atol=1e-6,
                        rtol=1e-5,
                        msg=lambda text, name=name: f"{name}: {text}",
                    )
                    got.zero_()  # checked: what is left must be zero
                # Rows of a fused native weight that no adapted module owns stay untouched.
                assert not delta.any(), f"{native}: ComfyUI changes rows PEFT does not adapt"
                del delta
        not_loaded = [record.getMessage() for record in caplog.records if "not loaded" in record.getMessage().lower()]
        assert not not_loaded, f"{len(not_loaded)} key(s) ComfyUI did not load, e.g. {not_loaded[:3]}"
        missing = sorted(set(by_native) - patched)
        assert not missing, (
            f"ComfyUI leaves {len(missing)} of {len(by_native)} adapted weights unpatched: {missing[:5]}"
        )
