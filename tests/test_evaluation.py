# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.evaluation: every metric on constructed score tables with known answers (a linear concept, a
saturating one, a non-monotonic one, a slider with no effect), the strength map and calibration, the built-in scorers,
`calibrated=` in the pipeline mixin, and the whole path on a tiny real Flux pipeline: evaluate, JSON, plot, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from peft_slider import SliderLoraConfig
from peft_slider.cli import main
from peft_slider.evaluation import (
    NoEffectError,
    calibrate,
    compute_metrics,
    evaluate_slider,
    isotonic,
    monotonicity,
    resolve_scorer,
    saturation,
    seed_spread,
    smoothness,
    spearman,
    to_image_tensor,
    write_calibration,
)
from peft_slider.evaluation.scorers import CONCEPT_SCORERS, DISTANCES
from peft_slider.formats import (
    SliderMetadata,
    StrengthMap,
    get_strength_map,
    load_slider,
    read_safetensors_header,
    save_slider,
    set_strength_map,
)
from peft_slider.inference import enable_sliders
from peft_slider.testing import build_tiny_pipeline, save_tiny_pipeline, tiny_call_kwargs

STRENGTHS = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
OFFSETS = [0.0, 1.0, -0.5]  # per-seed offsets: the seed spread is their standard deviation


def table(concept, offsets=OFFSETS, strengths=STRENGTHS):
    return [[concept(s) + offset for s in strengths] for offset in offsets]


def offsets_std(offsets=OFFSETS):
    mean = sum(offsets) / len(offsets)
    return math.sqrt(sum((o - mean) ** 2 for o in offsets) / (len(offsets) - 1))


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on constructed inputs


def test_linear_concept():
    metrics = compute_metrics(STRENGTHS, table(lambda s: 0.5 * s))
    assert metrics.concept_change == pytest.approx(3.0)
    assert metrics.seed_spread == pytest.approx(offsets_std())
    assert metrics.concept_range == pytest.approx(3.0 / offsets_std())
    assert metrics.monotonicity == pytest.approx(1.0)
    assert metrics.smoothness == pytest.approx(1.0)
    assert (metrics.saturation_minus, metrics.saturation_plus) == (None, None)
    assert metrics.recommended_range == (-3.0, 3.0)
    assert metrics.effect and metrics.diagnosis.startswith("works: the slider raises")
    # Already even: calibration is the identity.
    strength_map = calibrate(metrics)
    assert strength_map.range == pytest.approx((-3.0, 3.0))
    for u in (-2.5, -1.0, 0.3, 2.9):
        assert strength_map.strength_for(u) == pytest.approx(u)


def test_falling_linear_concept_calibrates_in_its_own_direction():
    metrics = compute_metrics(STRENGTHS, table(lambda s: -2.0 * s))
    assert metrics.monotonicity == pytest.approx(-1.0) and metrics.concept_change == pytest.approx(-12.0)
    assert metrics.diagnosis.startswith("works: the slider lowers")
    assert calibrate(metrics).strength_for(1.5) == pytest.approx(1.5)


def test_saturating_concept():
    metrics = compute_metrics(STRENGTHS, table(math.tanh))
    # Steps of tanh at integers: 0.762, 0.202, 0.031; the side's mean slope to its peak is tanh(3) / 3 = 0.332, and
    # 0.031 < 0.25 * 0.332 stalls, 0.202 does not.
    assert (metrics.saturation_minus, metrics.saturation_plus) == (-2.0, 2.0)
    assert metrics.saturation_plus_reason == "concept stops moving"
    assert metrics.recommended_range == (-2.0, 2.0)
    slopes = [math.tanh(b) - math.tanh(a) for a, b in zip(STRENGTHS, STRENGTHS[1:])]
    expected = (sum(map(abs, slopes)) / 6) ** 2 / (sum(g * g for g in slopes) / 6)
    assert metrics.smoothness == pytest.approx(expected) and metrics.smoothness < 0.8
    assert metrics.monotonicity == pytest.approx(1.0)
    # A stricter threshold saturates the second step too.
    strict = compute_metrics(STRENGTHS, table(math.tanh), stall_fraction=0.65)  # 0.202 < 0.65 * 0.332
    assert strict.recommended_range == (-1.0, 1.0)


