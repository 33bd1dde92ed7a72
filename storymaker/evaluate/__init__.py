"""Evaluation harness: Face Sim / CLIP-I / CLIP-T (+ swap rate) for any method's outputs.

``storymaker evaluate score --manifest run/manifest.json --out results/``
See docs/evaluation.md.  Heavy dependencies (insightface, torch, open_clip, matplotlib)
are imported only when a model is created or a chart drawn.
"""

from .aggregate import CIOptions, summarise
from .manifest import Manifest, ManifestError, load_manifest, parse_manifest
from .metrics import best_assignment, cosine, cosine_matrix, mean_ci, swap_flags
from .prompts import load_prompts, select_prompts
from .scoring import ScoringOptions, score_manifest

__all__ = [
    "CIOptions",
    "Manifest",
    "ManifestError",
    "ScoringOptions",
    "best_assignment",
    "cosine",
    "cosine_matrix",
    "load_manifest",
    "load_prompts",
    "mean_ci",
    "parse_manifest",
    "score_manifest",
    "select_prompts",
    "summarise",
    "swap_flags",
]
