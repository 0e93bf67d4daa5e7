"""Models: scikit-learn and PyTorch classifiers, their ART wrappers, and MLflow save/load.

A :class:`TrainedModel` takes flattened images (see :mod:`brinell_ml.data`) and knows how to
wrap itself in the matching ART estimator, with any preprocessing defenses attached (see
:func:`brinell_ml.defenses.defend_model`), so attacks see exactly what is evaluated.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect.cache_policies import NO_CACHE

from brinell import task

from .data import Dataset, seed_everything

__all__ = [
    "TrainedModel",
    "load_model",
    "save_model",
    "train_cnn",
    "train_logistic_regression",
    "train_mlp",
    "train_model",
    "train_svc",
]

METADATA_KEY = "brinell_ml"
MODEL_KINDS = ("logistic_regression", "svc", "mlp", "cnn")


@dataclass
class TrainedModel:
    """A fitted classifier over flattened images, plus what ART needs to wrap it.

    ``kind`` is "sklearn" or "pytorch"; ``name`` is the architecture ("logistic_regression",
    "svc", "mlp", "cnn"); ``defenses`` lists preprocessing defenses as plain dicts
    (``{"name": "feature_squeezing", "bit_depth": 4}``) applied inside the ART wrapper;
    ``trained_on`` is the training data's ``Dataset.source``.
    """

    estimator: Any
    kind: str
    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    clip_values: tuple[float, float]
    image_shape: tuple[int, int]
    defenses: list[dict[str, Any]] = field(default_factory=list)
    trained_on: dict[str, Any] = field(default_factory=dict)

    def art_classifier(self) -> Any:
        """The model as an ART classifier (with gradients where the model has them)."""
        from .defenses import build_preprocessors

        preprocessors = build_preprocessors(self)
        if self.kind == "pytorch":
            return _pytorch_classifier(self.estimator, self, preprocessors)
        if self.kind != "sklearn":
            raise ValueError(f"unknown model kind {self.kind!r}")
        from sklearn.neural_network import MLPClassifier

        if isinstance(self.estimator, MLPClassifier):
            mirror = _mlp_as_torch(self.estimator)
            if mirror is not None:
                return _pytorch_classifier(mirror, self, preprocessors)
        from art.estimators.classification.scikitlearn import SklearnClassifier

        estimator = self.estimator
        if getattr(estimator, "probability", None) == "deprecated":
            # scikit-learn 1.9 deprecated SVC(probability=...) and defaults it to the (truthy)
            # string "deprecated"; ART's ScikitlearnSVC then calls the missing predict_proba.
            estimator = copy.copy(estimator)
            estimator.probability = False
        # SklearnClassifier picks ScikitlearnLogisticRegression / ScikitlearnSVC (which have
        # loss and class gradients) or the generic, black-box-only ScikitlearnClassifier.
        return SklearnClassifier(
            estimator, clip_values=self.clip_values, preprocessing_defences=preprocessors
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels for flattened inputs ``x`` (defenses applied)."""
        scores = self.art_classifier().predict(np.asarray(x, dtype=np.float32))
        return np.asarray(scores).argmax(axis=1)

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "clip_values": list(self.clip_values),
            "image_shape": list(self.image_shape),
            "defenses": self.defenses,
            "trained_on": self.trained_on,
        }


_FLOAT32_CLASSIFIER: Any = None


def _float32_classifier_class() -> Any:
    """PyTorchClassifier that casts NumPy inputs to float32 first.

    Some ART attacks (HopSkipJump, DeepFool, CW) work in float64; a float32 module rejects
    those arrays. Defined on first use so that importing this module does not import ART.
    """
    global _FLOAT32_CLASSIFIER
    if _FLOAT32_CLASSIFIER is None:
        from art.estimators.classification import PyTorchClassifier

        def f32(x: Any) -> Any:
            return x.astype(np.float32, copy=False) if isinstance(x, np.ndarray) else x

        class Float32PyTorchClassifier(PyTorchClassifier):  # type: ignore[misc]
            def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
                return super().predict(f32(x), *args, **kwargs)

            def fit(self, x: Any, *args: Any, **kwargs: Any) -> Any:
                return super().fit(f32(x), *args, **kwargs)

            def class_gradient(self, x: Any, *args: Any, **kwargs: Any) -> Any:
                return super().class_gradient(f32(x), *args, **kwargs)

            def loss_gradient(self, x: Any, *args: Any, **kwargs: Any) -> Any:
                return super().loss_gradient(f32(x), *args, **kwargs)

        _FLOAT32_CLASSIFIER = Float32PyTorchClassifier
    return _FLOAT32_CLASSIFIER


