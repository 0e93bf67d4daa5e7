"""The built-in ML-security plugin (plugins/ml-security): real ART attacks and defenses on
scikit-learn's digits, checked for their effect, plus hand-computed metrics and MLflow
round trips. Tasks are called through ``.fn`` (no Prefect run needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed")
pytest.importorskip("sklearn", reason="scikit-learn is not installed")

from brinell_ml import attacks, data, defenses, metrics, models  # noqa: E402

N_TEST = 200

# ART and scikit-learn 1.9 deprecations are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_digits.fn(test_size=0.25, seed=0)


@pytest.fixture(scope="module")
def small(digits: data.Dataset) -> data.Dataset:
    return data.subset.fn(digits, N_TEST, seed=0)


@pytest.fixture(scope="module")
def logreg(digits: data.Dataset) -> models.TrainedModel:
    return models.train_logistic_regression.fn(digits, seed=0)


def robust(model: models.TrainedModel, result: attacks.AttackResult) -> float:
    return metrics.evaluate_attack.fn(model, result)["robust_accuracy"]


# --- data --------------------------------------------------------------------------------


def test_digits_are_scaled_split_and_subset(digits: data.Dataset, small: data.Dataset) -> None:
    assert digits.image_shape == (8, 8) and digits.n_classes == 10
    assert digits.clip_values == (0.0, 1.0)
    assert digits.x_train.shape == (1347, 64) and digits.x_test.shape == (450, 64)
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    # stratified: every class in both halves, in proportion
    assert np.bincount(digits.y_test).min() >= 40
    assert small.x_test.shape == (N_TEST, 64) and small.x_train is digits.x_train
    again = data.subset.fn(data.load_digits.fn(test_size=0.25, seed=0), N_TEST, seed=0)
    np.testing.assert_array_equal(again.x_test, small.x_test)
    other = data.load_digits.fn(test_size=0.25, seed=1)
    assert not np.array_equal(other.y_test, digits.y_test)


def test_load_npz_with_and_without_a_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 6, 6)).astype(np.uint8)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "xy.npz", x=images, y=labels)
    ds = data.load_npz.fn(str(tmp_path / "xy.npz"), test_size=0.25, seed=0)
    assert ds.image_shape == (6, 6) and ds.n_classes == 4
    assert ds.x_train.shape == (30, 36) and ds.x_test.shape == (10, 36)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    np.savez(
        tmp_path / "split.npz",
        x_train=images[:30, ..., None],
        y_train=np.eye(4)[labels[:30]],
        x_test=images[30:, ..., None],
        y_test=labels[30:],
    )
    split = data.load_npz.fn(str(tmp_path / "split.npz"))
    np.testing.assert_array_equal(split.y_train, labels[:30])
    np.testing.assert_allclose(split.x_test, images[30:].reshape(10, -1) / 255.0, atol=1e-6)
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match="expected keys"):
        data.load_npz.fn(str(tmp_path / "bad.npz"))


def test_load_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for label, value in (("cat", 30), ("dog", 220)):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.new("RGB", (20, 16), (value, value, value)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = data.load_image_folder.fn(str(tmp_path), image_size=10, test_size=0.5, seed=0)
    assert ds.class_names == ["cat", "dog"] and ds.image_shape == (10, 10)
    assert ds.x_train.shape == (4, 100) and ds.x_test.shape == (4, 100)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        np.testing.assert_allclose(x.mean(axis=1), np.where(y == 0, 30, 220) / 255.0, atol=0.01)


# --- metrics on hand-made inputs ---------------------------------------------------------


@pytest.fixture()
def tiny_model() -> models.TrainedModel:
    """A fixed 2-feature linear classifier: class 1 exactly when x0 > x1."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression()
    lr.classes_ = np.array([0, 1])
    lr.coef_ = np.array([[10.0, -10.0]])
    lr.intercept_ = np.array([0.0])
    return models.TrainedModel(
        estimator=lr,
        kind="sklearn",
        name="logistic_regression",
        input_shape=(2,),
        n_classes=2,
        clip_values=(0.0, 1.0),
        image_shape=(1, 2),
    )


