"""Metrics: closed forms and limiting cases first, then the networks on real MNIST.

Measured figures (classifier accuracy, IS ceiling, FIDs) are reported as ``Measured`` warnings,
so they appear in the warnings summary of a plain ``pytest -q`` run.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from gankd.checkpoint import prefixed, save_checkpoint
from gankd.data import ImageData, load_dataset, to_unit_range
from gankd.errors import GankdError
import gankd.metrics.evaluate as evaluate_module
from gankd.metrics.cost import cost
from gankd.metrics.evaluate import add_arguments, evaluate, format_table, run
from gankd.metrics.features import extract
from gankd.metrics.fidelity import teacher_fidelity
from gankd.metrics.frechet import frechet_distance, gaussian_statistics, kernel_inception_distance
from gankd.metrics.inception_score import inception_score, probabilities
from gankd.metrics.inception_v3 import from_torchscript
from gankd.metrics.networks import INCEPTION_SHA1, DigitClassifier, InceptionFeatures, tf_bilinear_matrix, tf_bilinear_resize
from gankd.metrics.precision_recall import knn_radii, precision_recall
from gankd.metrics.registry import METRICS, default_metrics
from gankd.models import Architecture, Generator, multiply_adds


class Measured(UserWarning):
    """A figure the test measured, shown in pytest's warnings summary."""


def report(message: str) -> None:
    warnings.warn(message, Measured, stacklevel=2)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_equals_closed_form_for_commuting_covariances():
    # Shared eigenvectors: tr (S1 S2)^1/2 = sum sqrt(a_i b_i), so FID = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(0)
    d = 32
    q = random_rotation(d, rng)
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_equals_closed_form_for_non_commuting_2x2():
    # For a 2x2 matrix M with positive eigenvalues, tr M^1/2 = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_agrees_with_scipy_sqrtm():
    # pytorch-fid's formula, where it is well conditioned (full-rank covariances).
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 64)), rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.3 + 0.2
    (m1, s1), (m2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_with_singular_covariance():
    x = np.random.default_rng(2).normal(size=(50, 256))  # 50 samples in 256-d: rank 49
    mu, sigma = gaussian_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(GankdError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# -------------------------------------------------------------------------------------------- KID


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(1000, 64)), rng.normal(size=(1000, 64))
    same_mean, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=500)
    shifted_mean, shifted_std = kernel_inception_distance(x, y + 0.3, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.05 and shifted_mean > 20 * shifted_std
    assert shifted_mean > 50 * abs(same_mean)


def test_kid_is_unbiased_for_tiny_subsets():
    # The biased MMD estimate of one distribution is ~ 2 tr(K)/m > 0; the unbiased one averages to 0.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    mean, std = kernel_inception_distance(x, y, subsets=400, subset_size=10)
    assert abs(mean) < 4 * std / math.sqrt(400)


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_by_hand_in_one_dimension():
    # Real points 0..4, k = 3. Radius of each = distance to its 3rd nearest other point:
    # 0 -> {1, 2, 3, 4}: 3;  1 -> {0, 2, 3, 4}: distances 1, 1, 2, 3 -> 2;  2 -> 1, 1, 2, 2 -> 2;  3 -> 2;  4 -> 3.
    # Real manifold = [-3, 3] u [-1, 3] u [0, 4] u [1, 5] u [1, 7] = [-3, 7].
    real = np.array([[0.0], [1], [2], [3], [4]])
    assert knn_radii(real, 3).tolist() == [9, 4, 4, 4, 9]  # squared
    # Generated -5, -3, 6, 7.5, 100: inside [-3, 7] are -3 (on the boundary: counts) and 6 -> precision 2/5.
    # Their radii: -5 -> {2, 11, 12.5, 105}: 12.5;  -3 -> {2, 9, 10.5, 103}: 10.5;  6 -> {1.5, 9, 11, 94}: 11;
    # 7.5 -> {1.5, 10.5, 12.5, 92.5}: 12.5;  100 -> {92.5, 94, 103, 105}: 103. Their union [-17.5, 203]
    # holds every real point -> recall 1.
    generated = np.array([[-5.0], [-3], [6], [7.5], [100]])
    assert knn_radii(generated, 3).tolist() == [12.5**2, 10.5**2, 11**2, 12.5**2, 103**2]
    assert precision_recall(real, generated, k=3) == (0.4, 1.0)
    # Swapping the roles swaps the two numbers.
    assert precision_recall(generated, real, k=3) == (1.0, 0.4)


def test_precision_recall_by_hand_in_two_dimensions_k1():
    # Real (0,0), (1,0), (0,3); squared nearest-neighbour radii 1, 1, 9.
    real = np.array([[0.0, 0], [1, 0], [0, 3]])
    # Generated (0.5,0.5): 0.5 from (0,0), inside. (2,0): exactly 1 from (1,0), inside. (0,-2): 4, 5, 25 > 1, 1, 9: out.
    # (4,3): 16 from (0,3) > 9, 18 from (1,0) > 1: out. Precision 2/4.
    generated = np.array([[0.5, 0.5], [2, 0], [0, -2], [4, 3]])
    # Generated radii (squared, k=1): (0.5,0.5) -> 2.5 [to (2,0)]; (2,0) -> 2.5; (0,-2) -> 6.5 [to (0.5,0.5)]; (4,3) -> 13 [to (2,0)].
    assert knn_radii(generated, 1).tolist() == [2.5, 2.5, 6.5, 13]
    # Real (0,0) and (1,0) are 0.5 from (0.5,0.5) <= 2.5: covered. (0,3): 6.5 > 2.5, 13 > 2.5, 25 > 6.5, 16 > 13: not.
    precision, recall = precision_recall(real, generated, k=1)
    assert precision == 0.5 and recall == pytest.approx(2 / 3, abs=1e-15)


def test_precision_recall_do_not_depend_on_blocks_order_or_translation():
    rng = np.random.default_rng(5)
    real, generated = rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) * 1.3 + 0.2
    expected = precision_recall(real, generated)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert precision_recall(real, generated, block_rows=7) == expected
    assert precision_recall(real[::-1] + 100, rng.permutation(generated) + 100) == pytest.approx(expected, abs=1 / 200)
    # Translation by 100 changes float rounding only: at most one borderline vector may flip.