def test_saturation_by_preservation_collapse():
    distances = [[abs(s) ** 2 / 9 for s in STRENGTHS]] * 3  # 1/9, 4/9, 1 on each side
    metrics = compute_metrics(STRENGTHS, table(lambda s: s), distances, max_distance=0.5)
    assert metrics.recommended_range == (-2.0, 2.0)
    assert metrics.saturation_minus_reason == metrics.saturation_plus_reason == "preservation collapses"
    assert metrics.preservation == pytest.approx(2 * (1 + 4 + 9) / 9 / 6)
    assert metrics.mean_distances[3] == 0
    assert compute_metrics(STRENGTHS, table(lambda s: s), distances).recommended_range == (-3.0, 3.0)


def test_calibration_evens_out_a_square_root_concept():
    strengths = [i / 10 for i in range(-20, 21)]  # fine enough for the piecewise-linear map to follow the curve

    def concept(s):
        return math.copysign(math.sqrt(abs(s)), s)

    metrics = compute_metrics(strengths, table(concept, strengths=strengths))
    assert metrics.recommended_range == (-2.0, 2.0)
    strength_map = calibrate(metrics)
    # One calibrated unit is the mean slope over the range, k = sqrt(2) / 2, so c(s) = k u and s = (k u)^2.
    k = math.sqrt(2) / 2
    for u in (0.5, 1.0, 1.5, 2.0):  # near 0 the square root is too steep for a 0.1 grid
        assert strength_map.strength_for(u) == pytest.approx((k * u) ** 2, abs=0.02)
        assert strength_map.strength_for(-u) == pytest.approx(-((k * u) ** 2), abs=0.02)
    # Equal calibrated steps give equal concept steps.
    steps = [concept(strength_map.strength_for(u / 2)) for u in range(0, 5)]
    assert smoothness([0, 1, 2, 3, 4], steps) > 0.999
    assert smoothness([0, 0.5, 1, 1.5, 2], [concept(s) for s in (0, 0.5, 1, 1.5, 2)]) < 0.95


def test_non_monotonic_concept():
    v_shape = compute_metrics(STRENGTHS, table(lambda s: s * s))
    assert v_shape.monotonicity == pytest.approx(0.0)
    assert v_shape.concept_change == 0
    assert not v_shape.effect and v_shape.diagnosis.startswith("no net effect")
    with pytest.raises(NoEffectError, match="no net effect"):
        calibrate(v_shape)
    # Seeds that disagree: one rises, one falls, one rises.
    mixed = compute_metrics(STRENGTHS, [[s for s in STRENGTHS], [-s for s in STRENGTHS], [2 * s for s in STRENGTHS]])
    assert mixed.monotonicity == pytest.approx(1 / 3)
    assert mixed.effect and mixed.diagnosis.startswith("not monotonic")
    # A bump in the middle of a rising curve: the calibration of the monotone (isotonic) curve is still monotone.
    bumpy = compute_metrics([-2, -1, 0, 1, 2], [[-2, -1, 0, 1.5, 1.4 + 1e-9], [-2, -1, 0, 1.5, 1.4]])
    strength_map = calibrate(bumpy)
    raw = strength_map.raw
    assert all(b > a for a, b in zip(raw, raw[1:]))


def test_slider_with_no_effect_is_a_diagnosis_not_a_division_by_zero():
    constant = compute_metrics(STRENGTHS, table(lambda s: 0.25), [[0.0] * 7] * 3)
    assert not constant.effect
    assert constant.diagnosis.startswith("no effect: the images are identical")
    assert constant.smoothness is None and constant.concept_change == 0
    assert constant.monotonicity == 0.0
    with pytest.raises(NoEffectError, match="Nothing to calibrate: no effect"):
        calibrate(constant)
    single_seed = compute_metrics(STRENGTHS, [[1.0] * 7])
    assert single_seed.concept_range is None and single_seed.seed_spread is None
    assert single_seed.diagnosis.startswith("no effect: the concept score is the same")
    # Moves, but far less than the seeds differ.
    drowned = compute_metrics(STRENGTHS, table(lambda s: 0.01 * s, offsets=[0.0, 1.0, 2.0]))
    assert not drowned.effect and drowned.diagnosis.startswith("no detectable effect")
    with pytest.raises(NoEffectError, match="no detectable effect"):
        calibrate(drowned)


