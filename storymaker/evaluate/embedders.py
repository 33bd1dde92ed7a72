"""Face and CLIP embedders for the evaluation, with lazy imports and actionable errors.

Why separate from the maths: model loading is slow and environment-dependent; the
scoring code only needs ``faces(path)``, ``encode_images(images)`` and
``encode_texts(texts)``, so tests can swap in tiny models (or fakes) freely.

CLIP default: OpenCLIP ViT-H/14 trained on LAION-2B (``laion2b_s32b_b79k``) -- the
paper does not say which CLIP it used; this one is the image encoder family StoryMaker
itself is built on (IP-Adapter's CLIP ViT-H/14).  ``pretrained`` may be the tag (downloaded
into the Hugging Face cache on first use) or a local checkpoint file for offline machines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._core import faces as _faces  # storymaker_core's, beside this package (storymaker/_core.py)

DetectedFace, FaceAnalyzer, FaceAnalyzerConfig = _faces.DetectedFace, _faces.FaceAnalyzer, _faces.FaceAnalyzerConfig

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-H-14"
DEFAULT_CLIP_PRETRAINED = "laion2b_s32b_b79k"


class EmbedderError(RuntimeError):
    """An embedder could not be created or could not read an input."""


def load_rgb(path: str | Path):
    """(PIL RGB image, uint8 array (H, W, 3)) for ``path``, upright as its EXIF says (as ComfyUI's
    LoadImage and the trainer read it); errors name the file."""
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - pillow ships with torchvision/open_clip
        raise EmbedderError("Pillow is needed to read images: pip install pillow") from exc
    path = Path(path)
    if not path.is_file():
        raise EmbedderError(f"image not found: {path} (check the manifest's 'file' entry / --images-dir)")
    try:
        with Image.open(path) as im:
            pil = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as exc:  # PIL raises several types for unreadable files
        raise EmbedderError(f"cannot read image {path}: {exc}") from exc
    return pil, np.asarray(pil, dtype=np.uint8)


# --------------------------------------------------------------------------- faces
class FaceEmbedder:
    """insightface (buffalo_l by default) faces of an image file, largest first."""

    def __init__(self, analyzer: FaceAnalyzer | None = None, config: FaceAnalyzerConfig | None = None) -> None:
        if analyzer is None:
            if config is None:
                raise ValueError("FaceEmbedder needs an analyzer or a FaceAnalyzerConfig")
            analyzer = FaceAnalyzer(config)
        self.analyzer = analyzer

    @property
    def description(self) -> str:
        cfg = self.analyzer.config
        return f"insightface {cfg.name} ({self.analyzer.model_dir}), det_size={self.analyzer.det_size}"

    def faces(self, path: str | Path, image: np.ndarray | None = None) -> list[DetectedFace]:
        """Detected faces (may be empty) of ``path``; pass ``image`` if already loaded."""
        if image is None:
            _, image = load_rgb(path)
        return self.analyzer.detect(image, str(path))


# --------------------------------------------------------------------------- CLIP
@dataclass(frozen=True)
class ClipConfig:
    """Which OpenCLIP model scores CLIP-I / CLIP-T.

    model: open_clip architecture name (``open_clip.list_models()``).
    pretrained: tag (e.g. ``laion2b_s32b_b79k``) or a local checkpoint path; ``None`` =
        random weights (tests only -- the numbers mean nothing).
    device: ``cpu`` / ``cuda`` / ``cuda:1``; precision: ``fp32`` (``fp16``/``bf16`` on GPU only).
    """

    model: str = DEFAULT_CLIP_MODEL
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 8
    cache_dir: str | None = None


class ClipEmbedder:
    """L2-normalised OpenCLIP image and text embeddings, float32 ``(N, D)``."""

    def __init__(self, config: ClipConfig | None = None, **kwargs: Any) -> None:
        config = config or ClipConfig(**kwargs)
        self.config = config
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise EmbedderError(
                f"CLIP metrics need open_clip and torch ({exc}): pip install open_clip_torch"
            ) from exc
        self._torch = torch
        precision = config.precision
        if str(config.device).startswith("cpu") and precision != "fp32":
            logger.warning("CLIP precision %s is not supported on CPU; using fp32", precision)
            precision = "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.model,
                pretrained=config.pretrained,
                device=config.device,
                precision=precision,
                cache_dir=config.cache_dir,
            )
        except RuntimeError as exc:
            raise EmbedderError(
                f"cannot load OpenCLIP {config.model} with pretrained={config.pretrained!r}: {exc}\n"
                "Offline? Pass --clip-pretrained /path/to/checkpoint (e.g. the "
                "open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K) or run once "
                "with network access so the Hugging Face cache holds it."
            ) from exc
        if config.pretrained is None:
            logger.warning("CLIP %s has random weights (pretrained=None): CLIP scores are meaningless", config.model)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(config.model)

    @property
    def description(self) -> str:
        weights = self.config.pretrained or "random init (pretrained=None; scores meaningless)"
        return f"open_clip {self.config.model} / {weights}"

    def _normalise(self, feats) -> np.ndarray:
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.cpu().numpy().astype(np.float32)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> (N, D).  open_clip's eval transform: resize short side, centre crop."""
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.config.batch_size):
                batch = torch.stack([self.preprocess(im) for im in images[start:start + self.config.batch_size]])
                batch = batch.to(self.config.device)
                dtype = next(self.model.parameters()).dtype
                out.append(self._normalise(self.model.encode_image(batch.to(dtype))))
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (N, D); the tokenizer truncates at the model's context length (77)."""
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                tokens = self.tokenizer(list(texts[start:start + 64])).to(self.config.device)
                out.append(self._normalise(self.model.encode_text(tokens)))
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
