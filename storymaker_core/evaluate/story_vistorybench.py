"""ViStoryBench adapter: a run folder ``OUTPUTS/<method>/<mode>/<language>/<timestamp>`` plus the dataset
beside it -> :class:`~.story_input.Story` per story, for the same consistency scoring as runner stories.

The dataset and the output layout are read by ``storymaker_core.story.vistorybench`` (one reader for the
whole pack). Identity mode from the character's ``tag``: ``realistic_human`` -> ``auto`` (ArcFace when
its reference has a confident face), ``unrealistic_human`` / ``non_human`` -> ``appearance`` (CLIP-I).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from .story_input import CastMember, Shot, Story, StoryInputError, validate_story

logger = logging.getLogger(__name__)

TAG_IDENTITY = {"realistic_human": "auto", "unrealistic_human": "appearance", "non_human": "appearance"}


def split_run_folder(run: str | Path) -> tuple[Path, str, str, str, str]:
    """``OUTPUTS/<method>/<mode>/<language>/<timestamp>`` -> (OUTPUTS, method, mode, language, timestamp)."""
    from ..story.vistorybench.outputs import TIMESTAMP_PATTERN

    run = Path(run).expanduser()
    if not run.is_dir():
        raise StoryInputError(f"--vistorybench-outputs {run}: no such folder (give "
                              f"OUTPUTS/<method>/<mode>/<language>/<timestamp>)")
    parts = run.resolve().parts
    if len(parts) < 5 or not TIMESTAMP_PATTERN.match(parts[-1]):
        raise StoryInputError(f"--vistorybench-outputs {run}: expected OUTPUTS/<method>/<mode>/<language>/<timestamp> "
                              f"with a timestamp like 20250101_120000, got last folder {parts[-1]!r}")
    return run.resolve().parents[3], parts[-4], parts[-3], parts[-2], parts[-1]


def _identity(tag: str, name: str, notes: list[str]) -> str:
    mode = TAG_IDENTITY.get(tag)
    if mode is None:
        notes.append(f"character {name!r} has tag {tag!r} (not one of {sorted(TAG_IDENTITY)}); scored as 'auto'")
        return "auto"
    return mode


def stories_from_vistorybench(run: str | Path, dataset: str | Path,
                              story_ids: Iterable[str] | None = None) -> list[Story]:
    """Every story of a ViStoryBench run folder (or those in ``story_ids``), with its dataset story.

    A dataset shot without an image in the run becomes a shot with a ``problem`` (reported); an image
    for a shot index the dataset does not have is noted. A run folder with no story folder is an error.
    """
    from ..story.vistorybench.dataset import LANGUAGES, DatasetError, load_dataset
    from ..story.vistorybench.outputs import read_output_shots

    root, method, mode, language, timestamp = split_run_folder(run)
    images = read_output_shots(root, method, mode, language, timestamp)
    if story_ids is not None:
        wanted = {str(s).zfill(2) for s in story_ids}
        missing_ids = sorted(wanted - set(images))
        if missing_ids:
            raise StoryInputError(f"{run}: no output folder for story id(s) {missing_ids}; found {sorted(images)}")
        images = {k: v for k, v in images.items() if k in wanted}
    if not images:
        raise StoryInputError(f"{run}: no story folders (<NN>/shots/<index>.png) in this ViStoryBench run folder; "
                              f"give OUTPUTS/<method>/<mode>/<language>/<timestamp> of a finished run")
    lang = language if language in LANGUAGES else "en"
    try:
        dataset_stories = load_dataset(dataset, stories=sorted(images), language=lang)
    except DatasetError as exc:
        raise StoryInputError(f"--dataset {dataset}: {exc}") from exc
    out = []
    for vs in dataset_stories:
        notes = list(vs.warnings)
        cast = {key: CastMember(name=key, references=tuple(c.images), identity=_identity(c.tag, key, notes))
                for key, c in vs.characters.items()}
        found = images.get(vs.story_id, {})
        shots = []
        for shot in vs.shots:
            file = found.get(shot.index)
            shots.append(Shot(id=str(shot.index), file=file, characters=tuple(shot.character_keys),
                              problem=None if file is not None else "no image in the run folder"))
        extra = sorted(set(found) - {s.index for s in vs.shots})
        if extra:
            notes.append(f"images for shot index(es) {extra} not in the dataset story: not scored")
        for note in notes:
            logger.warning("ViStoryBench story %s: %s", vs.story_id, note)
        story = Story(name=vs.story_id, method=method, source=vs.path, cast=cast, shots=tuple(shots),
                      notes=tuple(notes))
        out.append(validate_story(story))
    return out
