"""Inception backends: images/s of each, its ratio to the float32 TorchScript reference, and the
FID change it causes, all in one run.

    python -m benchmarks.inception [--images N] [--repeats R] [--batch-size B] [--dataset mnist|fashion-mnist]
                                   [--data DIR] [--int8] [--threads T] [--json OUT]

Every backend extracts the same N real test images and N real training images through gankd's
path (uint8 -> [-1, 1] -> 299x299 -> features, batches of B). Speed: images/s of extracting the N
test images, the median of R runs alternated between backends (ABBA order) after one warm-up
batch each. FID: the N test images against the N training images under each backend (each with
its own statistics of the training images, as gankd's cache keeps them), and its change relative
to the reference backend's FID; also the largest per-image relative feature error.

With ``--int8``, a candidate that gankd does not adopt is measured the same way: the ONNX
Runtime backend's graph quantised to int8 (static, per-channel weights, calibrated on 64
training images outside the measured set), in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.measure import machine_description  # noqa: E402  (sets TQDM_DISABLE before torch's import)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gankd.data import ImageData, load_dataset, to_unit_range  # noqa: E402
from gankd.metrics.features import extract  # noqa: E402
from gankd.metrics.frechet import frechet_distance, gaussian_statistics  # noqa: E402
from gankd.metrics.networks import INCEPTION_BACKENDS, INCEPTION_SHA1, InceptionFeatures, inception_onnx, tensorflow_input  # noqa: E402
from gankd.onnx_generator import session_options  # noqa: E402

FID_TARGET = 0.01  # |FID change| below 1% of the FID
SPEED_TARGET = 3.0  # images/s of the reference


def int8_backend(network: torch.jit.ScriptModule, calibration: torch.Tensor, folder: Path) -> InceptionFeatures:
    """The ONNX Runtime backend's graph quantised to int8 (static, per-channel weights, QDQ,
    calibrated on ``calibration``), behind the same preprocessing: a candidate gankd measures
    and does not adopt."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre_path, int8_path = folder / "inception-pre.onnx", folder / "inception-int8.onnx"
    inputs = tensorflow_input(calibration).numpy()  # exactly what the network sees
    quant_pre_process(str(inception_onnx(network, INCEPTION_SHA1)), str(pre_path), skip_symbolic_shape=True)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": inputs[i : i + 8]} for i in range(0, len(inputs), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(pre_path), str(int8_path), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    int8 = InceptionFeatures(backend="onnxruntime")
    int8.session = ort.InferenceSession(str(int8_path), session_options(), providers=["CPUExecutionProvider"])
    return int8


def measure(networks: dict[str, Callable[[torch.Tensor], torch.Tensor]], test: ImageData, train: ImageData, count: int,
            batch_size: int, repeats: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per network: images/s of extracting ``count`` test images (median of ``repeats``, ABBA
    order), the test and training features."""
    names = list(networks)
    rates: dict[str, list[float]] = {name: [] for name in names}
    features: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    warm = ImageData(test.images[:batch_size].clone(), None, "warm-up")
    for name in names:
        extract(warm, {"f": networks[name]}, len(warm), batch_size=batch_size)  # oneDNN / TorchScript warm-up
        features[name]["train"] = extract(train, {"f": networks[name]}, count, seed=0, batch_size=batch_size)["f"]
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            features[name]["test"] = extract(test, {"f": networks[name]}, count, seed=1, batch_size=batch_size)["f"]
            rates[name].append(count / (time.perf_counter() - start))
    return {name: {"images_per_s": statistics.median(rates[name]), "samples": [round(v, 2) for v in rates[name]], **features[name]}
            for name in names}  # fmt: skip


def summarise(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ref = results["reference"]
    fid_ref = frechet_distance(*gaussian_statistics(ref["test"]), *gaussian_statistics(ref["train"]))
    rows = []
    for name, r in results.items():
        fid = frechet_distance(*gaussian_statistics(r["test"]), *gaussian_statistics(r["train"]))
        error = max(float((np.linalg.norm(r[s] - ref[s], axis=1) / np.linalg.norm(ref[s], axis=1)).max()) for s in ("test", "train"))
        ratio = r["images_per_s"] / ref["images_per_s"]
        change = fid / fid_ref - 1
        rows.append({"backend": name, "images_per_s": r["images_per_s"], "samples": r["samples"], "ratio": ratio, "fid": fid,
                     "fid_change": change, "max_feature_error": error,
                     "met": None if name == "reference" else (ratio >= SPEED_TARGET and abs(change) < FID_TARGET)})  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]], setting: str) -> str:
    header = ("backend", "img/s", "vs reference", "FID", "FID change", "max feature error", f">= {SPEED_TARGET:.0f}x and < 1%")
    table = [(r["backend"], f"{r['images_per_s']:.2f}", f"{r['ratio']:.2f}x", f"{r['fid']:.3f}", f"{r['fid_change']:+.3%}",
              f"{r['max_feature_error']:.2e}", {True: "yes", False: "no", None: "-"}[r["met"]]) for r in rows]  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([setting, line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, table)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inception", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="real test and training images per backend (default 256)")
    parser.add_argument("--repeats", type=int, default=2, help="timed extractions of the test images per backend (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--data", help="dataset folder (default: gankd's default for the dataset)")
    parser.add_argument("--int8", action="store_true", help="also measure the ONNX Runtime graph quantised to int8 (a candidate not adopted)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("inception.json"), metavar="OUT")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_dataset(args.dataset, args.data, 32, "test")
    train = load_dataset(args.dataset, args.data, 32, "train")
    networks: dict[str, Any] = {backend: InceptionFeatures(backend=backend) for backend in INCEPTION_BACKENDS}
    with tempfile.TemporaryDirectory(prefix="gankd-onnx-") as folder:
        if args.int8:
            calibration = train.images[-64:]  # the seeded subsets of 60,000 (or 10,000) images almost surely miss these
            networks["onnxruntime int8"] = int8_backend(networks["reference"].net, to_unit_range(calibration), Path(folder))
        results = measure(networks, test, train, args.images, args.batch_size, args.repeats)
    rows = summarise(results)
    machine = machine_description(torch.device("cpu"))
    setting = (f"Inception backends, {datetime.date.today()}, {machine['description']}; {args.images} {args.dataset} test vs "
               f"{args.images} train images at 32x32, batch {args.batch_size}, median of {args.repeats} timed runs")  # fmt: skip
    print(format_rows(rows, setting))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "python -m benchmarks.inception " + " ".join(argv if argv is not None else sys.argv[1:]),
                                     "setting": setting, "machine": machine, "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