@pytest.mark.parametrize(
    "x, y, expected",
    [
        ([1, 2, 3, 4], [1, 4, 9, 16], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3], [1, 1, 2], math.sqrt(3) / 2),  # ties: ranks 1.5, 1.5, 3
        ([1, 2, 3, 4, 5], [1, 4, 9, 4, 1], 0.0),
        ([1, 2, 3], [7, 7, 7], None),
    ],
)
def test_spearman(x, y, expected):
    assert spearman(x, y) == (None if expected is None else pytest.approx(expected))


def test_small_metric_pieces():
    assert isotonic([3.0, 1.0, 2.0, 0.0, 5.0]) == [1.5, 1.5, 1.5, 1.5, 5.0]
    assert isotonic([0.0, 1.0, 2.0]) == [0.0, 1.0, 2.0]
    assert smoothness([0, 1, 2, 3, 4], [0, 0, 0, 0, 4]) == pytest.approx(1 / 4)  # one of four steps does everything
    assert smoothness([0, 1, 3], [0, 1, 3]) == pytest.approx(1.0)  # uneven strengths, even slope
    assert seed_spread([[0, 0], [2, 2]]) == pytest.approx(math.sqrt(2))
    assert monotonicity([0, 1], [[0, 1], [1, 1]]) == 0.5
    assert saturation([-1, 0, 1], [0, 0, 0]) == ((0, "concept stops moving"), (0, "concept stops moving"))


