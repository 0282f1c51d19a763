# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Training: signed batches, signed strength, and the adapters beside a slider.

- `sampler`: `SliderBatchSampler`, one backend and so one signed strength per batch; resumable, sharded by rank.
- `data`: slider datasets (`SliderDataset`, `SliderConcatDataset`, `ImageCaptionFolder`, SimpleTuner configs).
- `objectives`: noise, targets and losses per scheduler family, and what neutral batches train.
- `paired_images`: paired-image sliders: before / after image pairs (`load_image_pairs`, `ImagePairDataset`) trained
  at `+s` and `-s` in one pass with the same noise (`paired_slider_loss`).
- `scaling`: `SliderScaler`, the slider's signed strength on its adapters' scales, restored exactly.
- `adapters`: which adapters are sliders and which are frozen, and the tuner-layer helpers (names, activation, the
  `AdapterState` snapshot) the loaders and the pipeline mixin use too. Loading an assistant adapter from a file is
  `peft_slider.formats.assistants`.
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "ACTIONS",
    "AnchorPrompt",
    "DenoisingObjective",
    "EpsilonObjective",
    "FlowMatchingObjective",
    "IMAGE_EXTENSIONS",
    "ImageCaptionFolder",
    "ImagePair",
    "ImagePairDataset",
    "MAX_STRENGTH",
    "NEUTRAL_OBJECTIVES",
    "NeutralObjective",
    "NoisyBatch",
    "PairedSliderLoss",
    "PromptSet",
    "PromptSliderSpec",
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
    "freeze_adapter",
    "frozen_adapter_names",
    "is_flow_matching_scheduler",
    "load_image_pairs",
    "load_simpletuner_backends",
    "neutral_strength",
    "objective_from_scheduler",
    "paired_noisy_batch",
    "paired_slider_loss",
    "slider_adapter_names",
    "slider_group",
    "slider_strength",
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
        "sampler": ["SLIDER_GROUPS", "SliderBackend", "SliderBatchInfo", "SliderBatchSampler", "slider_group"],
        "scaling": ["MAX_STRENGTH", "SliderScaler", "Strength", "slider_strength"],
        "text_prompts": ["ACTIONS", "AnchorPrompt", "PromptSet", "PromptSliderSpec"],
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
        PromptSet,
        PromptSliderSpec,
    )
