"""Attacks, all from ART: evasion (FGSM, PGD, Carlini-Wagner L2, DeepFool, HopSkipJump),
membership inference, and backdoor poisoning.

Evasion attacks run on the test set of the :class:`~brinell_ml.data.Dataset` they are given
(shrink it with :func:`~brinell_ml.data.subset`) against the model's ART wrapper, defenses
included, and return an :class:`AttackResult` for :mod:`brinell_ml.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from prefect.cache_policies import NO_CACHE

from brinell import task

from .data import Dataset, seed_everything
from .models import TrainedModel

__all__ = [
    "AttackResult",
    "PoisonResult",
    "add_trigger",
    "backdoor_poison",
    "backdoor_success_rate",
    "carlini_wagner_l2",
    "deepfool",
    "fgsm",
    "hop_skip_jump",
    "membership_inference",
    "pgd",
]

EVASION_ATTACKS = ("fgsm", "pgd", "carlini_wagner_l2", "deepfool", "hop_skip_jump")


@dataclass
class AttackResult:
    """Adversarial inputs ``x_adv`` for clean inputs ``x`` with true labels ``y``."""

    x: np.ndarray
    y: np.ndarray
    x_adv: np.ndarray
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, int] | None = None


@dataclass
class PoisonResult:
    """A training set with a backdoor planted in the samples at ``indices``.

    ``trigger`` describes the perturbation without code (``{"trigger": "pattern",
    "distance": 1, "pixel_value": 1.0}``), so it can be logged and passed to
    :func:`backdoor_success_rate`.
    """

    data: Dataset
    indices: np.ndarray
    target_class: int
    trigger: dict[str, Any]


def _norm(value: str) -> float | int:
    value = str(value).strip().lower()
    if value in ("inf", "linf", "np.inf"):
        return np.inf
    if value in ("1", "l1"):
        return 1
    if value in ("2", "l2"):
        return 2
    raise ValueError(f"unknown norm {value!r}; expected inf, 1 or 2")


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def _test_inputs(data: Dataset, n_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = data.x_test.astype(np.float32), data.y_test
    if n_samples is not None and n_samples < len(x):
        x, y = x[:n_samples], y[:n_samples]
    return x, y


def _result(
    name: str,
    data: Dataset,
    x: np.ndarray,
    y: np.ndarray,
    x_adv: np.ndarray,
    params: dict[str, Any],
) -> AttackResult:
    return AttackResult(
        x=x,
        y=y,
        x_adv=np.asarray(x_adv, dtype=np.float32),
        attack=name,
        params=params,
        image_shape=data.image_shape,
    )


def pgd_examples(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    eps: float,
    eps_step: float | None = None,
    max_iter: int = 20,
    norm: str = "inf",
    num_random_init: int = 0,
) -> np.ndarray:
    """ART PGD against an ART classifier (shared by the pgd task and adversarial training)."""
    from art.attacks.evasion import ProjectedGradientDescent

    if eps <= 0:
        return x.copy()
    attack = ProjectedGradientDescent(
        classifier,
        norm=_norm(norm),
        eps=eps,
        eps_step=eps_step or eps / 4,
        max_iter=max_iter,
        num_random_init=num_random_init,
        batch_size=128,
        verbose=False,
    )
    return attack.generate(x=x, y=_one_hot(y, n_classes))


@task(cache_policy=NO_CACHE)
def fgsm(
    model: TrainedModel, data: Dataset, eps: float = 0.1, norm: str = "inf", seed: int = 0
) -> AttackResult:
    """Fast Gradient Sign Method (ART FastGradientMethod): one step of size ``eps`` (L-inf by
    default; ``norm`` 1 or 2 for the fast gradient method) along the loss gradient, untargeted,
    using the true labels; eps 0 returns the clean inputs."""
    from art.attacks.evasion import FastGradientMethod

    seed_everything(seed)
    x, y = _test_inputs(data)
    params = {"eps": eps, "norm": norm, "seed": seed}
    if eps <= 0:
        return _result("fgsm", data, x, y, x.copy(), params)
    attack = FastGradientMethod(model.art_classifier(), norm=_norm(norm), eps=eps, batch_size=128)
    x_adv = attack.generate(x=x, y=_one_hot(y, model.n_classes))
    return _result("fgsm", data, x, y, x_adv, params)


@task(cache_policy=NO_CACHE)
def pgd(
    model: TrainedModel,
    data: Dataset,
    eps: float = 0.1,
    eps_step: float | None = None,
    max_iter: int = 20,
    num_random_init: int = 0,
    norm: str = "inf",
    seed: int = 0,
) -> AttackResult:
    """Projected Gradient Descent (ART ProjectedGradientDescent): ``max_iter`` steps of size
    ``eps_step`` (default eps / 4) projected onto the ``eps`` ball, optionally from random
    starts; untargeted, true labels; eps 0 returns the clean inputs."""
    seed_everything(seed)
    x, y = _test_inputs(data)
    params = {
        "eps": eps,
        "eps_step": eps_step or eps / 4,
        "max_iter": max_iter,
        "num_random_init": num_random_init,
        "norm": norm,
        "seed": seed,
    }
    x_adv = pgd_examples(
        model.art_classifier(),
        x,
        y,
        model.n_classes,
        eps,
        eps_step,
        max_iter,
        norm,
        num_random_init,
    )
    return _result("pgd", data, x, y, x_adv, params)


@task(cache_policy=NO_CACHE)
def carlini_wagner_l2(
    model: TrainedModel,
    data: Dataset,
    confidence: float = 0.0,
    learning_rate: float = 0.05,
    binary_search_steps: int = 5,
    max_iter: int = 10,
    initial_const: float = 1.0,
    n_samples: int = 50,
    seed: int = 0,
) -> AttackResult:
    """Carlini-Wagner L2 (ART CarliniL2Method): searches for the smallest L2 perturbation that
    changes the prediction with margin ``confidence``; a minimal-perturbation attack with no
    eps budget, run on the first ``n_samples`` test inputs with CPU-friendly iteration counts."""
    from art.attacks.evasion import CarliniL2Method

    seed_everything(seed)
    x, y = _test_inputs(data, n_samples)
    attack = CarliniL2Method(
        model.art_classifier(),
        confidence=confidence,
        learning_rate=learning_rate,
        binary_search_steps=binary_search_steps,
        max_iter=max_iter,
        initial_const=initial_const,
        batch_size=64,
        verbose=False,
    )
    params = {
        "confidence": confidence,
        "learning_rate": learning_rate,
        "binary_search_steps": binary_search_steps,
        "max_iter": max_iter,
        "initial_const": initial_const,
        "n_samples": len(x),
        "seed": seed,
    }
    return _result("carlini_wagner_l2", data, x, y, attack.generate(x=x), params)


@task(cache_policy=NO_CACHE)
def deepfool(
    model: TrainedModel,
    data: Dataset,
    max_iter: int = 50,
    overshoot: float = 0.02,
    nb_grads: int = 10,
    n_samples: int = 100,
    seed: int = 0,
) -> AttackResult:
    """DeepFool (ART DeepFool): moves each input to the nearest linearized decision boundary
    of its ``nb_grads`` most likely classes, then ``overshoot`` beyond it; a minimal
    L2-perturbation attack with no eps budget, on the first ``n_samples`` test inputs."""
    from art.attacks.evasion import DeepFool

    seed_everything(seed)
    x, y = _test_inputs(data, n_samples)
    attack = DeepFool(
        model.art_classifier(),
        max_iter=max_iter,
        epsilon=overshoot,
        nb_grads=min(nb_grads, model.n_classes),
        batch_size=64,
        verbose=False,
    )
    params = {
        "max_iter": max_iter,
        "overshoot": overshoot,
        "nb_grads": nb_grads,
        "n_samples": len(x),
        "seed": seed,
    }
    return _result("deepfool", data, x, y, attack.generate(x=x), params)


@task(cache_policy=NO_CACHE)
def hop_skip_jump(
    model: TrainedModel,
    data: Dataset,
    norm: str = "2",
    max_iter: int = 10,
    max_eval: int = 200,
    init_eval: int = 20,
    init_size: int = 50,
    n_samples: int = 20,
    seed: int = 0,
) -> AttackResult:
    """HopSkipJump (ART HopSkipJump): a black-box, decision-only attack that walks along the
    decision boundary using label queries only; small iteration and query budgets keep it
    fast on CPU, on the first ``n_samples`` test inputs."""
    from art.attacks.evasion import HopSkipJump

    seed_everything(seed)
    x, y = _test_inputs(data, n_samples)
    classifier = model.art_classifier()
    attack = HopSkipJump(
        classifier,
        norm=_norm(norm),
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=init_eval,
        init_size=init_size,
        batch_size=64,
        verbose=False,
    )
    starts = _hop_skip_jump_starts(attack, classifier, x, data, init_size, seed)
    params = {
        "norm": norm,
        "max_iter": max_iter,
        "max_eval": max_eval,
        "init_eval": init_eval,
        "init_size": init_size,
        "n_samples": len(x),
        "seed": seed,
    }
    return _result("hop_skip_jump", data, x, y, attack.generate(x=x, x_adv_init=starts), params)


def _hop_skip_jump_starts(
    attack: Any, classifier: Any, x: np.ndarray, data: Dataset, init_size: int, seed: int
) -> np.ndarray:
    """Seeded starting points for ART's HopSkipJump, which otherwise draws them from an
    unseeded ``np.random.RandomState()`` (so two runs differ).

    As ART does: uniform random images until one is classified differently from the input,
    moved towards the input by ART's own binary search. When no random image is, the
    nearest training image classified differently is used (random noise often lands in one
    class, so inputs of that class would otherwise have no start).
    """
    rng = np.random.default_rng(seed)
    low, high = data.clip_values
    predicted = classifier.predict(x).argmax(axis=1)
    x_train = data.x_train.astype(x.dtype)
    train_predicted: np.ndarray | None = None
    starts = x.copy()
    for i in range(len(x)):
        candidates = rng.uniform(low, high, size=(init_size, *x.shape[1:])).astype(x.dtype)
        hits = np.flatnonzero(classifier.predict(candidates).argmax(axis=1) != predicted[i])
        if len(hits):
            start = candidates[hits[0]]
        else:
            if train_predicted is None:
                train_predicted = classifier.predict(x_train).argmax(axis=1)
            others = np.flatnonzero(train_predicted != predicted[i])
            if not len(others):
                continue  # the model predicts one class everywhere: nothing to start from
            distances = np.linalg.norm(x_train[others] - x[i], axis=1)
            start = x_train[others[distances.argmin()]]
        starts[i] = attack._binary_search(
            current_sample=start,
            original_sample=x[i],
            target=predicted[i],
            norm=2,
            clip_min=low,
            clip_max=high,
            threshold=0.001,
        )
    return starts


@task(cache_policy=NO_CACHE)
def membership_inference(
    model: TrainedModel, data: Dataset, attack_model_type: str = "rf", seed: int = 0
) -> dict[str, float]:
    """Black-box membership inference (ART MembershipInferenceBlackBox on the model's output
    probabilities): the attack model (``rf``, ``gb``, ``nn``...) trains on half of a balanced
    set of training members and test non-members and is scored on the other half; returns
    accuracy, precision, recall (members are positive) and advantage = accuracy - 0.5."""
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    n = min(len(data.x_train), len(data.x_test))
    members = rng.permutation(len(data.x_train))[:n]
    non_members = rng.permutation(len(data.x_test))[:n]
    half = n // 2
    x_in, y_in = data.x_train[members].astype(np.float32), data.y_train[members]
    x_out, y_out = data.x_test[non_members].astype(np.float32), data.y_test[non_members]

    attack = MembershipInferenceBlackBox(
        model.art_classifier(), attack_model_type=attack_model_type
    )
    attack.fit(
        x_in[:half],
        _one_hot(y_in[:half], model.n_classes),
        x_out[:half],
        _one_hot(y_out[:half], model.n_classes),
    )
    x_eval = np.concatenate([x_in[half:], x_out[half:]])
    y_eval = np.concatenate([y_in[half:], y_out[half:]])
    truth = np.concatenate([np.ones(n - half), np.zeros(n - half)])
    guess = np.asarray(attack.infer(x_eval, _one_hot(y_eval, model.n_classes))).reshape(-1)
    guess = (guess > 0.5).astype(np.float64)

    accuracy = float((guess == truth).mean())
    predicted = float(guess.sum())
    true_positive = float(((guess == 1) & (truth == 1)).sum())
    return {
        "accuracy": accuracy,
        "precision": true_positive / predicted if predicted else 0.0,
        "recall": true_positive / float(truth.sum()),
        "advantage": accuracy - 0.5,
    }


def add_trigger(
    x: np.ndarray,
    image_shape: tuple[int, int],
    trigger: str = "pattern",
    distance: int = 1,
    pixel_value: float = 1.0,
) -> np.ndarray:
    """Stamps ART's backdoor trigger onto flattened images (ART's perturbations work on
    (N, H, W) images): ``pattern`` is a 4-pixel checkerboard, ``pixel`` a single pixel,
    ``distance`` pixels from the bottom-right corner."""
    from art.attacks.poisoning import perturbations

    images = np.asarray(x).reshape((-1, *image_shape))
    if trigger == "pattern":
        stamped = perturbations.add_pattern_bd(images, distance=distance, pixel_value=pixel_value)
    elif trigger == "pixel":
        stamped = perturbations.add_single_bd(images, distance=distance, pixel_value=pixel_value)
    else:
        raise ValueError(f"unknown trigger {trigger!r}; expected pattern or pixel")
    return stamped.reshape(np.asarray(x).shape).astype(np.asarray(x).dtype)


@task(cache_policy=NO_CACHE)
def backdoor_poison(
    data: Dataset,
    target_class: int = 0,
    poison_fraction: float = 0.1,
    trigger: str = "pattern",
    distance: int = 1,
    pixel_value: float = 1.0,
    seed: int = 0,
) -> PoisonResult:
    """Plants a backdoor (ART PoisoningAttackBackdoor): stamps a trigger (``pattern`` or
    ``pixel``, ``distance`` from the bottom-right corner) on a seeded ``poison_fraction`` of
    the training samples not of ``target_class`` and relabels them as ``target_class``; the
    test set stays clean."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    if not 0 < poison_fraction <= 1:
        raise ValueError("poison_fraction must be in (0, 1]")
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(data.y_train != target_class)
    n_poison = min(len(candidates), max(1, int(round(poison_fraction * len(data.y_train)))))
    indices = np.sort(rng.choice(candidates, size=n_poison, replace=False))

    def perturb(x: np.ndarray) -> np.ndarray:
        return add_trigger(x, data.image_shape, trigger, distance, pixel_value)

    attack = PoisoningAttackBackdoor(perturb)
    x_poison, y_poison = attack.poison(
        data.x_train[indices], y=np.full(n_poison, target_class, dtype=np.int64)
    )
    x_train, y_train = data.x_train.copy(), data.y_train.copy()
    x_train[indices], y_train[indices] = x_poison, y_poison
    trigger_spec = {"trigger": trigger, "distance": distance, "pixel_value": pixel_value}
    source = {
        **data.source,
        "backdoor": {
            **trigger_spec,
            "target_class": target_class,
            "poison_fraction": poison_fraction,
            "seed": seed,
        },
    }
    return PoisonResult(
        data=replace(data, x_train=x_train, y_train=y_train, source=source),
        indices=indices,
        target_class=target_class,
        trigger=trigger_spec,
    )


@task(cache_policy=NO_CACHE)
def backdoor_success_rate(
    model: TrainedModel,
    data: Dataset,
    target_class: int,
    trigger: str = "pattern",
    distance: int = 1,
    pixel_value: float = 1.0,
) -> float:
    """The fraction of test inputs not of ``target_class`` that the model classifies as
    ``target_class`` once the trigger is stamped on them (pass the trigger that
    backdoor_poison used; compare against a model trained on clean data)."""
    keep = data.y_test != target_class
    if not keep.any():
        return 0.0
    triggered = add_trigger(data.x_test[keep], data.image_shape, trigger, distance, pixel_value)
    return float((model.predict(triggered) == target_class).mean())