@pytest.mark.parametrize(
    "strengths, scores, message",
    [
        ([-1, 1], [[0, 1]], "must hold 0"),
        ([0, -1, 1], [[0, 1, 2]], "strictly increasing"),
        ([0], [[0]], "two or more"),
        ([-1, 0, "x"], [[0, 1, 2]], r"`strengths\[2\]`"),
        ([-1, 0, 1], [[0, 1]], r"`scores\[0\]` must hold 3 numbers"),
        ([-1, 0, 1], [[0, 1, float("nan")]], r"`scores\[0\]` must hold finite numbers"),
        ([-1, 0, 1], [], "`scores` must be a non-empty list"),
    ],
)
def test_metric_input_errors_name_the_argument(strengths, scores, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(strengths, scores)


def test_metric_option_errors():
    with pytest.raises(ValueError, match="`stall_fraction` must be in"):
        compute_metrics([-1, 0, 1], [[0, 1, 2]], stall_fraction=1.5)
    with pytest.raises(ValueError, match="`distances` has 2 rows"):
        compute_metrics([-1, 0, 1], [[0, 1, 2]], [[0, 0, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match="SliderMetrics"):
        calibrate({"strengths": [0, 1]})


# ---------------------------------------------------------------------------------------------------------------------
# The strength map


def test_strength_map_maps_zero_exactly_and_interpolates():
    strength_map = StrengthMap(calibrated=(-1.0, 0.0, 1.0, 3.0), raw=(-2.0, 0.0, 0.5, 1.0))
    assert strength_map.strength_for(0) == 0.0 and strength_map.strength_for(-0.0) == 0.0
    assert strength_map.strength_for(2.0) == pytest.approx(0.75)
    assert strength_map.strength_for(-0.5) == pytest.approx(-1.0)
    assert strength_map.calibrated_for(0.75) == pytest.approx(2.0)
    assert strength_map.strength_for(3.0) == 1.0 and strength_map.range == (-1.0, 3.0)
    assert strength_map.raw_range == (-2.0, 1.0)
    with pytest.raises(ValueError, match=r"outside the calibrated map's calibrated range \[-1, 3\].*saturates"):
        strength_map.strength_for(3.5)
    with pytest.raises(ValueError, match="`strength` must be"):
        strength_map.strength_for("high")


@pytest.mark.parametrize(
    "calibrated, raw, message",
    [
        ((0.0, 1.0), (0.0,), "two or more knots"),
        ((0.0, 1.0, 0.5), (0.0, 1.0, 2.0), "`calibrated` of a StrengthMap must be strictly increasing"),
        ((0.0, 1.0), (0.0, -1.0), "`raw` of a StrengthMap must be strictly increasing"),
        ((1.0, 2.0), (1.0, 2.0), "calibrated 0 to raw 0"),
        ((0.0, 1.0), (0.5, 1.0), "calibrated 0 to raw 0"),
        ((0.0, float("inf")), (0.0, 1.0), "finite numbers"),
        ("01", (0.0, 1.0), "list of numbers"),
    ],
)
def test_strength_map_rejects_bad_knots(calibrated, raw, message):
    with pytest.raises(ValueError, match=message):
        StrengthMap(calibrated=calibrated, raw=raw)


def test_strength_map_round_trips_through_the_metadata_header():
    strength_map = StrengthMap(calibrated=(-1.5, 0.0, 2.0), raw=(-2.0, 0.0, 2.0))
    metadata = SliderMetadata(concept="light", recommended_range=(-2, 2), strength_map=strength_map)
    header = metadata.to_header()
    assert json.loads(header["peft_slider.strength_map"]) == {"calibrated": [-1.5, 0.0, 2.0], "raw": [-2.0, 0.0, 2.0]}
    back = SliderMetadata.from_header(header)
    assert back == metadata and isinstance(back.strength_map, StrengthMap)
    with pytest.raises(ValueError, match="exactly the keys 'calibrated' and 'raw'"):
        SliderMetadata(strength_map={"u": [0, 1]})


def test_model_card_shows_the_calibrated_range():
    from peft_slider.formats import build_model_card

    strength_map = StrengthMap(calibrated=(-1.5, 0.0, 2.5), raw=(-2.0, 0.0, 2.0))
    card = str(build_model_card(SliderMetadata(concept="light", strength_map=strength_map)))
    assert "| Calibrated strength range |" in card and "strength_for" in card
    assert "Calibrated strength range" not in str(build_model_card(SliderMetadata(concept="light")))


# ---------------------------------------------------------------------------------------------------------------------
# Scorers


def test_builtin_scorers_on_known_images():
    ramp = torch.linspace(0, 1, 8).view(1, 1, 8).expand(3, 8, 8)  # dark left, bright right
    flat = torch.full((3, 8, 8), 0.25)
    score = CONCEPT_SCORERS
    assert score["brightness"](flat) == pytest.approx(0.25)
    assert score["ink"](flat) == pytest.approx(0.75)
    assert score["contrast"](flat) == pytest.approx(0.0, abs=1e-7)
    assert score["colorfulness"](flat) == 0.0
    red = torch.zeros(3, 4, 4)
    red[0] = 1
    assert score["colorfulness"](red) == 1.0
    right, left = torch.linspace(0, 1, 8)[4:].mean(), torch.linspace(0, 1, 8)[:4].mean()
    assert score["horizontal_balance"](ramp) == pytest.approx(float(right - left))
    assert score["horizontal_balance"](ramp.flip(-1)) == pytest.approx(-float(right - left))
    assert score["vertical_balance"](ramp.transpose(1, 2)) == pytest.approx(-float(right - left))
    assert DISTANCES["ssim"](ramp, ramp) == 0.0
    assert DISTANCES["ssim"](ramp, 1 - ramp) > 0.5  # inverted structure
    assert DISTANCES["ssim"](ramp, ramp + 0.01) < 0.01
    assert DISTANCES["mae"](flat, flat + 0.5) == pytest.approx(0.5)


def test_preservation_outside_the_concept_region():
    from peft_slider.evaluation import outside_mask

    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1  # the concept's region
    reference = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    inside, outside = reference.clone(), reference.clone()
    inside[:, 2:6, 2:6] += 0.3
    outside[:, 0, :] += 0.4  # a row outside the region: 8 of 64 pixels
    for name in ("mae", "ssim"):
        distance = outside_mask(name, mask)
        assert distance(inside, reference) == 0.0  # the concept changing is not a preservation loss
        assert distance(outside, reference) > 0
    assert outside_mask("mae", mask)(outside, reference) == pytest.approx(0.4 * 8 / 64)
    with pytest.raises(ValueError, match="`mask` must be an \\(H, W\\) tensor of weights in \\[0, 1\\]"):
        outside_mask("mae", torch.full((8, 8), 2.0))


def test_image_conversion_and_scorer_resolution():
    from PIL import Image

    pil = Image.new("RGB", (4, 2), (255, 0, 0))
    image = to_image_tensor(pil)
    assert image.shape == (3, 2, 4) and image[0].min() == 1 and image[1].max() == 0
    torch.testing.assert_close(to_image_tensor(image.permute(1, 2, 0)), image, rtol=0, atol=0)
    assert resolve_scorer("ssim", kind="distance")[0] == "ssim"
    assert resolve_scorer("peft_slider.evaluation.scorers:ink")[0] == "ink"
    assert resolve_scorer(lambda image: 1.0)[0] == "<lambda>"
    with pytest.raises(ValueError, match="`concept` 'smile' is not a built-in concept scorer"):
        resolve_scorer("smile")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_scorer("no_such_module:f")
    with pytest.raises(ValueError, match="must be \\(3, H, W\\)"):
        to_image_tensor(torch.zeros(2, 5, 5))


def test_clip_score_reads_a_local_model_and_never_downloads(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from peft_slider.evaluation import ClipScore

    with pytest.raises(ValueError, match="is not a local folder. ClipScore never downloads"):
        ClipScore(tmp_path / "openai-clip", "a smiling person")
    # A tiny random CLIP with the tiny pipelines' local tokenizer, saved like a real one.
    tokenizer = build_tiny_pipeline("flux").tokenizer
    torch.manual_seed(0)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text.update(num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    vision.update(image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    def cosine(prompt):  # CLIP's own image-text cosine similarity
        with torch.no_grad():
            inputs = processor(text=[prompt], images=[pixels], return_tensors="pt", padding=True)
            return float(model(**inputs).logits_per_image[0, 0] / model.logit_scale.exp())

    assert ClipScore(tmp_path / "clip", "a bright photo")(image) == pytest.approx(cosine("a bright photo"), abs=1e-5)
    contrastive = ClipScore(tmp_path / "clip", "a bright photo", "a dark photo")(image)
    assert contrastive == pytest.approx(cosine("a bright photo") - cosine("a dark photo"), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# On a tiny real pipeline


@pytest.fixture(scope="module")
def flux():
    pipe = enable_sliders(build_tiny_pipeline("flux"))
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)  # the LoRA's random weights
    pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="light")
    return pipe


def base_image(pipe, seed=0):
    pipe.disable_lora()
    try:
        return pipe("a photo", generator=torch.Generator().manual_seed(seed), **tiny_call_kwargs("flux")).images[0]
    finally:
        pipe.enable_lora()


def test_calibrated_strengths_in_the_pipeline(flux):
    strength_map = StrengthMap(calibrated=(-2.0, 0.0, 1.0, 2.0), raw=(-1.0, 0.0, 0.25, 1.0))
    kwargs = tiny_call_kwargs("flux")

    def at(strength, **options):
        generator = torch.Generator().manual_seed(0)
        return flux.generate_at("a photo", strength=strength, generator=generator, **kwargs, **options).images[0]

    # Calibrated 0 is the base model, bit for bit; calibrated u is raw strength_for(u), bit for bit.
    torch.testing.assert_close(at(0.0, calibrated=strength_map), base_image(flux), rtol=0, atol=0)
    torch.testing.assert_close(at(1.5, calibrated=strength_map), at(0.625), rtol=0, atol=0)
    torch.testing.assert_close(at(-2.0, calibrated={"light": strength_map}), at(-1.0), rtol=0, atol=0)
    assert (at(1.5, calibrated=strength_map) - at(1.5)).abs().max() > 1e-3  # the map did something
    swept = flux.sweep("a photo", [0.0, 1.5], calibrated=strength_map, **kwargs)
    raw = flux.sweep("a photo", [0.0, 0.625], **kwargs)
    torch.testing.assert_close(torch.stack(swept), torch.stack(raw), rtol=0, atol=0)
    with pytest.raises(ValueError, match="adapter 'light', which has none. Calibrate the slider"):
        at(1.0, calibrated=True)
    with pytest.raises(ValueError, match="adapter 'light': The calibrated strength 3.0 is outside"):
        at(3.0, calibrated=strength_map)
    with pytest.raises(TypeError, match="`calibrated` must be True, False, a StrengthMap"):
        at(1.0, calibrated="yes")
    set_strength_map(flux.transformer, "light", strength_map)
    try:
        torch.testing.assert_close(at(1.5, calibrated=True), at(0.625), rtol=0, atol=0)
    finally:
        set_strength_map(flux.transformer, "light", None)
    assert get_strength_map(flux.transformer, "light") is None


def test_evaluate_on_a_tiny_pipeline_writes_json_and_plot(flux, tmp_path):
    evaluation = evaluate_slider(
        flux,
        ["a photo", "a street"],
        strengths=[-1.0, -0.5, 0.0, 0.5, 1.0],
        seeds=[0, 1],
        concept="brightness",
        keep_images=True,
        progress=False,
        **tiny_call_kwargs("flux"),
    )
    assert evaluation.samples == [("a photo", 0), ("a photo", 1), ("a street", 0), ("a street", 1)]
    assert [len(row) for row in evaluation.scores] == [5] * 4
    # The strength-0 image of a one-pass sweep is the base image (batched: up to float rounding).
    torch.testing.assert_close(evaluation.images[0][2], base_image(flux), rtol=0, atol=1e-4)
    # The scores are the scorer's on the images, and the distance at strength 0 is 0.
    assert evaluation.scores[1][4] == pytest.approx(CONCEPT_SCORERS["brightness"](evaluation.images[1][4]))
    assert all(row[2] == 0.0 for row in evaluation.distances)
    assert all(row[0] > 0 for row in evaluation.distances)  # a random LoRA at -1 changes the image
    data = json.loads(evaluation.save_json(tmp_path / "evaluation.json").read_text())
    assert data["metrics"]["monotonicity"] == evaluation.metrics.monotonicity
    assert data["scores"] == evaluation.scores and data["concept"] == "brightness"
    image = evaluation.plot(tmp_path / "evaluation.png")
    from PIL import Image

    with Image.open(tmp_path / "evaluation.png") as saved:
        assert saved.size == image.size == (720, 440) and saved.format == "PNG"
    table_text = evaluation.table()
    assert "monotonicity" in table_text and "recommended range" in table_text


def test_evaluate_a_slider_without_effect(tmp_path):
    pipe = build_tiny_pipeline("flux")
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8), adapter_name="untrained")  # B = 0
    evaluation = evaluate_slider(
        pipe, "a photo", strengths=[-1, 0, 1], seeds=[0, 1], progress=False, **tiny_call_kwargs("flux")
    )
    assert not evaluation.metrics.effect
    assert evaluation.metrics.diagnosis.startswith("no effect")
    with pytest.raises(NoEffectError, match="Nothing to calibrate: no effect"):
        evaluation.strength_map()
    evaluation.plot(tmp_path / "none.png")  # a flat slider still plots


def test_evaluate_input_errors(flux):
    with pytest.raises(ValueError, match="must hold 0"):
        evaluate_slider(flux, "a photo", strengths=[-1, 1], progress=False)
    with pytest.raises(ValueError, match="`prompts` must be"):
        evaluate_slider(flux, ["a photo", ""], progress=False)
    with pytest.raises(ValueError, match="`seeds`"):
        evaluate_slider(flux, "a photo", seeds=[], progress=False)


def test_cli_evaluate_calibrate_and_save(tmp_path, capsys):
    base = save_tiny_pipeline("flux", tmp_path / "base")
    pipe = build_tiny_pipeline("flux")
    torch.manual_seed(3)  # a random LoRA that darkens these images steadily (as in the README)
    pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="light")
    paths = save_slider(pipe, tmp_path / "slider", adapter_name="light", formats=["diffusers"])
    call = {k: v for k, v in tiny_call_kwargs("flux").items() if k not in ("height", "width", "guidance_scale")}
    steps = call.pop("num_inference_steps")
    args = [
        "evaluate",
        str(tmp_path / "slider"),
        "--base",
        str(base),
        "--prompt",
        "a photo",
        "--strengths",
        "-1",
        "-0.5",
        "0",
        "0.5",
        "1",
        "--seeds",
        "0",
        "1",
        "--height",
        "32",
        "--width",
        "32",
        "--guidance_scale",
        "1.0",
        "--steps",
        str(steps),
        "--call",
        json.dumps(call),
        "--out",
        str(tmp_path / "out"),
        "--no_progress",
    ]
    code = main(args)
    out = capsys.readouterr().out
    assert "monotonicity" in out and "wrote" in out
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert code == (0 if data["metrics"]["effect"] else 1)
    assert (tmp_path / "out" / "evaluation.png").stat().st_size > 1000
    # This random slider lowers brightness with strength, so it calibrates.
    assert main([*args, "--calibrate", "--save_calibration", "--concept", "brightness"]) == 0
    out = capsys.readouterr().out
    assert "calibrated range" in out and "re-evaluated at calibrated strengths" in out
    line = out.split("step evenness")[1].splitlines()[0]
    raw_even, calibrated_even = map(float, line.split("raw ")[1].split(" -> calibrated "))
    assert calibrated_even > raw_even
    calibrated = json.loads((tmp_path / "out" / "evaluation_calibrated.json").read_text())
    assert calibrated["calibrated"] is True and 0.0 in calibrated["strengths"]
    assert (tmp_path / "out" / "sweep_calibrated.png").exists() and (tmp_path / "out" / "sweep_raw.png").exists()
    header = read_safetensors_header(paths["diffusers"])
    assert "peft_slider.strength_map" in header and "peft_slider.recommended_range" in header
    other = build_tiny_pipeline("flux")
    load_slider(other, tmp_path / "slider", adapter_name="light")
    assert isinstance(get_strength_map(other.transformer, "light"), StrengthMap)


def test_cli_diagnoses_a_slider_without_effect(tmp_path, capsys):
    base = save_tiny_pipeline("flux", tmp_path / "base")
    pipe = build_tiny_pipeline("flux")
    pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8), adapter_name="untrained")  # B = 0
    save_slider(pipe, tmp_path / "slider", adapter_name="untrained", formats=["diffusers"])
    call = json.dumps({"max_sequence_length": 16, "output_type": "pt"})
    args = ["evaluate", str(tmp_path / "slider"), "--base", str(base), "--prompt", "a photo", "--steps", "2"]
    args += ["--strengths", "-1", "0", "1", "--seeds", "0", "1", "--height", "32", "--width", "32", "--call", call]
    code = main([*args, "--out", str(tmp_path / "out"), "--no_progress", "--calibrate"])
    out = capsys.readouterr().out
    assert code == 1
    assert "no effect" in out and "calibration: Nothing to calibrate" in out
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["metrics"]["effect"] is False


