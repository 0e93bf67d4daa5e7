"""Defenses, all from ART: input preprocessing (feature squeezing, spatial smoothing, JPEG
compression, Gaussian noise) and training-time defenses (Gaussian augmentation, PGD
adversarial training).

A preprocessing defense is used two ways: on the inputs of an :class:`AttackResult` (the
attacker did not know about it), or attached to the model with :func:`defend_model` as ART
preprocessing, so attacks run against the defended model (gradients pass through the
defense as the identity, ART's BPDA default).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
from art.defences.preprocessor import (
    FeatureSqueezing,
    GaussianAugmentation,
    JpegCompression,
    SpatialSmoothing,
)
from art.defences.preprocessor.preprocessor import Preprocessor
from prefect.cache_policies import NO_CACHE

from brinell import task

from .attacks import AttackResult, _one_hot, pgd_examples
from .data import Dataset, seed_everything
from .models import TrainedModel, clone_untrained, train_model

__all__ = [
    "DEFENSES",
    "adversarial_training_pgd",
    "build_preprocessors",
    "defend_model",
    "feature_squeezing",
    "gaussian_augmentation_training",
    "gaussian_noise",
    "jpeg_compression",
    "preprocess",
    "spatial_smoothing",
]

# Preprocessing defenses and their parameters' defaults.
DEFENSES: dict[str, dict[str, float]] = {
    "feature_squeezing": {"bit_depth": 4},
    "spatial_smoothing": {"window_size": 3},
    "jpeg_compression": {"quality": 50},
    "gaussian_noise": {"sigma": 0.1, "seed": 0},
}


class _Adapted(Preprocessor):  # type: ignore[misc]
    """Runs an ART defense on this plugin's flattened inputs.

    ART's SpatialSmoothing and JpegCompression need channels-last image batches
    (``image_shape`` given: viewed as (N, H, W, 1)); FeatureSqueezing returns float64, which a
    float32 PyTorch model rejects (the input dtype is kept); GaussianAugmentation draws from
    NumPy's global generator (``seed`` given: seeded for each call, then restored, so the
    defended model is a repeatable function). The gradient passes through unchanged (BPDA).
    """

    def __init__(
        self,
        inner: Preprocessor,
        image_shape: tuple[int, int] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(is_fitted=True, apply_fit=False, apply_predict=True)
        self.inner = inner
        self.image_shape = image_shape
        self.seed = seed

    def __call__(self, x: np.ndarray, y: Any = None) -> tuple[np.ndarray, Any]:
        x = np.asarray(x)
        inputs = x if self.image_shape is None else x.reshape((-1, *self.image_shape, 1))
        state = None
        if self.seed is not None:
            state = np.random.get_state()
            np.random.seed(self.seed)
        try:
            out, y = self.inner(inputs, y)
        finally:
            if state is not None:
                np.random.set_state(state)
        return np.asarray(out).reshape(x.shape).astype(x.dtype), y


def _preprocessor(
    name: str, image_shape: tuple[int, int], clip_values: tuple[float, float], **params: Any
) -> Preprocessor:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; expected one of {', '.join(DEFENSES)}")
    unknown = set(params) - set(DEFENSES[name])
    if unknown:
        raise ValueError(f"{name} takes {', '.join(DEFENSES[name])}, not {', '.join(unknown)}")
    p = {**DEFENSES[name], **params}
    if name == "feature_squeezing":
        return _Adapted(FeatureSqueezing(clip_values=clip_values, bit_depth=int(p["bit_depth"])))
    if name == "spatial_smoothing":
        return _Adapted(
            SpatialSmoothing(
                window_size=int(p["window_size"]), channels_first=False, clip_values=clip_values
            ),
            image_shape,
        )
    if name == "jpeg_compression":
        # ART's JpegCompression wants clip values (0, 1) or (0, 255) and image batches.
        return _Adapted(
            JpegCompression(
                clip_values=clip_values, quality=int(p["quality"]), channels_first=False
            ),
            image_shape,
        )
    return _Adapted(
        GaussianAugmentation(
            sigma=float(p["sigma"]),
            augmentation=False,
            clip_values=clip_values,
            apply_fit=False,
            apply_predict=True,
        ),
        seed=int(p["seed"]),
    )


def build_preprocessors(model: TrainedModel) -> list[Any]:
    """ART preprocessors for the defenses attached to ``model``, in order."""
    return [
        _preprocessor(
            spec["name"],
            model.image_shape,
            model.clip_values,
            **{k: v for k, v in spec.items() if k != "name"},
        )
        for spec in model.defenses
    ]


def preprocess(
    x: np.ndarray,
    defense: str,
    image_shape: tuple[int, int],
    clip_values: tuple[float, float] = (0.0, 1.0),
    **params: Any,
) -> np.ndarray:
    """Applies one preprocessing defense to flattened inputs ``x``."""
    if defense == "none":
        return np.asarray(x).copy()
    out, _ = _preprocessor(defense, image_shape, clip_values, **params)(
        np.asarray(x, dtype=np.float32)
    )
    return np.asarray(out, dtype=np.float32)


def _defend_inputs(result: AttackResult, defense: str, **params: Any) -> AttackResult:
    side = int(round(np.sqrt(result.x.shape[1])))
    image_shape = result.image_shape or (side, side)
    return replace(
        result,
        x=preprocess(result.x, defense, image_shape, (0.0, 1.0), **params),
        x_adv=preprocess(result.x_adv, defense, image_shape, (0.0, 1.0), **params),
        params={
            **result.params,
            "defense": defense,
            **{f"defense_{key}": value for key, value in params.items()},
        },
    )


@task(cache_policy=NO_CACHE)
def feature_squeezing(result: AttackResult, bit_depth: int = 4) -> AttackResult:
    """Feature squeezing (ART FeatureSqueezing): rounds the clean and adversarial inputs of
    ``result`` to ``bit_depth`` bits per pixel, undoing small perturbations; the attack did
    not see the defense."""
    return _defend_inputs(result, "feature_squeezing", bit_depth=bit_depth)


@task(cache_policy=NO_CACHE)
def spatial_smoothing(result: AttackResult, window_size: int = 3) -> AttackResult:
    """Spatial smoothing (ART SpatialSmoothing): a ``window_size`` median filter over the
    clean and adversarial images of ``result`` ; the attack did not
    see the defense."""
    return _defend_inputs(result, "spatial_smoothing", window_size=window_size)


@task(cache_policy=NO_CACHE)
def jpeg_compression(result: AttackResult, quality: int = 50) -> AttackResult:
    """JPEG compression (ART JpegCompression): re-encodes the clean and adversarial images of
    ``result`` as JPEG at ``quality`` ; the attack did not
    see the defense."""
    return _defend_inputs(result, "jpeg_compression", quality=quality)


@task(cache_policy=NO_CACHE)
def gaussian_noise(result: AttackResult, sigma: float = 0.1, seed: int = 0) -> AttackResult:
    """Gaussian noise (ART GaussianAugmentation without augmentation): adds seeded N(0, sigma)
    noise to the clean and adversarial inputs of ``result``, clipped to [0, 1]; the attack
    did not see the defense."""
    return _defend_inputs(result, "gaussian_noise", sigma=sigma, seed=seed)


@task(cache_policy=NO_CACHE)
def defend_model(model: TrainedModel, defense: str, **params: float) -> TrainedModel:
    """Returns a copy of ``model`` with a preprocessing defense (feature_squeezing bit_depth,
    spatial_smoothing window_size, jpeg_compression quality, gaussian_noise sigma/seed)
    attached as ART preprocessing, so predictions and attacks go through it; "none" returns
    the model unchanged."""
    if defense == "none":
        return model
    _preprocessor(defense, model.image_shape, model.clip_values, **params)  # validates
    spec: dict[str, Any] = {"name": defense, **DEFENSES[defense], **params}
    return replace(model, defenses=[*model.defenses, spec])


@task(cache_policy=NO_CACHE)
def gaussian_augmentation_training(
    data: Dataset,
    model_kind: str = "logistic_regression",
    sigma: float = 0.1,
    ratio: float = 1.0,
    seed: int = 0,
) -> TrainedModel:
    """Trains a model of ``model_kind`` on the training set plus ``ratio`` times as many
    noisy copies (ART GaussianAugmentation, N(0, sigma) noise, clipped), a cheap defense that
    smooths the decision boundary."""
    seed_everything(seed)
    augment = GaussianAugmentation(
        sigma=sigma, augmentation=True, ratio=ratio, clip_values=data.clip_values
    )
    x_train, y_train = augment(data.x_train.astype(np.float32), data.y_train)
    return train_model.fn(replace(data, x_train=x_train, y_train=y_train), model_kind, seed)


# Solver iterations (lbfgs / Adam epochs) per round of scikit-learn adversarial training: more
# per round overshoots towards the current round's fixed adversarial examples and, on the
# digits, made the refit logistic regression *less* robust than the undefended one.
SKLEARN_ITERATIONS_PER_ROUND = 2


@task(cache_policy=NO_CACHE)
def adversarial_training_pgd(
    data: Dataset,
    model: TrainedModel,
    eps: float = 0.1,
    ratio: float = 0.5,
    epochs: int = 20,
    eps_step: float | None = None,
    max_iter: int = 10,
    seed: int = 0,
) -> TrainedModel:
    """PGD adversarial training (Madry et al.) of a copy of ``model``, replacing a ``ratio`` of
    the training inputs by ART PGD examples (``eps``, ``eps_step`` default eps / 4,
    ``max_iter`` steps) made against the model being trained. A PyTorch model is fine-tuned
    for ``epochs`` by ART's AdversarialTrainer; a scikit-learn model (no incremental fit in
    ART) runs ``epochs`` rounds of attacking the current model and taking two warm-started
    solver iterations on the mixed set (models without warm start are refit each round)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    epochs, max_iter = int(epochs), int(max_iter)
    seed_everything(seed)
    if model.kind == "pytorch":
        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import AdversarialTrainer

        trained = replace(model, estimator=copy.deepcopy(model.estimator))
        classifier = trained.art_classifier()
        attack = ProjectedGradientDescent(
            classifier,
            eps=eps,
            eps_step=eps_step or eps / 4,
            max_iter=max_iter,
            batch_size=128,
            verbose=False,
        )
        trainer = AdversarialTrainer(classifier, attack, ratio=ratio)
        trainer.fit(
            data.x_train.astype(np.float32),
            _one_hot(data.y_train, model.n_classes),
            nb_epochs=epochs,
            batch_size=64,
        )
        trained.estimator.eval()
        return trained

    rng = np.random.default_rng(seed)
    x_train = data.x_train.astype(np.float32)
    n_adv = min(len(x_train), max(1, int(round(ratio * len(x_train)))))
    estimator = copy.deepcopy(model.estimator)
    params = estimator.get_params()
    warm = "warm_start" in params and "max_iter" in params
    if warm:
        estimator.set_params(warm_start=True, max_iter=SKLEARN_ITERATIONS_PER_ROUND)
    current = replace(model, estimator=estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(max(1, epochs)):
            chosen = rng.permutation(len(x_train))[:n_adv]
            x_mixed = x_train.copy()
            x_mixed[chosen] = pgd_examples(
                current.art_classifier(),
                x_train[chosen],
                data.y_train[chosen],
                model.n_classes,
                eps,
                eps_step,
                max_iter,
            )
            if not warm:
                current = replace(current, estimator=clone_untrained(model, seed).estimator)
            current.estimator.fit(x_mixed, data.y_train)
    if warm:
        current.estimator.set_params(warm_start=params["warm_start"], max_iter=params["max_iter"])
    return current