def test_metrics_match_hand_computed_values(tiny_model: models.TrainedModel) -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    y = np.array([1, 0, 0, 1])  # predictions 1, 0, 1, 1: the third is wrong
    x_adv = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.5], [0.1, 0.3]])  # predictions 0, 0, 1, 0
    assert metrics.accuracy.fn(tiny_model, x, y) == 0.75
    result = attacks.AttackResult(x=x, y=y, x_adv=x_adv, attack="hand", image_shape=(1, 2))
    got = metrics.evaluate_attack.fn(tiny_model, result)
    assert got["clean_accuracy"] == 0.75
    assert got["robust_accuracy"] == 0.25
    assert got["attack_success_rate"] == pytest.approx(2 / 3)  # samples 0 and 3 of 0, 1, 3
    assert got["perturbation_l0"] == pytest.approx((2 + 0 + 1 + 2) / 4)
    assert got["perturbation_l2"] == pytest.approx((math.sqrt(2) + 0 + 0.5 + math.sqrt(0.05)) / 4)
    assert got["perturbation_linf"] == pytest.approx((1 + 0 + 0.5 + 0.2) / 4)
    assert got["n_samples"] == 4


def test_l0_tolerance_and_degenerate_cases() -> None:
    x = np.zeros((2, 3))
    sizes = metrics.perturbation_sizes(x, x + np.array([[1e-12, 0.0, 0.5], [0.0, 0.0, 0.0]]))
    assert sizes["perturbation_l0"] == 0.5
    assert sizes["perturbation_linf"] == pytest.approx(0.25)
    # nothing correct to begin with: no success to report
    assert metrics.attack_metrics(np.array([1, 1]), np.array([0, 0]), np.array([1, 0])) == {
        "clean_accuracy": 0.0,
        "robust_accuracy": 0.5,
        "attack_success_rate": 0.0,
    }


# --- evasion -----------------------------------------------------------------------------


def test_fgsm_and_pgd_lower_accuracy_and_eps_zero_changes_nothing(
    logreg: models.TrainedModel, small: data.Dataset
) -> None:
    clean = metrics.accuracy.fn(logreg, small.x_test, small.y_test)
    assert clean > 0.9
    for attack in (attacks.fgsm, attacks.pgd):
        zero = attack.fn(logreg, small, eps=0.0)
        np.testing.assert_array_equal(zero.x_adv, zero.x)
        got = metrics.evaluate_attack.fn(logreg, zero)
        assert got["robust_accuracy"] == clean and got["attack_success_rate"] == 0.0
        assert got["perturbation_l0"] == 0.0
        strong = metrics.evaluate_attack.fn(logreg, attack.fn(logreg, small, eps=0.3))
        assert strong["robust_accuracy"] < clean - 0.3
        assert strong["perturbation_linf"] == pytest.approx(0.3, abs=1e-5)
        assert strong["attack_success_rate"] > 0.5
    # accuracy falls as eps grows, and PGD is at least as strong as FGSM at every eps
    previous = clean
    for eps in (0.05, 0.1, 0.2):
        fgsm_acc = robust(logreg, attacks.fgsm.fn(logreg, small, eps=eps))
        pgd_result = attacks.pgd.fn(logreg, small, eps=eps, max_iter=20)
        assert pgd_result.params["eps_step"] == eps / 4
        assert robust(logreg, pgd_result) <= fgsm_acc <= previous
        assert np.abs(pgd_result.x_adv - pgd_result.x).max() <= eps + 1e-6
        assert pgd_result.x_adv.min() >= 0.0 and pgd_result.x_adv.max() <= 1.0
        previous = fgsm_acc


