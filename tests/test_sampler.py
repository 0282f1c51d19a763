# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests of SliderBatchSampler: property tests over random backend layouts, distributed sharding (simulated ranks and
accelerate's real BatchSamplerShard), the backend-probability statistics, resuming, and the table of bad inputs.

The expected values here are derived from the rules (sizes, batch counts, the rotation order), never from the
sampler's own output.
"""

import bisect
import dataclasses
import itertools
import math
import re
import warnings
from collections import Counter

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peft_slider.training.sampler as sampler_module
from peft_slider.training.sampler import SliderBackend, SliderBatchSampler, slider_group

GROUP_ORDER = ["positive", "negative", "neutral"]
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------- helpers


def make_sampler(backends, **kwargs):
    # Random layouts are often unbalanced on purpose; that warning has its own test.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Slider buckets are unbalanced")
        return SliderBatchSampler(backends, **kwargs)


class Layout:
    """Independent bookkeeping of a backend layout: offsets, index -> backend, expected batch counts."""

    def __init__(self, backends):
        self.backends = backends
        self.sizes = [b.num_samples for b in backends]
        self.offsets = [0, *itertools.accumulate(self.sizes)]
        self.groups = [slider_group(b.slider_strength) for b in backends]

    def backend_of(self, index):
        return bisect.bisect_right(self.offsets, index) - 1

    def range_of(self, b):
        return range(self.offsets[b], self.offsets[b + 1])

    def batches_of(self, b, global_batch, drop_last):
        n = self.sizes[b]
        return n // global_batch if drop_last else math.ceil(n / global_batch)


def check_rotation(groups, batches_left):
    """Assert the rule: each step takes the first group, in the fixed cyclic order after the previous step's group,
    that still has batches; and the epoch ends when all are used. A group running dry never shifts the others."""
    left = dict(batches_left)
    previous = None
    for step, group in enumerate(groups):
        first = 0 if previous is None else (GROUP_ORDER.index(previous) + 1) % 3
        candidates = [GROUP_ORDER[(first + k) % 3] for k in range(3)]
        expected = next(g for g in candidates if left[g] > 0)
        assert group == expected, f"step {step}: drew {group}, the rotation requires {expected}"
        left[group] -= 1
        previous = group
    assert all(v == 0 for v in left.values()), f"batches left over at the end: {left}"


@st.composite
def layouts(draw, max_backends=6, max_size=30):
    batch_size = draw(st.integers(1, 6))
    drop_last = draw(st.booleans())
    count = draw(st.integers(1, max_backends))
    backends = []
    for i in range(count):
        backends.append(
            SliderBackend(
                draw(st.integers(batch_size if drop_last else 1, max_size)),
                slider_strength=draw(st.sampled_from([1.0, 0.5, -0.5, -2.0, 0.0, None])),
                probability=draw(st.sampled_from([0.0, 0.25, 1.0, 3.0])),
                name=f"b{i}",
            )
        )
    # A group whose probabilities are all 0 is an error (tested in the error table); give its first backend weight 1.
    for group in GROUP_ORDER:
        members = [i for i, b in enumerate(backends) if slider_group(b.slider_strength) == group]
        if members and all(backends[i].probability == 0 for i in members):
            backends[members[0]] = dataclasses.replace(backends[members[0]], probability=1.0)
    seed = draw(st.integers(0, 2**31 - 1))
    return backends, batch_size, drop_last, seed


# --------------------------------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(layouts())
def test_epoch_properties(layout_args):
    backends, batch_size, drop_last, seed = layout_args
    layout = Layout(backends)
    sampler = make_sampler(backends, batch_size=batch_size, drop_last=drop_last, seed=seed)
    batches = list(sampler)
    infos = sampler.plan()

    # len() is the number of batches actually yielded, and the plan describes each of them.
    assert len(sampler) == len(batches) == len(infos) == sampler.num_steps

    # Each index at most once; all of them without drop_last; with drop_last each backend loses only its remainder.
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))
    for b in range(len(backends)):
        taken = [i for i in flat if layout.backend_of(i) == b]
        expected = layout.batches_of(b, batch_size, True) * batch_size if drop_last else layout.sizes[b]
        assert len(taken) == expected
    if not drop_last:
        assert sorted(flat) == list(range(layout.offsets[-1]))

    # Homogeneous batches: one backend each, the one the plan names, with its strength; full except a last batch.
    seen_last = set()
    for batch, info in zip(batches, infos):
        owners = {layout.backend_of(i) for i in batch}
        assert owners == {info.backend_index}
        b = info.backend_index
        assert info.backend == backends[b].name
        assert info.slider_strength == (0.0 if backends[b].slider_strength is None else backends[b].slider_strength)
        assert info.group == layout.groups[b]
        assert len(batch) == info.batch_size
        if len(batch) != batch_size:
            assert not drop_last and b not in seen_last and len(batch) == layout.sizes[b] % batch_size
            seen_last.add(b)

    # The rotation is exact while its groups remain.
    left = Counter()
    for b in range(len(backends)):
        left[layout.groups[b]] += layout.batches_of(b, batch_size, drop_last)
    check_rotation([info.group for info in infos], {g: left[g] for g in GROUP_ORDER})

    # A backend with probability 0 is drawn only when no backend of its group with probability > 0 has batches left.
    remaining = [layout.batches_of(b, batch_size, drop_last) for b in range(len(backends))]
    for info in infos:
        if backends[info.backend_index].probability == 0:
            weighted_left = [
                remaining[b]
                for b in range(len(backends))
                if layout.groups[b] == info.group and backends[b].probability > 0
            ]
            assert sum(weighted_left) == 0
        remaining[info.backend_index] -= 1

    # The same seed and epoch give the same batches.
    assert list(make_sampler(backends, batch_size=batch_size, drop_last=drop_last, seed=seed)) == batches


@PROPERTY_SETTINGS
@given(layouts(), st.data())
def test_resume_from_any_step_gives_the_remaining_batches(layout_args, data):
    backends, batch_size, drop_last, seed = layout_args
    kwargs = dict(batch_size=batch_size, drop_last=drop_last, seed=seed)
    reference = make_sampler(backends, **kwargs)
    reference.set_epoch(2)
    full = list(reference)
    consumed = data.draw(st.integers(0, len(full)), label="consumed")
    prefetched = data.draw(st.integers(0, len(full) - consumed), label="prefetched")

    # The sampler ran ahead of training (DataLoader workers prefetch); the caller says how much was consumed.
    sampler = make_sampler(backends, **kwargs)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    for _ in range(consumed + prefetched):
        next(iterator)
    state = sampler.state_dict(batches_consumed=consumed)
    assert state["step"] == consumed and state["epoch"] == 2

    resumed = make_sampler(backends, **{**kwargs, "seed": seed + 1})  # the state restores the seed
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual epoch loop: the same epoch keeps the resume point
    assert len(resumed) == len(full) - consumed
    rest = list(resumed)
    assert rest == full[consumed:]
    # A completed iteration leaves no resume point behind: the next pass is the whole epoch again.
    assert len(resumed) == len(full)
    assert list(resumed) == full

    # Resuming twice: the count restarts at the resume point, and the default counts the yielded batches.
    again = data.draw(st.integers(0, len(rest)), label="again")
    second = make_sampler(backends, **kwargs)
    second.load_state_dict(state)
    iterator = iter(second)
    for _ in range(again):
        next(iterator)
    third = make_sampler(backends, **kwargs)
    third.load_state_dict(second.state_dict())
    assert list(third) == full[consumed + again :]


@settings(max_examples=80, deadline=None)
@given(layouts(max_backends=5, max_size=25), st.integers(2, 4))
def test_ranks_share_the_backend_and_split_it(layout_args, num_replicas):
    backends, batch_size, drop_last, seed = layout_args
    global_batch = batch_size * num_replicas
    # Under drop_last every backend must hold one global batch (an error otherwise, tested in the table).
    backends = [dataclasses.replace(b, dataset=max(b.num_samples, global_batch)) if drop_last else b for b in backends]
    layout = Layout(backends)
    per_rank = [
        make_sampler(
            backends, batch_size=batch_size, drop_last=drop_last, seed=seed, num_replicas=num_replicas, rank=r
        )
        for r in range(num_replicas)
    ]
    shards = [list(s) for s in per_rank]
    _check_shards(layout, shards, global_batch, drop_last, batch_size, full_batches=False)
    # All ranks compute the same plan.
    plans = [s.plan() for s in per_rank]
    assert all(p == plans[0] for p in plans)
    assert all(len(s) == len(shards[0]) for s in per_rank)


@settings(max_examples=80, deadline=None)
@given(layouts(max_backends=5, max_size=25), st.integers(2, 4))
def test_interleaved_ranks_through_accelerate_batch_sampler_shard(layout_args, num_replicas):
    backends, batch_size, drop_last, seed = layout_args
    global_batch = batch_size * num_replicas
    backends = [dataclasses.replace(b, dataset=max(b.num_samples, global_batch)) if drop_last else b for b in backends]
    layout = Layout(backends)
    kwargs = dict(batch_size=batch_size, drop_last=drop_last, seed=seed, num_replicas=num_replicas)
    interleaved = make_sampler(backends, interleave_ranks=True, **kwargs)
    assert len(interleaved) == num_replicas * interleaved.num_steps
    # Accelerate's own sharding class, as accelerator.prepare(dataloader) applies it on each process.
    shards = [
        list(BatchSamplerShard(interleaved, num_processes=num_replicas, process_index=r)) for r in range(num_replicas)
    ]
    assert all(len(shard) == interleaved.num_steps for shard in shards)
    assert all(
        len(BatchSamplerShard(interleaved, num_processes=num_replicas, process_index=r)) == interleaved.num_steps
        for r in range(num_replicas)
    )
    _check_shards(layout, shards, global_batch, drop_last, batch_size, full_batches=True)
    if drop_last:
        # Without padding both modes give each rank the very same batches.
        for r in range(num_replicas):
            assert shards[r] == list(make_sampler(backends, rank=r, **kwargs))


def _check_shards(layout, shards, global_batch, drop_last, batch_size, *, full_batches):
    num_replicas = len(shards)
    assert len({len(shard) for shard in shards}) == 1, "ranks yield different numbers of batches"
    yielded = Counter()
    last_step_of = {}
    for step, per_rank in enumerate(zip(*shards)):
        owners = {layout.backend_of(i) for batch in per_rank for i in batch}
        assert len(owners) == 1, f"step {step} mixes backends {owners} across ranks"
        (b,) = owners
        last_step_of[b] = step
        assert len({len(batch) for batch in per_rank}) == 1, f"step {step}: unequal batch sizes across ranks"
        if full_batches:
            assert all(len(batch) == batch_size for batch in per_rank)
        for batch in per_rank:
            yielded.update(batch)
    for step, per_rank in enumerate(zip(*shards)):
        (b,) = {layout.backend_of(per_rank[0][0])}
        if step != last_step_of[b]:
            # Only a backend's last step can hold padding; every other step splits disjoint indices.
            flat = [i for batch in per_rank for i in batch]
            assert len(flat) == len(set(flat)) == global_batch
    for b, size in enumerate(layout.sizes):
        counts = {i: yielded[i] for i in layout.range_of(b) if yielded[i]}
        full, remainder = divmod(size, global_batch)
        if drop_last:
            assert len(counts) == full * global_batch and set(counts.values()) == {1}
            continue
        # Complete, and padded by exactly what the policy adds: to a multiple of the replicas (rank mode) or to a
        # full global batch (interleaved for accelerate).
        assert len(counts) == size
        if remainder == 0:
            padded = 0
        elif full_batches:
            padded = global_batch - remainder
        else:
            padded = math.ceil(remainder / num_replicas) * num_replicas - remainder
        assert sum(counts.values()) == size + padded


# --------------------------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        # positive 3 batches, negative 1, neutral 3: once negative is dry, positive and neutral alternate in order.
        ((3, 1, 3), ["positive", "negative", "neutral", "positive", "neutral", "positive", "neutral"]),
        # positive runs dry first: negative then neutral keep their order.
        ((1, 3, 2), ["positive", "negative", "neutral", "negative", "neutral", "negative"]),
        # no neutral group at all.
        ((2, 2, 0), ["positive", "negative", "positive", "negative"]),
        # only neutral: an ordinary sampler.
        ((0, 0, 3), ["neutral", "neutral", "neutral"]),
    ],
)
def test_rotation_never_slips(sizes, expected):
    strengths = (1.0, -1.0, None)
    backends = [
        SliderBackend(size, slider_strength=s, name=GROUP_ORDER[g])
        for g, (size, s) in enumerate(zip(sizes, strengths))
        if size
    ]
    sampler = make_sampler(backends, batch_size=1, seed=0)
    assert [info.group for info in sampler.plan()] == expected


def test_backend_probabilities_are_respected_in_distribution():
    """Two positive backends weighted 3:1 (plus a negative one to rotate with). Over 20 seeds x the first 1000
    positive turns (neither backend can run out: each has 2000 batches), the share of the heavy backend is binomial
    with p = 0.75, n = 20000: standard deviation sqrt(n p (1 - p)) ~ 61 draws. Tolerance: 4 standard deviations."""
    backends = [
        SliderBackend(2000, slider_strength=1.0, probability=3.0, name="heavy"),
        SliderBackend(2000, slider_strength=1.0, probability=1.0, name="light"),
        SliderBackend(4000, slider_strength=-1.0, name="minus"),
    ]
    turns, seeds, p = 1000, 20, 0.75
    heavy = 0
    for seed in range(seeds):
        sampler = SliderBatchSampler(backends, batch_size=1, seed=seed)
        positive = [info.backend for info in sampler.plan() if info.group == "positive"][:turns]
        assert len(positive) == turns
        heavy += positive.count("heavy")
    n = turns * seeds
    sd = math.sqrt(n * p * (1 - p))
    assert abs(heavy - n * p) <= 4 * sd, f"heavy drawn {heavy} times of {n}, expected {n * p:.0f} +- {4 * sd:.0f}"


def test_zero_probability_backend_waits_for_its_group():
    backends = [
        SliderBackend(3, slider_strength=1.0, probability=0.0, name="late"),
        SliderBackend(3, slider_strength=1.0, name="first"),
        SliderBackend(6, slider_strength=-1.0, name="minus"),
    ]
    sampler = make_sampler(backends, batch_size=1, seed=7)
    positive = [info.backend for info in sampler.plan() if info.group == "positive"]
    assert positive == ["first"] * 3 + ["late"] * 3


# --------------------------------------------------------------------------------------------------- epochs


def test_seed_and_epoch_determine_the_order():
    backends = [SliderBackend(64, slider_strength=1.0), SliderBackend(64, slider_strength=-1.0)]
    first = make_sampler(backends, batch_size=4, seed=11)
    second = make_sampler(backends, batch_size=4, seed=11)
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0
    assert sorted(itertools.chain(*epoch1)) == sorted(itertools.chain(*epoch0))
    assert list(make_sampler(backends, batch_size=4, seed=12)) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0


def test_shuffle_false_keeps_each_backend_in_order():
    backends = [SliderBackend(5, slider_strength=1.0), SliderBackend(5, slider_strength=-1.0)]
    batches = list(make_sampler(backends, batch_size=2, shuffle=False, seed=0))
    assert batches == [[0, 1], [5, 6], [2, 3], [7, 8], [4], [9]]


def test_set_epoch_drops_a_resume_point_of_another_epoch():
    backends = [SliderBackend(8, slider_strength=1.0), SliderBackend(8, slider_strength=-1.0)]
    sampler = make_sampler(backends, batch_size=2, seed=0)
    sampler.set_epoch(3)
    state = sampler.state_dict(batches_consumed=5)
    sampler.load_state_dict(state)
    assert len(sampler) == 3
    sampler.set_epoch(4)
    assert len(sampler) == 8


def test_unbalanced_buckets_warn_naming_backends_or_raise_when_strict():
    backends = [
        SliderBackend(12, slider_strength=0.5, name="smile_plus"),
        SliderBackend(10, slider_strength=-0.5, name="smile_minus"),
    ]
    with pytest.warns(UserWarning, match=r"positive backends hold 12 samples \('smile_plus': 12\).*'smile_minus': 10"):
        SliderBatchSampler(backends, batch_size=2)
    with pytest.raises(ValueError, match="strict_balance=True"):
        SliderBatchSampler(backends, batch_size=2, strict_balance=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = [SliderBackend(6, slider_strength=1.0), SliderBackend(4, slider_strength=-1.0)]
        balanced.append(SliderBackend(2, slider_strength=-1.0))
        SliderBatchSampler(balanced, batch_size=2, strict_balance=True)


@pytest.mark.parametrize(
    ("backends", "warns"),
    [
        # A pairs-only run trains +s and -s in every batch: balanced by construction.
        ([SliderBackend(5, slider_strength=1.0, name="pairs", paired=True)], None),
        # Paired backends count toward both directions, so the signed buckets beside them must balance each other.
        (
            [
                SliderBackend(5, slider_strength=1.0, name="pairs", paired=True),
                SliderBackend(3, slider_strength=1.0, name="more"),
                SliderBackend(3, slider_strength=-1.0, name="less"),
                SliderBackend(4, name="plain"),
            ],
            None,
        ),
        (
            [
                SliderBackend(5, slider_strength=1.0, name="pairs", paired=True),
                SliderBackend(3, slider_strength=1.0, name="more"),
            ],
            r"positive backends hold 8 samples \('pairs': 5 \(paired\), 'more': 3\).*hold 5 \('pairs': 5 \(paired\)\)",
        ),
        # The same 5 samples unpaired are one-sided: that warns.
        ([SliderBackend(5, slider_strength=1.0, name="pairs")], r"positive backends hold 5 samples"),
    ],
    ids=["pairs only", "pairs beside balanced buckets", "pairs beside one bucket", "unpaired"],
)
def test_paired_backends_count_toward_both_directions(backends, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = SliderBatchSampler(backends, batch_size=2, seed=0)
    messages = [str(w.message) for w in caught]
    if warns is None:
        assert messages == []
    else:
        assert len(messages) == 1 and re.search(warns, messages[0]), messages
    # The plan treats a paired backend like any backend of its sign.
    assert {info.group for info in sampler.plan() if info.backend == "pairs"} == {"positive"}


def test_paired_does_not_change_the_plan_or_the_saved_state():
    # `paired` changes how a batch trains, not which indices it draws: states saved with or without it (and so
    # states saved before the flag existed) resume the same batches.
    unpaired = [SliderBackend(6, slider_strength=1.0, name="pairs"), SliderBackend(6, slider_strength=-1.0)]
    paired = [dataclasses.replace(unpaired[0], paired=True), unpaired[1]]
    old = make_sampler(unpaired, batch_size=2, seed=5)
    batches = list(old)
    state = old.state_dict(batches_consumed=2)
    resumed = make_sampler(paired, batch_size=2, seed=5)
    assert list(resumed) == batches
    resumed.load_state_dict(state)
    assert list(resumed) == batches[2:]
    assert resumed.state_dict(batches_consumed=0) == {**state, "step": 2}


def test_defaults_to_a_single_replica_without_torch_distributed():
    assert not torch.distributed.is_initialized()
    sampler = SliderBatchSampler([SliderBackend(4, slider_strength=None)], batch_size=2)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


def test_interleaved_state_counts_steps():
    backends = [SliderBackend(8, slider_strength=1.0), SliderBackend(8, slider_strength=-1.0)]
    kwargs = dict(batch_size=2, num_replicas=2, interleave_ranks=True, seed=1)
    full = list(make_sampler(backends, **kwargs))
    sampler = make_sampler(backends, **kwargs)
    iterator = iter(sampler)
    for _ in range(5):  # two whole steps and half of the third
        next(iterator)
    state = sampler.state_dict()
    assert state["step"] == 2
    resumed = make_sampler(backends, **kwargs)
    resumed.load_state_dict(state)
    assert list(resumed) == full[4:]


# --------------------------------------------------------------------------------------------------- bad input


def _sampler(*backends, **kwargs):
    kwargs.setdefault("batch_size", 2)
    return make_sampler(list(backends), **kwargs)


ERROR_CASES = [
    # (id, factory, exception, message pattern)
    (
        "nan strength",
        lambda: SliderBackend(4, slider_strength=math.nan, name="smile_plus"),
        ValueError,
        r"`slider_strength` of backend 'smile_plus' must be a finite number.*got nan",
    ),
    (
        "inf strength",
        lambda: SliderBackend(4, slider_strength=-math.inf, name="smile_minus"),
        ValueError,
        r"`slider_strength` of backend 'smile_minus'.*got -inf",
    ),
    (
        "text strength",
        lambda: SliderBackend(4, slider_strength="high", name="smile_plus"),
        ValueError,
        r"`slider_strength` of backend 'smile_plus' must be a finite number or None, got 'high'",
    ),
    (
        "bool strength",
        lambda: SliderBackend(4, slider_strength=True, name="x"),
        ValueError,
        r"`slider_strength` of backend 'x'.*got True",
    ),
    (
        "unnamed backend",
        lambda: SliderBackend(4, slider_strength=math.nan),
        ValueError,
        r"unnamed backend \(pass `name=`",
    ),
    (
        "negative probability",
        lambda: SliderBackend(4, probability=-0.5, name="p"),
        ValueError,
        r"`probability` of backend 'p' must be a finite number >= 0, got -0.5",
    ),
    (
        "nan probability",
        lambda: SliderBackend(4, probability=math.nan, name="p"),
        ValueError,
        r"`probability` of backend 'p'.*got nan",
    ),
    (
        "text probability",
        lambda: SliderBackend(4, probability="1", name="p"),
        ValueError,
        r"`probability` of backend 'p'.*got '1'",
    ),
    ("empty backend length", lambda: SliderBackend(0, name="empty"), ValueError, r"backend 'empty' is empty"),
    ("empty backend dataset", lambda: SliderBackend([], name="empty"), ValueError, r"backend 'empty' is empty"),
    (
        "no length",
        lambda: SliderBackend(iter([1]), name="stream"),
        TypeError,
        r"`dataset` of backend 'stream' must be a dataset with `__len__`",
    ),
    ("bad name", lambda: SliderBackend(3, name=""), TypeError, r"`name` of a backend must be a non-empty string"),
    (
        "paired neutral",
        lambda: SliderBackend(3, name="pairs", paired=True),
        ValueError,
        r"backend 'pairs' is paired \(its batches train \+s and -s\) but its `slider_strength` is None",
    ),
    (
        "paired zero",
        lambda: SliderBackend(3, slider_strength=0.0, name="pairs", paired=True),
        ValueError,
        r"backend 'pairs' is paired.*`slider_strength` is 0.0",
    ),
    (
        "paired text",
        lambda: SliderBackend(3, slider_strength=1.0, name="pairs", paired="yes"),
        TypeError,
        r"`paired` of backend 'pairs' must be True or False, got 'yes'",
    ),
    (
        "all-zero group",
        lambda: _sampler(
            SliderBackend(4, slider_strength=1.0, probability=0.0, name="a"),
            SliderBackend(4, slider_strength=2.0, probability=0.0, name="b"),
            SliderBackend(8, slider_strength=-1.0, name="c"),
        ),
        ValueError,
        r"Every positive backend \('a', 'b'\) has `probability` 0",
    ),
    (
        "batch_size 0",
        lambda: _sampler(SliderBackend(4), batch_size=0),
        ValueError,
        r"`batch_size` must be an int in \[1, 2\*\*31\), got 0",
    ),
    (
        "batch_size float",
        lambda: _sampler(SliderBackend(4), batch_size=2.0),
        ValueError,
        r"`batch_size` must be an int in \[1, 2\*\*31\), got 2.0",
    ),
    (
        "smaller than a batch",
        lambda: _sampler(SliderBackend(3, name="tiny"), batch_size=4, drop_last=True),
        ValueError,
        r"Backend 'tiny' has 3 samples, fewer than one batch .* = 4",
    ),
    (
        "smaller than a global batch",
        lambda: _sampler(SliderBackend(6, name="tiny"), batch_size=2, drop_last=True, num_replicas=4, rank=0),
        ValueError,
        r"Backend 'tiny' has 6 samples.*2 \* 4 = 8",
    ),
    ("no backends", lambda: _sampler(), ValueError, r"`backends` is empty"),
    ("not a backend", lambda: _sampler([1, 2, 3]), TypeError, r"`backends\[0\]` must be a SliderBackend, got list"),
    (
        "duplicate names",
        lambda: _sampler(SliderBackend(2, name="a"), SliderBackend(2, name="a")),
        ValueError,
        r"names must be unique; \['a'\]",
    ),
    (
        "num_replicas 0",
        lambda: _sampler(SliderBackend(4), num_replicas=0, rank=0),
        ValueError,
        r"`num_replicas` must be an int in \[1, 2\*\*31\), got 0",
    ),
    (
        "rank too large",
        lambda: _sampler(SliderBackend(4), num_replicas=2, rank=2),
        ValueError,
        r"`rank` must be an int in \[0, 2\), got 2",
    ),
    ("seed text", lambda: _sampler(SliderBackend(4), seed="0"), TypeError, r"`seed` must be an int, got '0'"),
    (
        "negative epoch",
        lambda: _sampler(SliderBackend(4)).set_epoch(-1),
        ValueError,
        r"`epoch` must be an int in \[0, 2\*\*63\), got -1",
    ),
    (
        "step out of range",
        lambda: _sampler(SliderBackend(4)).batch_info(2),
        ValueError,
        r"`step` must be an int in \[0, 2\), got 2",
    ),
    (
        "consumed out of range",
        lambda: _sampler(SliderBackend(4)).state_dict(batches_consumed=3),
        ValueError,
        r"`batches_consumed` must be an int in \[0, 2\].*got 3",
    ),
    (
        "state of another layout",
        lambda: _sampler(SliderBackend(6, name="a")).load_state_dict(
            _sampler(SliderBackend(4, name="a")).state_dict()
        ),
        ValueError,
        r"different sampler layout.*\['a', 4, 'neutral', 1.0\]\] vs \[\['a', 6, 'neutral', 1.0\]",
    ),
    (
        "state of another batch size",
        lambda: _sampler(SliderBackend(4), batch_size=1).load_state_dict(
            _sampler(SliderBackend(4), batch_size=2).state_dict()
        ),
        ValueError,
        r"batch_size 2 vs 1",
    ),
    (
        "not a state",
        lambda: _sampler(SliderBackend(4)).load_state_dict({"epoch": 0}),
        ValueError,
        r"`state_dict` lacks \['version'",
    ),
]


@pytest.mark.parametrize(
    ("factory", "error", "pattern"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_input_raises_a_clear_error(factory, error, pattern):
    with pytest.raises(error, match=pattern):
        factory()


def test_a_failed_load_leaves_the_sampler_unchanged():
    sampler = _sampler(SliderBackend(8, name="a"), seed=4)
    sampler.set_epoch(1)
    before = (sampler.epoch, sampler.seed, len(sampler), list(sampler))
    bad = sampler.state_dict(batches_consumed=1)
    bad["step"] = 99
    with pytest.raises(ValueError, match=r"`state_dict\['step'\]` must be in \[0, 4\], got 99"):
        sampler.load_state_dict(bad)
    assert (sampler.epoch, sampler.seed, len(sampler), list(sampler)) == before


# --------------------------------------------------------------------------------------------------- docs


# Docstring examples run in tests/test_docs.py.


@pytest.mark.parametrize("module", ["sampler", "data", "paired_images"])
def test_module_imports_only_torch_and_the_standard_library(module):
    # The sampler, the data helpers and the image pairs must not pull diffusers, peft or transformers (PIL is
    # imported lazily).
    import ast
    import sys
    from pathlib import Path

    source = Path(sampler_module.__file__).with_name(f"{module}.py").read_text()
    top_level = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module.split(".")[0])
    third_party = {name for name in top_level if name not in sys.stdlib_module_names}
    assert third_party <= {"torch", "PIL"}, third_party


# --------------------------------------------------------------------------------------------------- one process


def test_one_replica_never_pads_even_when_interleaved():
    # A one-GPU `accelerate launch`: accelerate does not shard a batch sampler for one process, so nothing may pad.
    sampler = make_sampler([SliderBackend(1, name="one")], batch_size=2, interleave_ranks=True)
    assert list(sampler) == [[0]]
    assert sampler.batch_info(0).batch_size == 1


@settings(max_examples=60, deadline=None)
@given(layouts(max_backends=4, max_size=20))
def test_one_replica_interleaved_equals_plain_through_accelerate(layout_args):
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    backends, batch_size, drop_last, seed = layout_args
    kwargs = dict(batch_size=batch_size, drop_last=drop_last, seed=seed, num_replicas=1)
    plain = list(make_sampler(backends, **kwargs))
    interleaved = make_sampler(backends, interleave_ranks=True, **kwargs)
    assert list(interleaved) == plain
    dataset = list(range(sum(b.num_samples for b in backends)))
    loader = prepare_data_loader(
        DataLoader(dataset, batch_sampler=interleaved), num_processes=1, process_index=0, put_on_device=False
    )
    assert [batch.tolist() for batch in loader] == plain


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (
            lambda: SliderBatchSampler([SliderBackend(4)], batch_size=10**400),
            r"`batch_size` must be an int in \[1, 2\*\*31\), got an int of 401 digits",
        ),
        (
            lambda: SliderBatchSampler([SliderBackend(4)], batch_size=2, num_replicas=10**400),
            r"`num_replicas` must be an int in \[1, 2\*\*31\), got an int of 401 digits",
        ),
        (
            lambda: SliderBatchSampler([SliderBackend(4)], batch_size=2, seed=-(10**400)),
            r"`seed` must be an integer in \[0, 2\*\*63\), got a negative int of 401 digits",
        ),
        (lambda: SliderBackend(10**400), r"`dataset` of an unnamed backend .* got an int of 401 digits"),
        (lambda: SliderBackend(4, slider_strength=10**400), r"`slider_strength` of an unnamed.*int of 401 digits"),
        (lambda: SliderBackend(4, probability=10**400), r"`probability` of an unnamed.*int of 401 digits"),
        (
            lambda: SliderBatchSampler([SliderBackend(4)], batch_size=2).set_epoch(10**400),
            r"`epoch` must be an int in \[0, 2\*\*63\), got an int of 401 digits",
        ),
        (
            lambda: SliderBatchSampler([SliderBackend(4)], batch_size=2).load_state_dict(
                {**SliderBatchSampler([SliderBackend(4)], batch_size=2).state_dict(), "epoch": 2**64}
            ),
            r"`state_dict` holds an invalid epoch/seed/step: 18446744073709551616, 0, 0 \(epoch and seed are ints in",
        ),
    ],
    ids=["batch_size", "num_replicas", "seed", "length", "strength", "probability", "epoch", "state epoch"],
)
def test_huge_ints_give_a_clear_error(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()
