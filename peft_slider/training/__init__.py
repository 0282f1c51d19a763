# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Training: signed batches, signed strength, and the adapters beside a slider.

- `sampler`: `SliderBatchSampler`, one backend and so one signed strength per batch; resumable, sharded by rank.
- `data`: slider datasets (`SliderDataset`, `SliderConcatDataset`, `ImageCaptionFolder`, SimpleTuner configs).
- `objectives`: noise, targets and losses per scheduler family, and what neutral batches train.
- `paired_images`: paired-image sliders: before / after image pairs (`load_image_pairs`, `ImagePairDataset`) trained
  at `+s` and `-s` in one pass with the same noise (`paired_slider_loss`).
- `scaling`: `SliderScaler`, the slider's signed strength on its adapters' scales, restored exactly.
- `text_prompts`: text-prompt sliders: the prompt sets (`PromptSet`, `AnchorPrompt`, `PromptSliderSpec`), the
  objective (`prompt_slider_loss`: one frozen and one trained pass toward `guided_target`) and the base model's
  rollouts it trains at (`rollout`, `RolloutPool`, with an opt-in cache of the frozen pass's predictions read through
  `FrozenPredictions`).
- `adapters`: which adapters are sliders and which are frozen, and the tuner-layer helpers (names, activation, the
  `AdapterState` snapshot) the loaders and the pipeline mixin use too. Loading an assistant adapter from a file is
  `peft_slider.formats.assistants`.
- `prompt_files`: text-prompt slider files (`load_prompt_slider`, `save_prompt_slider`): Concept Sliders' prompt YAML,
  ai-toolkit's slider config and our own format, read into a `PromptSliderSpec`.
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "ACTIONS",
    "AnchorPrompt",
    "DenoisingObjective",
    "EpsilonObjective",
    "FlowMatchingObjective",
    "FrozenPredictions",
    "IMAGE_EXTENSIONS",
    "ImageCaptionFolder",
    "ImagePair",
    "ImagePairDataset",
    "MAX_STRENGTH",
    "NEUTRAL_OBJECTIVES",
    "NeutralObjective",
    "NoisyBatch",
    "PROMPT_FILE_FORMATS",
    "PairedSliderLoss",
    "PromptFileError",
    "PromptSet",
    "PromptSliderLoss",
    "PromptSliderSpec",
    "RolloutPool",
    "SLIDER_GROUPS",
    "SliderBackend",
    "SliderBatchInfo",
    "SliderBatchSampler",
    "SliderConcatDataset",
    "SliderDataset",
    "SliderScaler",
    "SliderStep",
    "Strength",
    "VPredictionObjective",
    "activate_adapters",
    "active_adapter_names",
    "adapter_names",
    "batch_strength",
    "concat_noisy",
    "freeze_adapter",
    "frozen_adapter_names",
    "guided_target",
    "is_flow_matching_scheduler",
    "load_image_pairs",
    "load_prompt_slider",
    "load_simpletuner_backends",
    "neutral_strength",
    "objective_from_scheduler",
    "paired_noisy_batch",
    "paired_slider_loss",
    "prompt_slider_loss",
    "repeat_noisy",
    "rollout",
    "save_prompt_slider",
    "slider_adapter_names",
    "slider_group",
    "slider_strength",
    "stack_conditioning",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "adapters": [
            "activate_adapters",
            "active_adapter_names",
            "adapter_names",
            "freeze_adapter",
            "frozen_adapter_names",
            "slider_adapter_names",
        ],
        "data": [
            "IMAGE_EXTENSIONS",
            "ImageCaptionFolder",
            "SliderConcatDataset",
            "SliderDataset",
            "batch_strength",
            "load_simpletuner_backends",
        ],
        "objectives": [
            "DenoisingObjective",
            "EpsilonObjective",
            "FlowMatchingObjective",
            "NEUTRAL_OBJECTIVES",
            "NeutralObjective",
            "NoisyBatch",
            "SliderStep",
            "VPredictionObjective",
            "is_flow_matching_scheduler",
            "neutral_strength",
            "objective_from_scheduler",
        ],
        "paired_images": [
            "ImagePair",
            "ImagePairDataset",
            "PairedSliderLoss",
            "load_image_pairs",
            "paired_noisy_batch",
            "paired_slider_loss",
        ],
        "prompt_files": ["PROMPT_FILE_FORMATS", "PromptFileError", "load_prompt_slider", "save_prompt_slider"],
        "sampler": ["SLIDER_GROUPS", "SliderBackend", "SliderBatchInfo", "SliderBatchSampler", "slider_group"],
        "scaling": ["MAX_STRENGTH", "SliderScaler", "Strength", "slider_strength"],
        "text_prompts": [
            "ACTIONS",
            "AnchorPrompt",
            "FrozenPredictions",
            "PromptSet",
            "PromptSliderLoss",
            "PromptSliderSpec",
            "RolloutPool",
            "concat_noisy",
            "guided_target",
            "prompt_slider_loss",
            "repeat_noisy",
            "rollout",
            "stack_conditioning",
        ],
    },
)

if TYPE_CHECKING:
    from .adapters import (
        activate_adapters,
        active_adapter_names,
        adapter_names,
        freeze_adapter,
        frozen_adapter_names,
        slider_adapter_names,
    )
    from .data import (
        IMAGE_EXTENSIONS,
        ImageCaptionFolder,
        SliderConcatDataset,
        SliderDataset,
        batch_strength,
        load_simpletuner_backends,
    )
    from .objectives import (
        NEUTRAL_OBJECTIVES,
        DenoisingObjective,
        EpsilonObjective,
        FlowMatchingObjective,
        NeutralObjective,
        NoisyBatch,
        SliderStep,
        VPredictionObjective,
        is_flow_matching_scheduler,
        neutral_strength,
        objective_from_scheduler,
    )
    from .paired_images import (
        ImagePair,
        ImagePairDataset,
        PairedSliderLoss,
        load_image_pairs,
        paired_noisy_batch,
        paired_slider_loss,
    )
    from .prompt_files import (
        PROMPT_FILE_FORMATS,
        PromptFileError,
        load_prompt_slider,
        save_prompt_slider,
    )
    from .sampler import (
        SLIDER_GROUPS,
        SliderBackend,
        SliderBatchInfo,
        SliderBatchSampler,
        slider_group,
    )
    from .scaling import (
        MAX_STRENGTH,
        SliderScaler,
        Strength,
        slider_strength,
    )
    from .text_prompts import (
        ACTIONS,
        AnchorPrompt,
        FrozenPredictions,
        PromptSet,
        PromptSliderLoss,
        PromptSliderSpec,
        RolloutPool,
        concat_noisy,
        guided_target,
        prompt_slider_loss,
        repeat_noisy,
        rollout,
        stack_conditioning,
    )