def test_precision_recall_rejects_what_it_cannot_measure():
    with pytest.raises(GankdError, match="more than 3 vectors"):
        precision_recall(np.zeros((3, 4)), np.zeros((10, 4)))
    with pytest.raises(GankdError, match="do not match"):
        precision_recall(np.zeros((10, 4)), np.zeros((10, 5)))


# ---------------------------------------------------------------------------------------- IS


@pytest.mark.parametrize("k", [2, 7, 10])
def test_inception_score_is_k_for_k_evenly_used_certain_classes(k):
    probs = np.tile(np.eye(k), (10, 1))  # every split holds each class once
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_is_one_for_identical_predictions():
    probs = np.tile(probabilities(np.array([[3.0, -1.0, 0.5, 2.0]])), (100, 1))
    assert inception_score(probs)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(GankdError, match="probabilities"):
        inception_score(np.full((20, 3), 0.5))
    with pytest.raises(GankdError, match="N >= splits"):
        inception_score(np.eye(3))


# ------------------------------------------------------------------------------ real MNIST


@pytest.fixture(scope="module")
def mnist_test() -> ImageData:
    return load_dataset("mnist", None, 32, split="test")


@pytest.fixture(scope="module")
def mnist_train() -> ImageData:
    return load_dataset("mnist", None, 32, split="train")


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier.pretrained()


def synthetic(kind: str, n: int, size: int = 32) -> ImageData:
    if kind == "noise":
        images = torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    else:  # a blank (black) image, MNIST's background
        images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    return ImageData(images, None, kind)


def test_digit_classifier_is_small_and_reaches_99_percent_on_mnist_test(mnist_test, classifier):
    weights = importlib.resources.files("gankd") / "weights" / "digit_classifier.safetensors"
    assert weights.stat().st_size < 2_000_000
    logits = extract(mnist_test, {"logits": classifier.logits}, len(mnist_test))["logits"]
    accuracy = float((logits.argmax(axis=1) == mnist_test.labels).mean())
    report(f"digit classifier accuracy on the 10,000 MNIST test images: {accuracy:.2%}")
    assert accuracy >= 0.99

    mean, std = inception_score(probabilities(logits))
    report(f"IS of the real MNIST test set (10,000 images, 10 splits): {mean:.3f} ± {std:.3f}")
    assert 9.0 < mean <= 10.0


