"""The robustness experiment: train once, attack the model under defenses, register it.

1. A `train` job trains a classifier on scikit-learn's digits and logs it as an MLflow model.
2. One `attack` job per (attack, defense), submitted at the same time, depends on the train
   job: it stays PENDING until training succeeds, then loads `runs:/{deps.train.run_id}/model`
   (the control plane fills in the train job's MLflow run), applies the defense, attacks with
   each ε, and logs clean and robust accuracy per ε to MLflow. Had training failed, every
   attack job would have failed with it, saying why.
3. The trained model is registered (`digits-classifier`) and aliased `champion`.

Jobs are chained by the control plane (`depends_on`): the client submits everything at once
and only waits for the results. Seeds are fixed and recorded as job parameters, so submitting
a job again gives the same metrics. `run()` drives it all through the SDK; `make demo` and the
end-to-end test both call it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brinell import Client, Job, JobState

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PLUGIN = ROOT / "plugins" / "ml-security"
MODEL = "digits-classifier"
EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
ATTACKS = ("fgsm", "pgd")
DEFENSES = ("none", "feature_squeezing", "spatial_smoothing", "adversarial_training")
# Defense settings that suit 8x8 digits: at 4 bits, squeezing barely changes the inputs.
DEFENSE_PARAMS = {"feature_squeezing": "bit_depth=2"}
RESULT = re.compile(
    r"result attack=(?P<attack>\S+) defense=(?P<defense>\S+) eps=(?P<eps>\S+) "
    r"clean_accuracy=(?P<clean>\S+) robust_accuracy=(?P<robust>\S+)"
)


@dataclass
class Results:
    model_version: str = ""
    train_job: Job | None = None
    jobs: dict[tuple[str, str], Job] = field(default_factory=dict)
    # (attack, defense) -> {eps: robust accuracy}
    robust: dict[tuple[str, str], dict[float, float]] = field(default_factory=dict)
    clean: dict[tuple[str, str], float] = field(default_factory=dict)

    def table(self) -> str:
        eps = sorted({e for row in self.robust.values() for e in row})
        head = f"{'attack':6} {'defense':22} " + " ".join(f"eps={e:<5g}" for e in eps)
        lines = [head, "-" * len(head)]
        for (attack, defense), row in sorted(self.robust.items()):
            cells = " ".join(f"{row.get(e, float('nan')):<9.3f}" for e in eps)
            lines.append(f"{attack:6} {defense:22} {cells}")
        return "\n".join(lines)

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        attacks = sorted({a for a, _ in self.robust})
        fig, axes = plt.subplots(
            1, len(attacks), figsize=(6 * len(attacks), 4.5), sharey=True, squeeze=False
        )
        for ax, attack in zip(axes[0], attacks, strict=True):
            for (a, defense), row in sorted(self.robust.items()):
                if a == attack:
                    xs = sorted(row)
                    ax.plot(xs, [row[x] for x in xs], marker="o", label=defense)
            ax.set_title(f"{attack.upper()} on digits ({MODEL})")
            ax.set_xlabel("ε (L∞)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend()
        axes[0][0].set_ylabel("accuracy")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _check(client: Client, job: Job, what: str) -> Job:
    final = client.jobs.wait(job, timeout=900)
    if final.state != JobState.SUCCEEDED:
        tail = "\n".join(ln.text for ln in list(client.jobs.logs(final))[-20:])
        raise RuntimeError(
            f"{what} ({final.name}) ended {final.state.value}: {final.state_reason}\n{tail}"
        )
    return final


def run(
    client: Client,
    experiment: str = "robustness",
    *,
    attacks: Sequence[str] = ATTACKS,
    defenses: Sequence[str] = DEFENSES,
    eps: Sequence[float] = EPS,
    n_test: int = 300,
    seed: int = 0,
    say: Callable[[str], None] = print,
    live_logs: bool = False,
) -> Results:
    """Runs the whole experiment through a control plane; returns what the jobs measured."""
    results = Results()
    plugin, version, _ = client.plugins.push(PLUGIN)
    say(f"plugin {plugin.id} {version.version} ({len(version.tasks)} tasks)")
    client.experiments.get_or_create(experiment, description="FGSM/PGD vs defenses on digits")
    ep, _rev = client.entry_points.push(HERE, id="robustness")

    say("training the model (entry `train`), and the attack jobs that wait for it")
    train = client.jobs.submit(
        experiment, ep, {"model": "logistic_regression", "seed": seed}, entry="train", timeout=900
    )
    eps_text = ",".join(f"{e:g}" for e in eps)
    for defense in defenses:
        for attack in attacks:
            results.jobs[(attack, defense)] = client.jobs.submit(
                experiment,
                ep,
                {
                    "model_uri": "runs:/{deps.train.run_id}/model",
                    "attack": attack,
                    "eps_values": eps_text,
                    "defense": defense,
                    "seed": seed,
                    "n_test": n_test,
                    "defense_params": DEFENSE_PARAMS.get(defense, ""),
                },
                entry="attack",
                timeout=900,
                depends_on={"train": train},
            )
    say(f"submitted {len(results.jobs)} attack jobs, PENDING until training succeeds")
    if live_logs:
        for ln in client.jobs.logs(train, follow=True):
            say(f"  | {ln.text}")
    results.train_job = _check(client, train, "training")
    mv = client.models.register(
        MODEL, results.train_job, artifact_path="model", description="logistic regression on digits"
    )
    client.models.set_alias(MODEL, "champion", mv.version)
    results.model_version = mv.version
    say(f"registered models:/{MODEL}/{mv.version} as @champion; waiting for the attacks")
    for (attack, defense), job in results.jobs.items():
        final = _check(client, job, f"{attack} against {defense}")
        results.jobs[(attack, defense)] = final
        row = results.robust.setdefault((attack, defense), {})
        for ln in client.jobs.logs(final):
            m = RESULT.search(ln.text)
            if m:
                row[float(m["eps"])] = float(m["robust"])
                results.clean[(attack, defense)] = float(m["clean"])
        say(f"  {attack:4} / {defense:22} done ({final.name})")
    return results
