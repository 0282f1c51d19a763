# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Tiny, random-weight, fully local diffusers pipelines.

Every component (tokenizers, text encoders, VAE, denoiser, scheduler) is built from a config in code, so nothing is
downloaded. The pipelines are real diffusers pipelines: they run the real `__call__`, save with `save_pretrained` and load
back through `DiffusionPipeline.from_pretrained`. Tests, the example trainer's default, benchmarks and docs build on them.

The denoisers are small but not degenerate (a few blocks, every kind of block the real model has), and no parameter of
a denoiser is left exactly zero: adaLN-zero style modulations and zero-initialised projections would otherwise make LoRA
adapters placed behind them have no effect and no gradient.
"""

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

# The denoiser finder lives with the other model-structure helpers; re-exported here, where tests and examples use it.
from ..targeting.targets import denoiser_attr as denoiser_attr
from ..targeting.targets import denoiser_of as denoiser_of
from ..utils.checks import check_seed

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "TINY_FAMILIES",
    "build_tiny_pipeline",
    "capture_denoiser_inputs",
    "denoiser_attr",
    "denoiser_of",
    "save_tiny_pipeline",
    "tiny_call_kwargs",
]

# Words of the local tokenizers' vocabulary: common English plus the words slider prompts use. A word outside it maps
# to the unknown token, which is fine for random-weight models but would make every unknown word look alike.
_WORDS = (
    "a an the of and or in on at with without to from by for as is are was be been it its this that these those "
    "photo picture image portrait painting drawing illustration render sketch close up closeup shot view scene style "
    "person people man woman men women boy girl child children baby adult old young older younger elderly teen "
    "face faces eye eyes hair mouth nose smile smiling smiles laugh laughing happy sad angry surprised neutral "
    "expression serious calm tired beard mustache glasses hat makeup skin wrinkles wrinkled smooth "
    "cat cats dog dogs bird birds horse fish animal animals tree trees flower flowers grass forest mountain mountains "
    "river lake sea ocean beach sky cloud clouds sun moon star stars rain snow winter summer spring autumn night day "
    "city street house building room car road bridge castle garden field park "
    "red orange yellow green blue purple pink brown black white gray grey gold silver colorful dark bright light "
    "big small large tiny huge long short tall thin fat round soft hard warm cold hot wet dry "
    "very more less most least much many few some all no not one two three four five "
    "good bad best worst beautiful ugly pretty cute detailed simple realistic photorealistic cartoon anime abstract "
    "high low quality resolution sharp blurry blur focus lighting shadow shadows color colors contrast saturation "
    "wearing holding standing sitting walking running looking jumping flying swimming sleeping "
    "shirt dress jacket coat suit shoes hand hands arm arms leg legs body head "
    "background foreground front behind near far left right top bottom middle center "
    "morning evening sunset sunrise cinematic film camera lens studio natural professional "
    "masterpiece art artwork digital oil watercolor pencil 3d 4k 8k hd "
    "concept slider sliders token tokens text prompt user assistant system video frame motion moving"
).split() + list(",.!?:;'\"-()")


def _words() -> list[str]:
    # Token ids follow the order above (a repeated word keeps its first id), so they never depend on the environment.
    return list(dict.fromkeys(_WORDS))


def _require_transformers() -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Tiny pipelines build their text encoders and tokenizers with transformers: `pip install transformers`."
        ) from error


def _build_tokenizer(
    *,
    specials: list[str],
    unk_token: str,
    pad_token: str,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
    lowercase: bool = True,
    model_max_length: int,
    chat_template: str | None = None,
) -> "PreTrainedTokenizerFast":
    """A word-level fast tokenizer over `specials + _words()`; specials get the first ids, in the order given."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(specials + _words())}
    backend = Tokenizer(WordLevel(vocab, unk_token=unk_token))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # Specials must survive normalisation and pre-tokenisation (chat templates put them next to text).
    backend.add_special_tokens(specials)
    single, special_ids = "$A", []
    if add_bos:
        single = f"{bos_token} {single}"
        special_ids.append((bos_token, vocab[bos_token]))
    if add_eos:
        single = f"{single} {eos_token}"
        special_ids.append((eos_token, vocab[eos_token]))
    if special_ids:
        pair = single + " " + single.replace("$A", "$B")
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_ids)
    kwargs = {"unk_token": unk_token, "pad_token": pad_token, "model_max_length": model_max_length}
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if eos_token is not None:
        kwargs["eos_token"] = eos_token
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _clip_tokenizer() -> "PreTrainedTokenizerFast":
    # Like CLIP's: <bos> text <eos>, padded with <eos> to 77, lowercased. The eos id is deliberately not 2, so
    # CLIPTextModel pools at the first eos token (its `eos_token_id == 2` branch is a legacy argmax over ids).
    return _build_tokenizer(
        specials=["<|startoftext|>", "<|endoftext|>", "<|unk|>"],
        unk_token="<|unk|>",
        pad_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        add_bos=True,
        add_eos=True,
        model_max_length=77,
    )