def test_classifier_fid_separates_real_digits_from_noise_and_blank(mnist_test, mnist_train, classifier):
    n = len(mnist_test)
    nets = {"f": classifier.features}
    stats = {
        name: gaussian_statistics(extract(data, nets, n if name != "blank" else 100)["f"])
        for name, data in [("test", mnist_test), ("train", mnist_train), ("noise", synthetic("noise", n)), ("blank", synthetic("blank", 100))]
    }
    fid = {name: frechet_distance(*stats[name], *stats["train"]) for name in ("test", "noise", "blank")}
    report(f"classifier FID vs 10,000 MNIST train images: test {fid['test']:.3f}, noise {fid['noise']:.1f}, blank {fid['blank']:.1f}")
    assert abs(frechet_distance(*stats["test"], *stats["test"])) < 1e-9 * np.trace(stats["test"][1])
    assert min(fid["noise"], fid["blank"]) > 100 * fid["test"]


def test_classifier_accepts_other_sizes_and_colour(mnist_test, classifier):
    images = mnist_test.images[:256]
    labels = mnist_test.labels[:256]
    big = torch.nn.functional.interpolate(images.float(), size=64, mode="bilinear", antialias=True).round().to(torch.uint8)
    colour = ImageData(big.expand(-1, 3, -1, -1).contiguous(), labels, "colour-64")
    logits = extract(colour, {"logits": classifier.logits}, 256)["logits"]
    assert (logits.argmax(axis=1) == labels).mean() >= 0.97


def test_precision_recall_of_real_digits_is_high_and_a_collapsed_generator_has_no_recall(mnist_test, mnist_train, classifier):
    # The definition's limiting cases on real data, in the digit classifier's 128-d features
    # (cheap enough for 2,000 images; the Inception features behave alike, see docs/metrics.md).
    n = 2000
    nets = {"f": classifier.features}
    real, test = extract(mnist_train, nets, n, seed=0)["f"], extract(mnist_test, nets, n, seed=1)["f"]
    collapsed = extract(ImageData(mnist_test.images[:1].repeat(n, 1, 1, 1), None, "one digit"), nets, n)["f"]
    noise = extract(synthetic("noise", n), nets, n)["f"]
    pr = {name: precision_recall(real, feats) for name, feats in (("test", test), ("collapsed", collapsed), ("noise", noise))}
    report("precision/recall (k = 3) vs 2,000 MNIST train images, digit features: "
           + ", ".join(f"{name} {p:.3f}/{r:.3f}" for name, (p, r) in pr.items()))
    assert min(pr["test"]) > 0.8
    assert pr["collapsed"][0] == 1.0 and pr["collapsed"][1] < 0.01  # a real digit, repeated: realistic, covers nothing
    assert pr["noise"][0] < 0.01


# ---------------------------------------------------------------------------------- Inception


INCEPTION_N = 64  # the reference network runs at ~10 images/s on 2 CPU cores; FID at this n is biased, KID is not


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures(backend="reference")


@pytest.fixture(scope="module")
def reference_digit_features(mnist_test, mnist_train, inception) -> dict[str, np.ndarray]:
    """The reference backend's features of 64 MNIST test and 64 train images."""
    return {name: extract(data, {"f": inception}, INCEPTION_N, seed=1)["f"] for name, data in (("test", mnist_test), ("train", mnist_train))}