def _pytorch_classifier(
    module: Any, model: TrainedModel, preprocessors: list[Any], lr: float = 1e-3
) -> Any:
    import torch

    return _float32_classifier_class()(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=lr),
        input_shape=model.input_shape,
        nb_classes=model.n_classes,
        clip_values=model.clip_values,
        preprocessing_defences=preprocessors or None,
    )


def _mlp_as_torch(mlp: Any) -> Any:
    """A torch copy of a fitted scikit-learn MLP, so gradient attacks can run against it.

    ART's generic scikit-learn wrapper has no gradients for MLPClassifier; the copy computes
    the same logits. Returns None when torch is unavailable (black-box attacks still work).
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    activations = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "logistic": nn.Sigmoid,
        "identity": nn.Identity,
    }
    layers: list[Any] = []
    n = len(mlp.coefs_)
    for i, (weights, bias) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        w, b = np.asarray(weights, dtype=np.float32).T, np.asarray(bias, dtype=np.float32)
        if i == n - 1 and w.shape[0] == 1:
            # Binary MLPs have one logistic output z; softmax([0, z]) gives the same probabilities.
            w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([np.zeros_like(b), b])
        linear = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < n - 1:
            layers.append(activations[mlp.activation]())
    return nn.Sequential(*layers).eval()


def _sklearn_model(data: Dataset, estimator: Any, name: str) -> TrainedModel:
    estimator.fit(data.x_train, data.y_train)
    return TrainedModel(
        estimator=estimator,
        kind="sklearn",
        name=name,
        input_shape=(data.n_features,),
        n_classes=data.n_classes,
        clip_values=data.clip_values,
        image_shape=data.image_shape,
        trained_on=dict(data.source),
    )


@task(cache_policy=NO_CACHE)
def train_logistic_regression(
    data: Dataset, C: float = 1.0, seed: int = 0, max_iter: int = 1000
) -> TrainedModel:
    """Fits a multinomial scikit-learn logistic regression (L2 penalty, inverse strength ``C``,
    lbfgs) on the training set; ART wraps it with exact loss and class gradients, so every
    white-box attack applies."""
    from sklearn.linear_model import LogisticRegression

    seed_everything(seed)
    return _sklearn_model(
        data, LogisticRegression(C=C, max_iter=max_iter, random_state=seed), "logistic_regression"
    )


@task(cache_policy=NO_CACHE)
def train_svc(
    data: Dataset, C: float = 10.0, kernel: str = "rbf", gamma: str = "scale", seed: int = 0
) -> TrainedModel:
    """Fits a scikit-learn support vector classifier (``kernel`` linear, poly, rbf; ``gamma``
    "scale", "auto" or a number as text); ART computes its gradients from the support
    vectors, which is slower than for the other models."""
    from sklearn.svm import SVC

    seed_everything(seed)
    gamma_value: str | float = gamma if gamma in ("scale", "auto") else float(gamma)
    return _sklearn_model(
        data, SVC(C=C, kernel=kernel, gamma=gamma_value, random_state=seed), "svc"
    )


@task(cache_policy=NO_CACHE)
def train_mlp(
    data: Dataset,
    hidden_units: int = 64,
    hidden_layers: int = 1,
    alpha: float = 1e-4,
    max_iter: int = 300,
    seed: int = 0,
) -> TrainedModel:
    """Fits a scikit-learn multi-layer perceptron (ReLU, Adam) with ``hidden_layers`` layers of
    ``hidden_units``; attacks that need gradients run on an exact PyTorch copy of it when
    torch is installed, otherwise only black-box attacks apply."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    seed_everything(seed)
    mlp = MLPClassifier(
        hidden_layer_sizes=(hidden_units,) * hidden_layers,
        alpha=alpha,
        max_iter=max_iter,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _sklearn_model(data, mlp, "mlp")


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "train_cnn needs PyTorch, which is not installed in this job's environment "
            f"({error}); install torch or use a scikit-learn model"
        ) from error
    return torch