def _t5_tokenizer() -> "PreTrainedTokenizerFast":
    # Like T5's: pad=0, eos=1, unk=2, text </s>, no bos, case kept.
    return _build_tokenizer(
        specials=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        add_eos=True,
        lowercase=False,
        model_max_length=512,
    )


# Qwen3's chat format, reduced to what ZImagePipeline asks for (one user turn and the generation prompt).
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _qwen_tokenizer() -> "PreTrainedTokenizerFast":
    return _build_tokenizer(
        # Qwen's byte-level BPE never needs an unknown token; this word-level one does, distinct from padding.
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|unk|>"],
        unk_token="<|unk|>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        lowercase=False,
        model_max_length=32768,
        chat_template=_QWEN_CHAT_TEMPLATE,
    )


def _clip_text_encoder(
    tokenizer: "PreTrainedTokenizerFast", *, hidden_size: int = 32, with_projection: bool = False
) -> "PreTrainedModel":
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden_size,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def _t5_text_encoder(tokenizer: "PreTrainedTokenizerFast", *, d_model: int = 32) -> "PreTrainedModel":
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1, what Flux/SD3/Chroma ship
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _qwen3_text_encoder(tokenizer: "PreTrainedTokenizerFast", *, hidden_size: int = 16) -> "PreTrainedModel":
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,  # ZImagePipeline reads hidden_states[-2]
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen3Model(config).eval()


def _autoencoder_kl(*, latent_channels: int, **config: Any) -> "AutoencoderKL":
    from diffusers import AutoencoderKL

    # Three levels: a VAE scale factor of 4, so 32x32 images are 8x8 latents.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=latent_channels,
        sample_size=32,
        **config,
    ).eval()


def _flux_vae() -> "AutoencoderKL":
    # The FLUX.1 VAE (also Chroma's and Z-Image's): 16 latent channels, no quant convs, shifted and scaled latents.
    return _autoencoder_kl(
        latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159
    )


# ---------------------------------------------------------------------------------------------------------------------
# One builder per family: returns the pipeline class and its components, built in a fixed order from the global RNG.


def _build_sd15() -> tuple[type, dict[str, Any]]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer)
    vae = _autoencoder_kl(latent_channels=4, scaling_factor=0.18215)
    # SD1.x layout at toy width: cross-attention in the high-resolution blocks, a plain block at the bottom.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=text_encoder.config.hidden_size,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    components = {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }
    return StableDiffusionPipeline, components


def _build_sdxl() -> tuple[type, dict[str, Any]]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, with_projection=True)
    vae = _autoencoder_kl(latent_channels=4, scaling_factor=0.13025, force_upcast=False)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # Six micro-conditioning numbers (original size, crop, target size) plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
        norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
        prediction_type="epsilon",
    )
    components = {
        "unet": unet,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "image_encoder": None,
        "feature_extractor": None,
    }
    return StableDiffusionXLPipeline, components


def _build_flux() -> tuple[type, dict[str, Any]]:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer)
    text_encoder_2 = _t5_text_encoder(tokenizer_2)
    vae = _flux_vae()
    # FLUX.1-dev layout: 2x2-packed 16-channel latents, guidance embedding, double- then single-stream blocks.
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = _flow_match_scheduler(shift=3.0, use_dynamic_shifting=True)
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "image_encoder": None,
        "feature_extractor": None,
    }
    return FluxPipeline, components


def _flow_match_scheduler(**config: Any) -> "FlowMatchEulerDiscreteScheduler":
    from diffusers import FlowMatchEulerDiscreteScheduler

    if config.get("use_dynamic_shifting"):
        config = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, **config}
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


