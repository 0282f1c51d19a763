"""The architecture table: which modules of each diffusers denoiser a slider adapts, as data.

One row per diffusers model class. Each row holds regular expressions that are `re.fullmatch`ed against full module
names (PEFT's semantics for a string `target_modules`). Code that reads the table (`peft_slider.targeting.targets`) knows
nothing about any family; adding a family is adding a row here and a case to the tests.

Rule roles:

- ``attention``: image-token self-attention projections (q/k/v/out, or the fused projection).
- ``io``: the image-only patch / conv input and output layers.
- ``time``: timestep-embedding layers (they read the timestep only).
- ``joint``: attention projections of single-stream blocks that run on concatenated text + image tokens; only
  adapted with ``scope="joint"``.

``text_path`` lists what is never adapted: modules that read only text/context tokens or write only into the text
stream. ``attention_blocks`` names the image-stream attention modules; every one of them must receive at least one
target, which the resolver checks independently of the rules.

Names were read off diffusers 0.42.1 (see the README table for how they differ from the seed lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ARCHITECTURES", "FAMILY_ALIASES", "ArchitectureSpec", "Rule", "SCOPES"]

SCOPES = ("visual", "joint")

_QKVO = r"(to_q|to_k|to_v|to_out\.0)"
# HiDream's `x_embedder` is a wrapper module (PEFT refuses it), so the bare name is kept out of the universal regex.
_X_EMBEDDER = "x_embedder"
_UNET_TRANSFORMER = r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+"


@dataclass(frozen=True)
class Rule:
    """One targeting rule of an architecture.

    Args:
        pattern (`str`):
            Regular expression, `re.fullmatch`ed against a full module name.
        role (`str`):
            One of ``"attention"``, ``"io"``, ``"time"`` or ``"joint"``.
        optional (`bool`, *optional*, defaults to `False`):
            The modules exist only in some variants or after `fuse_qkv_projections()`; an optional rule that matches
            nothing is not an error.
        conv3d (`bool`, *optional*, defaults to `False`):
            The matched modules are `Conv3d`, which PEFT's LoKr/LoHa cannot adapt.
        universal (`bool`, *optional*, defaults to `True`):
            Also used when the architecture is unknown (no `model=` or `architecture=`). `False` where the same
            module name means a text-path module on another family.
        note (`str`, *optional*):
            Why the rule is there, shown by `peft-slider inspect`.
    """

    pattern: str
    role: str
    optional: bool = False
    conv3d: bool = False
    universal: bool = True
    note: str = ""


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a slider adapts on one diffusers model class.

    Args:
        class_name (`str`): The diffusers model class name, the table's key.
        family (`str`): Human-readable family name(s).
        rules (`tuple[Rule, ...]`): Targeting rules.
        text_path (`tuple[str, ...]`): Regexes of modules on the text path, never adapted.
        attention_blocks (`tuple[str, ...]`): Regexes of the image-stream attention modules (visual scope).
        joint_blocks (`tuple[str, ...]`): Regexes of the single-stream attention modules (joint scope).
        note (`str`): How this family differs from the seed lists.
        aliases (`tuple[str, ...]`): Short family names accepted by ``architecture=`` (``"flux"``, ``"sdxl"``).
        component (`str`, *optional*, defaults to `"transformer"`): The pipeline component that holds the model,
            which is also the key prefix of its weights in a pipeline's LoRA file (``"unet"`` or ``"transformer"``).
        lora_loader (`str`, *optional*): The diffusers LoRA loader mixin (in `diffusers.loaders.lora_pipeline`) of
            the model's pipelines, whose `save_lora_weights` writes the file `pipe.load_lora_weights` reads; `None`
            where diffusers has no pipeline LoRA loader for the class.
        comfyui_layout (`str`, *optional*): The key layout ComfyUI / A1111 read for the family (see
            `peft_slider.formats.kohya`): ``"kohya"`` (`lora_unet_...` keys), ``"transformer"`` (`transformer.<module>` keys,
            `diffusion_model.<original name>` for the modules in `comfyui_names`), ``"native"`` (every module under
            its `comfyui_names` original name) or `None` where ComfyUI reads only the original naming and the table
            has no `comfyui_names` for it.
        comfyui_names (`tuple[tuple[str, str], ...]`): Modules ComfyUI reads only under the original checkpoint's
            names: `(regex, template)` pairs, the regex fullmatched against the diffusers module name and the template
            (`re.Match.expand`) giving the original name. Modules that get the same original name are one fused
            weight there (`attention.qkv`): their LoRAs are written as one, rows in the order of the pairs.
        video (`bool`, *optional*, defaults to `False`): A video model (model cards say `text-to-video`).
        hub_tag (`str`, *optional*): The family tag of model cards; defaults to the first alias.
    """

    class_name: str
    family: str
    rules: tuple[Rule, ...]
    text_path: tuple[str, ...]
    attention_blocks: tuple[str, ...]
    joint_blocks: tuple[str, ...] = ()
    note: str = ""
    aliases: tuple[str, ...] = field(default=())
    component: str = "transformer"
    lora_loader: str | None = None
    comfyui_layout: str | None = None
    comfyui_names: tuple[tuple[str, str], ...] = ()
    video: bool = False
    hub_tag: str | None = None

    def rules_for(self, scope: str) -> tuple[Rule, ...]:
        """The rules in force for `scope` (``"visual"`` or ``"joint"``)."""
        if scope == "joint":
            return self.rules
        return tuple(rule for rule in self.rules if rule.role != "joint")

    def blocks_for(self, scope: str) -> tuple[str, ...]:
        """The attention-block regexes that must each receive a target under `scope`."""
        return self.attention_blocks + (self.joint_blocks if scope == "joint" else ())


