"""Experiments: a collection of related jobs, each with its MLflow experiment."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from brinell.mlproject import shown

from ..store.db import Database
from ..store.identity import Groups
from ..store.models import utcnow
from ..store.repositories import Experiments, Jobs
from ..tracking import Tracking
from . import names
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from .identity import DEFAULT_GROUP, AuditFn, Principal, may_act_on, may_see
from .models import Experiment
from .paging import PageTokens, page_size


def check_fields(description: str | None, labels: dict[str, str] | None) -> None:
    problems = names.text_problems(
        description or "", "description", names.MAX_DESCRIPTION_CHARS, field="description"
    )
    problems += names.label_problems(labels or {}, field="labels")
    if problems:
        raise InvalidArgument.of(problems)


class ExperimentManager:
    def __init__(
        self, db: Database, tracking: Tracking, tokens: PageTokens, audit: AuditFn
    ) -> None:
        self.audit = audit
        self.db = db
        self.tracking = tracking
        self.tokens = tokens

    @staticmethod
    def _group(group: str, who: Principal) -> str:
        """The group a new experiment of ``who`` goes to."""
        if group:
            gid = names.group_id(group, field="experiment.group")
            may_see(who, gid, "the group")
            return gid
        if who.is_admin:
            return DEFAULT_GROUP
        if len(who.groups) == 1:
            return next(iter(who.groups))
        if not who.groups:
            raise FailedPrecondition(
                f"{who.name} is in no group, so it can create no experiment: an admin adds it "
                "to one (`brinell group add GROUP USER`)"
            )
        raise InvalidArgument(
            f"{who.name} is in several groups: name the experiment's group "
            f"({', '.join(sorted(who.groups)[:10])})",
            field="experiment.group",
        )

    async def create(
        self,
        exp_id: str,
        description: str,
        labels: dict[str, str],
        who: Principal,
        group: str = "",
    ) -> Experiment:
        exp_id = (
            names.check_id(exp_id, "experiment", field="experiment_id")
            if exp_id
            else names.new_id("exp")
        )
        check_fields(description, labels)
        gid = self._group(group, who)

        def check(s: Session) -> bool:
            if not Groups.existing(s, [gid]):
                raise NotFound(f"group {shown(gid)} not found")
            return Experiments.exists(s, exp_id)

        if await self.db.run(check):
            raise AlreadyExists(f"experiment {exp_id!r} already exists")
        mlflow_id = await self.tracking.create_experiment(exp_id)
        now = utcnow()
        exp = Experiment(exp_id, description, labels, mlflow_id, now, now, who.name, gid)
        try:
            await self.db.run(lambda s: Experiments.add(s, exp))
        except IntegrityError:
            raise AlreadyExists(f"experiment {exp_id!r} already exists") from None
        return exp

    async def get(self, name: str, who: Principal) -> Experiment:
        exp_id = names.experiment_id(name)
        exp = await self.db.run(lambda s: Experiments.get(s, exp_id))
        if exp is None:
            raise NotFound(f"experiment {exp_id!r} not found")
        may_see(who, exp.group, f"experiments/{exp_id}")
        return exp

    async def page(
        self, size: int, token: str, filter_text: str, who: Principal
    ) -> tuple[list[Experiment], str]:
        from .filters import labels_filter

        labels = labels_filter(filter_text)
        query = "experiments:" + filter_text.strip()
        after = self.tokens.decode(query, token) or 0
        if not isinstance(after, int):
            raise InvalidArgument("page_token is invalid", field="page_token")
        n = page_size(size)
        rows = await self.db.run(
            lambda s: Experiments.page(s, after, n + 1, labels, who.visible_groups)
        )
        nxt = self.tokens.encode(query, rows[n - 1][0]) if len(rows) > n else ""
        return [e for _, e in rows[:n]], nxt

    async def update(
        self, name: str, description: str | None, labels: dict[str, str] | None, who: Principal
    ) -> Experiment:
        exp_id = names.experiment_id(name)
        may_act_on(who, (await self.get(name, who)).creator, f"experiments/{exp_id}")
        check_fields(description, labels)
        exp = await self.db.run(lambda s: Experiments.update(s, exp_id, description, labels))
        if exp is None:
            raise NotFound(f"experiment {exp_id!r} not found")
        return exp

    async def delete(self, name: str, who: Principal) -> None:
        exp_id = names.experiment_id(name)
        may_act_on(who, (await self.get(name, who)).creator, f"experiments/{exp_id}")

        def apply(s: Session) -> None:
            if not Experiments.exists(s, exp_id):
                raise NotFound(f"experiment {exp_id!r} not found")
            count = Jobs.count_for_experiment(s, exp_id)
            if count:
                raise FailedPrecondition(
                    f"experiment {exp_id!r} has {count} jobs; results are kept, so it cannot "
                    "be deleted"
                )
            Experiments.delete(s, exp_id)

        await self.db.run(apply)
        await self.audit(who, "experiment.delete", f"experiments/{exp_id}", "")