def _build_sd3() -> tuple[type, dict[str, Any]]:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    tokenizer_3 = _t5_tokenizer()
    text_encoder = _clip_text_encoder(tokenizer, with_projection=True)
    text_encoder_2 = _clip_text_encoder(tokenizer_2, with_projection=True)
    # The pipeline concatenates both CLIP hidden states and zero-pads them to T5's width.
    text_encoder_3 = _t5_text_encoder(tokenizer_3, d_model=64)
    vae = _autoencoder_kl(
        latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
    )
    # SD3.5-medium layout: RMS qk-norm, and a second image self-attention (`attn2`) in the first block.
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_3.config.d_model,
        caption_projection_dim=32,
        pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    scheduler = _flow_match_scheduler(shift=3.0)
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "tokenizer_3": tokenizer_3,
        "image_encoder": None,
        "feature_extractor": None,
    }
    return StableDiffusion3Pipeline, components


def _build_zimage() -> tuple[type, dict[str, Any]]:
    import diffusers

    if not hasattr(diffusers, "ZImagePipeline"):
        raise ImportError(
            f"The 'zimage' tiny pipeline needs diffusers with ZImagePipeline (found {diffusers.__version__}): "
            "`pip install -U diffusers`."
        )
    tokenizer = _qwen_tokenizer()
    text_encoder = _qwen3_text_encoder(tokenizer)
    vae = _flux_vae()
    transformer = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        qk_norm=True,
        cap_feat_dim=text_encoder.config.hidden_size,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 64, 64],
    )
    scheduler = _flow_match_scheduler(shift=3.0)
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    return diffusers.ZImagePipeline, components


def _build_chroma() -> tuple[type, dict[str, Any]]:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    tokenizer = _t5_tokenizer()
    text_encoder = _t5_text_encoder(tokenizer)
    vae = _flux_vae()
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_encoder.config.d_model,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    scheduler = _flow_match_scheduler(shift=3.0, use_dynamic_shifting=True)
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "image_encoder": None,
        "feature_extractor": None,
    }
    return ChromaPipeline, components


def _build_wan() -> tuple[type, dict[str, Any]]:
    import diffusers

    if not hasattr(diffusers, "WanPipeline"):
        raise ImportError(
            f"The 'wan' tiny pipeline needs diffusers with WanPipeline (found {diffusers.__version__}): "
            "`pip install -U diffusers`."
        )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    text_encoder = UMT5EncoderModel(text_config).eval()
    # Wan 2.1's causal video VAE at toy width: 16 latent channels, 4x temporal compression (the VAE encodes frames in
    # chunks of 4 after the first, so that is fixed) and, like the other tiny families, 4x (not 8x) spatial compression.
    vae = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        scale_factor_spatial=4,
        scale_factor_temporal=4,
    ).eval()
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=text_encoder.config.d_model,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    components = {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    return diffusers.WanPipeline, components


@dataclasses.dataclass(frozen=True)
class _TinyFamily:
    build: Callable[[], tuple[type, dict[str, Any]]]
    # Keyword arguments of a fast, valid `__call__` (besides `prompt` and `generator`).
    call_kwargs: dict[str, Any]


_BASE_CALL = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "pt"}

# One row per family. guidance_scale is the family's usual value: classifier-free guidance on the UNets, SD3, Chroma and
# Wan, the distilled guidance embedding on Flux (dev), no CFG on Z-Image (Turbo).
_FAMILIES: dict[str, _TinyFamily] = {
    # Stable Diffusion 1.x: UNet2DConditionModel, one CLIP text encoder, epsilon prediction.
    "sd15": _TinyFamily(_build_sd15, {**_BASE_CALL, "guidance_scale": 7.5}),
    # Stable Diffusion XL: UNet2DConditionModel with text-time conditioning, two CLIP text encoders.
    "sdxl": _TinyFamily(_build_sdxl, {**_BASE_CALL, "guidance_scale": 5.0}),
    # FLUX.1: FluxTransformer2DModel, CLIP (pooled) + T5 (sequence), flow matching.
    "flux": _TinyFamily(_build_flux, {**_BASE_CALL, "guidance_scale": 3.5, "max_sequence_length": 16}),
    # Stable Diffusion 3.x: SD3Transformer2DModel (MMDiT), two CLIP-with-projection + T5, flow matching.
    "sd3": _TinyFamily(_build_sd3, {**_BASE_CALL, "guidance_scale": 7.0, "max_sequence_length": 16}),
    # Z-Image: ZImageTransformer2DModel (single-stream), Qwen3 text encoder behind a chat template, flow matching.
    "zimage": _TinyFamily(_build_zimage, {**_BASE_CALL, "guidance_scale": 0.0, "max_sequence_length": 32}),
    # Chroma: ChromaTransformer2DModel (Flux without CLIP, modulation from an approximator), T5 only.
    "chroma": _TinyFamily(_build_chroma, {**_BASE_CALL, "guidance_scale": 3.0, "max_sequence_length": 16}),
    # Wan 2.1 text-to-video: WanTransformer3DModel, UMT5 text encoder, causal video VAE; 5 frames (2 latent frames).
    "wan": _TinyFamily(_build_wan, {**_BASE_CALL, "num_frames": 5, "guidance_scale": 5.0, "max_sequence_length": 16}),
}