def _unet(
    class_name: str, family: str, *, controlnet: bool = False, aliases: tuple[str, ...] = (), **row: Any
) -> ArchitectureSpec:
    rules = [
        Rule(rf"{_UNET_TRANSFORMER}\.transformer_blocks\.\d+\.attn1\.{_QKVO}", "attention", note="self-attention"),
        Rule(
            rf"{_UNET_TRANSFORMER}\.transformer_blocks\.\d+\.attn1\.to_qkv",
            "attention",
            optional=True,
            note="fused self-attention (after fuse_qkv_projections)",
        ),
        Rule(rf"{_UNET_TRANSFORMER}\.(proj_in|proj_out)", "io", note="spatial-transformer in/out on image features"),
        Rule(r"conv_in", "io", note="latent input conv"),
        Rule(r"time_embedding\.linear_[12]", "time"),
    ]
    if not controlnet:
        rules.append(Rule(r"conv_out", "io", note="latent output conv"))
    text_path = (
        r".*\.attn2\.(to_k|to_v|to_kv)",
        r"add_embedding\..*",
        r"encoder_hid_proj.*",
    )
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=tuple(rules),
        text_path=text_path,
        attention_blocks=(rf"{_UNET_TRANSFORMER}\.transformer_blocks\.\d+\.attn1",),
        aliases=aliases,
        **row,
        note="general list, less cross-attention K/V"
        + (" and the conditioning-image encoder's conv_in/conv_out" if controlnet else ""),
    )


def _mmdit_text_path(block: str) -> tuple[str, ...]:
    return (
        rf"{block}\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out|to_added_qkv)",
        rf"{block}\.\d+\.(ff_context|norm1_context)\..*",
        r"context_embedder",
        r".*text_embedder\..*",
    )


def _sd3(
    class_name: str, family: str, *, controlnet: bool = False, aliases: tuple[str, ...] = (), **row: Any
) -> ArchitectureSpec:
    rules = [
        Rule(
            rf"transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="joint attention, image-stream projections"
        ),
        # The same names are text cross-attention on PixArt, Sana, LTX and Cosmos, hence universal=False.
        Rule(
            rf"transformer_blocks\.\d+\.attn2\.({_QKVO[1:-1]}|to_qkv)",
            "attention",
            optional=True,
            universal=False,
            note="SD3.5 dual attention: a second image self-attention",
        ),
        Rule(r"transformer_blocks\.\d+\.attn\.to_qkv", "attention", optional=True, note="fused projections"),
        Rule(r"pos_embed\.proj", "io", note="patch embedding"),
        Rule(r"time_text_embed\.timestep_embedder\.linear_[12]", "time"),
    ]
    if not controlnet:
        rules.append(Rule(r"proj_out", "io", note="final projection"))
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=tuple(rules),
        text_path=_mmdit_text_path("transformer_blocks"),
        attention_blocks=(r"transformer_blocks\.\d+\.attn", r"transformer_blocks\.\d+\.attn2"),
        aliases=aliases,
        **row,
        note="seed general list matches only proj_out; attention is `attn` and SD3.5's `attn2` is self-attention",
    )


