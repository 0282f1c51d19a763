"""Slider targeting on every architecture in the table: one parametrised table of class x scope."""

from __future__ import annotations

import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peft_slider import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
from peft_slider.targeting.architectures import ARCHITECTURES
from peft_slider.targeting.full_rank import make_full_rank_trainable
from peft_slider.targeting.targets import (
    DENOISER_ATTRIBUTES,
    TargetingError,
    denoiser_attr,
    denoiser_of,
    find_architecture,
    resolve_targets,
    text_path_modules,
    unwrap_denoiser,
)
from peft_slider.testing import tiny_pipelines
from peft_slider.testing.tiny_pipelines import build_tiny_pipeline
from tests.denoisers import DENOISERS

CASES = sorted(DENOISERS)
SCOPES = ("visual", "joint")
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def test_every_table_row_has_a_tiny_case():
    covered = {DENOISERS[case].class_name for case in CASES}
    assert covered == set(ARCHITECTURES)


def _targeted(model: nn.Module) -> set[str]:
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def _trace_token_shapes(model: nn.Module, inputs: dict) -> dict[str, set[tuple[int, ...]]]:
    """Input shapes each Linear/Conv module receives in one forward pass."""
    seen: dict[str, set[tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, ADAPTABLE):

            def hook(_module, args, _name=name):
                seen.setdefault(_name, set()).add(tuple(args[0].shape))

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _text_lengths(case) -> tuple[int, int]:
    """Two text lengths (Z-Image pads to 32 tokens, so 7 and 40 differ after padding too). Wan I2V always pads the
    text to 512 tokens; there the context's token count alone tells text apart."""
    return 7, 40


@pytest.fixture(scope="module")
def traces():
    """Per case: module -> (shapes with short text, shapes with long text), from the plain model."""
    cache = {}

    def get(case_id):
        if case_id not in cache:
            case = DENOISERS[case_id]
            model = case.build()
            short, long = _text_lengths(case)
            first = _trace_token_shapes(model, case.make_inputs(model, batch_size=2, text_tokens=short))
            second = _trace_token_shapes(model, case.make_inputs(model, batch_size=2, text_tokens=long))
            cache[case_id] = (first, second, short, long)
        return cache[case_id]

    return get


def _sees_text(case, name, first, second, short, long) -> bool:
    """A module sees text tokens when its input changes with the text length, or has the context's token count."""
    if first.get(name) != second.get(name):
        return True
    context = case.context_tokens(text_tokens=short)
    return any(len(shape) >= 3 and shape[-2] == context for shape in first.get(name, ()))


def _text_only(case, name, first, second, short, long) -> bool:
    def only(shapes, text_tokens):
        context = case.context_tokens(text_tokens=text_tokens)
        return bool(shapes) and all(len(shape) >= 3 and shape[-2] == context for shape in shapes)

    return only(first.get(name), short) and only(second.get(name), long)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("case_id", CASES)
def test_slider_targets_never_receive_text_tokens(case_id, scope, traces):
    """The strong check: trace which modules ever see text tokens, independently of the table's names."""
    case = DENOISERS[case_id]
    model = case.build()
    targets = resolve_targets(model=model, scope=scope)
    first, second, short, long = traces(case_id)
    for name in targets.modules:
        assert name in first, f"{name} never ran in a forward pass"
        if scope == "visual" or re.fullmatch(case.image_query, name):
            assert not _sees_text(case, name, first, second, short, long), f"{name} receives text tokens"
        else:
            assert not _text_only(case, name, first, second, short, long), f"{name} receives only text tokens"


@pytest.mark.parametrize("case_id", CASES)
def test_modules_seeing_only_text_are_listed_as_text_path(case_id, traces):
    """The table's text-path list covers every module the trace finds reading text tokens alone."""
    case = DENOISERS[case_id]
    first, second, short, long = traces(case_id)
    spec = ARCHITECTURES[case.class_name]
    text_only = {name for name in first if _text_only(case, name, first, second, short, long)}
    assert text_only, "the trace found no text-only module: the probe is broken"
    missing = text_only - set(text_path_modules(first, spec))
    assert not missing, f"text-only modules missing from the table's text_path: {sorted(missing)}"


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("case_id", CASES)
def test_every_image_attention_block_gets_targets(case_id, scope):
    case = DENOISERS[case_id]
    model = case.build()
    targets = resolve_targets(model=model, scope=scope)
    queries = [name for name, _ in model.named_modules() if re.fullmatch(case.image_query, name)]
    assert queries, "the case's image_query matched nothing"
    for query in queries:
        block = query.rsplit(".", 1)[0]
        assert any(name.startswith(block + ".") for name in targets.modules), f"no target in {block}"
    if scope == "joint" and case.joint_key:
        joint = [name for name, _ in model.named_modules() if re.fullmatch(case.joint_key, name)]
        assert joint and all(
            any(name.startswith(query.rsplit(".", 1)[0] + ".") for name in targets.modules) for query in joint
        )


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("case_id", CASES)
def test_peft_model_forward_backward_and_plain_loraconfig_reload(case_id, scope, tmp_path):
    case = DENOISERS[case_id]
    model = case.build()
    config = SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False, scope=scope, architecture=case.class_name)
    peft_model = get_peft_model(model, config)
    expected = set(resolve_targets(model=case.build(), scope=scope).modules)
    assert _targeted(peft_model) == expected

    inputs = case.make_inputs(model, batch_size=2, text_tokens=7)
    peft_model.train()
    out = case.output_tensor(peft_model(**inputs))
    out.float().pow(2).mean().backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    peft_model.eval()
    with torch.no_grad():
        reference = case.output_tensor(peft_model(**inputs))
    peft_model.save_pretrained(tmp_path)
    saved = LoraConfig.from_pretrained(tmp_path)  # plain LoraConfig, no slider fields
    assert type(saved) is LoraConfig and not {"scope", "architecture", "model"} & set(vars(saved))
    reloaded = PeftModel.from_pretrained(case.build(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(case.output_tensor(reloaded(**inputs)), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case_id", CASES)
def test_diffusers_loader_reproduces_outputs(case_id, tmp_path):
    case = DENOISERS[case_id]
    model = case.build()
    if not hasattr(model, "add_adapter"):
        pytest.skip(f"{case.class_name} has no PeftAdapterMixin in diffusers (no LoRA loading there)")
    model.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False, model=model), adapter_name="s")
    inputs = case.make_inputs(model, batch_size=2, text_tokens=7)
    with torch.no_grad():
        reference = case.output_tensor(model(**inputs))
    model.save_lora_adapter(tmp_path, adapter_name="s")
    fresh = case.build()
    fresh.load_lora_adapter(tmp_path, adapter_name="s", prefix=None, use_safetensors=True)
    with torch.no_grad():
        torch.testing.assert_close(case.output_tensor(fresh(**inputs)), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("case_id", CASES)
def test_universal_config_matches_the_architecture_rules(case_id, scope):
    """Without model or architecture the config still adapts the right modules (SD3.5's attn2 aside)."""
    case = DENOISERS[case_id]
    expected = set(resolve_targets(model=case.build(), scope=scope).modules)
    universal = _targeted(get_peft_model(case.build(), SliderLoraConfig(r=2, scope=scope)))
    spec = ARCHITECTURES[case.class_name]
    not_universal = [rule.pattern for rule in spec.rules_for(scope) if not rule.universal]
    assert universal == {name for name in expected if not any(re.fullmatch(p, name) for p in not_universal)}
    assert universal or not expected


@pytest.mark.parametrize("config_class", [SliderLoKrConfig, SliderLoHaConfig])
@pytest.mark.parametrize("case_id", CASES)
def test_lycoris_variants_use_the_same_targets(case_id, config_class):
    case = DENOISERS[case_id]
    model = case.build()
    variant = "lokr" if config_class is SliderLoKrConfig else "loha"
    expected = set(resolve_targets(model=case.build(), variant=variant).modules)
    peft_model = get_peft_model(model, config_class(r=2, architecture=case.class_name))
    assert _targeted(peft_model) == expected
    inputs = case.make_inputs(model, batch_size=1, text_tokens=5)
    case.output_tensor(peft_model(**inputs)).float().mean().backward()


@pytest.mark.parametrize("case_id", CASES)
def test_full_rank_trains_exactly_the_targets(case_id):
    case = DENOISERS[case_id]
    model = case.build()
    names = make_full_rank_trainable(model)
    targets = resolve_targets(model=model, variant="full").modules
    assert names == [f"{name}.weight" for name in targets]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "not-a-model"}, "'not-a-model' is not in peft_slider's architecture table"),
        ({"scope": "text"}, "`scope` must be one of ['visual', 'joint'], got 'text'"),
        ({"architecture": "flux", "scope": "everything"}, "got 'everything'"),
    ],
)
def test_bad_options_name_the_argument_and_value(kwargs, message):
    with pytest.raises(TargetingError) as error:
        SliderLoraConfig(r=4, **kwargs)
    assert message in str(error.value)