@pytest.mark.parametrize("attack", ["deepfool", "carlini_wagner_l2", "hop_skip_jump"])
def test_minimal_perturbation_attacks_misclassify(
    attack: str, logreg: models.TrainedModel, small: data.Dataset
) -> None:
    result = getattr(attacks, attack).fn(logreg, small, seed=0)
    assert result.attack == attack and len(result.x) == result.params["n_samples"]
    got = metrics.evaluate_attack.fn(logreg, result)
    assert got["attack_success_rate"] > 0.5
    assert got["robust_accuracy"] < got["clean_accuracy"] - 0.4
    assert 0 < got["perturbation_l2"] < 2.0 and 0 < got["perturbation_linf"] <= 1.0
    assert got["perturbation_l0"] > 0


def test_other_sklearn_models_are_attackable(digits: data.Dataset) -> None:
    tiny = data.subset.fn(digits, 40, seed=1)
    for model in (models.train_svc.fn(digits), models.train_mlp.fn(digits, max_iter=100)):
        clean = metrics.accuracy.fn(model, tiny.x_test, tiny.y_test)
        assert clean > 0.85, model.name
        assert robust(model, attacks.fgsm.fn(model, tiny, eps=0.3)) < clean - 0.3, model.name


# --- defenses ----------------------------------------------------------------------------


def test_feature_squeezing_raises_robust_accuracy_under_fgsm(
    logreg: models.TrainedModel, small: data.Dataset
) -> None:
    eps = 0.1
    undefended = robust(logreg, attacks.fgsm.fn(logreg, small, eps=eps))
    # attached to the model: the attacker sees it (gradients pass through it, BPDA)
    squeezed = defenses.defend_model.fn(logreg, "feature_squeezing", bit_depth=2)
    assert squeezed.defenses == [{"name": "feature_squeezing", "bit_depth": 2}]
    assert logreg.defenses == []
    assert metrics.accuracy.fn(squeezed, small.x_test, small.y_test) > 0.9
    assert robust(squeezed, attacks.fgsm.fn(squeezed, small, eps=eps)) > undefended + 0.1
    # on the inputs only: the attacker did not know
    result = defenses.feature_squeezing.fn(attacks.fgsm.fn(logreg, small, eps=eps), bit_depth=2)
    assert np.isin(np.round(result.x_adv * 3, 5), [0, 1, 2, 3]).all()  # 2 bits: 4 levels
    assert robust(logreg, result) > undefended + 0.1


def test_every_preprocessing_defense_runs_on_models_and_inputs(
    logreg: models.TrainedModel, small: data.Dataset
) -> None:
    result = attacks.fgsm.fn(logreg, small, eps=0.1)
    for name, task in (
        ("spatial_smoothing", defenses.spatial_smoothing),
        ("jpeg_compression", defenses.jpeg_compression),
        ("gaussian_noise", defenses.gaussian_noise),
    ):
        defended = defenses.defend_model.fn(logreg, name)
        first = defended.predict(small.x_test)
        np.testing.assert_array_equal(first, defended.predict(small.x_test))  # repeatable
        assert (first == small.y_test).mean() > 0.6, name
        changed = task.fn(result)
        assert changed.x_adv.shape == result.x_adv.shape and changed.params["defense"] == name
        assert not np.allclose(changed.x_adv, result.x_adv), name
        assert changed.x_adv.min() >= 0.0 and changed.x_adv.max() <= 1.0
    jpeg = defenses.preprocess(small.x_test, "jpeg_compression", (8, 8), quality=10)
    assert np.abs(jpeg - small.x_test).max() > 0.05
    assert defenses.defend_model.fn(logreg, "none") is logreg
    with pytest.raises(ValueError, match="unknown defense"):
        defenses.defend_model.fn(logreg, "magic")
    with pytest.raises(ValueError, match="bit_depth"):
        defenses.defend_model.fn(logreg, "feature_squeezing", window_size=3)


