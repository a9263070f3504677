"""DeepFace model weights: where they resolve, a clear check, and random-weight files for offline use.

DeepFace (tensorflow engine) loads each model from ``$DEEPFACE_HOME/.deepface/weights/<file>`` and
downloads the file only when it is missing. No machine that tests this project reaches the internet, so
:func:`build_random_weights` builds every architecture with DeepFace's *own* builders (the download and
load helpers are patched only while building) and writes random weights in the exact Keras HDF5 layout
``model.load_weights`` reads. ``DeepFace.analyze`` / ``DeepFace.represent`` then run unpatched.

Compact form (default): each large array is a short random pattern (prime length, so neighbouring units
differ) repeated to its shape, stored gzip-chunked, which shrinks ~1.8 GB of files to a few MB; the last
layer gets a fully random bias so classes do not tie. Production points ``DEEPFACE_HOME`` at real weights.

TensorFlow/DeepFace are imported lazily, inside functions.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# model key -> (weights file name, DeepFace tf builder module exposing ``load_model()``)
MODELS: dict[str, tuple[str, str]] = {
    "age": ("age_model_weights.h5", "deepface.models.demography.tf.Age"),
    "gender": ("gender_model_weights.h5", "deepface.models.demography.tf.Gender"),
    "race": ("race_model_single_batch.h5", "deepface.models.demography.tf.Race"),
    "arcface": ("arcface_weights.h5", "deepface.models.facial_recognition.tf.ArcFace"),
}
AUDIT_MODELS: tuple[str, ...] = ("age", "gender", "race", "arcface")
HAAR_FILES = ("haarcascade_frontalface_default.xml", "haarcascade_eye.xml")
_PATTERN_LEN = 1021  # prime: a tiled pattern never lines up with a layer's channel count
_FULL_RANDOM_MAX = 1 << 16
_LAST_GAIN = 8.0  # arrays up to this many values are stored fully random


class MissingWeightsError(FileNotFoundError):
    """DeepFace model files are missing (and cannot be downloaded here)."""


def import_deepface() -> Any:
    """Import ``deepface.DeepFace`` with the settings it needs (legacy tf-keras, quiet TF logs)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow and triton (torch.compile's, imported by diffusers/peft) each bundle LLVM: loading triton
    # after TensorFlow segfaults the process, loading it first is fine. Same process as torch work: load it now.
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401
    # TensorFlow's absl writes start-up lines (CUDA stubs) to fd 2 before any log level applies: mute them,
    # unless logging is at DEBUG (--verbose)
    with _native_stderr_muted("deepface" not in sys.modules and not log.isEnabledFor(logging.DEBUG)):
        from deepface import DeepFace

    return DeepFace


@contextlib.contextmanager
def _native_stderr_muted(enabled: bool):
    """Send file descriptor 2 to /dev/null for the duration (Python-level errors still raise normally)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def deepface_home(home: str | os.PathLike | None = None) -> Path:
    """The DeepFace home: ``home``, else ``$DEEPFACE_HOME``, else the user's home (DeepFace's rule)."""
    return Path(home or os.environ.get("DEEPFACE_HOME") or Path.home()).expanduser()


def weights_dir(home: str | os.PathLike | None = None) -> Path:
    return deepface_home(home) / ".deepface" / "weights"


def weight_path(model: str, home: str | os.PathLike | None = None) -> Path:
    if model not in MODELS:
        raise ValueError(f"unknown DeepFace model {model!r}; known: {', '.join(MODELS)}")
    return weights_dir(home) / MODELS[model][0]


def missing_weights(models: Iterable[str] = AUDIT_MODELS, home: str | os.PathLike | None = None) -> list[Path]:
    return [p for m in models if not (p := weight_path(m, home)).is_file()]


def haar_dir() -> Path:
    import cv2

    return Path(cv2.__file__).parent / "data"


def check_detector(detector: str, home: str | os.PathLike | None = None) -> None:
    """The ``opencv`` detector needs the Haar cascades (opencv 4.x wheels ship them; opencv 5 does not)."""
    if detector != "opencv":
        return
    missing = [f for f in HAAR_FILES
               if not (haar_dir() / f).is_file() and not (weights_dir(home) / f).is_file()]
    if missing:
        raise MissingWeightsError(
            f"the opencv face detector needs {', '.join(missing)}; not found in {haar_dir()} nor in "
            f"{weights_dir(home)}. Install opencv-contrib-python-headless<5 (its wheels ship the Haar "
            f"cascades) or copy the files into {weights_dir(home)}."
        )


def check_weights(models: Iterable[str] = AUDIT_MODELS, home: str | os.PathLike | None = None,
                  detector: str | None = None) -> None:
    """One clear error naming every missing file and where it was looked for."""
    missing = missing_weights(models, home)
    if missing:
        raise MissingWeightsError(
            f"DeepFace weights missing in {weights_dir(home)} (DEEPFACE_HOME="
            f"{os.environ.get('DEEPFACE_HOME', '<unset>')}): {', '.join(p.name for p in missing)}. "
            "This machine cannot download them: copy the real files there, point DEEPFACE_HOME at a "
            "folder holding .deepface/weights/, or for offline tests run "
            "`python -m facelift.models.deepface_weights --home DIR` (random weights)."
        )
    if detector:
        check_detector(detector, home)


def build_architecture(model: str) -> Any:
    """The Keras model exactly as DeepFace builds it, without downloading or loading weights."""
    from unittest import mock

    import_deepface()
    from deepface.commons import weight_utils

    module = importlib.import_module(MODELS[model][1])
    with mock.patch.object(weight_utils, "download_weights_if_necessary",
                           lambda file_name, source_url=None, compress_type=None: file_name), \
            mock.patch.object(weight_utils, "load_model_weights", lambda model, weight_file: model):
        return module.load_model()


def _init_values(name: str, shape: tuple[int, ...], rng: np.random.Generator, compact: bool,
                 last: bool) -> np.ndarray:
    """Random values that keep activations finite: He-normal kernels, identity batch-norm statistics."""
    leaf = name.rsplit("/", 1)[-1].split(":")[0]
    size = int(np.prod(shape)) if shape else 1
    if leaf == "moving_mean":
        return np.zeros(shape, np.float32)
    if leaf == "moving_variance":
        return np.ones(shape, np.float32)
    if leaf == "gamma":
        return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == "alpha":
        return np.full(shape, 0.25, np.float32)
    if leaf in ("beta", "bias"):
        scale = 0.5 if last else 0.02
        return (scale * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else max(size, 1)
    std = float(np.sqrt(2.0 / max(fan_in, 1)))
    if last and len(shape) > 1:
        # The output layer: features after deep random ReLU stacks share a large common component, which
        # iid weights turn into a fixed per-class offset (one class wins for every image). Zero-mean
        # columns cancel it, and a larger scale lets the input-dependent part move the argmax.
        kernel = rng.standard_normal(shape)
        kernel -= kernel.reshape(-1, shape[-1]).mean(axis=0)
        return (_LAST_GAIN * std * kernel).astype(np.float32)
    if not compact or size <= _FULL_RANDOM_MAX:
        return (std * rng.standard_normal(shape)).astype(np.float32)
    # Exactly zero-mean: with a tiled pattern every output unit sums the same values, so any mean would
    # push all units of a layer to one sign (all dead after ReLU, the output then ignores the input).
    pattern = rng.standard_normal(_PATTERN_LEN)
    pattern = (std * (pattern - pattern.mean()) / pattern.std()).astype(np.float32)
    return np.resize(pattern, size).reshape(shape)


def _contiguous_chunks(shape: tuple[int, ...], target: int = 1 << 22) -> tuple[int, ...]:
    """Chunks that are contiguous runs of the flattened array, so a tiled pattern compresses well."""
    chunks = [1] * len(shape)
    inner = 1
    for d in range(len(shape) - 1, -1, -1):
        if inner * shape[d] <= target:
            chunks[d] = shape[d]
            inner *= shape[d]
        else:
            chunks[d] = max(1, target // inner)
            break
    return tuple(chunks)


def random_values(keras_model: Any, seed: int = 0, compact: bool = True) -> dict[str, list[np.ndarray]]:
    """Random values for every weight of every layer (legacy h5 order), keyed by layer name."""
    from tf_keras.src.saving.legacy.hdf5_format import _legacy_weights

    rng = np.random.default_rng(seed)
    with_weights = [layer for layer in keras_model.layers if _legacy_weights(layer)]
    last_layer = with_weights[-1].name if with_weights else None
    return {layer.name: [_init_values(w.name, tuple(int(d) for d in w.shape), rng, compact,
                                      last=layer.name == last_layer) for w in _legacy_weights(layer)]
            for layer in with_weights}


def calibrate_classifier(keras_model: Any, values: dict[str, list[np.ndarray]], seed: int = 0,
                         batch: int = 4) -> None:
    """Centre the output layer's bias on random inputs, so no class wins for every image.

    Random deep ReLU features share a large input-independent component that becomes a fixed per-class
    offset; subtracting each class's mean log-probability over a batch of random images removes it, so
    the arg-max (dominant race, gender, age) varies with the input as it would with a trained model.
    """
    from tf_keras.src.saving.legacy.hdf5_format import _legacy_weights

    layers = [layer for layer in keras_model.layers if layer.name in values]
    for layer in layers:
        for var, val in zip(_legacy_weights(layer), values[layer.name], strict=True):
            var.assign(val)
    last = layers[-1].name
    names = [w.name.rsplit("/", 1)[-1] for w in _legacy_weights(layers[-1])]
    if not any(n.startswith("bias") for n in names):
        return
    x = np.random.default_rng(seed).random((batch, *keras_model.input_shape[1:]), dtype=np.float32)
    probs = np.asarray(keras_model.predict(x, verbose=0), dtype=np.float64)
    bias_i = next(i for i, n in enumerate(names) if n.startswith("bias"))
    values[last][bias_i] = (values[last][bias_i] - np.log(np.maximum(probs, 1e-30)).mean(axis=0)
                            ).astype(np.float32)


def write_random_h5(keras_model: Any, path: Path, seed: int = 0, compact: bool = True,
                    calibrate: bool = False) -> int:
    """Write random weights in tf-keras' legacy HDF5 weights layout (what ``load_weights(.h5)`` reads).

    Mirrors ``tf_keras.src.saving.legacy.hdf5_format.save_weights_to_hdf5_group``, with gzip-chunked
    datasets when ``compact``. Returns the file size in bytes; written to a temp name, then renamed.
    """
    import h5py
    from tf_keras import __version__ as keras_version
    from tf_keras.src.saving.legacy.hdf5_format import _legacy_weights, save_attributes_to_hdf5_group

    values = random_values(keras_model, seed, compact)
    if calibrate:
        calibrate_classifier(keras_model, values, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        save_attributes_to_hdf5_group(f, "layer_names", [layer.name.encode("utf8")
                                                         for layer in keras_model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = str(keras_version).encode("utf8")
        for layer in sorted(keras_model.layers, key=lambda x: x.name):
            group = f.create_group(layer.name)
            weights = _legacy_weights(layer)
            names = [w.name.encode("utf8") for w in weights]
            save_attributes_to_hdf5_group(group, "weight_names", names)
            for name, data in zip(names, values.get(layer.name, []), strict=True):
                big = compact and data.size > _FULL_RANDOM_MAX
                group.create_dataset(name, data=data, chunks=_contiguous_chunks(data.shape) if big else None,
                                     compression="gzip" if big else None,
                                     compression_opts=6 if big else None)
        save_attributes_to_hdf5_group(f.create_group("top_level_model_weights"), "weight_names", [])
    os.replace(tmp, path)
    return path.stat().st_size


def build_random_weights(home: str | os.PathLike | None = None, models: Iterable[str] = AUDIT_MODELS,
                         seed: int = 0, compact: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Create random-weight files DeepFace loads unchanged, under ``<home>/.deepface/weights/``.

    Existing files are kept unless ``overwrite``. Returns ``{model: path}``.
    """
    import gc

    out: dict[str, Path] = {}
    for i, model in enumerate(models):
        path = weight_path(model, home)
        out[model] = path
        if path.is_file() and not overwrite:
            log.info("DeepFace %s weights already at %s", model, path)
            continue
        start = time.perf_counter()
        keras_model = build_architecture(model)
        size = write_random_h5(keras_model, path, seed=seed + i, compact=compact,
                               calibrate=model in ("age", "gender", "race"))
        del keras_model
        gc.collect()
        log.info("wrote random %s weights to %s (%.1f MB, %.1fs)", model, path, size / 1e6,
                 time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write random-weight DeepFace model files (offline tests).")
    parser.add_argument("--home", required=True, help="DEEPFACE_HOME to populate")
    parser.add_argument("--models", nargs="*", default=list(AUDIT_MODELS), choices=list(MODELS))
    parser.add_argument("--full", action="store_true", help="full-size iid random arrays (~540 MB/file)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_random_weights(args.home, args.models, seed=args.seed, compact=not args.full,
                         overwrite=args.overwrite)


if __name__ == "__main__":
    main()
