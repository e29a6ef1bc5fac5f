"""Ranking models from files: the built-in linear JSON, or a learned model in ONNX served
with onnxruntime (its model card, `<stem>.card.json` beside it, names the feature columns
in order and the version the lists record)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.rank import FEATURES, LEARNED_FEATURES, ModelError, RankModel, load_model
from nearline_rec.errors import NearlineError


def card_path(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(f"{path.stem}.card.json")


def is_onnx(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".onnx"


def load_ranker(path: str | Path | None) -> RankModel:
    """The model at `path`: ONNX (learned) by its suffix, else the linear JSON."""
    return load_onnx(path) if is_onnx(path) else load_model(path)  # type: ignore[arg-type]


def read_card(path: str | Path) -> dict[str, Any]:
    card = card_path(path)
    try:
        doc = json.loads(card.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{card}: model card not found (it names the features of {path})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card}: not a readable model card ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{card}: expected a JSON object")
    version, feats = doc.get("version"), doc.get("features")
    if not isinstance(version, str) or not version:
        raise ModelError(f'{card}: "version" must be a non-empty string')
    if not isinstance(feats, list) or not feats or not all(isinstance(f, str) for f in feats):
        raise ModelError(f'{card}: "features" must be a non-empty list of names')
    unknown = [f for f in feats if f not in LEARNED_FEATURES]
    if unknown:
        raise ModelError(f"{card}: unknown feature(s) {unknown}; known: {list(LEARNED_FEATURES)}")
    return doc


def load_onnx(path: str | Path) -> RankModel:
    """A learned ranker: the ONNX file in an onnxruntime session (one thread: a worker
    process uses one core) and its card. Checked by scoring one row, so a model that
    loads but cannot run fails here, not in a batch."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ranking model file not found")
    card = read_card(path)
    features = tuple(card["features"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a bad file is reported by us, on one line
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a bad file
        raise ModelError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, found {len(inputs)}")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int) and width != len(features):
        raise ModelError(f"{path}: input has {width} columns, the card names {len(features)}")
    input_name = inputs[0].name
    output = str(card.get("output") or session.get_outputs()[0].name)
    column = int(card.get("column", 0))

    def scorer(x: np.ndarray) -> np.ndarray:
        out = session.run([output], {input_name: np.ascontiguousarray(x, np.float32)})[0]
        out = np.asarray(out)
        return out[:, column] if out.ndim == 2 else out

    try:
        probe = scorer(np.zeros((2, len(features)), np.float32))
    except Exception as exc:
        raise ModelError(f"{path}: the model does not run on its card's features ({exc})") from None
    if probe.shape != (2,) or not all(math.isfinite(float(v)) for v in probe):
        raise ModelError(f"{path}: the model gives {probe.shape} values for 2 rows, or non-finite")
    return RankModel(
        version=card["version"],
        weights=dict.fromkeys(FEATURES, 0.0),
        recency_half_life_days=float(card.get("recency_half_life_days", 365.0)),
        scorer=scorer,
        features=features,
    )


class ModelUnavailable(NearlineError):
    """The learned model cannot score this batch (suspended after a slow call)."""


class ServedRanker:
    """The worker's learned model with the built-in linear ranker behind it.

    The file is checked between batches (at most every `reload_seconds`): a changed file is
    loaded and swapped in before the next batch, so a batch's lists all carry one version; a
    file that does not load keeps the previous model (one-line error in /status/). A batch
    is ranked by the linear fallback when there is no usable model (missing or invalid file),
    when the model raises, or when its call takes longer than `budget_ms` (that batch, and
    every batch for `cooldown_seconds` after it, so a slow model does not slow each batch).
    Each fallback batch is counted by reason.
    """

    REASONS = ("missing", "invalid", "error", "slow", "cooling")

    def __init__(
        self,
        path: str | Path,
        fallback: RankModel,
        *,
        budget_ms: float = 50.0,
        reload_seconds: float = 5.0,
        cooldown_seconds: float = 30.0,
        clock: Any = None,
    ) -> None:
        import time

        self.path = Path(path)
        self.fallback = fallback
        self.budget = budget_ms / 1000.0
        self.reload_seconds = reload_seconds
        self.cooldown = cooldown_seconds
        self.clock = clock or time.monotonic
        self.learned: RankModel | None = None
        self.error: str | None = None
        self.fallbacks = dict.fromkeys(self.REASONS, 0)
        self.reloads = 0
        self.reload_errors = 0
        self.calls = 0
        self.seconds = 0.0
        self.last_ms = 0.0
        self._signature: tuple[int, int] | None = None
        self._checked = -float("inf")
        self._cool_until = -float("inf")
        self.check(force=True)

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
            card = card_path(self.path).stat()
        except OSError:
            return None
        return (max(st.st_mtime_ns, card.st_mtime_ns), st.st_size + card.st_size)

    def check(self, force: bool = False) -> bool:
        """Load the file if it changed since the last look; True when a new model came in."""
        now = self.clock()
        if not force and now - self._checked < self.reload_seconds:
            return False
        self._checked = now
        sig = self._stat()
        if sig is None:
            if self.learned is None:
                self.error = f"{self.path}: ranking model file not found"
            return False
        if sig == self._signature:
            return False
        self._signature = sig
        try:
            model = load_onnx(self.path)
        except ModelError as exc:
            self.error = str(exc)
            self.reload_errors += 1
            return False
        first = self.learned is None
        self.learned, self.error = model, None
        self.reloads += 0 if first and force else 1
        return True

    def model_for_batch(self) -> RankModel:
        """The model that ranks the next batch: the learned one, guarded, or the fallback."""
        learned = self.learned
        if learned is None:
            self.fallbacks["invalid" if self._signature is not None else "missing"] += 1
            return self.fallback
        if self.clock() < self._cool_until:
            self.fallbacks["cooling"] += 1
            return self.fallback
        scorer = learned.scorer
        assert scorer is not None

        def guarded(x: np.ndarray) -> np.ndarray:
            t0 = self.clock()
            try:
                out = scorer(x)
            except Exception:
                self.fallbacks["error"] += 1
                raise
            took = self.clock() - t0
            self.calls += 1
            self.seconds += took
            self.last_ms = took * 1000.0
            if took > self.budget:
                self.fallbacks["slow"] += 1
                self._cool_until = self.clock() + self.cooldown
                raise ModelUnavailable(
                    f"{took * 1000:.1f} ms over the {self.budget * 1000:g} ms budget"
                )
            return out

        from dataclasses import replace

        return replace(learned, scorer=guarded, fallback=self.fallback)

    def status(self) -> dict[str, Any]:
        learned = self.learned
        return {
            "path": str(self.path),
            "learned_version": learned.version if learned else None,
            "fallback_version": self.fallback.version,
            "error": self.error,
            "fallbacks": dict(self.fallbacks),
            "reloads": self.reloads,
            "reload_errors": self.reload_errors,
            "calls": self.calls,
            "seconds": round(self.seconds, 6),
            "last_ms": round(self.last_ms, 3),
            "budget_ms": self.budget * 1000.0,
        }