def test_adversarial_training_raises_pgd_robust_accuracy(
    digits: data.Dataset, small: data.Dataset, logreg: models.TrainedModel
) -> None:
    eps = 0.1
    before = robust(logreg, attacks.pgd.fn(logreg, small, eps=eps))
    trained = defenses.adversarial_training_pgd.fn(digits, logreg, eps=eps, seed=0)
    assert trained.estimator is not logreg.estimator
    assert trained.estimator.get_params()["max_iter"] == logreg.estimator.get_params()["max_iter"]
    assert metrics.accuracy.fn(trained, small.x_test, small.y_test) > 0.9
    assert robust(trained, attacks.pgd.fn(trained, small, eps=eps)) > before + 0.05


def test_gaussian_augmentation_training(digits: data.Dataset, small: data.Dataset) -> None:
    model = defenses.gaussian_augmentation_training.fn(digits, "logistic_regression", sigma=0.1)
    assert model.name == "logistic_regression"
    assert metrics.accuracy.fn(model, small.x_test, small.y_test) > 0.9


# --- poisoning and privacy ---------------------------------------------------------------


def test_backdoor_poisoning_plants_a_working_trigger(
    digits: data.Dataset, logreg: models.TrainedModel
) -> None:
    poison = attacks.backdoor_poison.fn(digits, target_class=0, poison_fraction=0.1, seed=0)
    assert len(poison.indices) == round(0.1 * len(digits.y_train))
    assert (digits.y_train[poison.indices] != 0).all()
    assert (poison.data.y_train[poison.indices] == 0).all()
    assert json.loads(json.dumps(poison.trigger)) == poison.trigger  # plain data, no code
    untouched = np.setdiff1d(np.arange(len(digits.y_train)), poison.indices)
    np.testing.assert_array_equal(poison.data.x_train[untouched], digits.x_train[untouched])
    stamped = poison.data.x_train[poison.indices].reshape(-1, 8, 8)
    assert (stamped[:, 7, 7] == 1.0).all() and (stamped[:, 5, 7] == 1.0).all()
    np.testing.assert_array_equal(poison.data.x_test, digits.x_test)

    backdoored = models.train_logistic_regression.fn(poison.data, seed=0)
    clean_rate = attacks.backdoor_success_rate.fn(logreg, digits, 0, **poison.trigger)
    poisoned_rate = attacks.backdoor_success_rate.fn(backdoored, digits, 0, **poison.trigger)
    assert clean_rate < 0.1 and poisoned_rate > 0.8
    assert metrics.accuracy.fn(backdoored, digits.x_test, digits.y_test) > 0.9  # still stealthy


def test_membership_inference_reports_rates(
    logreg: models.TrainedModel, digits: data.Dataset
) -> None:
    got = attacks.membership_inference.fn(logreg, digits, attack_model_type="rf", seed=0)
    assert set(got) == {"accuracy", "precision", "recall", "advantage"}
    for key in ("accuracy", "precision", "recall"):
        assert 0.0 <= got[key] <= 1.0
    assert got["advantage"] == pytest.approx(got["accuracy"] - 0.5)
    assert got == attacks.membership_inference.fn(logreg, digits, attack_model_type="rf", seed=0)


# --- determinism and MLflow --------------------------------------------------------------


def test_seeded_runs_are_identical(small: data.Dataset) -> None:
    def run() -> dict[str, float]:
        ds = data.load_digits.fn(seed=3)
        model = models.train_mlp.fn(ds, seed=3, max_iter=50)
        tiny = data.subset.fn(ds, 30, seed=3)
        out = metrics.evaluate_attack.fn(
            model, attacks.pgd.fn(model, tiny, eps=0.1, num_random_init=1, seed=3)
        )
        hsj = attacks.hop_skip_jump.fn(model, tiny, n_samples=5, max_iter=2, seed=3)
        out.update({f"hsj_{k}": v for k, v in metrics.evaluate_attack.fn(model, hsj).items()})
        noisy = defenses.gaussian_noise.fn(hsj, sigma=0.2, seed=3)
        out["noise_sum"] = float(noisy.x_adv.sum())
        return out

    assert run() == run()