def test_write_calibration_keeps_tensors_and_header(tmp_path):
    pipe = build_tiny_pipeline("flux")
    torch.manual_seed(0)
    pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="light")
    paths = save_slider(
        pipe, tmp_path, adapter_name="light", formats=["diffusers", "peft"], metadata=SliderMetadata(concept="light")
    )
    from safetensors.torch import load_file

    before = {name: load_file(str(path)) for name, path in paths.items() if str(path).endswith(".safetensors")}
    metrics = compute_metrics(STRENGTHS, table(math.tanh))
    strength_map = calibrate(metrics)
    written = write_calibration(tmp_path, metrics, strength_map)
    assert sorted(written) == sorted(p for p in tmp_path.glob("*.safetensors"))
    for name, tensors in before.items():
        after = load_file(str(paths[name]))
        assert after.keys() == tensors.keys()
        for key in tensors:
            torch.testing.assert_close(after[key], tensors[key], rtol=0, atol=0)
        metadata = SliderMetadata.from_header(read_safetensors_header(paths[name]))
        assert metadata.concept == "light" and metadata.strength_map == strength_map
        assert metadata.recommended_range == (-2.0, 2.0)
    other = build_tiny_pipeline("flux")
    load_slider(other, tmp_path, adapter_name="light")
    assert get_strength_map(other.transformer, "light") == strength_map
    with pytest.raises(FileNotFoundError, match="neither a slider file nor a folder"):
        write_calibration(tmp_path / "missing", metrics, strength_map)
