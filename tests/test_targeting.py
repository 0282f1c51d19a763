"""Slider targeting on every architecture in the table: one parametrised table of class x scope."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peft_slider import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
from peft_slider.formats.writers import save_slider
from peft_slider.targeting.architectures import ARCHITECTURES
from peft_slider.targeting.config import REFUSED_PEFT_OPTIONS
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
from peft_slider.training.scaling import slider_strength
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


@pytest.mark.parametrize("case_id", ["sd15", "flux"])
def test_full_rank_on_a_model_carrying_an_adapter_trains_the_same_base_weights(case_id):
    case = DENOISERS[case_id]
    expected = make_full_rank_trainable(case.build())
    model = case.build()
    model.add_adapter(SliderLoraConfig(r=4, model=model), adapter_name="first")
    names = make_full_rank_trainable(model)
    assert [name.replace(".base_layer", "") for name in names] == expected
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


# --- PEFT options: every LoraConfig field is honoured or refused -------------------------------------------------

# Tiny Flux with two double blocks, so that a layer selection has something to choose between.
FLUX2 = dataclasses.replace(DENOISERS["flux"], config={**DENOISERS["flux"].config, "num_layers": 2})
BLOCK_1 = {f"transformer_blocks.1.attn.{leaf}" for leaf in ("to_q", "to_k", "to_v", "to_out.0")}


def _lora_attr(model, name):
    return dict(model.named_modules())[name]


# (options, check on the adapted PeftModel and its targeted module names). Each also checks, below, that strength 0
# is the base model and that the saved adapter reloads through plain PEFT with the same targets and outputs.
HONOURED = {
    "exclude_modules": ({"exclude_modules": ["proj_out"]}, lambda m, t: "proj_out" not in t and "x_embedder" in t),
    "rank_pattern": ({"rank_pattern": {"x_embedder": 2}}, lambda m, t: _lora_attr(m, "base_model.model.x_embedder").r),
    "alpha_pattern": ({"alpha_pattern": {"x_embedder": 2}}, lambda m, t: m.base_model.model.x_embedder.scaling),
    "use_rslora": ({"use_rslora": True}, lambda m, t: m.base_model.model.proj_out.scaling),
    "init_gaussian": ({"init_lora_weights": "gaussian"}, lambda m, t: len(t) == 12),
    "lora_dropout": ({"lora_dropout": 0.1}, lambda m, t: len(t) == 12),
    "layers_to_transform": ({"layers_to_transform": [1], "layers_pattern": "transformer_blocks"}, lambda m, t: t),
    "layers_to_transform_int": ({"layers_to_transform": 0, "layers_pattern": ["transformer_blocks"]}, lambda m, t: t),
}
EXPECTED = {
    "exclude_modules": True,
    "rank_pattern": {"default": 2},
    "alpha_pattern": {"default": 0.5},
    "use_rslora": {"default": 4.0},
    "init_gaussian": True,
    "lora_dropout": True,
    "layers_to_transform": BLOCK_1,
    "layers_to_transform_int": {name.replace(".1.", ".0.") for name in BLOCK_1},
}


# With `model=`, `exclude_modules` is applied while resolving the targets, so PEFT's own pass finds nothing left to
# exclude and says so.
@pytest.mark.filterwarnings("ignore:You have passed exclude_modules=.* but no modules were excluded:UserWarning")
@pytest.mark.parametrize("case", sorted(HONOURED))
def test_honoured_peft_options_act_and_the_saved_slider_reloads(case, tmp_path):
    options, check = HONOURED[case]
    kwargs = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **options}
    model = FLUX2.build()
    config = SliderLoraConfig(model=model, **kwargs)
    peft_model = get_peft_model(model, config).eval()
    targeted = _targeted(peft_model)
    assert check(peft_model, targeted) == EXPECTED[case]
    if case == "init_gaussian":  # gaussian keeps B at zero: give the delta weight so the reload check can fail
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter)

    inputs = FLUX2.make_inputs(model, batch_size=2, text_tokens=7)
    with torch.no_grad():
        adapted = FLUX2.output_tensor(peft_model(**inputs))
        with peft_model.disable_adapter():
            base = FLUX2.output_tensor(peft_model(**inputs))
        with slider_strength(peft_model, 0.0):
            zero = FLUX2.output_tensor(peft_model(**inputs))
    torch.testing.assert_close(zero, base, rtol=0, atol=0)  # same computation: strength 0 is the base model
    assert not torch.allclose(adapted, base)

    peft_model.save_pretrained(tmp_path)
    saved = LoraConfig.from_pretrained(tmp_path)  # what a plain PEFT user reads back
    reloaded = PeftModel.from_pretrained(FLUX2.build(), tmp_path).eval()
    assert type(saved) is LoraConfig and _targeted(reloaded) == targeted
    with torch.no_grad():
        torch.testing.assert_close(FLUX2.output_tensor(reloaded(**inputs)), adapted, rtol=1e-5, atol=1e-5)

    # The same slider on a diffusers model, through save_slider and diffusers' own loader.
    model = FLUX2.build()
    model.add_adapter(SliderLoraConfig(model=model, **kwargs), adapter_name="s")
    if case == "init_gaussian":
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter)
    with torch.no_grad():
        expected = FLUX2.output_tensor(model(**inputs))
    paths = save_slider(model, tmp_path / "slider", adapter_name="s", formats=("diffusers",))
    fresh = FLUX2.build()
    fresh.load_lora_adapter(str(tmp_path / "slider"), weight_name=paths["diffusers"].name, adapter_name="s")
    assert {n.removesuffix(".lora_A") for n, _ in fresh.named_modules() if n.endswith("lora_A")} == targeted
    with torch.no_grad():
        torch.testing.assert_close(FLUX2.output_tensor(fresh(**inputs)), expected, rtol=1e-5, atol=1e-5)


# (options, the message fragment naming the field and value). The refusal happens when the config is made.
REFUSED = [
    ({"bias": "all"}, "`bias`='all'"),
    ({"bias": "lora_only"}, "`bias`='lora_only'"),
    ({"modules_to_save": ["proj_out"]}, "`modules_to_save`=['proj_out']"),
    ({"use_dora": True}, "`use_dora`=True"),
    ({"lora_bias": True}, "`lora_bias`=True"),
    ({"fan_in_fan_out": True}, "`fan_in_fan_out`=True"),
    ({"init_lora_weights": "pissa"}, "`init_lora_weights`='pissa'"),
    ({"init_lora_weights": "pissa_niter_4"}, "`init_lora_weights`='pissa_niter_4'"),
    ({"init_lora_weights": "olora"}, "`init_lora_weights`='olora'"),
    ({"init_lora_weights": "orthogonal"}, "`init_lora_weights`='orthogonal'"),
    ({"init_lora_weights": "corda"}, "`init_lora_weights`='corda'"),
    ({"init_lora_weights": "eva"}, "`init_lora_weights`='eva'"),
    ({"init_lora_weights": "lora_ga"}, "`init_lora_weights`='lora_ga'"),
    ({"init_lora_weights": "mica"}, "`init_lora_weights`='mica'"),
    ({"init_lora_weights": "loftq"}, "`init_lora_weights` is 'loftq'"),  # PEFT's own refusal
    ({"target_parameters": ["x_embedder.weight"]}, "`target_parameters`=['x_embedder.weight']"),
    ({"trainable_token_indices": [0]}, "`trainable_token_indices`=[0]"),
    ({"layer_replication": [[0, 1]]}, "`layer_replication`=[[0, 1]]"),
    ({"megatron_config": {"tensor_model_parallel_size": 1}}, "`megatron_config`={'tensor_model_parallel_size': 1}"),
    ({"alora_invocation_tokens": [1]}, "`alora_invocation_tokens`=[1]"),
    ({"use_qalora": True}, "`use_qalora`=True"),
    ({"ensure_weight_tying": True}, "`ensure_weight_tying`=True"),
    ({"layers_to_transform": [5], "layers_pattern": "transformer_blocks"}, "`layers_to_transform`=[5] with"),
    ({"layers_to_transform": [0]}, "`layers_to_transform`=[0] with `layers_pattern`=None selects none"),
]


# PEFT's LoraConfig comments on some of these values (default CorDA/EVA configs, aLoRA's task) before we refuse them.
@pytest.mark.filterwarnings("ignore::UserWarning:peft\\.tuners\\.lora\\.config")
@pytest.mark.parametrize(
    "options, message", REFUSED, ids=[next(iter(o)) + "-" + str(i) for i, (o, _) in enumerate(REFUSED)]
)
def test_refused_peft_options_name_the_field_and_value(options, message):
    with pytest.raises(ValueError) as error:
        SliderLoraConfig(r=4, model=FLUX2.build(), **options)
    assert message in str(error.value)


def test_every_lora_config_field_is_honoured_or_refused():
    """A new PEFT field fails this test until it is sorted into one list or the other."""
    honoured = {
        # bookkeeping, read by PEFT and diffusers as they are
        "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
        "inference_mode", "runtime_config",
        # the LoRA itself; target_modules is resolved by the slider when unset
        "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "use_rslora", "rank_pattern",
        "alpha_pattern", "layers_to_transform", "layers_pattern",
        # only read together with a refused option
        "megatron_core", "qalora_group_size",
    }  # fmt: skip
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert fields == honoured | set(REFUSED_PEFT_OPTIONS)


def test_layers_to_transform_without_a_model_is_refused():
    with pytest.raises(
        TargetingError, match=r"`layers_to_transform`=\[0\] needs the model's module names: pass `model="
    ):
        SliderLoraConfig(r=4, architecture="flux", layers_to_transform=[0], layers_pattern="transformer_blocks")


@pytest.mark.parametrize("case_id", ["sd15", "flux", "wan"])
@pytest.mark.parametrize("first", ["diffusers", "peft"])
def test_a_second_slider_resolves_against_the_base_layers(case_id, first):
    case = DENOISERS[case_id]
    expected = SliderLoraConfig(r=4, model=case.build()).target_modules
    model = case.build()
    if first == "peft":
        model = get_peft_model(model, SliderLoraConfig(r=4, model=model), adapter_name="first")
        model.add_adapter("second", SliderLoraConfig(r=4, model=model))
    else:
        model.add_adapter(SliderLoraConfig(r=4, model=model), adapter_name="first")
        model.add_adapter(SliderLoraConfig(r=4, model=model), adapter_name="second")
    assert SliderLoraConfig(r=4, model=model).target_modules == expected
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all({"first", "second"} <= set(m.lora_A) for m in layers)