def test_mlflow_round_trip_and_logging(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logreg: models.TrainedModel,
    small: data.Dataset,
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("plugins", artifact_location=str(tmp_path / "artifacts"))
    defended = defenses.defend_model.fn(logreg, "feature_squeezing", bit_depth=3)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            uri = models.save_model.fn(defended)
            assert uri == f"runs:/{run.info.run_id}/model"
            result = attacks.fgsm.fn(defended, small, eps=0.1)
            got = metrics.evaluate_attack.fn(defended, result)
            metrics.log_metrics.fn(got, prefix="fgsm_", step=2)
            path = metrics.adversarial_grid.fn(result, defended, n=6, path=str(tmp_path / "g.png"))
        loaded = models.load_model.fn(uri)
        client = mlflow.tracking.MlflowClient()
        history = client.get_metric_history(run.info.run_id, "fgsm_robust_accuracy")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    finally:
        mlflow.set_tracking_uri(None)

    assert loaded.defenses == defended.defenses and loaded.image_shape == (8, 8)
    assert loaded.clip_values == (0.0, 1.0) and loaded.n_classes == 10
    assert loaded.trained_on == {"name": "digits", "test_size": 0.25, "seed": 0}
    reloaded = data.load_dataset.fn(loaded.trained_on)
    np.testing.assert_array_equal(reloaded.x_test, data.load_digits.fn().x_test)
    np.testing.assert_array_equal(loaded.predict(small.x_test), defended.predict(small.x_test))
    again = metrics.evaluate_attack.fn(loaded, attacks.fgsm.fn(loaded, small, eps=0.1))
    assert again == got
    assert [(m.step, m.value) for m in history] == [(2, got["robust_accuracy"])]
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "g.png" in artifacts


# --- PyTorch -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn(digits: data.Dataset) -> models.TrainedModel:
    try:
        import torch  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"PyTorch cannot be imported: {exc!r}")
    return models.train_cnn.fn(digits, epochs=5, seed=0)


def test_cnn_is_attacked_adversarially_trained_and_saved(
    cnn: models.TrainedModel,
    digits: data.Dataset,
    small: data.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    clean = metrics.accuracy.fn(cnn, small.x_test, small.y_test)
    assert cnn.kind == "pytorch" and clean > 0.9
    fgsm_acc = robust(cnn, attacks.fgsm.fn(cnn, small, eps=0.2))
    pgd_acc = robust(cnn, attacks.pgd.fn(cnn, small, eps=0.2))
    assert pgd_acc <= fgsm_acc < clean - 0.3
    df = metrics.evaluate_attack.fn(cnn, attacks.deepfool.fn(cnn, small, n_samples=30))
    assert df["attack_success_rate"] > 0.5 and df["perturbation_l2"] > 0

    before = robust(cnn, attacks.pgd.fn(cnn, small, eps=0.1))
    trained = defenses.adversarial_training_pgd.fn(digits, cnn, eps=0.1, epochs=3, seed=0)
    assert trained.estimator is not cnn.estimator
    assert robust(trained, attacks.pgd.fn(trained, small, eps=0.1)) > before + 0.05

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("cnn", artifact_location=str(tmp_path / "artifacts"))
    squeezed = defenses.defend_model.fn(cnn, "feature_squeezing", bit_depth=3)
    try:
        with mlflow.start_run(experiment_id=experiment):
            uri = models.save_model.fn(squeezed, "cnn")
        loaded = models.load_model.fn(uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded.kind == "pytorch" and loaded.defenses == squeezed.defenses
    np.testing.assert_array_equal(loaded.predict(small.x_test), squeezed.predict(small.x_test))


def test_cnn_training_is_seeded(digits: data.Dataset, small: data.Dataset) -> None:
    pytest.importorskip("torch", reason="PyTorch cannot be imported")
    tiny = replace(digits, x_train=digits.x_train[:300], y_train=digits.y_train[:300])
    a, b = (models.train_cnn.fn(tiny, epochs=1, seed=5) for _ in range(2))
    np.testing.assert_array_equal(
        a.art_classifier().predict(small.x_test), b.art_classifier().predict(small.x_test)
    )
