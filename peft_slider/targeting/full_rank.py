"""Full-rank sliders: train exactly the targeted base weights and freeze everything else."""

from __future__ import annotations

from torch import nn

from .targets import base_modules, resolve_targets, unwrap_denoiser

__all__ = ["make_full_rank_trainable"]


def make_full_rank_trainable(
    model: nn.Module, *, architecture: str | None = None, scope: str = "visual", train_bias: bool = False
) -> list[str]:
    """Make the slider's target weights trainable (full rank) and freeze every other parameter.

    The targets are those `SliderLoraConfig` would adapt on this model. A full-rank slider has no strength knob of its
    own: save the difference to the base weights (or train a LoRA) to dial it.

    Args:
        model (`torch.nn.Module`):
            The denoiser (or pipeline; its denoiser is used).
        architecture (`str`, *optional*):
            Must agree with the model when given.
        scope (`str`, *optional*, defaults to `"visual"`):
            ``"visual"`` or ``"joint"``.
        train_bias (`bool`, *optional*, defaults to `False`):
            Also train the targeted modules' biases.

    Returns:
        `list[str]`: the names of the parameters left trainable (in a model that carries adapters, a target's weight
        is `<name>.base_layer.weight`; the adapters' own parameters are frozen too).

    Example:

    ```py
    >>> import torch
    >>> from diffusers import SanaTransformer2DModel
    >>> from peft_slider.targeting import make_full_rank_trainable
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> sana = SanaTransformer2DModel(num_layers=1, num_attention_heads=2, attention_head_dim=4,
    ...     num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
    ...     sample_size=8, patch_size=1, in_channels=4, out_channels=4)
    >>> names = make_full_rank_trainable(sana)
    >>> names[:2]
    ['patch_embed.proj.weight', 'time_embed.emb.timestep_embedder.linear_1.weight']
    ```
    """
    denoiser = unwrap_denoiser(model)
    targets = resolve_targets(model=denoiser, architecture=architecture, scope=scope, variant="full")
    # By identity, not name: in a model that carries adapters a target's weight is `<name>.base_layer.weight`.
    modules = base_modules(denoiser)
    wanted = set()
    for name in targets.modules or ():
        module = modules[name]
        wanted.add(id(module.weight))
        if train_bias and module.bias is not None:
            wanted.add(id(module.bias))
    trainable = []
    for name, parameter in denoiser.named_parameters():
        parameter.requires_grad_(id(parameter) in wanted)
        if id(parameter) in wanted:
            trainable.append(name)
    return trainable