def test_model_and_architecture_must_agree():
    model = DENOISERS["flux"].build()
    with pytest.raises(TargetingError, match=r"`architecture` 'sdxl' \(UNet2DConditionModel\) disagrees"):
        SliderLoraConfig(r=4, model=model, architecture="sdxl")


def test_unknown_model_class_lists_known_ones_and_how_to_pass_targets():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = nn.Linear(4, 4)

    with pytest.raises(TargetingError) as error:
        SliderLoraConfig(r=4, model=Custom())
    text = str(error.value)
    assert "'Custom'" in text and "FluxTransformer2DModel" in text and "target_modules=[...]" in text


def test_user_target_modules_on_the_text_path_warn_unless_allowed():
    model = DENOISERS["flux"].build()
    with pytest.warns(UserWarning, match=r"adapt 1 text-path module\(s\).*add_q_proj"):
        config = SliderLoraConfig(r=4, model=model, target_modules=["to_q", "add_q_proj"])
    assert config.target_modules == {"to_q", "add_q_proj"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SliderLoraConfig(r=4, model=model, target_modules=["add_q_proj"], allow_text_targets=True)
        SliderLoraConfig(r=4, model=model, target_modules=["to_q"])


def test_a_rule_matching_nothing_is_an_error():
    """A Flux-named model whose attention projections are renamed must fail loudly, not adapt the rest."""
    model = DENOISERS["flux"].build()
    for block in model.transformer_blocks:
        for name in ("to_q", "to_k", "to_v", "to_out"):
            setattr(block.attn, name + "_renamed", getattr(block.attn, name))
            delattr(block.attn, name)
    with pytest.raises(TargetingError, match=r"matched no module of this FluxTransformer2DModel"):
        resolve_targets(model=model)


def test_config_is_not_holding_the_model_and_serializes_as_plain_lora():
    model = DENOISERS["sd15"].build()
    config = SliderLoraConfig(r=4, lora_alpha=4, model=model)
    assert config.model is None and config.architecture == "UNet2DConditionModel"
    data = config.to_dict()
    assert not {"architecture", "scope", "model", "allow_text_targets"} & set(data)
    plain = LoraConfig(**{k: v for k, v in data.items() if k not in ("peft_type", "task_type") or v is not None})
    assert plain.target_modules == config.target_modules and plain.peft_type == config.peft_type


def test_find_architecture_accepts_aliases_classes_and_pipelines_like_objects():
    assert find_architecture("SDXL").class_name == "UNet2DConditionModel"
    model = DENOISERS["wan"].build()
    assert find_architecture(model).class_name == "WanTransformer3DModel"

    class Pipe:  # anything with a `.transformer`, as diffusers pipelines have
        transformer = model

    assert find_architecture(Pipe()).class_name == "WanTransformer3DModel"


def test_user_targets_on_an_unknown_model_class_stand():
    """The unknown-model error tells users to pass target_modules by hand; doing so must work with model= too."""

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = nn.Linear(4, 4)

    config = SliderLoraConfig(r=4, model=Custom(), target_modules=["to_q"])
    assert config.target_modules == {"to_q"}


def _cascade_prior_pipeline():
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline, StableCascadeUNet

    with torch.device("meta"):  # the full-size module tree costs nothing on the meta device
        prior = StableCascadeUNet()
    return StableCascadePriorPipeline(
        tokenizer=None, text_encoder=None, prior=prior, scheduler=DDPMWuerstchenScheduler()
    )


@pytest.mark.parametrize(
    "build, attribute",
    [
        (lambda: build_tiny_pipeline("sd15"), "unet"),
        (lambda: build_tiny_pipeline("flux"), "transformer"),
        (_cascade_prior_pipeline, "prior"),
    ],
    ids=["sd15", "flux", "stable_cascade_prior"],
)
def test_one_denoiser_finder_for_every_pipeline(build, attribute):
    pipe = build()
    assert attribute in DENOISER_ATTRIBUTES
    assert denoiser_attr(pipe) == attribute
    assert denoiser_of(pipe) is getattr(pipe, attribute)
    assert unwrap_denoiser(pipe) is getattr(pipe, attribute)
    # The table's `component` is where pipelines hold the class (and the key prefix of their LoRA files).
    assert find_architecture(pipe).component == attribute
    # tiny_pipelines re-exports the same functions.
    assert (tiny_pipelines.denoiser_attr, tiny_pipelines.denoiser_of) == (denoiser_attr, denoiser_of)


def test_denoiser_finder_errors_name_the_object():
    with pytest.raises(TypeError, match=r"`pipe` must be a diffusers DiffusionPipeline, got Linear"):
        denoiser_attr(nn.Linear(2, 2))
    pipe = build_tiny_pipeline("sd15")
    pipe.register_modules(unet=None)
    with pytest.raises(ValueError, match=r"StableDiffusionPipeline has no denoiser component \(`transformer`, `unet`"):
        denoiser_of(pipe)