def _flux(
    class_name: str, family: str, *, controlnet: bool = False, aliases: tuple[str, ...] = (), **row: Any
) -> ArchitectureSpec:
    rules = [
        Rule(rf"transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="double blocks, image stream"),
        Rule(r"transformer_blocks\.\d+\.attn\.to_qkv", "attention", optional=True, note="fused image-stream q/k/v"),
        Rule(_X_EMBEDDER, "io", universal=False, note="patch embedding"),
        Rule(r"time_text_embed\.timestep_embedder\.linear_[12]", "time"),
        Rule(r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_qkv)", "joint", note="single-stream q/k/v"),
        Rule(
            r"single_transformer_blocks\.\d+\.proj_out",
            "joint",
            note="single-stream attention output (fused with the MLP output)",
        ),
    ]
    if not controlnet:
        rules.append(Rule(r"proj_out", "io", note="final projection"))
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=tuple(rules),
        text_path=_mmdit_text_path("transformer_blocks"),
        attention_blocks=(r"transformer_blocks\.\d+\.attn",),
        joint_blocks=(r"single_transformer_blocks\.\d+\.attn",),
        aliases=aliases,
        **row,
        note="seed general list matches only proj_out; the Flux list also hits single-stream (text+image) q/k/v",
    )


def _qwen(
    class_name: str, family: str, *, controlnet: bool = False, aliases: tuple[str, ...] = (), **row: Any
) -> ArchitectureSpec:
    rules = [
        Rule(rf"transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="image stream of the MMDiT"),
        Rule(r"img_in", "io", note="patch embedding"),
        Rule(r"time_text_embed\.timestep_embedder\.linear_[12]", "time"),
    ]
    if not controlnet:
        rules.append(Rule(r"proj_out", "io", note="final projection"))
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=tuple(rules),
        text_path=(
            r"transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)",
            r"transformer_blocks\.\d+\.(txt_mlp|txt_mod)\..*",
            r"txt_in",
        ),
        attention_blocks=(r"transformer_blocks\.\d+\.attn",),
        aliases=aliases,
        **row,
        note="seed general list matches only proj_out",
    )


def _cross_attention_dit(
    class_name: str,
    family: str,
    *,
    patch: str,
    time: str,
    block: str = "transformer_blocks",
    aliases: tuple[str, ...] = (),
    **row: Any,
) -> ArchitectureSpec:
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=(
            Rule(rf"{block}\.\d+\.attn1\.{_QKVO}", "attention", note="self-attention"),
            Rule(rf"{block}\.\d+\.attn1\.to_qkv", "attention", optional=True, note="fused self-attention"),
            Rule(patch, "io", note="patch embedding", conv3d=patch == "patch_embedding"),
            Rule(r"proj_out", "io", note="final projection"),
            Rule(time, "time"),
        ),
        text_path=(
            rf"{block}\.\d+\.attn2\.(to_k|to_v|add_k_proj|add_v_proj|to_kv)",
            r"caption_projection\..*",
            r".*text_embedder\..*",
            r".*image_embedder\..*",
        ),
        attention_blocks=(rf"{block}\.\d+\.attn1",),
        aliases=aliases,
        **row,
        note="general list works but the Flux list would adapt cross-attention K/V (`attn2.to_k/to_v`)",
    )


