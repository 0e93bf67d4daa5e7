"""Jobs: submission (validated against the entry point's MLproject), queries, watching."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from brinell import graph as task_graph
from brinell import images, mlproject
from brinell.mlproject import shown

from ..store.db import Database
from ..store.models import utcnow
from ..store.repositories import EntryPoints, Experiments, Jobs, Logs, Plugins
from ..tracking import Tracking
from . import chains, names
from .entry_points import spec_from_dict
from .errors import AlreadyExists, DomainError, InvalidArgument, NotFound
from .filters import job_filter
from .identity import AuditFn, Principal, may_act_on, may_see
from .models import Job, LogLine, PluginPin, QueuedJob, Resources, RetryPolicy
from .notify import Notifier
from .paging import PageTokens, page_size
from .plugins import PluginManager
from .scheduler import Scheduler
from .states import JobState

log = logging.getLogger("brinell.controlplane.jobs")

DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 100
LOG_PAGE = 500
PROJECT_CACHE_SIZE = 1024
# A parameter becomes an MLflow param of the job's run: MLflow refuses longer values.
MAX_PARAMETER_CHARS = mlproject.MAX_VALUE_CHARS
MAX_PLUGIN_VERSIONS = 64
MAX_CPUS = 4096
MAX_MEMORY_BYTES = 1 << 50
MAX_GPUS = 64
MAX_PRIORITY = 1000
MAX_RETRIES = 100


@dataclass(frozen=True)
class SubmitSpec:
    experiment: str
    entry_point: str
    digest: str = ""
    entry: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 0.0
    max_attempts: int = 0
    request_id: str = ""
    plugin_versions: dict[str, str] = field(default_factory=dict)
    # Who submits it (`users/{id}`); part of the fingerprint, so another user's request_id
    # is never answered with this user's job.
    creator: str = ""
    resources: Resources = Resources()
    # Overrides the MLproject's docker_env.image.
    image: str = ""
    priority: int = 0
    queue_timeout_s: float = 0.0
    retry: RetryPolicy = RetryPolicy()
    # alias -> `jobs/{id}` (or the bare id) of the jobs it waits on.
    depends_on: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What makes two submits with one request_id "the same request"."""
        data = {
            k: v for k, v in vars(self).items() if k not in ("request_id", "resources", "retry")
        }
        data["resources"] = self.resources.to_dict()
        data["retry"] = self.retry.to_dict()
        # Newer than some stored requests:
        for added in ("priority", "queue_timeout_s", "retry", "depends_on"):
            if not data[added]:  # left out at their default, old request ids still match
                del data[added]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Checked:
    experiment_id: str
    mlflow_experiment_id: str
    entry_point_id: str
    digest: str
    entry: str
    parameters: dict[str, str]
    plugins: tuple[PluginPin, ...]
    image: str
    depends_on: dict[str, str]


def _retry_problems(r: RetryPolicy) -> list[tuple[str, str]]:
    problems = []
    if not 0 <= r.max_retries <= MAX_RETRIES:
        problems.append(("retry.max_retries", f"max_retries must be between 0 and {MAX_RETRIES}"))
    if not 0 <= r.backoff_s <= 3600:
        problems.append(("retry.backoff", "backoff must be between 0 and 3600 s"))
    if len(r.exit_codes) > 32 or not all(1 <= c <= 255 for c in r.exit_codes):
        problems.append(("retry.exit_codes", "at most 32 exit codes, each from 1 to 255"))
    return problems


def _resource_problems(r: Resources) -> list[tuple[str, str]]:
    problems = []
    if not 0 <= r.cpus <= MAX_CPUS:  # NaN fails too
        problems.append(("resources.cpus", f"cpus must be between 0 and {MAX_CPUS}"))
    if not 0 <= r.memory_bytes <= MAX_MEMORY_BYTES:
        problems.append(("resources.memory_bytes", "memory_bytes must be between 0 and 2^50"))
    if not 0 <= r.gpus <= MAX_GPUS:
        problems.append(("resources.gpus", f"gpus must be between 0 and {MAX_GPUS}"))
    if len(r.gpu_model) > 63 or not r.gpu_model.isprintable():
        problems.append(("resources.gpu_model", "gpu_model is at most 63 printable characters"))
    if r.gpu_model and not r.gpus:
        problems.append(("resources.gpu_model", "gpu_model needs gpus of at least 1"))
    return problems


