"""insightface face analysis for StoryMaker: detection, largest-face choice, ArcFace embeddings.

Why this wrapper exists: StoryMaker conditions on an ArcFace (``buffalo_l``) identity
embedding of the character's face, and the evaluation harness scores Face Sim with the
same model.  Calling ``insightface.app.FaceAnalysis`` directly fails in ways users cannot
act on (a requests ``ConnectionError`` when the model folder is missing and the machine
is offline, a bare ``AssertionError`` for an empty folder, a silent CPU fallback when
``onnxruntime-gpu`` cannot load CUDA).  Everything here turns those into messages that
say which folder the ``.onnx`` files must go in and what to install.

Layout insightface expects (``root`` is e.g. ``ComfyUI/models/insightface``)::

    <root>/models/buffalo_l/det_10g.onnx, w600k_r50.onnx, ...   (buffalo_l, default)
    <root>/models/antelopev2/scrfd_10g_bnkps.onnx, glintr100.onnx, ...

Images are RGB ``uint8`` arrays ``(H, W, 3)``; insightface wants BGR, converted here.
insightface and onnxruntime are imported lazily, so ``storymaker_core`` imports without them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .messages import detail

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MODEL_NAMES",
    "PROVIDERS",
    "DetectedFace",
    "FaceAnalysisError",
    "FaceAnalyzer",
    "FaceAnalyzerConfig",
    "FaceIndexError",
    "FaceModelsNotFoundError",
    "InsightFaceNotInstalledError",
    "NoFaceFoundError",
    "resolve_model_dir",
    "resolve_providers",
]

DEFAULT_MODEL_NAME = "buffalo_l"
MODEL_NAMES = ("buffalo_l", "antelopev2")

#: UI names -> onnxruntime execution providers (CPU is always appended as fallback).
PROVIDERS: dict[str, str] = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
}

DOWNLOAD_HINTS = {
    "buffalo_l": "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip "
    "(files: det_10g.onnx, w600k_r50.onnx, 1k3d68.onnx, 2d106det.onnx, genderage.onnx)",
    "antelopev2": "the antelopev2 pack listed in the insightface model zoo "
    "(https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo; it is not "
    "auto-downloadable; files: scrfd_10g_bnkps.onnx, glintr100.onnx, ...)",
}

INSTALL_HINT = (
    "pip install insightface onnxruntime-gpu   (NVIDIA GPU)  or  "
    "pip install insightface onnxruntime   (CPU / Apple). "
    "Never keep both onnxruntime and onnxruntime-gpu installed: they share the module name. "
    "insightface 2.x itself depends on the CPU 'onnxruntime'; if `pip list` shows both, run "
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
)


# --------------------------------------------------------------------------- errors
class FaceAnalysisError(RuntimeError):
    """Base class for every face-analysis failure this module reports."""


class InsightFaceNotInstalledError(FaceAnalysisError, ImportError):
    """insightface or onnxruntime cannot be imported."""


class FaceModelsNotFoundError(FaceAnalysisError, FileNotFoundError):
    """The ``.onnx`` model pack is not where insightface looks for it."""


class NoFaceFoundError(FaceAnalysisError, ValueError):
    """The detector found no face in an image."""


class FaceIndexError(FaceAnalysisError, IndexError):
    """A face index was asked for that the image does not have."""


# The face crop is aligned to 224 px for CLIP and ArcFace aligns to 112: a smaller face is upscaled and
# loses the detail that carries the likeness. Below this confidence the detector is unsure (profile,
# occlusion, blur), and so is the identity it embeds.
SMALL_FACE_PX = 96
WEAK_DET_SCORE = 0.6


def _warn_if_weak(face: "DetectedFace", image_name: str) -> None:
    """Warn about a reference that will work but hold the likeness poorly, saying how to do better."""
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    side = min(x2 - x1, y2 - y1)
    if side < SMALL_FACE_PX:
        logger.warning("%s: the face is only %d px across; below ~%d px it is upscaled and the likeness suffers. "
                       "Use a closer or higher-resolution photo of the character.", image_name, side, SMALL_FACE_PX)
    if face.det_score < WEAK_DET_SCORE:
        logger.warning("%s: the face was found with low confidence (%.2f): a turned, hidden or blurred face "
                       "gives a weaker identity. A clear, front-facing photo keeps the likeness best.",
                       image_name, face.det_score)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DetectedFace:
    """One detected face, in the coordinates of the input image.

    bbox: float32 ``(4,)`` x1, y1, x2, y2.  kps: float32 ``(5, 2)`` eyes, nose, mouth corners.
    embedding: float32 ``(512,)`` ArcFace identity vector, L2-normalised (cosine = dot product).
    det_score: detector confidence in [0, 1].
    """

    bbox: np.ndarray
    kps: np.ndarray
    embedding: np.ndarray
    det_score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


@dataclass(frozen=True)
class FaceAnalyzerConfig:
    """Where the models are and how to run them.

    root: folder that contains ``models/<name>/`` (ComfyUI: ``ComfyUI/models/insightface``).
    name: model pack, ``buffalo_l`` (StoryMaker's) or ``antelopev2``.
    providers: names from :data:`PROVIDERS` (or raw onnxruntime names) in priority order.
    det_size: detector input side (or (width, height)); a multiple of 32.  Larger finds
        smaller faces; StoryMaker uses 640.
    det_thresh: minimum detection score.
    """

    root: str | Path
    name: str = DEFAULT_MODEL_NAME
    providers: Sequence[str] | str = ("CUDA", "CPU")
    det_size: int | tuple[int, int] = 640
    det_thresh: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)  # passed on to FaceAnalysis(...)


# --------------------------------------------------------------------------- helpers
def _onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


def _missing_models_message(root: Path, name: str, detail: str) -> str:
    target = root / "models" / name
    hint = DOWNLOAD_HINTS.get(name, f"the '{name}' insightface model pack")
    return (
        f"insightface model pack '{name}' not usable: {detail}\n"
        f"Put the .onnx files directly in: {target}\n"
        f"  (i.e. {target / '<file>.onnx'}, not {target / name / '<file>.onnx'})\n"
        f"Download: {hint}, then unzip so the .onnx files sit in that folder. "
        "No download is attempted automatically (it fails offline)."
    )


def resolve_model_dir(root: str | Path, name: str = DEFAULT_MODEL_NAME) -> Path:
    """Return the absolute folder holding the pack's ``*.onnx`` files, or raise.

    Accepts the usual layout ``<root>/models/<name>/*.onnx`` and auto-fixes (with a
    warning) two common unzip mistakes: ``<root>/models/<name>/<name>/*.onnx`` (the zip
    already contained a ``<name>`` folder) and ``<root>/<name>/*.onnx`` (``models`` level
    missing).  Raises :class:`FaceModelsNotFoundError` naming the folder otherwise.
    """
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"model pack name must be a folder name like 'buffalo_l', got {name!r}")
    root = Path(root).expanduser().resolve()
    expected = root / "models" / name
    if _onnx_files(expected):
        return expected

    candidates = [expected / name, root / name, root / name / name]
    if expected.is_dir():
        subdirs = [d for d in sorted(expected.iterdir()) if d.is_dir() and _onnx_files(d)]
        if len(subdirs) == 1 and subdirs[0] not in candidates:
            candidates.insert(1, subdirs[0])
    for cand in candidates:
        if _onnx_files(cand):
            logger.warning(
                "insightface: found the '%s' .onnx files in %s instead of %s (a common unzip "
                "mistake); using them. Move them to %s to silence this warning.",
                name, cand, expected, expected,
            )
            return cand

    if not root.exists():
        detail = f"root folder {root} does not exist"
    elif not expected.exists():
        detail = f"folder {expected} does not exist"
    else:
        zips = sorted(p.name for p in expected.glob("*.zip"))
        detail = f"folder {expected} contains no .onnx files" + (
            f" (found {', '.join(zips)}: unzip it there)" if zips else ""
        )
    raise FaceModelsNotFoundError(_missing_models_message(root, name, detail))


def resolve_providers(requested: Sequence[str] | str, available: Sequence[str] | None = None) -> list[str]:
    """Map UI provider names to onnxruntime ones, keep the available ones, end with CPU.

    ``requested`` is e.g. ``"CUDA"`` or ``["CUDA", "CPU"]`` (case-insensitive; raw
    ``...ExecutionProvider`` names pass through).  ``available`` defaults to
    ``onnxruntime.get_available_providers()``; unavailable ones are dropped with a
    warning, because onnxruntime would otherwise fall back to CPU without saying so.
    """
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    lookup = {k.lower(): v for k, v in PROVIDERS.items()}
    mapped: list[str] = []
    for p in requested:
        if p.endswith("ExecutionProvider"):
            ort_name = p
        elif p.lower() in lookup:
            ort_name = lookup[p.lower()]
        else:
            raise ValueError(f"unknown execution provider {p!r}; use one of {sorted(PROVIDERS)}")
        if ort_name not in mapped:
            mapped.append(ort_name)
    if "CPUExecutionProvider" not in mapped:
        mapped.append("CPUExecutionProvider")
    if available is None:
        try:
            import onnxruntime
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InsightFaceNotInstalledError(f"onnxruntime is not importable ({detail(exc)}). {INSTALL_HINT}") from exc
        available = onnxruntime.get_available_providers()
    usable = [p for p in mapped if p in available or p == "CPUExecutionProvider"]
    dropped = [p for p in mapped if p not in usable]
    if dropped:
        logger.warning(
            "insightface: execution provider(s) %s not available in this onnxruntime (available: %s); "
            "using %s. For CUDA install onnxruntime-gpu (and uninstall onnxruntime).",
            dropped, list(available), usable,
        )
    return usable


def _import_face_analysis():
    try:
        from insightface.app import FaceAnalysis  # noqa: WPS433 - lazy on purpose
    except ImportError as exc:
        raise InsightFaceNotInstalledError(
            f"insightface could not be imported ({detail(exc)}). Install it with: {INSTALL_HINT}"
        ) from exc
    return FaceAnalysis


def _det_size_pair(det_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(det_size, (int, np.integer)):
        pair = (int(det_size), int(det_size))
    else:
        w, h = det_size
        pair = (int(w), int(h))
    if min(pair) < 32 or pair[0] % 32 or pair[1] % 32:
        raise ValueError(f"det_size must be a positive multiple of 32 (e.g. 640), got {det_size!r}")
    return pair


def _check_image(image: np.ndarray, image_name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{type(image).__name__}" if not isinstance(image, np.ndarray) else f"{image.dtype} {image.shape}"
        raise ValueError(
            f"{image_name}: expected an RGB uint8 array of shape (H, W, 3), got {desc}. "
            "Convert first, e.g. (img * 255).round().astype(np.uint8) for float images in [0, 1], "
            "and drop an alpha channel."
        )
    return image


# --------------------------------------------------------------------------- analyzer
class FaceAnalyzer:
    """insightface detection + ArcFace recognition with clear errors.

    Loads only the detection and recognition models of the pack (landmark/gender models
    of buffalo_l are not needed by StoryMaker).  Attributes after construction:
    ``model_dir`` (folder used), ``providers`` (requested, filtered), ``providers_in_use``
    (what onnxruntime actually runs, per task).
    """

    def __init__(self, config: FaceAnalyzerConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = FaceAnalyzerConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a FaceAnalyzerConfig or keyword arguments, not both")
        self.config = config
        self.det_size = _det_size_pair(config.det_size)
        FaceAnalysis = _import_face_analysis()
        self.model_dir = resolve_model_dir(config.root, config.name)
        self.providers = resolve_providers(config.providers)
        self._app = self._load(FaceAnalysis)
        self.providers_in_use = self._log_providers()

    def _load(self, FaceAnalysis):
        root = Path(self.config.root).expanduser().resolve()
        files = [p.name for p in _onnx_files(self.model_dir)]
        try:
            # An absolute folder as ``name`` is used as-is by insightface 0.7.x
            # (os.path.join drops the prefix) and 2.x (direct folder), so nothing
            # can trigger its download path.
            app = FaceAnalysis(
                name=str(self.model_dir),
                root=str(root),
                providers=list(self.providers),
                allowed_modules=["detection", "recognition"],
                **self.config.extra,
            )
            ctx_id = -1 if self.providers[0] == "CPUExecutionProvider" else 0
            app.prepare(ctx_id=ctx_id, det_thresh=float(self.config.det_thresh), det_size=self.det_size)
        except AssertionError as exc:
            # insightface asserts 'detection' in models: folder has no SCRFD detector
            raise FaceModelsNotFoundError(
                _missing_models_message(
                    root, self.config.name,
                    f"no face detector among the .onnx files in {self.model_dir} ({', '.join(files)}); "
                    "the pack may be incomplete or a download was interrupted",
                )
            ) from exc
        except Exception as exc:
            network = type(exc).__name__ in {"ConnectionError", "Timeout", "HTTPError", "SSLError"}
            if network or (isinstance(exc, OSError) and "http" in str(exc).lower()):
                raise FaceModelsNotFoundError(
                    _missing_models_message(root, self.config.name, f"insightface tried to download it ({detail(exc, root)})")
                ) from exc
            if "onnxruntime" in type(exc).__module__ or "ONNXRuntimeError" in str(exc):
                raise FaceAnalysisError(
                    f"onnxruntime could not load the insightface models in {self.model_dir} ({detail(exc, self.model_dir)}). "
                    "A .onnx file is probably truncated or not an ONNX model: re-download the pack "
                    f"({DOWNLOAD_HINTS.get(self.config.name, self.config.name)}) and replace the files."
                ) from exc
            raise
        if "recognition" not in app.models:
            raise FaceModelsNotFoundError(
                _missing_models_message(
                    root, self.config.name,
                    f"no ArcFace recognition model among {', '.join(files)} in {self.model_dir}",
                )
            )
        return app

    def _log_providers(self) -> dict[str, list[str]]:
        in_use: dict[str, list[str]] = {}
        for task in ("detection", "recognition"):
            session = getattr(self._app.models.get(task), "session", None)
            getter = getattr(session, "get_providers", None)
            in_use[task] = list(getter()) if callable(getter) else []
        logger.info(
            "insightface %s from %s: providers in use %s (requested %s)",
            self.config.name, self.model_dir, in_use, self.providers,
        )
        wanted_gpu = [p for p in self.providers if p != "CPUExecutionProvider"]
        for task, used in in_use.items():
            if wanted_gpu and used and wanted_gpu[0] not in used:
                logger.warning(
                    "insightface %s runs on %s although %s was requested: onnxruntime fell back "
                    "silently (check that onnxruntime-gpu, not onnxruntime, is installed and that "
                    "its CUDA/cuDNN versions match).", task, used, wanted_gpu[0],
                )
        return in_use

    # -- public API -------------------------------------------------------------
    def detect(self, image_rgb_uint8: np.ndarray, image_name: str = "image") -> list[DetectedFace]:
        """All faces in an RGB uint8 ``(H, W, 3)`` image, largest bbox area first (may be empty)."""
        image = _check_image(image_rgb_uint8, image_name)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        faces = self._app.get(bgr)
        out: list[DetectedFace] = []
        for f in faces:
            emb = getattr(f, "normed_embedding", None)
            if emb is None:
                raw = np.asarray(f.embedding, dtype=np.float32)
                emb = raw / max(float(np.linalg.norm(raw)), 1e-12)
            out.append(
                DetectedFace(
                    bbox=np.asarray(f.bbox, dtype=np.float32).reshape(4),
                    kps=np.asarray(f.kps, dtype=np.float32).reshape(5, 2),
                    embedding=np.asarray(emb, dtype=np.float32).reshape(-1),
                    det_score=float(f.det_score),
                )
            )
        out.sort(key=lambda d: d.area, reverse=True)
        return out

    def select_face(self, image_rgb_uint8: np.ndarray, image_name: str = "image", index: int = 0) -> DetectedFace:
        """The ``index``-th face by decreasing bbox area (0 = largest); raises if absent."""
        faces = self.detect(image_rgb_uint8, image_name)
        if not faces:
            h, w = image_rgb_uint8.shape[:2]
            raise NoFaceFoundError(
                f"no face found in {image_name} ({w}x{h}, det_size={self.det_size[0]}x{self.det_size[1]}, "
                f"det_thresh={self.config.det_thresh}). Use a clearer, front-facing image, crop closer to the "
                "face, or try a larger det_size (e.g. 800 or 1024) for small faces."
            )
        if not -len(faces) <= index < len(faces):
            raise FaceIndexError(
                f"face index {index} out of range for {image_name}: {len(faces)} face(s) found "
                f"(valid: 0..{len(faces) - 1}, 0 = largest)."
            )
        if len(faces) > 1:
            logger.warning("%s has %d faces; using face %d by size (0 = largest). Set face_index or crop the image "
                           "if this is not the character.", image_name, len(faces), index)
        _warn_if_weak(faces[index], image_name)
        return faces[index]

    def largest_face(self, image_rgb_uint8: np.ndarray, image_name: str = "image") -> DetectedFace:
        """The face with the largest bbox area; raises :class:`NoFaceFoundError` if none."""
        return self.select_face(image_rgb_uint8, image_name, 0)

    def embed(self, image_rgb_uint8: np.ndarray, image_name: str = "image", index: int = 0) -> np.ndarray:
        """L2-normalised float32 ``(512,)`` ArcFace embedding of the chosen face."""
        return self.select_face(image_rgb_uint8, image_name, index).embedding
