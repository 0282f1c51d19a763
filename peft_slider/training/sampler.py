# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The slider batch sampler: every batch comes from one backend, so it carries one signed `slider_strength`.

Backends are grouped by the sign of their strength and visited in the fixed cycle positive -> negative -> neutral.
The whole epoch is planned up front from `(seed, epoch)`, which makes `len()` exact, resuming a matter of skipping
the first steps of the same plan, and iteration a walk over precomputed index lists.

This module is torch-only on purpose: it must not import diffusers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils.data import Sampler

from ..utils.checks import check_int, check_seed, is_finite_number, show_value

__all__ = ["SLIDER_GROUPS", "SliderBackend", "SliderBatchInfo", "SliderBatchSampler", "slider_group"]

# The rotation order. A group without live backends is skipped, never reordered.
SLIDER_GROUPS = ("positive", "negative", "neutral")

_STATE_VERSION = 1
# Batch sizes and replica counts are bounded so that index arithmetic stays within torch's int64 range.
_MAX_BATCH = 2**31 - 1
_MAX_SAMPLES = 2**63 - 1


def slider_group(slider_strength: float | None) -> str:
    """Name the group a strength belongs to: `"positive"` (> 0), `"negative"` (< 0) or `"neutral"` (None or 0).

    Example:

    ```py
    >>> from peft_slider.training import slider_group
    >>> [slider_group(s) for s in (0.5, -1, None, 0.0)]
    ['positive', 'negative', 'neutral', 'neutral']
    ```
    """
    if slider_strength is None or slider_strength == 0:
        return "neutral"
    return "positive" if slider_strength > 0 else "negative"


@dataclass(frozen=True)
class SliderBackend:
    """One bucket of a slider dataset, as the sampler sees it.

    Args:
        dataset (`Sized` or `int`):
            The backend's dataset (anything with `__len__`) or just its number of samples.
        slider_strength (`float`, *optional*, defaults to `None`):
            The signed strength of every batch drawn from this backend. > 0: more of the concept, < 0: less of it,
            `None` or 0: a neutral backend of ordinary examples.
        probability (`float`, *optional*, defaults to `1.0`):
            Weight of this backend when its group's turn comes. 0 means "only when nothing else in the group is left",
            so its samples are still used once per epoch.
        name (`str`, *optional*, defaults to `None`):
            Name used in errors, warnings and batch infos. The sampler names an unnamed backend `backend_<i>`.
        paired (`bool`, *optional*, defaults to `False`):
            Every batch of this backend trains both signs, `+s` and `-s`, in one step: image pairs (the "after"
            image at `+s`, the "before" at `-s`, see `peft_slider.training.paired_images`) or mirrored prompt sets.
            The sampler plans it in the group of its strength's sign like any backend, but its samples count toward
            both the positive and the negative totals of the balance check, so a pairs-only run is balanced. A paired
            backend needs a nonzero strength.

    Example:

    ```py
    >>> from peft_slider.training import SliderBackend
    >>> backend = SliderBackend(12, slider_strength=-0.5, name="smile_minus")
    >>> backend.num_samples, backend.group, backend.strength
    (12, 'negative', -0.5)
    >>> SliderBackend(8, slider_strength=1.0, name="smile_pairs", paired=True).group
    'positive'
    ```
    """

    dataset: Sized | int = field(metadata={"help": "The backend's dataset (anything with __len__) or its length."})
    slider_strength: float | None = field(
        default=None, metadata={"help": "Signed strength of the backend's batches; None or 0 is neutral."}
    )
    probability: float = field(default=1.0, metadata={"help": "Weight of the backend within its group (>= 0)."})
    name: str | None = field(default=None, metadata={"help": "Name used in errors and batch infos."})
    paired: bool = field(
        default=False, metadata={"help": "Every batch trains +s and -s (image pairs); balances both directions."}
    )

    def __post_init__(self):
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"`name` of a backend must be a non-empty string or None, got {self.name!r}.")
        label = self._label()
        dataset = self.dataset
        if isinstance(dataset, bool) or not (isinstance(dataset, int) or hasattr(dataset, "__len__")):
            raise TypeError(
                f"`dataset` of {label} must be a dataset with `__len__` or an int length, got "
                f"{type(dataset).__name__}. An IterableDataset cannot be planned; give its length instead."
            )
        if self.num_samples > _MAX_SAMPLES:
            raise ValueError(
                f"`dataset` of {label} must be a length in [1, 2**63), got {show_value(self.num_samples)}. Give the "
                "dataset's real number of samples."
            )
        if self.num_samples < 1:
            raise ValueError(f"{label} is empty (0 samples). Remove it from the backends or add samples to it.")
        strength = self.slider_strength
        if strength is not None and not is_finite_number(strength):
            raise ValueError(
                f"`slider_strength` of {label} must be a finite number or None, got {show_value(strength)}. Use a "
                "value > 0 for 'more of the concept', < 0 for 'less of it', and None or 0 for neutral examples."
            )
        probability = self.probability
        if not is_finite_number(probability) or probability < 0:
            raise ValueError(
                f"`probability` of {label} must be a finite number >= 0, got {show_value(probability)}. It weighs the "
                "backend against the others of its group; 1 is the default."
            )
        if not isinstance(self.paired, bool):
            raise TypeError(f"`paired` of {label} must be True or False, got {show_value(self.paired)}.")
        if self.paired and not strength:
            raise ValueError(
                f"{label} is paired (its batches train +s and -s) but its `slider_strength` is {strength!r}. Give it "
                "the strength s > 0 its pairs train at, or make it an ordinary neutral backend with paired=False."
            )

    def _label(self) -> str:
        return f"backend {self.name!r}" if self.name is not None else "an unnamed backend (pass `name=` to name it)"

    @property
    def num_samples(self) -> int:
        """The backend's number of samples."""
        return self.dataset if isinstance(self.dataset, int) else len(self.dataset)

    @property
    def group(self) -> str:
        """`"positive"`, `"negative"` or `"neutral"`."""
        return slider_group(self.slider_strength)

    @property
    def strength(self) -> float:
        """The strength as a float, 0.0 for a neutral backend."""
        return 0.0 if self.slider_strength is None else float(self.slider_strength)