TINY_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

# Standard deviation given to denoiser parameters that are initialised to exactly zero: small enough that the model
# stays close to its initialisation, large enough that gates open and gradients flow.
_ZERO_PARAMETER_STD = 0.02


def _check_family(family: Any) -> _TinyFamily:
    if not isinstance(family, str) or family not in _FAMILIES:
        raise ValueError(f"`family` must be one of {TINY_FAMILIES}, got {family!r}.")
    return _FAMILIES[family]


def _randomize_zero_parameters(module: torch.nn.Module, *, seed: int) -> list[str]:
    """Give every parameter of `module` that is exactly zero everywhere small seeded random values.

    Returns the names of the parameters it changed.
    """
    generator = torch.Generator().manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.count_nonzero() == 0:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.copy_(noise * _ZERO_PARAMETER_STD)
                changed.append(name)
    return changed


def _fp32_module_names(module: torch.nn.Module, dtype: torch.dtype) -> set[str]:
    """Names of submodules that `from_pretrained(torch_dtype=dtype)` keeps in float32 for this model class."""
    names = set(getattr(module, "_keep_in_fp32_modules", None) or [])
    if getattr(module, "_keep_in_fp32_modules_strict", None) is not None or hasattr(module, "_get_dtype_plan"):
        # transformers honours `_keep_in_fp32_modules` for float16 only, and `..._strict` for float16 and bfloat16.
        if dtype != torch.float16:
            names = set()
        if dtype in (torch.float16, torch.bfloat16):
            names |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    return names


def _cast_like_from_pretrained(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point weights to `dtype` as `from_pretrained(torch_dtype=dtype)` does.

    Parameters under a submodule the model class keeps in float32 (e.g. Wan's time embedder and norms, T5's `wo` in
    float16) stay in float32, so a built pipeline matches a saved-and-loaded one. `pipe.to(dtype)` would cast those too
    (and warn).
    """
    keep = _fp32_module_names(module, dtype)
    # Loading casts what the checkpoint holds: parameters and persistent buffers (e.g. SD3's positional embedding).
    saved = set(module.state_dict())
    tensors = [*module.named_parameters(), *((name, b) for name, b in module.named_buffers() if name in saved)]
    with torch.no_grad():
        for name, tensor in tensors:
            if tensor.is_floating_point():
                target = torch.float32 if keep.intersection(name.split(".")) else dtype
                tensor.data = tensor.data.to(target)


def build_tiny_pipeline(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> "DiffusionPipeline":
    """Build a tiny, random-weight diffusers pipeline of a model family, entirely from configs in code.

    The same `seed` gives bitwise-identical weights. The global torch RNG is left as it was. No denoiser parameter is
    exactly zero: those initialised to zero get small seeded random values, so that LoRA adapters on the denoiser change
    its output and get gradients. The progress bar is disabled.

    Args:
        family (`str`):
            One of `TINY_FAMILIES`: `"sd15"`, `"sdxl"`, `"flux"`, `"sd3"`, `"zimage"`, `"chroma"`, `"wan"`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of every random weight.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Floating-point dtype of the models. Weights are drawn in float32 and then cast.

    Returns:
        `diffusers.DiffusionPipeline`: the family's real pipeline class, on CPU.

    Example:

    ```python
    >>> import torch
    >>> from peft_slider.testing import build_tiny_pipeline, tiny_call_kwargs
    >>> pipe = build_tiny_pipeline("flux")
    >>> image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs("flux")).images
    >>> tuple(image.shape)
    (1, 3, 32, 32)

    ```
    """
    spec = _check_family(family)
    seed = check_seed(seed)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating-point torch.dtype such as torch.float32, got {dtype!r}.")
    _require_transformers()
    # Weights come from the global RNG (model constructors use it); fork it so callers' random streams are untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline_class, components = spec.build()
    pipe = pipeline_class(**components)
    _randomize_zero_parameters(denoiser_of(pipe), seed=seed)
    if dtype != torch.float32:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                _cast_like_from_pretrained(component, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny pipeline (float32) and save it with `save_pretrained`, ready for `DiffusionPipeline.from_pretrained`.

    Args:
        family (`str`):
            One of `TINY_FAMILIES`.
        path (`str` or `pathlib.Path`):
            Folder to write (created if needed).
        seed (`int`, *optional*, defaults to `0`):
            Seed of every random weight, as in `build_tiny_pipeline`.

    Returns:
        `pathlib.Path`: `path`.

    Example:

    ```python
    >>> import tempfile
    >>> from diffusers import DiffusionPipeline
    >>> from peft_slider.testing import save_tiny_pipeline
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     pipe = DiffusionPipeline.from_pretrained(save_tiny_pipeline("sd15", folder))
    >>> type(pipe).__name__
    'StableDiffusionPipeline'

    ```
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"`path` must be a str or pathlib.Path, got {type(path).__name__}: {path!r}.")
    pipe = build_tiny_pipeline(family, seed=seed)
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_call_kwargs(family: str) -> dict[str, Any]:
    """Keyword arguments for a fast, valid call of a tiny pipeline: 32x32, 2 steps, the family's guidance, tensor output.

    Args:
        family (`str`):
            One of `TINY_FAMILIES`.

    Returns:
        `dict`: a fresh dict with `height`, `width`, `num_inference_steps`, `guidance_scale`, `output_type` (`"pt"`),
        `max_sequence_length` for families with a T5/LLM text encoder and `num_frames` for video. `pipe(...)[0]` is
        then a float tensor in [0, 1]: `(batch, 3, 32, 32)` images, or `(batch, frames, 3, 32, 32)` for video (whose
        output field is `frames`, not `images`).

    Example:

    ```python
    >>> from peft_slider.testing import tiny_call_kwargs
    >>> tiny_call_kwargs("sd15")
    {'height': 32, 'width': 32, 'num_inference_steps': 2, 'output_type': 'pt', 'guidance_scale': 7.5}

    ```
    """
    return dict(_check_family(family).call_kwargs)


class _StopPipeline(Exception):
    """Raised by the capture hook to end a pipeline call after the denoiser's first forward."""


def _detached_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(item) for item in value)
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    return value