def test_inception_fid_and_kid_separate_real_digits_from_noise_and_blank(reference_digit_features, inception):
    n = INCEPTION_N
    feats = {
        **reference_digit_features,
        **{name: extract(data, {"f": inception}, count, seed=1)["f"]
           for name, data, count in [("noise", synthetic("noise", n // 2), n // 2), ("blank", synthetic("blank", 8), 8)]},
    }  # fmt: skip
    assert feats["test"].shape == (n, 2048)
    stats = {name: gaussian_statistics(f) for name, f in feats.items()}
    fid = {name: frechet_distance(*stats[name], *stats["train"]) for name in ("test", "noise", "blank")}
    kid = {name: kernel_inception_distance(feats[name], feats["train"], subsets=50, subset_size=n)[0] for name in ("test", "noise", "blank")}
    report(
        f"Inception FID vs {n} MNIST train images: test ({n}) {fid['test']:.1f}, noise {fid['noise']:.1f}, blank {fid['blank']:.1f}; "
        f"KID: test {kid['test']:.4f}, noise {kid['noise']:.3f}, blank {kid['blank']:.3f}"
    )
    assert abs(frechet_distance(*stats["test"], *stats["test"])) < 1e-9 * np.trace(stats["test"][1])
    assert min(fid["noise"], fid["blank"]) > 5 * fid["test"]
    assert abs(kid["test"]) < 0.02 and min(kid["noise"], kid["blank"]) > 0.2


def test_inception_default_file_is_verified_and_user_file_must_be_torchscript(inception, tmp_path):
    assert inception.id == f"inception-{INCEPTION_SHA1[:12]}"
    bogus = tmp_path / "net.pt"
    bogus.write_bytes(b"not a network")
    with pytest.raises(GankdError, match="TorchScript"):
        InceptionFeatures(bogus)


def test_tf_bilinear_matrix_by_hand_and_against_the_grid_sample_resize():
    # 2 -> 4 pixels: output j reads input j * 2/4 = 0, 0.5, 1, 1.5; the last is clamped to pixel 1.
    assert tf_bilinear_matrix(2, 4).tolist() == [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    x = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    m = tf_bilinear_matrix(32, 299).float()
    torch.testing.assert_close(m @ x @ m.T, tf_bilinear_resize(x, 299), rtol=0, atol=2e-3)  # 0..255 scale: float rounding


@pytest.mark.parametrize("backend,feature_tolerance", [("onnxruntime", 1e-5), ("float32", 1e-5), ("bf16", 0.05)])
def test_fast_inception_backends_agree_with_the_reference(backend, feature_tolerance, reference_digit_features, mnist_test, mnist_train):
    # Tolerances: float32 computes the same function (batch norm folded, other summation order):
    # per-image relative error ~3e-6. bf16 rounds weights and activations to 8 bits of mantissa:
    # ~2% per image (measured), and FID on real data within 1% (docs/metrics.md has the 2,000-image figures).
    net = InceptionFeatures(backend=backend)
    assert net.id == f"inception-{INCEPTION_SHA1[:12]}-{backend}"
    feats = {name: extract(data, {"f": net}, INCEPTION_N, seed=1)["f"] for name, data in (("test", mnist_test), ("train", mnist_train))}
    for name, ref in reference_digit_features.items():
        error = np.linalg.norm(feats[name] - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert error.max() < feature_tolerance, (name, error.max())
    fid_ref = frechet_distance(*gaussian_statistics(reference_digit_features["test"]), *gaussian_statistics(reference_digit_features["train"]))
    fid = frechet_distance(*gaussian_statistics(feats["test"]), *gaussian_statistics(feats["train"]))
    report(f"Inception FID, {INCEPTION_N} MNIST test vs train: reference {fid_ref:.3f}, {backend} {fid:.3f} ({fid / fid_ref - 1:+.3%}); "
           f"worst per-image feature error {error.max():.2e}")
    assert abs(fid / fid_ref - 1) < (1e-5 if backend in ("float32", "onnxruntime") else 0.01)
    # Grey images go through a first convolution summed over RGB: the same as replicating them.
    grey = to_unit_range(mnist_test.images[:8])
    torch.testing.assert_close(net(grey), net(grey.expand(-1, 3, -1, -1)), rtol=feature_tolerance, atol=feature_tolerance)


def test_fast_backends_refuse_other_layouts():
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()))
    with pytest.raises(GankdError, match="not the FID Inception layout.*--inception-backend reference"):
        from_torchscript(scripted)


# ----------------------------------------------------------------------- fidelity and cost


def generator(depth: int, size: int = 32, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(Architecture(depth, size, 1, 100)).eval()


def test_fidelity_is_exact_for_the_teacher_itself_and_reproducible():
    teacher, student = generator(8), generator(2, seed=1)
    same = teacher_fidelity(teacher, teacher, n=64)
    assert same["mse"] == 0 and same["psnr"] == math.inf
    first, second = teacher_fidelity(student, teacher, n=64), teacher_fidelity(student, teacher, n=64, device="cpu")
    assert first == second and first["mse"] > 0
    assert first["psnr"] == pytest.approx(10 * math.log10(4 / first["mse"]))
    # the teacher's images are kept for the next student: same numbers as with a fresh teacher
    other = generator(4, seed=2)
    fresh = generator(8)
    assert teacher_fidelity(other, teacher, n=64) == teacher_fidelity(other, fresh, n=64)
    assert teacher_fidelity(other, teacher, n=32, seed=3) == teacher_fidelity(other, fresh, n=32, seed=3)  # another key: recomputed


def test_cost_reports_the_papers_1669_to_1_compression():
    student = generator(2, size=64)  # 28,351 parameters; the paper's d=256 teacher has 47,324,929
    result = cost(student, {"arch": student.arch.to_dict()}, "cpu", teacher_parameters=47_324_929)
    assert result["parameters"] == 28_351 and result["compression"] == "1669:1"
    assert result["multiply_adds"] == multiply_adds(student, (100,))
    assert result["latency_ms_batch1"] > 0 and result["images_per_s_batch256"] > 0
    assert result["checkpoint_bytes"] is None


# ------------------------------------------------------------------------- evaluate and CLI


MNIST_META = {"kind": "mnist", "root": None, "image_size": 32, "channels": 1}


def test_evaluate_all_metrics_through_the_cli_and_reuses_cached_reference(tmp_path, monkeypatch):
    student, teacher = generator(2), generator(8, seed=1)
    arch = student.arch.to_dict()
    for path, net in (("student.safetensors", student), ("teacher.safetensors", teacher)):
        save_checkpoint(tmp_path / path, prefixed("generator", net.state_dict()), {"arch": net.arch.to_dict(), "dataset": MNIST_META})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [str(tmp_path / "student.safetensors"), "--teacher", str(tmp_path / "teacher.safetensors"), "--samples", "20",
            "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "out.json"),
            "--metrics", "cost,is,fid,kid,pr,cfid,fidelity", "--floor"]  # fmt: skip
    assert run(parser.parse_args(argv)) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    floor = results["real_test"]  # --floor: real test images in the generator's place, same count and reference
    assert list(floor["metrics"]) == ["is", "fid", "kid", "pr", "cfid"] and floor["reference"] == results["reference"]
    assert floor["metrics"]["fid"]["value"] < results["metrics"]["fid"]["value"] / 2
    m = results["metrics"]
    assert list(m) == list(METRICS)  # every metric, in the registry's order
    assert 1 <= m["is"]["mean"] <= 10 and m["fid"]["value"] > 0 and m["cfid"]["value"] > 0
    assert 0 <= m["pr"]["precision"] <= 1 and 0 <= m["pr"]["recall"] <= 1 and m["pr"]["k"] == 3
    assert m["pr"]["network"] == m["fid"]["network"] and m["pr"]["reference_images"] == 20
    assert m["kid"]["subset_size"] == 20 and m["kid"]["subsets"] == 1 and m["fidelity"]["mse"] > 0  # 20 of 20: one subset, the whole sets
    assert m["cost"]["parameters"] == results["generator"]["parameters"] and m["cost"]["checkpoint_bytes"] > 0
    assert results["reference"] == {"dataset": "mnist-train-32", "images": 20}
    assert len(list((tmp_path / "cache").glob("mnist-train-32-*_*_n20.npz"))) == 2

    # Second run: the real side comes from the cache, so only generated images are extracted.
    calls = []
    real_extract = evaluate_module.extract
    monkeypatch.setattr(evaluate_module, "extract", lambda source, *a, **k: calls.append(source) or real_extract(source, *a, **k))
    again = evaluate(student, {"arch": arch, "dataset": MNIST_META}, ["fid", "cfid"], 20, "cpu", cache_dir=tmp_path / "cache")
    assert calls == [student]
    assert again["metrics"]["fid"]["value"] == pytest.approx(m["fid"]["value"], rel=1e-6)
    assert "FID, Inception pool3" in format_table(again)


def test_reference_statistics_are_cached_per_inception_backend(tmp_path, monkeypatch):
    student = generator(2)
    meta = {"arch": student.arch.to_dict(), "dataset": MNIST_META}
    sources = []
    real_extract = evaluate_module.extract
    monkeypatch.setattr(evaluate_module, "extract", lambda source, *a, **k: sources.append(source) or real_extract(source, *a, **k))
    fids = {}
    for backend in ("bf16", "float32", "bf16"):
        sources.clear()
        result = evaluate(student, meta, ["fid"], 20, "cpu", cache_dir=tmp_path, inception_backend=backend)
        fids.setdefault(backend, []).append(result["metrics"]["fid"]["value"])
        assert result["metrics"]["fid"]["network"] == f"inception-{INCEPTION_SHA1[:12]}-{backend}"
        assert len(sources) == (1 if len(fids["bf16"]) == 2 else 2)  # the real side is extracted once per backend
    assert sorted(path.name.split("_", 1)[1] for path in tmp_path.glob("*.npz")) == [
        f"inception-{INCEPTION_SHA1[:12]}-bf16_n20.npz", f"inception-{INCEPTION_SHA1[:12]}-float32_n20.npz"]
    assert fids["bf16"][0] == fids["bf16"][1]


def test_registry_drives_defaults_table_and_report_columns():
    assert default_metrics(digits=True, has_teacher=False) == ["is", "cfid", "cost"]
    assert default_metrics(digits=False, has_teacher=True) == ["fid", "kid", "pr", "fidelity", "cost"]
    from gankd.metrics.registry import METRIC_OF, QUALITY  # what a sweep report compares

    columns = {name: (c.label, c.higher_is_better) for name, c in QUALITY.items()}
    assert columns["precision"] == ("precision", True) and columns["recall"] == ("recall", True)
    assert columns["fid"] == ("FID", False) and columns["is"] == ("IS", True) and METRIC_OF["recall"] == "pr"
    results = {"generator": {"path": None, "arch": {"depth": 4, "image_size": 32, "channels": 1}, "parameters": 10},
               "samples": 100, "seed": 0, "device": "cpu",
               "metrics": {"pr": {"precision": 0.25, "recall": 0.5, "k": 3}, "fid": {"value": 12.345}}}  # fmt: skip
    rows = [[cell.strip() for cell in line.split("  ")] for line in format_table(results).splitlines()[3:]]  # after header + blank
    assert [(row[0], row[-1]) for row in rows] == [("FID, Inception pool3", "12.35"), ("precision / recall (k = 3, Inception pool3)", "0.250 / 0.500")]


def test_evaluate_rejects_what_it_cannot_measure():
    colour = Generator(Architecture(2, 32, 3, 100)).eval()
    meta = {"arch": colour.arch.to_dict(), "dataset": {"kind": "cifar10", "root": None}}
    with pytest.raises(GankdError, match="1-channel MNIST"):
        evaluate(colour, meta, ["is"], 20, "cpu")
    with pytest.raises(GankdError, match="unknown metric"):
        evaluate(colour, meta, ["bleu"], 20, "cpu")
    with pytest.raises(GankdError, match="--teacher"):
        evaluate(colour, meta, ["fidelity"], 20, "cpu")
    with pytest.raises(GankdError, match="names no dataset"):
        evaluate(generator(2), {"arch": generator(2).arch.to_dict()}, ["cfid"], 20, "cpu")


def test_real_floor_puts_the_test_split_in_the_generators_place(mnist_teacher, tmp_path) -> None:
    """Real MNIST test images against the training reference: IS near the real ceiling, a cFID far
    below any generator's (the floor a sweep reports), and only the metrics real images can have."""
    from gankd.checkpoint import load_generator
    from gankd.metrics.evaluate import real_floor

    generator, meta = load_generator(mnist_teacher, "cpu")
    floor = real_floor(meta, ["is", "cfid", "fidelity", "cost"], 1000, "cpu", cache_dir=tmp_path)
    assert set(floor["metrics"]) == {"is", "cfid"} and floor["generator"]["real"] == "mnist-test-32"
    assert floor["metrics"]["is"]["mean"] > 9.3  # 9.835 on all 10,000 test images
    model = evaluate(generator, meta, ["cfid"], 1000, "cpu", cache_dir=tmp_path)
    assert floor["metrics"]["cfid"]["value"] < model["metrics"]["cfid"]["value"] / 10
    assert floor["reference"] == model["reference"]  # the same real reference as every generator
    with pytest.raises(GankdError, match="folder data has no test split"):
        real_floor({**meta, "dataset": {"kind": "folder", "root": str(tmp_path)}}, ["is"], 100, "cpu")