class SliderBatchInfo(NamedTuple):
    """What one step of a `SliderBatchSampler` epoch draws.

    Attributes:
        step (`int`): The step number within the epoch (0-based).
        backend (`str`): The name of the backend the batch comes from.
        backend_index (`int`): Its position in the sampler's backends (and in the concatenated dataset).
        slider_strength (`float`): The batch's signed strength, 0.0 for a neutral backend.
        group (`str`): `"positive"`, `"negative"` or `"neutral"`.
        batch_size (`int`): The number of indices each rank gets at this step.
    """

    step: int
    backend: str
    backend_index: int
    slider_strength: float
    group: str
    batch_size: int


class _Plan(NamedTuple):
    # Per backend: the ConcatDataset indices in epoch order, padded for distributed runs and cut for drop_last; with
    # `interleave_ranks` the whole list, otherwise only this rank's share of it.
    indices: list[list[int]]
    # Per step: which backend, and where its batch starts in that list and how long it is (with `interleave_ranks`,
    # the global batch of all ranks; otherwise this rank's batch).
    backend: list[int]
    start: list[int]
    size: list[int]


class SliderBatchSampler(Sampler[list[int]]):
    """Yield batches of indices, each from a single backend, rotating positive -> negative -> neutral.

    The indices point into the concatenation of the backends in their given order, as
    `torch.utils.data.ConcatDataset` (or `peft_slider.training.data.SliderConcatDataset`) numbers them. Pass the sampler as
    `DataLoader(dataset, batch_sampler=sampler)` (given as `sampler=`, the DataLoader would batch its batches;
    `SliderConcatDataset` catches that with a clear error).

    How an epoch is drawn: each backend's samples are shuffled and cut into batches. Steps then visit the groups in
    the fixed order positive -> negative -> neutral, skipping a group that has no batches left without shifting the
    others. At a group's turn one of its backends with batches left is drawn with weights equal to the
    probabilities (a backend with probability 0 only when no backend with probability > 0 is left in its group).
    The epoch ends when every backend is used up; no index is yielded twice and none is lost except by `drop_last`.

    Distributed runs: the batch of a step is `batch_size * num_replicas` indices of one backend, split into disjoint
    per-rank slices, so every rank trains the same strength at the same step and all ranks yield as many batches.
    Without `drop_last`, a backend's last, short global batch is padded by wrapping around to the first indices of
    that backend in this epoch (as torch's `DistributedSampler` pads): to a multiple of `num_replicas`, so each rank
    gets the same, possibly smaller, batch; with `interleave_ranks=True` to full per-rank batches, because
    accelerate's `BatchSamplerShard` skips or re-fills short batches. With one replica nothing is padded, with or
    without `interleave_ranks` (a one-process `accelerate launch` does not wrap the batch sampler), so each
    backend's last batch may be short.

    Accelerate: `accelerator.prepare(dataloader)` wraps a batch sampler in `BatchSamplerShard`, which hands the i-th
    batch to rank `i % num_processes`. Build the sampler with `interleave_ranks=True` (the same on every process):
    it then yields, for each step, the per-rank batches of all ranks one after another (rank 0's first), and
    accelerate's round robin gives each rank its own slice of the same backend at the same step. (A sampler that
    shards by `rank` itself would be sharded a second time there, losing batches and giving the ranks different
    strengths at the same step.)

    Epochs and resuming: call `set_epoch(epoch)` before each epoch (as with `DistributedSampler`); the order is a
    function of `(seed, epoch)` only. `state_dict(batches_consumed=...)` and `load_state_dict(...)` resume an epoch
    with exactly the batches that were still due.

    Args:
        backends (`Sequence[SliderBackend]`):
            The backends, in the order of the concatenated dataset.
        batch_size (`int`):
            Number of indices per batch (per rank in distributed runs).
        drop_last (`bool`, *optional*, defaults to `False`):
            Drop each backend's last batch when it is short (in distributed runs: its last short global batch).
        shuffle (`bool`, *optional*, defaults to `True`):
            Shuffle the samples within each backend. The backend draws are random either way.
        seed (`int`, *optional*, defaults to `0`):
            The plan of epoch `e` is drawn from a `torch.Generator` seeded with `seed + e`. Must be the same on all
            ranks.
        num_replicas (`int`, *optional*):
            Number of data-parallel ranks. Defaults to the world size of `torch.distributed` when it is initialised,
            else 1.
        rank (`int`, *optional*):
            This process's rank. Defaults to the `torch.distributed` rank when it is initialised, else 0. Ignored with
            `interleave_ranks=True`.
        interleave_ranks (`bool`, *optional*, defaults to `False`):
            Yield the batches of all ranks, step by step, for a wrapper that shards by batch number (accelerate).
        strict_balance (`bool`, *optional*, defaults to `False`):
            Raise instead of warning when the positive and negative backends hold different numbers of samples (a
            `paired` backend counts toward both).

    Example:

    ```py
    >>> from peft_slider.training import SliderBackend, SliderBatchSampler
    >>> backends = [
    ...     SliderBackend(4, slider_strength=1.0, name="more"),
    ...     SliderBackend(4, slider_strength=-1.0, name="less"),
    ...     SliderBackend(2, name="plain"),
    ... ]
    >>> sampler = SliderBatchSampler(backends, batch_size=2, seed=0)
    >>> [info.group for info in sampler.plan()]
    ['positive', 'negative', 'neutral', 'positive', 'negative']
    >>> sorted(i for batch in sampler for i in batch)
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    ```
    """

    def __init__(
        self,
        backends: Sequence[SliderBackend],
        *,
        batch_size: int,
        drop_last: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        interleave_ranks: bool = False,
        strict_balance: bool = False,
    ):
        super().__init__()
        if isinstance(backends, SliderBackend) or not isinstance(backends, Sequence):
            raise TypeError(f"`backends` must be a sequence of SliderBackend, got {type(backends).__name__}.")
        if len(backends) == 0:
            raise ValueError("`backends` is empty; give at least one SliderBackend.")
        for i, backend in enumerate(backends):
            if not isinstance(backend, SliderBackend):
                raise TypeError(
                    f"`backends[{i}]` must be a SliderBackend, got {type(backend).__name__}. Wrap a dataset as "
                    "`SliderBackend(dataset, slider_strength=..., name=...)` or use `SliderDataset(...).backend`."
                )
        check_int(batch_size, argument="batch_size", low=1, high=_MAX_BATCH, bounds="[1, 2**31)")
        seed = check_seed(seed)
        num_replicas, rank = _resolve_replicas(num_replicas, rank)

        self.backends = list(backends)
        self.names = [b.name if b.name is not None else f"backend_{i}" for i, b in enumerate(self.backends)]
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Backend names must be unique; {duplicates} occur more than once. Pass distinct `name`s."
            )
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.interleave_ranks = bool(interleave_ranks)
        self.epoch = 0

        self._sizes = [b.num_samples for b in self.backends]
        self._groups = [SLIDER_GROUPS.index(b.group) for b in self.backends]
        self._probabilities = [float(b.probability) for b in self.backends]
        self._check_groups()
        self._check_batch_fit()
        self._check_balance(strict_balance)
        self._steps_per_backend = [self._num_global_batches(n) for n in self._sizes]
        self._num_steps = sum(self._steps_per_backend)

        self._plan_cache: tuple[int, int, _Plan] | None = None
        # `_pending_start`: the step the next iteration begins at (set by load_state_dict, cleared when an iteration
        # completes). `_start` / `_cursor`: where the latest iteration began and how many batches it has yielded.
        self._pending_start = 0
        self._start = 0
        self._cursor = 0

    # ----------------------------------------------------------------------------------------------- validation

    def _check_groups(self):
        for g, group in enumerate(SLIDER_GROUPS):
            members = [i for i, gi in enumerate(self._groups) if gi == g]
            if members and all(self._probabilities[i] == 0 for i in members):
                listed = ", ".join(f"{self.names[i]!r}" for i in members)
                raise ValueError(
                    f"Every {group} backend ({listed}) has `probability` 0, so the group could never be drawn. "
                    "Give at least one of them a probability > 0."
                )

    def _check_batch_fit(self):
        if not self.drop_last:
            return
        global_batch = self.batch_size * self.num_replicas
        for name, size in zip(self.names, self._sizes):
            if size < global_batch:
                per = f"batch_size * num_replicas = {self.batch_size} * {self.num_replicas}"
                raise ValueError(
                    f"Backend {name!r} has {size} samples, fewer than one batch ({per} = {global_batch}), so with "
                    "`drop_last=True` it would never be drawn. Lower `batch_size`, add samples or set drop_last=False."
                )

    def _check_balance(self, strict: bool):
        totals = {}
        for group in ("positive", "negative"):
            # A paired backend trains both signs in every batch, so it counts toward both directions.
            members = [i for i, g in enumerate(self._groups) if SLIDER_GROUPS[g] == group or self.backends[i].paired]
            totals[group] = (sum(self._sizes[i] for i in members), members)
        (n_pos, pos), (n_neg, neg) = totals["positive"], totals["negative"]
        if n_pos == n_neg or (not pos and not neg):
            return

        def listing(members):
            return (
                ", ".join(
                    f"{self.names[i]!r}: {self._sizes[i]}" + (" (paired)" if self.backends[i].paired else "")
                    for i in members
                )
                or "none"
            )

        message = (
            f"Slider buckets are unbalanced: the positive backends hold {n_pos} samples ({listing(pos)}) and the "
            f"negative backends hold {n_neg} ({listing(neg)}). Both directions should see the same number of "
            "samples; add or remove samples (or set `repeats`) to match."
        )
        if strict:
            raise ValueError(message + " (Raised because strict_balance=True.)")
        warnings.warn(message + " Pass strict_balance=True to make this an error.", UserWarning, stacklevel=3)

    # ----------------------------------------------------------------------------------------------- planning

    def _num_global_batches(self, size: int) -> int:
        global_batch = self.batch_size * self.num_replicas
        return size // global_batch if self.drop_last else -(-size // global_batch)

    def _padded_tail(self, remainder: int) -> int:
        # Length a short last global batch is padded to (see the class docstring for why the modes differ). One
        # replica is never padded: accelerate does not wrap the batch sampler of a single process.
        if self.num_replicas == 1:
            return remainder
        if self.interleave_ranks:
            return self.batch_size * self.num_replicas
        return -(-remainder // self.num_replicas) * self.num_replicas

    def _build_plan(self, seed: int, epoch: int) -> _Plan:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        batch_size, replicas = self.batch_size, self.num_replicas
        global_batch = batch_size * replicas
        # Without interleaving, a rank keeps only its own share of each backend: the list work is 1/num_replicas.
        own_share = not self.interleave_ranks and replicas > 1
        step_length = global_batch if self.interleave_ranks else batch_size

        indices: list[list[int]] = []
        tails: list[int] = []  # length of each backend's last step, in the same units as step_length
        offset = 0
        for size in self._sizes:
            order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
            full, remainder = divmod(size, global_batch)
            tail = 0 if self.drop_last else remainder
            if tail:
                padded = self._padded_tail(remainder)
                need = padded - remainder
                if need:
                    head = order[: min(size, need)]
                    order = torch.cat([order, head.repeat(-(-need // head.numel()))[:need]])
                tail = padded
            order = order[: full * global_batch + tail]
            if own_share:
                body = order[: full * global_batch].view(full, replicas, batch_size)[:, self.rank].reshape(-1)
                share = tail // replicas
                rest = order[full * global_batch + self.rank * share : full * global_batch + (self.rank + 1) * share]
                order, tail = torch.cat([body, rest]), share
            indices.append((order.add_(offset) if offset else order).tolist())
            tails.append(tail or step_length)
            offset += size

        # One uniform draw per step, taken up front so the schedule costs no torch call per step.
        uniforms = torch.rand(self._num_steps, generator=generator, dtype=torch.float64).tolist()
        counts = self._steps_per_backend
        taken = [0] * len(counts)
        live = [[i for i, g in enumerate(self._groups) if g == group] for group in range(len(SLIDER_GROUPS))]
        probabilities = self._probabilities
        plan_backend, plan_start, plan_size = [], [], []
        phase = 0
        for step in range(self._num_steps):
            group = phase
            while not live[group]:
                group = (group + 1) % len(SLIDER_GROUPS)
            # The next turn goes to the group after this one, whatever happened before: no slip when a group dries.
            phase = (group + 1) % len(SLIDER_GROUPS)
            members = live[group]
            if len(members) == 1:
                chosen = members[0]
            else:
                weighted = [i for i in members if probabilities[i] > 0]
                if weighted:
                    chosen = _draw(weighted, [probabilities[i] for i in weighted], uniforms[step])
                else:
                    chosen = _draw(members, [1.0] * len(members), uniforms[step])
            k = taken[chosen] = taken[chosen] + 1
            plan_backend.append(chosen)
            plan_start.append((k - 1) * step_length)
            if k < counts[chosen]:
                plan_size.append(step_length)
            else:
                plan_size.append(tails[chosen])
                members.remove(chosen)
        return _Plan(indices, plan_backend, plan_start, plan_size)

    def _plan(self) -> _Plan:
        cache = self._plan_cache
        if cache is None or cache[0] != self.seed or cache[1] != self.epoch:
            cache = (self.seed, self.epoch, self._build_plan(self.seed, self.epoch))
            self._plan_cache = cache
        return cache[2]

    # ----------------------------------------------------------------------------------------------- public API

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration walks. A different epoch also drops a loaded resume point.

        Args:
            epoch (`int`): The epoch number in [0, 2**63), the same on every rank.
        """
        # The plan's generator is seeded with `seed + epoch`, which must stay below torch's 2**64 seed limit.
        check_int(epoch, argument="epoch", low=0, high=_MAX_SAMPLES, bounds="[0, 2**63)")
        if epoch != self.epoch:
            self._pending_start = self._start = self._cursor = 0
        self.epoch = epoch

    def __len__(self) -> int:
        steps = self._num_steps - self._pending_start
        return steps * self.num_replicas if self.interleave_ranks else steps

    @property
    def num_steps(self) -> int:
        """Number of steps (per-rank batches) in a whole epoch, whatever the resume point."""
        return self._num_steps

    def __iter__(self) -> Iterator[list[int]]:
        plan = self._plan()
        indices, backends, starts, sizes = plan.indices, plan.backend, plan.start, plan.size
        replicas = self.num_replicas
        start_step = self._pending_start
        self._start, self._cursor = start_step, 0
        if self.interleave_ranks:
            for step in range(start_step, self._num_steps):
                order, start = indices[backends[step]], starts[step]
                per_rank = sizes[step] // replicas
                for r in range(replicas):
                    self._cursor += 1
                    yield order[start + r * per_rank : start + (r + 1) * per_rank]
        else:
            for step in range(start_step, self._num_steps):
                lo = starts[step]
                self._cursor += 1
                yield indices[backends[step]][lo : lo + sizes[step]]
        self._pending_start = 0

    def batch_info(self, step: int) -> SliderBatchInfo:
        """Describe step `step` of the current epoch: its backend, strength, group and per-rank batch size.

        Args:
            step (`int`): The step within the epoch, counted from the start of the epoch (not from a resume point).
        """
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self._num_steps:
            raise ValueError(f"`step` must be an int in [0, {self._num_steps}), got {step!r}.")
        plan = self._plan()
        return self._info(plan, step)

    def plan(self) -> list[SliderBatchInfo]:
        """Describe every step of the current epoch, in order (the same on every rank)."""
        plan = self._plan()
        return [self._info(plan, step) for step in range(self._num_steps)]

    def _info(self, plan: _Plan, step: int) -> SliderBatchInfo:
        b = plan.backend[step]
        backend = self.backends[b]
        size = plan.size[step] // self.num_replicas if self.interleave_ranks else plan.size[step]
        return SliderBatchInfo(step, self.names[b], b, backend.strength, backend.group, size)

    # ----------------------------------------------------------------------------------------------- resuming

    def _fingerprint(self) -> dict[str, Any]:
        # What the plan depends on, and so what a resumed state must match. `paired` is left out on purpose, like the
        # strength's magnitude: it changes how a batch is trained, not which indices a step draws, and states saved
        # before it existed keep loading.
        return {
            "backends": [
                [name, size, SLIDER_GROUPS[group], probability]
                for name, size, group, probability in zip(self.names, self._sizes, self._groups, self._probabilities)
            ],
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
        }

    def state_dict(self, *, batches_consumed: int | None = None) -> dict[str, Any]:
        """Return the position in the epoch as plain Python values, for `load_state_dict`.

        Args:
            batches_consumed (`int`, *optional*):
                How many batches of the current iteration the training loop has consumed on this rank (count from 0
                after a resume). Pass it when the DataLoader has workers: they fetch `num_workers * prefetch_factor`
                batches ahead, so the sampler has yielded more than training used. Defaults to the number of batches
                the sampler has yielded in the current iteration (per rank; whole steps with `interleave_ranks`).

        Example:

        ```py
        >>> from peft_slider.training import SliderBackend, SliderBatchSampler
        >>> backends = [SliderBackend(6, slider_strength=1.0), SliderBackend(6, slider_strength=-1.0)]
        >>> sampler = SliderBatchSampler(backends, batch_size=2, seed=3)
        >>> batches = list(sampler)
        >>> state = sampler.state_dict(batches_consumed=2)
        >>> resumed = SliderBatchSampler(backends, batch_size=2, seed=3)
        >>> resumed.load_state_dict(state)
        >>> list(resumed) == batches[2:]
        True
        ```
        """
        done = self._cursor // self.num_replicas if self.interleave_ranks else self._cursor
        if batches_consumed is None:
            batches_consumed = done
        elif (
            isinstance(batches_consumed, bool)
            or not isinstance(batches_consumed, int)
            or not 0 <= batches_consumed <= self._num_steps - self._start
        ):
            raise ValueError(
                f"`batches_consumed` must be an int in [0, {self._num_steps - self._start}] (the batches of the "
                f"current iteration the training loop has used), got {batches_consumed!r}."
            )
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "step": self._start + batches_consumed,
            "num_steps": self._num_steps,
            **self._fingerprint(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from `state_dict()`: the next iteration yields exactly the batches that were still due.

        Restores the epoch, the seed and the position. The backends, batch size, drop_last, shuffle and number of
        replicas must match the ones the state was saved with. Calling `set_epoch` with the same epoch keeps the
        resume point; a different epoch drops it.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"`state_dict` must be a dict from SliderBatchSampler.state_dict(), got {state_dict!r}.")
        required = ("version", "epoch", "seed", "step", "num_steps", *self._fingerprint())
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(f"`state_dict` lacks {missing}; it does not come from SliderBatchSampler.state_dict().")
        if state_dict["version"] != _STATE_VERSION:
            raise ValueError(
                f"`state_dict` has version {state_dict['version']!r}; this sampler reads {_STATE_VERSION}."
            )
        mismatches = []
        current = self._fingerprint()
        saved_backends = [list(b) for b in state_dict["backends"]]
        if saved_backends != current["backends"]:
            mismatches.append(
                f"backends (name, samples, group, probability) {saved_backends} vs {current['backends']}"
            )
        for key in ("batch_size", "drop_last", "shuffle", "num_replicas"):
            if state_dict[key] != current[key]:
                mismatches.append(f"{key} {state_dict[key]!r} vs {current[key]!r}")
        if mismatches:
            raise ValueError(
                "The state was saved for a different sampler layout (saved vs now): "
                + "; ".join(mismatches)
                + ". Resume with the same backends and options, or start a fresh epoch without the state."
            )
        epoch, seed, step = state_dict["epoch"], state_dict["seed"], state_dict["step"]
        if (
            not all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, seed, step))
            or not 0 <= epoch <= _MAX_SAMPLES
            or not 0 <= seed <= _MAX_SAMPLES
        ):
            shown = ", ".join(show_value(v) for v in (epoch, seed, step))
            raise ValueError(
                f"`state_dict` holds an invalid epoch/seed/step: {shown} (epoch and seed are ints in [0, 2**63)). "
                "Pass a state from SliderBatchSampler.state_dict()."
            )
        if not 0 <= step <= self._num_steps:
            raise ValueError(f"`state_dict['step']` must be in [0, {self._num_steps}], got {step!r}.")
        self.epoch, self.seed = epoch, seed
        self._pending_start = self._start = step
        self._cursor = 0


def _draw(candidates: list[int], weights: list[float], uniform: float) -> int:
    # Inverse-CDF draw from one uniform in [0, 1); the last candidate absorbs rounding.
    target = uniform * sum(weights)
    for candidate, weight in zip(candidates, weights):
        target -= weight
        if target < 0:
            return candidate
    return candidates[-1]


def _resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    check_int(num_replicas, argument="num_replicas", low=1, high=_MAX_BATCH, bounds="[1, 2**31)")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"`rank` must be an int in [0, {num_replicas}), got {rank!r}.")
    return num_replicas, rank