def capture_denoiser_inputs(pipe: "DiffusionPipeline", prompt: str | list[str], **call_kwargs: Any) -> dict[str, Any]:
    """Run a pipeline call up to the denoiser's first forward and return that forward's arguments as keyword arguments.

    The result feeds `denoiser_of(pipe)(**inputs)` directly, with gradients enabled (the pipeline's own call runs under
    `torch.no_grad`), which is how tests check LoRA gradients on real denoiser inputs of any family. The call stops
    right after the capture, so it costs the text encoders and one hook.

    Args:
        pipe (`diffusers.DiffusionPipeline`):
            The pipeline.
        prompt (`str` or `list[str]`):
            The prompt.
        **call_kwargs:
            Further `pipe(...)` arguments, e.g. `generator=` and `**tiny_call_kwargs(family)`.

    Returns:
        `dict[str, Any]`: the denoiser's forward arguments by name, as the pipeline passed them (usually with
        `return_dict=False`, so the denoiser returns a tuple); tensors are detached copies.

    Example:

    ```python
    >>> import torch
    >>> from peft_slider.testing import build_tiny_pipeline, capture_denoiser_inputs, denoiser_of, tiny_call_kwargs
    >>> pipe = build_tiny_pipeline("sd3")
    >>> inputs = capture_denoiser_inputs(pipe, "a cat", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs("sd3"))
    >>> sorted(inputs)
    ['encoder_hidden_states', 'hidden_states', 'joint_attention_kwargs', 'pooled_projections', 'return_dict', 'timestep']
    >>> tuple(denoiser_of(pipe)(**inputs)[0].shape)  # classifier-free guidance doubles the batch
    (2, 16, 8, 8)

    ```
    """
    denoiser = denoiser_of(pipe)
    signature = inspect.signature(denoiser.forward)
    captured: dict[str, Any] = {}

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.update(_detached_copy(signature.bind_partial(*args, **kwargs).arguments))
        raise _StopPipeline

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(prompt, **call_kwargs)
    except _StopPipeline:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(
            f"`pipe` ({type(pipe).__name__}) finished without calling its denoiser; check `call_kwargs` "
            f"(num_inference_steps={call_kwargs.get('num_inference_steps')!r})."
        )
    return captured
