"""Running fault schedules (``schedules``): each step's faults, injected into this process (a patched
function, a hook at the protocol's fault points) or into forked writer processes (``$ATTNWH_FAULT``:
SIGKILL at a fault point), against a warehouse on a local folder or on an S3 store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import commit, parts, storage
from attnwh.warehouse.layout import RunPaths, open_warehouse
from tests.reliability.schedules import BEFORE_RECORD, Outcomes, Schedule, Step, attempt, check, files_under, new_run, resume, schedule, write_part


@contextmanager
def patched(owner, name: str, value) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


class Runner:
    """Runs schedules in one warehouse (a local folder or a store), each in a run of its own."""

    def __init__(self, url: str, scratch: Path, object_store: bool):
        self.url = url  # the warehouse every schedule makes its run in
        self.scratch = scratch
        self.object_store = object_store
        self.scale = 5.0 if object_store else 1.0  # lease times: a store's requests take milliseconds, not microseconds
        self.references: dict[int, dict[tuple[int, str], str]] = {}

    def reference(self, n_parts: int) -> dict[tuple[int, str], str]:
        """sha256 of every file of a clean single-process run, by (part, path)."""
        if n_parts not in self.references:
            folder = self.scratch / f"reference-{n_parts}"
            shutil.rmtree(folder, ignore_errors=True)
            run = new_run(open_warehouse(str(folder), create=True), n_parts, "reference")
            for part in range(n_parts):
                parts.commit_part(run, part, write_part(part))
            self.references[n_parts] = {(record.part_id, entry["path"]): entry["sha256"] for record in parts.commit_records(run) for entry in record.files}
        return self.references[n_parts]

    def run(self, plan: Schedule) -> list[str]:
        """The problems found running ``plan`` (empty: it passed)."""
        scratch = Path(tempfile.mkdtemp(prefix=f"sched-{plan.seed}-", dir=self.scratch))
        outcomes = Outcomes()
        self.n_parts = plan.n_parts
        run = None
        try:
            with patched(tempfile, "tempdir", str(scratch)):
                run = new_run(open_warehouse(self.url, create=True), plan.n_parts, f"s{plan.seed}-{uuid.uuid4().hex[:6]}")
                created = set(files_under(run))
                for step in plan.steps:
                    try:
                        getattr(self, f"_{step.kind}")(run, step, outcomes, scratch)
                    except Exception as exc:  # noqa: BLE001
                        outcomes.problems.append(f"{step}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                resume(run, plan.n_parts, outcomes)
                outcomes.problems += check(run, plan.n_parts, created, self.reference(plan.n_parts), outcomes, scratch)
        except Exception as exc:  # noqa: BLE001
            outcomes.problems.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if run is not None:
                storage.remove_tree(run.root)
        return outcomes.problems

    # the steps

    def _kill(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        (status,) = forked(run, scratch, [lambda child: commit_in(child, step.part, scratch)], {parts.FAULT_ENV: f"{step.point}:{step.part}"})
        if status not in (0, -signal.SIGKILL):
            outcomes.problems.append(f"{step}: the writer ended with status {status}")

    def _takeover(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        fired = []

        def hook(point: str, part: int) -> None:
            if point == step.point and part == step.part and not fired:
                fired.append(point)
                commit.recover(run, lease_seconds=-1)  # another machine, whose clock says every lease expired

        told = attempt(run, step.part, outcomes, hook)
        if fired and step.point in BEFORE_RECORD and told == "won":
            outcomes.problems.append(f"{step}: the writer committed although its attempt was taken over before its record")
        if fired and step.point not in BEFORE_RECORD and told != "won":
            outcomes.problems.append(f"{step}: a takeover after the record was written undid the commit ({told})")

    def _renewal(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        lasting = step.detail[0] == "lasting"
        state = {"failing": True, "failures": 0, "renewed": False}
        original = storage.renew

        def renew(target):
            if state["failing"]:
                state["failures"] += 1
                raise OSError(5, "simulated: the store did not answer")
            original(target)
            state["renewed"] = True

        def hook(point: str, part: int) -> None:
            if point != "after_staging" or part != step.part:
                return
            if lasting:  # the writer works past half its lease time while every renewal fails
                time.sleep(0.12 * self.scale)
                return
            wait_for(lambda: state["failures"] >= 2)  # the writer works while renewals fail, then succeed again
            state["failing"] = False
            wait_for(lambda: state["renewed"])

        with environment(ATTNWH_LEASE_SECONDS=str((0.2 if lasting else 0.5) * self.scale)), patched(storage, "renew", renew):
            told = attempt(run, step.part, outcomes, hook)
        if lasting and told == "won":
            outcomes.problems.append(f"{step}: the writer committed although it could not renew its lease")
        if not lasting and told not in ("won", "lost"):
            outcomes.problems.append(f"{step}: failed renewals that then succeeded stopped the writer ({told})")

    def _lost_reply(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        if self.object_store:
            original = storage.put_exclusively

            def put_exclusively(target, content):
                if target.parent.name != "_commits":
                    return original(target, content)
                original(target, content)  # it lands, its reply is lost ...
                return original(target, content)  # ... and the client's retry is answered "exists"

            context = patched(storage, "put_exclusively", put_exclusively)
        else:

            def link(source, target):
                os.link(source, target)
                raise FileExistsError(17, "simulated: the link was made, then retried", str(target))

            context = patched(commit, "_link", link)
        with context:
            told = attempt(run, step.part, outcomes)
        if told not in ("won", "lost"):
            outcomes.problems.append(f"{step}: a lost reply ended the writer with {told}")

    def _slow(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        delay = step.detail[0]
        calls = []

        def slow(function, throttled: bool = False):
            def call(*args, **kwargs):
                time.sleep(delay)
                calls.append(function)
                if throttled and len(calls) % 3 == 0:
                    raise OSError(5, "simulated: SlowDown (503)")
                return function(*args, **kwargs)

            return call

        with (
            environment(ATTNWH_LEASE_SECONDS=str(1.0 * self.scale)),
            patched(storage, "renew", slow(storage.renew, throttled=True)),
            patched(storage, "put_exclusively", slow(storage.put_exclusively)),
            patched(storage, "upload_folder", slow(storage.upload_folder)),
            patched(storage, "sizes_under", slow(storage.sizes_under)),
        ):
            told = attempt(run, step.part, outcomes, lambda point, part: time.sleep(delay))
        if told not in ("won", "lost"):
            outcomes.problems.append(f"{step}: a slow store ended the writer with {told}")

    def _race(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        if step.detail:
            statuses = forked(run, scratch, [lambda child: commit_in(child, step.part, scratch)] * 2, {})
            if statuses != [0, 0]:
                outcomes.problems.append(f"{step}: the writers ended with {statuses}")
            return  # what each was told is checked with the others' (one winner a part)
        second: list[str] = []

        def hook(point: str, part: int) -> None:
            if point == step.point and part == step.part and not second:
                second.append("running")
                second.append(attempt(run, step.part, outcomes))  # another writer of the same part, start to end

        first = attempt(run, step.part, outcomes, hook)
        told = [first] + second[1:]
        if told.count("won") > 1:
            outcomes.problems.append(f"{step}: both writers were told they committed the part")

    def _ranks(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        world, new_world = step.detail
        n_parts = self.n_parts
        ranks = [lambda child, rank=rank: rank_in(child, rank, world, n_parts, scratch) for rank in range(world)]
        statuses = forked(run, scratch, ranks, {parts.FAULT_ENV: step.point}, only=step.part)
        if any(status not in (0, -signal.SIGKILL) for status in statuses) or any(status != 0 for rank, status in enumerate(statuses) if rank != step.part):
            outcomes.problems.append(f"{step}: ranks ended with {statuses}")
        ranks = [lambda child, rank=rank: rank_in(child, rank, new_world, n_parts, scratch) for rank in range(new_world)]
        statuses = forked(run, scratch, ranks, {})
        if any(status != 0 for status in statuses):
            outcomes.problems.append(f"{step}: ranks restarted with world size {new_world} ended with {statuses}")

    def _ignores(self, run: RunPaths, step: Step, outcomes: Outcomes, scratch: Path) -> None:
        if not self.object_store:
            return  # a hard link is exclusive: nothing to simulate on a local folder
        before = set(files_under(run))

        def put_exclusively(target, content):
            storage.put(target, content)  # the store ignores If-None-Match: a plain put
            return True

        with patched(storage, "put_exclusively", put_exclusively), environment(ATTNWH_OBJECT_CACHE=str(scratch / "a-new-machine")):
            try:
                parts.commit_part(run, step.part, write_part(step.part))
                outcomes.problems.append(f"{step}: a writer committed on a store that ignores conditional puts")
            except WarehouseError as refused:
                if "If-None-Match" not in str(refused) or "\n" in str(refused):
                    outcomes.problems.append(f"{step}: refused with {refused}")
        if set(files_under(run)) != before:
            outcomes.problems.append(f"{step}: the refused writer left {sorted(set(files_under(run)) - before)}")


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the lease's renewal thread did not renew in 10 s")
        time.sleep(0.005)


def forked(run: RunPaths, scratch: Path, bodies: list[Callable[[RunPaths], None]], env: dict[str, str], only: int | None = None) -> list[int]:
    """Run each body in a forked process at once (``env`` set in each, or only in body ``only``); their exit
    statuses (negative: the signal that ended it)."""
    pids = []
    for index, body in enumerate(bodies):
        pid = os.fork()
        if pid == 0:  # the child: a fresh client for the store, never the parent's
            code = 0
            try:
                commit.FAULT_HOOK.set(None)
                if only is None or index == only:
                    os.environ.update(env)
                body(RunPaths(storage.location(str(run.root))))
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    statuses = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        statuses.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    return statuses


def commit_in(run: RunPaths, part: int, scratch: Path) -> None:
    """A forked writer: commits ``part`` and notes what it was told (the parent reads the notes)."""
    record = parts.commit_part(run, part, write_part(part))
    note(scratch, part, record.attempt if record else None, "won" if record else "lost")


def rank_in(run: RunPaths, rank: int, world: int, n_parts: int, scratch: Path) -> None:
    """A forked rank: recovers (as a run's start does), then commits its share of what is not committed yet."""
    parts.recover(run)
    done = parts.committed_part_ids(run)
    for part in range(rank, n_parts, world):
        if part not in done:
            commit_in(run, part, scratch)


def note(scratch: Path, part: int, attempt_id: str | None, told: str) -> None:
    with open(scratch / "told.jsonl", "a") as out:
        out.write(json.dumps([part, attempt_id, told]) + "\n")


def run_many(runner: Runner, seeds: range | list[int], on_failure: Callable[[Schedule, list[str]], None] | None = None) -> tuple[int, list[tuple[Schedule, list[str]]]]:
    """Run the schedules of ``seeds``: (how many passed, the failures with their problems)."""
    passed, failures = 0, []
    for seed in seeds:
        plan = schedule(seed)
        problems = runner.run(plan)
        if problems:
            failures.append((plan, problems))
            if on_failure:
                on_failure(plan, problems)
        else:
            passed += 1
    return passed, failures


def local_runner(scratch: Path) -> Runner:
    return Runner(str(scratch / "wh"), scratch, object_store=False)


def s3_runner(scratch: Path, bucket: str) -> Runner:
    return Runner(f"s3://{bucket}/schedules-{uuid.uuid4().hex[:8]}", scratch, object_store=True)