def cnn_module(image_shape: tuple[int, int], n_classes: int) -> Any:
    """A small CNN over flattened grayscale images (built from torch layers only, so a saved
    model loads without this plugin)."""
    torch = _require_torch()
    nn = torch.nn
    height, width = image_shape
    return nn.Sequential(
        nn.Unflatten(1, (1, height, width)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 2) * (width // 2), 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


@task(cache_policy=NO_CACHE)
def train_cnn(
    data: Dataset, epochs: int = 5, seed: int = 0, lr: float = 1e-3, batch_size: int = 32
) -> TrainedModel:
    """Trains a small convolutional network (two 3x3 conv layers, max-pool, two dense layers)
    with Adam through ART's PyTorchClassifier, on the GPU when one is visible; needs PyTorch
    and raises a clear error without it."""
    _require_torch()
    seed_everything(seed)
    module = cnn_module(data.image_shape, data.n_classes)
    model = TrainedModel(
        estimator=module,
        kind="pytorch",
        name="cnn",
        input_shape=(data.n_features,),
        n_classes=data.n_classes,
        clip_values=data.clip_values,
        image_shape=data.image_shape,
        trained_on=dict(data.source),
    )
    classifier = _pytorch_classifier(module, model, [], lr=lr)
    classifier.fit(
        data.x_train.astype(np.float32),
        data.y_train,
        batch_size=batch_size,
        nb_epochs=epochs,
        verbose=False,
    )
    module.eval()
    return model


@task(cache_policy=NO_CACHE)
def train_model(
    data: Dataset, model: str = "logistic_regression", seed: int = 0, epochs: int = 5
) -> TrainedModel:
    """Trains one of the built-in models by name ("logistic_regression", "svc", "mlp", "cnn")
    with its default hyperparameters; ``epochs`` applies to the CNN only."""
    if model == "logistic_regression":
        return train_logistic_regression.fn(data, seed=seed)
    if model == "svc":
        return train_svc.fn(data, seed=seed)
    if model == "mlp":
        return train_mlp.fn(data, seed=seed)
    if model == "cnn":
        return train_cnn.fn(data, epochs=epochs, seed=seed)
    raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODEL_KINDS)}")


def clone_untrained(model: TrainedModel, seed: int = 0) -> TrainedModel:
    """A copy of ``model``'s architecture with fresh, unfitted parameters."""
    if model.kind == "sklearn":
        from sklearn.base import clone

        estimator = clone(model.estimator)
    else:
        seed_everything(seed)
        estimator = cnn_module(model.image_shape, model.n_classes)
    return TrainedModel(
        estimator=estimator,
        kind=model.kind,
        name=model.name,
        input_shape=model.input_shape,
        n_classes=model.n_classes,
        clip_values=model.clip_values,
        image_shape=model.image_shape,
        defenses=list(model.defenses),
        trained_on=dict(model.trained_on),
    )


@task(cache_policy=NO_CACHE)
def save_model(model: TrainedModel, artifact_path: str = "model") -> str:
    """Logs the model to the active MLflow run (starting one if none is active) as an MLflow
    model (scikit-learn or PyTorch flavor) with its shapes, clip values and defenses in the
    model metadata, and returns a ``runs:/<run id>/<artifact_path>`` URI for load_model."""
    import mlflow

    run = mlflow.active_run() or mlflow.start_run()
    metadata = {METADATA_KEY: json.dumps(model.metadata())}
    if model.kind == "sklearn":
        import mlflow.sklearn

        mlflow.sklearn.log_model(
            model.estimator,
            name=artifact_path,
            metadata=metadata,
            pip_requirements=["scikit-learn", "skops"],
            serialization_format=_sklearn_format(),
        )
    elif model.kind == "pytorch":
        import mlflow.pytorch

        module = copy.deepcopy(model.estimator).cpu().eval()
        mlflow.pytorch.log_model(
            module,
            name=artifact_path,
            metadata=metadata,
            pip_requirements=["torch"],
            # The default "pt2" format traces the graph and loads back as an exported program;
            # a pickled nn.Module (torch layers only) loads back trainable and attackable.
            serialization_format="pickle",
        )
    else:
        raise ValueError(f"unknown model kind {model.kind!r}")
    return f"runs:/{run.info.run_id}/{artifact_path}"


def _sklearn_format() -> str:
    try:
        import skops.io  # noqa: F401
    except ImportError:
        return "pickle"
    return "skops"


@task(cache_policy=NO_CACHE)
def load_model(uri: str) -> TrainedModel:
    """Loads a model saved by save_model from an MLflow model URI (``runs:/<run>/model``,
    ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or ``models:/m-<id>``) and
    rebuilds it from the metadata stored with it."""
    from mlflow.models import Model

    info = (Model.load(uri).metadata or {}).get(METADATA_KEY)
    if info is None:
        raise ValueError(f"{uri} was not saved by brinell_ml.models.save_model (no metadata)")
    meta = json.loads(info) if isinstance(info, str) else info
    if meta["kind"] == "sklearn":
        import mlflow.sklearn

        estimator = mlflow.sklearn.load_model(uri)
    else:
        import mlflow.pytorch
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        estimator = mlflow.pytorch.load_model(uri, map_location=device).eval()
    return TrainedModel(
        estimator=estimator,
        kind=meta["kind"],
        name=meta["name"],
        input_shape=tuple(meta["input_shape"]),
        n_classes=int(meta["n_classes"]),
        clip_values=(float(meta["clip_values"][0]), float(meta["clip_values"][1])),
        image_shape=(int(meta["image_shape"][0]), int(meta["image_shape"][1])),
        defenses=list(meta.get("defenses", [])),
        trained_on=dict(meta.get("trained_on", {})),
    )