def _refiner_dit(
    class_name: str,
    family: str,
    *,
    attn: str,
    patch: Rule,
    final: Rule,
    time: str,
    text: tuple[str, ...],
    aliases: tuple[str, ...] = (),
    **row: Any,
) -> ArchitectureSpec:
    return ArchitectureSpec(
        class_name=class_name,
        family=family,
        rules=(
            Rule(rf"noise_refiner\.\d+\.{attn}\.{_QKVO}", "attention", note="image-only refiner layers"),
            patch,
            Rule(time, "time"),
            Rule(rf"layers\.\d+\.{attn}\.{_QKVO}", "joint", note="main layers over the unified text+image sequence"),
            final,
        ),
        text_path=(r"context_refiner\..*", *text),
        attention_blocks=(rf"noise_refiner\.\d+\.{attn}",),
        joint_blocks=(rf"layers\.\d+\.{attn}",),
        aliases=aliases,
        **row,
        note="seed general list matches nothing; the Flux list adapts the text-only context_refiner",
    )


_SPECS: tuple[ArchitectureSpec, ...] = (
    # Stable Diffusion 1.x / 2.x / SDXL UNets.
    _unet(
        "UNet2DConditionModel",
        "Stable Diffusion 1.x, 2.x, SDXL (UNet)",
        aliases=("sd1", "sd15", "sd2", "sdxl"),
        component="unet",
        lora_loader="StableDiffusionLoraLoaderMixin",  # SDXL's mixin writes the same layout
        comfyui_layout="kohya",
        hub_tag="stable-diffusion",  # SD 1.x, 2.x and SDXL share the class; the base model says which
    ),
    # ControlNet for the SD UNets.
    _unet(
        "ControlNetModel",
        "ControlNet (SD 1.x / SDXL)",
        controlnet=True,
        aliases=("controlnet",),
        component="unet",  # a copy of the UNet's encoder: its LoRA keys are the UNet's
    ),
    # Stable Diffusion 3 / 3.5 MMDiT.
    _sd3(
        "SD3Transformer2DModel",
        "Stable Diffusion 3 / 3.5",
        aliases=("sd3", "sd35"),
        lora_loader="SD3LoraLoaderMixin",
        comfyui_layout="transformer",
    ),
    _sd3("SD3ControlNetModel", "SD3 ControlNet", controlnet=True, aliases=("sd3_controlnet",)),
    # FLUX.1 (dev, schnell, Kontext): 19 double + 38 single blocks at full size.
    _flux(
        "FluxTransformer2DModel",
        "FLUX.1",
        aliases=("flux", "flux1"),
        lora_loader="FluxLoraLoaderMixin",
        comfyui_layout="transformer",
    ),
    _flux("FluxControlNetModel", "FLUX.1 ControlNet", controlnet=True, aliases=("flux_controlnet",)),
    # Chroma: Flux layout, timestep + guidance through an approximator MLP.
    ArchitectureSpec(
        class_name="ChromaTransformer2DModel",
        family="Chroma",
        rules=(
            Rule(rf"transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="double blocks, image stream"),
            Rule(r"transformer_blocks\.\d+\.attn\.to_qkv", "attention", optional=True, note="fused q/k/v"),
            Rule(_X_EMBEDDER, "io", universal=False, note="patch embedding"),
            Rule(r"proj_out", "io", note="final projection"),
            Rule(r"distilled_guidance_layer\.(in_proj|out_proj)", "time", note="timestep/guidance approximator"),
            Rule(r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_qkv)", "joint"),
            Rule(r"single_transformer_blocks\.\d+\.proj_out", "joint", note="single-stream attention output"),
        ),
        text_path=_mmdit_text_path("transformer_blocks"),
        attention_blocks=(r"transformer_blocks\.\d+\.attn",),
        joint_blocks=(r"single_transformer_blocks\.\d+\.attn",),
        aliases=("chroma",),
        lora_loader="FluxLoraLoaderMixin",  # ChromaPipeline uses Flux's mixin
        comfyui_layout="transformer",  # ComfyUI's Chroma model is a Flux subclass: same key map
        # ...which has no `transformer.` names for the approximator; its original names are diffusers' own.
        comfyui_names=((r"(distilled_guidance_layer\..+)", r"\1"),),
        note="as Flux",
    ),
    # FLUX.2: fused single-stream projections, `to_out` without `.0` in single blocks.
    ArchitectureSpec(
        class_name="Flux2Transformer2DModel",
        family="FLUX.2",
        rules=(
            Rule(rf"transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="double blocks, image stream"),
            Rule(_X_EMBEDDER, "io", universal=False, note="patch embedding"),
            Rule(r"proj_out", "io", note="final projection"),
            Rule(r"time_guidance_embed\.timestep_embedder\.linear_[12]", "time"),
            Rule(r"single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj", "joint", note="fused q/k/v + MLP input"),
            # On AuraFlow the same name is a ModuleList (PEFT refuses it), hence universal=False.
            Rule(
                r"single_transformer_blocks\.\d+\.attn\.to_out",
                "joint",
                universal=False,
                note="fused attention + MLP output",
            ),
        ),
        text_path=_mmdit_text_path("transformer_blocks") + (r"double_stream_modulation_txt\..*",),
        attention_blocks=(r"transformer_blocks\.\d+\.attn",),
        joint_blocks=(r"single_transformer_blocks\.\d+\.attn",),
        aliases=("flux2",),
        lora_loader="Flux2LoraLoaderMixin",
        note="seed lists match only proj_out / double blocks; single blocks use to_qkv_mlp_proj and to_out",
    ),
    # AuraFlow: joint (MMDiT) blocks then single blocks; single-block `attn.to_out` is a ModuleList.
    ArchitectureSpec(
        class_name="AuraFlowTransformer2DModel",
        family="AuraFlow",
        rules=(
            Rule(rf"joint_transformer_blocks\.\d+\.attn\.{_QKVO}", "attention", note="joint blocks, image stream"),
            Rule(r"pos_embed\.proj", "io", note="patch embedding"),
            Rule(r"proj_out", "io", note="final projection"),
            Rule(r"time_step_proj\.linear_[12]", "time"),
            Rule(rf"single_transformer_blocks\.\d+\.attn\.{_QKVO}", "joint"),
        ),
        text_path=_mmdit_text_path("joint_transformer_blocks"),
        attention_blocks=(r"joint_transformer_blocks\.\d+\.attn",),
        joint_blocks=(r"single_transformer_blocks\.\d+\.attn",),
        aliases=("auraflow",),
        lora_loader="AuraFlowLoraLoaderMixin",
        comfyui_layout="transformer",
        note="seed general list matches only proj_out",
    ),
    # Z-Image (Turbo): 2 image-only noise_refiner layers, a text-only context_refiner, 30 unified main layers.
    _refiner_dit(
        "ZImageTransformer2DModel",
        "Z-Image",
        attn="attention",
        patch=Rule(r"all_x_embedder\.[^.]+", "io", note="patch embedding"),
        # The final layer runs on the unified text + image sequence before the image part is cut out.
        final=Rule(r"all_final_layer\.[^.]+\.linear", "joint", note="final projection, over text + image tokens"),
        time=r"t_embedder\.mlp\.[02]",
        text=(r"cap_embedder\..*",),
        aliases=("zimage", "z-image"),
        lora_loader="ZImageLoraLoaderMixin",
        comfyui_layout="transformer",
    ),
    # Lumina 2: the Z-Image layout with `attn` and norm_out.linear_2 as final projection.
    _refiner_dit(
        "Lumina2Transformer2DModel",
        "Lumina 2",
        attn="attn",
        patch=Rule(_X_EMBEDDER, "io", universal=False, note="patch embedding"),
        # Runs on the unified sequence; on Cosmos the same name is an adaLN modulation, hence universal=False.
        final=Rule(r"norm_out\.linear_2", "joint", universal=False, note="final projection, over text + image"),
        time=r"time_caption_embed\.timestep_embedder\.linear_[12]",
        text=(r"time_caption_embed\.caption_embedder\..*",),
        aliases=("lumina2",),
        lora_loader="Lumina2LoraLoaderMixin",
        # ComfyUI maps no diffusers names for Lumina 2 (its `transformer.` map is Z-Image's), only the original
        # NextDiT names, where q/k/v are one `attention.qkv` weight (diffusers' convert_lumina2_to_diffusers, inverted).
        comfyui_layout="native",
        comfyui_names=(
            *(
                (rf"(noise_refiner|context_refiner|layers)\.(\d+)\.attn\.to_{p}", r"\1.\2.attention.qkv")
                for p in "qkv"
            ),
            (r"(noise_refiner|context_refiner|layers)\.(\d+)\.attn\.to_out\.0", r"\1.\2.attention.out"),
            (
                r"(noise_refiner|context_refiner|layers)\.(\d+)\.feed_forward\.linear_([123])",
                r"\1.\2.feed_forward.w\3",
            ),
            (r"(noise_refiner|layers)\.(\d+)\.norm1\.linear", r"\1.\2.adaLN_modulation.1"),
            (r"x_embedder", "x_embedder"),
            (r"time_caption_embed\.timestep_embedder\.linear_1", "t_embedder.mlp.0"),
            (r"time_caption_embed\.timestep_embedder\.linear_2", "t_embedder.mlp.2"),
            (r"time_caption_embed\.caption_embedder\.1", "cap_embedder.1"),
            (r"norm_out\.linear_1", "final_layer.adaLN_modulation.1"),
            (r"norm_out\.linear_2", "final_layer.linear"),
        ),
    ),
    # Qwen-Image MMDiT.
    _qwen(
        "QwenImageTransformer2DModel",
        "Qwen-Image",
        aliases=("qwenimage", "qwen-image"),
        lora_loader="QwenImageLoraLoaderMixin",
        comfyui_layout="transformer",
    ),
    _qwen("QwenImageControlNetModel", "Qwen-Image ControlNet", controlnet=True, aliases=("qwenimage_controlnet",)),
    # Wan 2.x video DiT (T2V and I2V): attn2 is text (and CLIP-image) cross-attention.
    _cross_attention_dit(
        "WanTransformer3DModel",
        "Wan 2.x",
        patch=r"patch_embedding",
        time=r"condition_embedder\.time_embedder\.linear_[12]",
        block="blocks",
        aliases=("wan",),
        lora_loader="WanLoraLoaderMixin",
        video=True,
    ),
    # HiDream-I1: joint double-stream blocks (`_t` suffix = text stream) and single-stream blocks; `to_out` has no `.0`.
    ArchitectureSpec(
        class_name="HiDreamImageTransformer2DModel",
        family="HiDream-I1",
        rules=(
            Rule(
                r"double_stream_blocks\.\d+\.block\.attn1\.(to_q|to_k|to_v|to_out)", "attention", note="image stream"
            ),
            Rule(r"x_embedder\.proj", "io", note="patch embedding"),
            Rule(r"final_layer\.linear", "io", note="final projection"),
            Rule(r"t_embedder\.timestep_embedder\.linear_[12]", "time"),
            Rule(r"single_stream_blocks\.\d+\.block\.attn1\.(to_q|to_k|to_v|to_out)", "joint"),
        ),
        text_path=(
            r"double_stream_blocks\.\d+\.block\.attn1\.(to_q_t|to_k_t|to_v_t|to_out_t)",
            r"double_stream_blocks\.\d+\.block\.ff_t\..*",
            r"caption_projection\..*",
            r"p_embedder\..*",
        ),
        attention_blocks=(r"double_stream_blocks\.\d+\.block\.attn1",),
        joint_blocks=(r"single_stream_blocks\.\d+\.block\.attn1",),
        aliases=("hidream",),
        lora_loader="HiDreamImageLoraLoaderMixin",
        comfyui_layout="transformer",
        note="general list misses the output projection (`to_out`, no `.0`) and hits single-stream blocks",
    ),
    # LTX-Video.
    _cross_attention_dit(
        "LTXVideoTransformer3DModel",
        "LTX-Video",
        patch=r"proj_in",
        time=r"time_embed\.emb\.timestep_embedder\.linear_[12]",
        aliases=("ltx", "ltxvideo"),
        lora_loader="LTXVideoLoraLoaderMixin",
        video=True,
    ),
    # Cosmos (built with concat_padding_mask=False in tests: True needs torchvision).
    _cross_attention_dit(
        "CosmosTransformer3DModel",
        "Cosmos",
        patch=r"patch_embed\.proj",
        time=r"time_embed\.t_embedder\.linear_[12]",
        aliases=("cosmos",),
        lora_loader="CosmosLoraLoaderMixin",
        video=True,
    ),
    # Kandinsky 5: visual blocks; the text encoder blocks reuse the same leaf names.
    ArchitectureSpec(
        class_name="Kandinsky5Transformer3DModel",
        family="Kandinsky 5",
        rules=(
            Rule(
                r"visual_transformer_blocks\.\d+\.self_attention\.(to_query|to_key|to_value|out_layer)",
                "attention",
                note="visual self-attention",
            ),
            Rule(r"visual_embeddings\.in_layer", "io", note="patch embedding"),
            Rule(r"out_layer\.out_layer", "io", note="final projection"),
            Rule(r"time_embeddings\.(in_layer|out_layer)", "time"),
        ),
        text_path=(
            r"text_transformer_blocks\..*",
            r"visual_transformer_blocks\.\d+\.cross_attention\.(to_key|to_value)",
            r"text_embeddings\..*",
            r"pooled_text_embeddings\..*",
        ),
        attention_blocks=(r"visual_transformer_blocks\.\d+\.self_attention",),
        aliases=("kandinsky5",),
        lora_loader="KandinskyLoraLoaderMixin",
        comfyui_layout="transformer",
        note="seed Kandinsky list matches nothing (no attn1/conv_in/time_embedding)",
    ),
    # Sana.
    _cross_attention_dit(
        "SanaTransformer2DModel",
        "Sana",
        patch=r"patch_embed\.proj",
        time=r"time_embed\.emb\.timestep_embedder\.linear_[12]",
        aliases=("sana",),
        lora_loader="SanaLoraLoaderMixin",
    ),
    # PixArt-alpha / sigma.
    _cross_attention_dit(
        "PixArtTransformer2DModel",
        "PixArt-α / Σ",
        patch=r"pos_embed\.proj",
        time=r"adaln_single\.emb\.timestep_embedder\.linear_[12]",
        aliases=("pixart",),
    ),
    # Stable Cascade (Würstchen v3) stage B/C UNet: attention K/V read image tokens concatenated with CLIP tokens.
    ArchitectureSpec(
        class_name="StableCascadeUNet",
        family="Stable Cascade",
        rules=(
            Rule(
                r"(down_blocks|up_blocks)\.\d+\.\d+\.attention\.(to_q|to_out\.0)",
                "attention",
                note="queries and output read image tokens only",
            ),
            Rule(r"embedding\.1", "io", note="latent input conv"),
            Rule(r"clf\.1", "io", note="latent output conv"),
            Rule(r"(down_blocks|up_blocks)\.\d+\.\d+\.mapper", "time", note="timestep-ratio modulation"),
            Rule(
                r"(down_blocks|up_blocks)\.\d+\.\d+\.attention\.(to_k|to_v)",
                "joint",
                note="keys/values over image + CLIP tokens",
            ),
        ),
        text_path=(
            r"(down_blocks|up_blocks)\.\d+\.\d+\.kv_mapper\..*",
            r"clip_txt_mapper",
            r"clip_txt_pooled_mapper",
            r"clip_img_mapper",
        ),
        attention_blocks=(r"(down_blocks|up_blocks)\.\d+\.\d+\.attention",),
        aliases=("stable_cascade", "cascade"),
        # The stage C pipeline's component (`decoder` in stage B's); diffusers has no LoRA loader for either.
        component="prior",
        note="seed general list matches nothing; K/V see CLIP tokens, so they are joint-scope only",
    ),
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {spec.class_name: spec for spec in _SPECS}
"""The table, keyed by diffusers model class name."""

FAMILY_ALIASES: dict[str, str] = {alias: spec.class_name for spec in _SPECS for alias in spec.aliases}
"""Short family names accepted by ``architecture=`` (``"flux"``, ``"sdxl"``, ...), mapped to class names."""
