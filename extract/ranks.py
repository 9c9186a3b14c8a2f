"""Ranks without a cluster engine: many processes (GPUs, nodes, array tasks) share one run's parts.

Rank ``r`` of ``world_size`` takes the pending parts with ``part_id % world_size == r``; there are no
collectives, and the commit protocol makes any overlap harmless (a part is committed once). Rank and
world size come from ``--rank`` / ``--world-size``, else from the launcher's environment:

- torchrun and ``accelerate launch``: ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``: the GPU of this
  process on its node);
- a SLURM array: the task's index among the array's tasks, ``(SLURM_ARRAY_TASK_ID -
  SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT`` (``--array=0-6:2``
  runs tasks 0, 2, 4, 6: ranks 0-3 of 4); an array whose ids no step describes (``--array=1,3,8``)
  is refused, as its tasks cannot know their index;
- SLURM tasks (``srun``): ``SLURM_PROCID`` of ``SLURM_NTASKS`` (``SLURM_LOCALID`` is the local rank).

Rank 0 creates the run; the others wait for it. A rerun with any world size completes the same run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from attnwh.core.errors import UsageError

WAIT_ENV = "ATTNWH_RANK_WAIT_SECONDS"
DEFAULT_WAIT_SECONDS = 600.0  # how long a rank > 0 waits for rank 0 to create the run


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None  # this process's GPU on its node, when the launcher says
    source: str = "a single process"

    def takes(self, part_id: int) -> bool:
        return part_id % self.world_size == self.rank

    @property
    def creates_runs(self) -> bool:
        return self.rank == 0


def detect_rank(rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] | None = None) -> Rank:
    """This process's rank, from the options if given, else from the launcher's environment."""
    env = os.environ if env is None else env
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise UsageError("--rank and --world-size go together")
        return _checked(rank, world_size, None, "--rank / --world-size")
    if "RANK" in env and "WORLD_SIZE" in env:
        return _checked(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _optional_int(env, "LOCAL_RANK"), "RANK / WORLD_SIZE (torchrun, accelerate)")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        return _checked(_array_index(env), _int(env, "SLURM_ARRAY_TASK_COUNT"), None, "a SLURM array")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _checked(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _optional_int(env, "SLURM_LOCALID"), "SLURM_PROCID / SLURM_NTASKS")
    return Rank()


def _array_index(env: Mapping[str, str]) -> int:
    """This task's index among a SLURM array's tasks (``MIN``, ``MIN + STEP``, ... ``MAX``)."""
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    first = _optional_int(env, "SLURM_ARRAY_TASK_MIN")
    first = 0 if first is None else first
    step = _optional_int(env, "SLURM_ARRAY_TASK_STEP")
    step = 1 if step is None else step
    last = _optional_int(env, "SLURM_ARRAY_TASK_MAX")
    if step < 1:
        raise UsageError(f"$SLURM_ARRAY_TASK_STEP must be at least 1, got {step}")
    if last is not None and count >= 1 and (last < first or (last - first) % step or (last - first) // step + 1 != count):
        raise UsageError(
            f"the SLURM array of {count} task(s) from {first} to {last} (step {step}) is not an evenly stepped range, "
            f"so a task cannot know its index; give --rank and --world-size (or submit an array like --array=0-{count - 1})"
        )
    if (task - first) % step:
        raise UsageError(f"SLURM array task {task} is not one of {first}, {first + step}, {first + 2 * step}, ... (SLURM_ARRAY_TASK_MIN {first}, step {step})")
    return (task - first) // step


def writer_of(rank: Rank) -> dict[str, int]:
    """What a commit record says of the rank that wrote it."""
    return {"rank": rank.rank, "world_size": rank.world_size}


def wait_seconds(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    text = env.get(WAIT_ENV)
    if not text:
        return DEFAULT_WAIT_SECONDS
    try:
        return float(text)
    except ValueError as exc:
        raise UsageError(f"{WAIT_ENV} must be a number of seconds, got {text!r}") from exc


def _checked(rank: int, world_size: int, local_rank: int | None, source: str) -> Rank:
    if world_size < 1:
        raise UsageError(f"world size must be at least 1, got {world_size} (from {source})")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in 0..{world_size - 1} (from {source})")
    return Rank(rank, world_size, local_rank, source)


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise UsageError(f"${name} must be an integer, got {env[name]!r}") from exc


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    return _int(env, name) if env.get(name, "") != "" else None


def processes_on_this_machine(env: Mapping[str, str]) -> int:
    """How many processes of a launch share this machine (1 when no launcher says): torchrun's ``LOCAL_WORLD_SIZE``,
    SLURM's tasks per node."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE"):
        leading = env.get(name, "").split("(")[0].split(",")[0].strip()  # SLURM writes "4" or "4(x2),2"
        if leading.isdigit() and int(leading) > 0:
            return int(leading)
    return 1