class JobManager:
    def __init__(
        self,
        db: Database,
        tracking: Tracking,
        notifier: Notifier,
        scheduler: Scheduler,
        tokens: PageTokens,
        audit: AuditFn,
    ) -> None:
        self.audit = audit
        self.db = db
        self.tracking = tracking
        self.notifier = notifier
        self.scheduler = scheduler
        self.tokens = tokens
        # Parsed MLprojects and task graphs of revisions, and the task signatures of plugin
        # versions: all immutable, so cached without invalidation.
        self._projects: dict[
            tuple[str, str], tuple[mlproject.ProjectSpec, dict[str, task_graph.Graph]]
        ] = {}
        self._tasks: dict[str, list[task_graph.TaskSignature]] = {}

    def _check_shape(self, spec: SubmitSpec) -> tuple[str, str, str, int]:
        problems: list[tuple[str, str]] = []  # (field, problem)
        exp_id = ep_id = ""
        try:
            exp_id = names.experiment_id(spec.experiment, field="experiment")
        except InvalidArgument as exc:
            problems += exc.violations
        try:
            ep_id = names.entry_point_id(spec.entry_point, field="entry_point")
        except InvalidArgument as exc:
            problems += exc.violations
        if spec.digest:
            try:
                names.check_digest(spec.digest, field="entry_point_digest")
            except InvalidArgument as exc:
                problems += exc.violations
        queue = spec.queue or "default"
        if not names.QUEUE_RE.match(queue):
            problems.append(
                ("queue", f"queue {shown(queue)} is invalid: use up to 63 of [A-Za-z0-9._-]")
            )
        problems += names.label_problems(spec.selector, field="selector")
        if len(spec.parameters) > mlproject.MAX_PARAMETERS:
            problems.append(("parameters", f"at most {mlproject.MAX_PARAMETERS} parameters"))
        if len(spec.plugin_versions) > MAX_PLUGIN_VERSIONS:
            problems.append(("plugin_versions", f"at most {MAX_PLUGIN_VERSIONS} plugins"))
        if spec.timeout_s < 0:
            problems.append(("timeout", "timeout must not be negative"))
        if spec.queue_timeout_s < 0:
            problems.append(("queue_timeout", "queue_timeout must not be negative"))
        max_attempts = spec.max_attempts or DEFAULT_MAX_ATTEMPTS
        if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            problems.append(
                ("max_attempts", f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
            )
        problems += _resource_problems(spec.resources)
        problems += _retry_problems(spec.retry)
        problems += [("depends_on", p) for p in chains.problems(spec.depends_on, spec.parameters)]
        if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
            problems.append(
                ("priority", f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
            )
        if spec.image and (problem := images.reference_problem(spec.image)):
            problems.append(("image", problem))
        if len(spec.request_id) > 128:
            problems.append(("request_id", "request_id is longer than 128 characters"))
        problems += [
            (
                "parameters",
                f"parameter {shown(k)}: the value is longer than {MAX_PARAMETER_CHARS} characters",
            )
            for k, v in spec.parameters.items()
            if len(v) > MAX_PARAMETER_CHARS
        ]
        if problems:
            raise InvalidArgument.of(problems)
        return exp_id, ep_id, queue, max_attempts

    def _check_refs(
        self, s: Session, spec: SubmitSpec, exp_id: str, ep_id: str, who: Principal
    ) -> _Checked:
        exp = Experiments.get(s, exp_id)
        if exp is None:
            raise NotFound(f"experiment {exp_id!r} not found")
        may_see(who, exp.group, f"experiments/{exp_id}")
        ep = EntryPoints.get(s, ep_id, with_latest=False)
        if ep is None:
            raise NotFound(f"entry point {ep_id!r} not found")
        digest = spec.digest or ep.latest_digest
        cached = self._projects.get((ep_id, digest))
        if cached is None:
            rev = EntryPoints.revision(s, ep_id, digest)
            if rev is None:
                raise NotFound(f"entry point {ep_id!r} has no revision {spec.digest}")
            graphs = {
                rel: task_graph.parse(text) for rel, text in rev.spec.get("graphs", {}).items()
            }
            cached = spec_from_dict(rev.project_name, rev.spec), graphs
            if len(self._projects) >= PROJECT_CACHE_SIZE:
                self._projects.pop(next(iter(self._projects)))
            self._projects[(ep_id, digest)] = cached
        project, graphs = cached
        entry = spec.entry or "main"
        try:
            params = mlproject.resolve(project, entry, spec.parameters)
        except mlproject.MLprojectError as exc:
            raise InvalidArgument(exc.problems, field="parameters") from None
        entry_spec = project.entry(entry)
        graph = graphs[entry_spec.graph] if entry_spec and entry_spec.graph else None
        # A job pins only what it uses: the entry's plugins, its graph's, those it names.
        pins = PluginManager.pins(
            s,
            spec.plugin_versions,
            entry_spec.plugins if entry_spec else (),
            self._provides_a_task_of(s, graph) if graph else None,
        )
        if graph is not None and entry_spec is not None:
            self._check_graph(s, graph, entry_spec, pins)
        image = spec.image or (entry_spec.image if entry_spec else "")
        deps = self._check_dependencies(s, spec.depends_on, who)
        return _Checked(
            exp_id, exp.mlflow_experiment_id, ep_id, digest, entry, params, pins, image, deps
        )

    @staticmethod
    def _check_dependencies(
        s: Session, depends_on: dict[str, str], who: Principal
    ) -> dict[str, str]:
        """alias -> job id; every job must exist and be visible to ``who``. (It exists before
        its dependent, so no chain can be a cycle.)"""
        out: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for alias, name in depends_on.items():
            try:
                dep_id = names.job_id(name, field=f"depends_on[{alias}]")
            except InvalidArgument as exc:
                problems += exc.violations
                continue
            try:
                JobManager._visible(s, dep_id, who)
            except DomainError:  # not found, or not theirs to see: the same answer
                problems.append((f"depends_on[{alias}]", f"job jobs/{dep_id} does not exist"))
            out[alias] = dep_id
        if problems:
            raise InvalidArgument.of(problems)
        return out

    def _signatures(self, s: Session, pin: PluginPin) -> list[task_graph.TaskSignature]:
        """The tasks of a pinned plugin version (read once per digest)."""
        if pin.digest not in self._tasks:
            pv = Plugins.version(s, pin.plugin_id, pin.version)
            self._tasks[pin.digest] = [
                task_graph.TaskSignature(
                    t["name"],
                    t["module"],
                    tuple((i["name"], i["type"], i["has_default"]) for i in t["inputs"]),
                    t["output"],
                    t.get("any_keyword", False),
                )
                for t in (pv.tasks if pv else [])
            ]
        return self._tasks[pin.digest]

    def _provides_a_task_of(
        self, s: Session, graph: task_graph.Graph
    ) -> Callable[[PluginPin], bool]:
        """Whether a plugin version has a task that one of the graph's steps names (by its
        short or its module-qualified name)."""
        wanted = {step.task for step in graph.steps.values()}
        return lambda pin: any(
            sig.name in wanted or sig.qualified_name in wanted for sig in self._signatures(s, pin)
        )

    def _check_graph(
        self,
        s: Session,
        graph: task_graph.Graph,
        entry: mlproject.EntrySpec,
        pins: tuple[PluginPin, ...],
    ) -> None:
        """The task graph against the pinned plugins' tasks: every problem at once (where
        Dioptra answers several of these with an HTTP 500)."""
        tasks = {sig.qualified_name: sig for pin in pins for sig in self._signatures(s, pin)}
        problems = task_graph.validate(graph, {p.name: p.type for p in entry.parameters}, tasks)
        if problems:
            raise InvalidArgument([f"{entry.graph}: {p}" for p in problems], field="graph")

    async def submit(self, spec: SubmitSpec, who: Principal) -> Job:
        job, created = await self._submit(spec, who)
        if created:  # not the earlier job of a repeated request_id
            await self.audit(
                who, "job.submit", f"jobs/{job.id}", f"experiments/{job.experiment_id}"
            )
        return job

    async def _submit(self, spec: SubmitSpec, who: Principal) -> tuple[Job, bool]:
        exp_id, ep_id, queue, max_attempts = self._check_shape(spec)
        fingerprint = spec.fingerprint()

        def check(s: Session) -> Job | _Checked:
            if spec.request_id:
                found = Jobs.by_request_id(s, spec.request_id)
                if found is not None:
                    return self._same_request(found, fingerprint)
            return self._check_refs(s, spec, exp_id, ep_id, who)

        job_id = names.new_job_id()
        # Why it will wait, if no connected agent can take it now (the reason is kept up to
        # date as agents come and go; an assignment clears it).
        why = self.scheduler.waiting_reason(
            QueuedJob(job_id, queue, dict(spec.selector), 0, spec.resources)
        )
        if not self.tracking.enabled:
            # No MLflow run to create between the checks and the insert: one transaction.
            # A repeated request_id is caught by its unique index (the rare, slow path).
            def check_and_add(s: Session) -> Job:
                checked = self._check_refs(s, spec, exp_id, ep_id, who)
                job = self._new_job(job_id, checked, spec, queue, max_attempts, "", why)
                Jobs.add(s, job, fingerprint)
                return job

            try:
                job = await self.db.batch(check_and_add)
            except IntegrityError:
                return await self._lost_race(spec, fingerprint, ""), False
            return await self._added(job), True

        checked = await self.db.batch(check)
        if isinstance(checked, Job):
            return checked, False
        run_id = ""
        if checked.mlflow_experiment_id:
            tags = {
                "brinell.job": f"jobs/{job_id}",
                "brinell.experiment": f"experiments/{exp_id}",
                "brinell.entry_point": f"entryPoints/{ep_id}",
                "brinell.entry_point_digest": checked.digest,
                "brinell.entry": checked.entry,
                **{
                    f"brinell.plugin.{p.plugin_id}": f"{p.version} {p.digest}"
                    for p in checked.plugins
                },
            }
            # The parameters are the run's MLflow params (its Params column, run comparison);
            # those with placeholders are logged when they are filled in.
            params = {k: v for k, v in checked.parameters.items() if not chains.refs(v)}
            run_id = await self.tracking.create_run(
                checked.mlflow_experiment_id, job_id, tags, params
            )
        job = self._new_job(job_id, checked, spec, queue, max_attempts, run_id, why)
        try:
            await self.db.batch(lambda s: Jobs.add(s, job, fingerprint))
        except IntegrityError:
            return await self._lost_race(spec, fingerprint, run_id), False
        return await self._added(job), True

    async def _added(self, job: Job) -> Job:
        """After the insert: a chained job is settled at once (its dependencies may have
        ended already, or between the checks and the insert), any other is dispatched."""
        if job.depends_on:
            settled = await self.scheduler.settle(jobs=[job.id])
            return settled[0] if settled else job
        self.scheduler.wake(everywhere=True)
        return job

    async def _lost_race(self, spec: SubmitSpec, fingerprint: str, run_id: str) -> Job:
        """Two submits with one request_id raced and the other won: answer with its job."""
        found = await self.db.run(lambda s: Jobs.by_request_id(s, spec.request_id))
        if found is None:
            raise InvalidArgument(
                "the job could not be stored; retry the submit", field="request_id"
            )
        if run_id:
            self.scheduler.spawn(self.tracking.end_run(run_id, "CANCELLED"))
        return self._same_request(found, fingerprint)

    @staticmethod
    def _new_job(
        job_id: str,
        checked: _Checked,
        spec: SubmitSpec,
        queue: str,
        max_attempts: int,
        run_id: str,
        waiting_reason: str,
    ) -> Job:
        now = utcnow()
        return Job(
            id=job_id,
            experiment_id=checked.experiment_id,
            entry_point_id=checked.entry_point_id,
            digest=checked.digest,
            entry=checked.entry,
            parameters=checked.parameters,
            queue=queue,
            selector=dict(spec.selector),
            state=JobState.PENDING if checked.depends_on else JobState.QUEUED,
            state_reason="waiting for its dependencies" if checked.depends_on else waiting_reason,
            timeout_s=spec.timeout_s,
            max_attempts=max_attempts,
            attempt=0,
            agent_id="",
            mlflow_run_id=run_id,
            exit_code=None,
            cancel_requested=False,
            version=1,
            create_time=now,
            start_time=None,
            end_time=None,
            update_time=now,
            request_id=spec.request_id,
            plugins=checked.plugins,
            creator=spec.creator,
            resources=spec.resources,
            image=checked.image,
            priority=spec.priority,
            queue_timeout_s=spec.queue_timeout_s,
            retry=spec.retry,
            depends_on=checked.depends_on,
        )

    @staticmethod
    def _same_request(found: tuple[Job, str], fingerprint: str) -> Job:
        job, stored = found
        if stored != fingerprint:
            raise AlreadyExists(
                f"request_id {job.request_id!r} was already used by jobs/{job.id} for a "
                "different request"
            )
        return job

    @staticmethod
    def _visible(s: Session, job_id: str, who: Principal) -> Job:
        """The job, if ``who`` may see it (its experiment is in one of their groups)."""
        job = Jobs.get(s, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if not who.is_admin:
            may_see(who, Experiments.group_of(s, job.experiment_id), f"jobs/{job_id}")
        return job

    async def get(self, name: str, who: Principal) -> Job:
        job_id = names.job_id(name)
        return await self.db.run(lambda s: self._visible(s, job_id, who))

    async def page(
        self, size: int, token: str, filter_text: str, who: Principal
    ) -> tuple[list[Job], str]:
        f = job_filter(filter_text)
        query = "jobs:" + " ".join(sorted(filter_text.split()))
        before = self.tokens.decode(query, token)
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)
        rows = await self.db.run(lambda s: Jobs.page(s, f, before, n + 1, who.visible_groups))
        nxt = self.tokens.encode(query, rows[n - 1][0]) if len(rows) > n else ""
        return [j for _, j in rows[:n]], nxt

    async def cancel(self, name: str, reason: str, who: Principal) -> Job:
        found = await self.get(name, who)
        may_act_on(who, found.creator, f"jobs/{found.id}")
        job = await self.scheduler.cancel(found.id, reason)
        if job is None:
            raise NotFound(f"job {found.id!r} not found")
        await self.audit(who, "job.cancel", f"jobs/{job.id}", reason[:200])
        return job

    async def watch(self, name: str, who: Principal) -> AsyncIterator[Job]:
        """The job now, then after every change; ends after a final state."""
        job_id = names.job_id(name)
        await self.get(job_id, who)
        last = -1
        while True:
            changed = self.notifier.event(job_id)
            job = await self.db.run(lambda s: Jobs.get(s, job_id))
            if job is None:
                raise NotFound(f"job {job_id!r} not found")
            if job.version != last:
                last = job.version
                yield job
            if job.state.is_final:
                return
            await changed.wait()

    async def logs(
        self, name: str, start: int, follow: bool, who: Principal, attempt: int = 0
    ) -> AsyncIterator[list[LogLine]]:
        job_id = names.job_id(name)
        if start < 0:
            raise InvalidArgument("start_offset must not be negative", field="start_offset")
        if attempt < 0:
            raise InvalidArgument("attempt must not be negative", field="attempt")
        await self.get(job_id, who)
        offset = start

        def read(s: Session) -> tuple[Job | None, list[LogLine]]:
            return Jobs.get(s, job_id), Logs.read(s, job_id, offset, LOG_PAGE, attempt)

        while True:
            changed = self.notifier.event(job_id)
            job, lines = await self.db.run(read)
            if job is None:
                raise NotFound(f"job {job_id!r} not found")
            if lines:
                offset = lines[-1].offset + 1
                yield lines
                continue
            if not follow or job.state.is_final:
                return
            await changed.wait()


__all__ = ["JobManager", "SubmitSpec"]
