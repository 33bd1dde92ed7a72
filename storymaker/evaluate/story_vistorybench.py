"""ViStoryBench adapter: a run folder ``OUTPUTS/<method>/<mode>/<language>/<timestamp>`` plus the dataset
beside it -> :class:`~.story_input.Story` per story, for the same consistency scoring as runner stories.

Both are read as ViStoryBench reads them, by ``storymaker.story.vistorybench`` (one reader for the
whole pack): the run folder by the rules of their ``read_outputs.py`` (timestamp sub-folders inside a
story folder, any ``*shot``/``*shots`` folder, the shot number after the last ``_`` of a file name; see
``outputs.py``), the dataset by their loader's (a shot's characters are its ``"Characters Appearing"["en"]``
names that are ``Characters`` keys exactly). Whatever their reader would stop on, or leave to the file
system's order, is noted in the story's notes. Identity mode from the character's ``tag``:
``realistic_human`` -> ``auto`` (ArcFace when its reference has a confident face), ``unrealistic_human`` /
``non_human`` -> ``appearance`` (CLIP-I).

Regions: a generated image does not say where each character is. For StoryMaker's own runs, ``converted``
(the folder ``vistorybench convert`` wrote) gives each shot's regions: its ``<NN>/story.yaml`` is planned as
the runner plans it and the masks bound to StoryMaker Apply's ``mask_N`` (the converter's bands, or a mask
the user bound instead) become the on-stage characters' regions, so an appearance character is scored on its
region instead of the whole shot.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from .story_input import CastMember, Region, Shot, Story, StoryInputError, story_file_regions, validate_story

logger = logging.getLogger(__name__)

TAG_IDENTITY = {"realistic_human": "auto", "unrealistic_human": "appearance", "non_human": "appearance"}


def split_run_folder(run: str | Path) -> tuple[Path, str, str, str, str]:
    """A run folder -> (OUTPUTS, method, mode, language, timestamp). Both of ViStoryBench's layouts:
    ``OUTPUTS/<method>/<mode>/<language>/<timestamp>`` and ``OUTPUTS/<method>/<language>/<mode>/<timestamp>``
    (the language is the folder named en or ch)."""
    from ..story.vistorybench.dataset import LANGUAGES
    from ..story.vistorybench.outputs import TIMESTAMP_PATTERN

    run = Path(run).expanduser()
    if not run.is_dir():
        raise StoryInputError(f"--vistorybench-outputs {run}: no such folder (give "
                              f"OUTPUTS/<method>/<mode>/<language>/<timestamp>)")
    parts = run.resolve().parts
    if len(parts) < 5 or not TIMESTAMP_PATTERN.match(parts[-1]):
        raise StoryInputError(f"--vistorybench-outputs {run}: expected OUTPUTS/<method>/<mode>/<language>/<timestamp> "
                              f"with a timestamp like 20250101_120000, got last folder {parts[-1]!r}")
    method, first, second = parts[-4], parts[-3], parts[-2]
    if second not in LANGUAGES and first in LANGUAGES:  # language-first: <method>/<language>/<mode>/<timestamp>
        first, second = second, first
    return run.resolve().parents[3], method, first, second, parts[-1]


def _identity(tag: str, name: str, notes: list[str]) -> str:
    mode = TAG_IDENTITY.get(tag)
    if mode is None:
        notes.append(f"character {name!r} has tag {tag!r} (not one of {sorted(TAG_IDENTITY)}); scored as 'auto'")
        return "auto"
    return mode


def converted_regions(converted: str | Path, story_id: str) -> tuple[dict[str, dict[str, Region]], list[str]]:
    """(shot index as text -> {Characters key -> region}, notes) from the story ``vistorybench convert`` wrote
    for ``story_id`` under ``converted``."""
    from ..story.vistorybench.convert import SIDECAR

    story_dir = Path(converted).expanduser() / story_id
    sidecar = story_dir / SIDECAR
    if not sidecar.is_file():
        return {}, [f"no converted story {story_dir} ({SIDECAR} missing): appearance characters are scored on "
                    "whole shots"]
    keys = json.loads(sidecar.read_text(encoding="utf-8")).get("cast") or {}
    by_scene, _, notes = story_file_regions(story_dir / "story.yaml")
    return ({scene: {keys.get(name, name): region for name, region in regions.items()}
             for scene, regions in by_scene.items()}, notes)


def stories_from_vistorybench(run: str | Path, dataset: str | Path, story_ids: Iterable[str] | None = None,
                              converted: str | Path | None = None, lenient_names: bool = False) -> list[Story]:
    """Every story of a ViStoryBench run folder (or those in ``story_ids``), with its dataset story.

    A dataset shot without an image in the run becomes a shot with a ``problem`` (reported); an image
    for a shot index the dataset does not have is noted, as is a story folder whose name is not a dataset
    story id (``bench_run.py`` looks stories up by the dataset's folder name: ``1`` is not ``01``). A run
    folder with no story folder is an error. ``converted``: the converter's output folder, for regions.
    ``lenient_names``: the converter's ``--lenient-names`` matching of shot names (not ViStoryBench's).
    """
    from ..story.vistorybench.dataset import LANGUAGES, DatasetError, list_story_ids, load_dataset
    from ..story.vistorybench.outputs import read_output_run

    _, method, _, language, _ = split_run_folder(run)
    read = read_output_run(Path(run).expanduser())
    images = read.stories
    if story_ids is not None:
        wanted = {str(s).zfill(2) for s in story_ids}
        missing_ids = sorted(wanted - set(images))
        if missing_ids:
            raise StoryInputError(f"{run}: no output folder for story id(s) {missing_ids}; found {sorted(images)}")
        images = {k: v for k, v in images.items() if k in wanted}
    if not images:
        raise StoryInputError(f"{run}: no story folders (<NN>/shots/<index>.png) in this ViStoryBench run folder; "
                              f"give OUTPUTS/<method>/<mode>/<language>/<timestamp> of a finished run"
                              + (f" ({'; '.join(read.errors)})" if read.errors else ""))
    lang = language if language in LANGUAGES else "en"
    try:
        known = set(list_story_ids(dataset))
        strangers = sorted(set(images) - known)
        ids = sorted(set(images) & known, key=int)
        if not ids:
            raise StoryInputError(f"{run}: none of its story folders {sorted(images)} is a story id of the dataset "
                                  f"{dataset} (bench_run.py looks them up by the dataset's folder names, e.g. 01)")
        dataset_stories = load_dataset(dataset, stories=ids, language=lang, lenient_names=lenient_names)
    except DatasetError as exc:
        raise StoryInputError(f"--dataset {dataset}: {exc}") from exc
    run_notes = [f"ViStoryBench's reader: {e}" for e in read.errors]
    run_notes += [f"story folder {s!r} is not a story id of the dataset (bench_run.py looks stories up by the "
                  f"dataset's folder names); not scored" for s in strangers]
    out = []
    for vs in dataset_stories:
        notes = run_notes + list(vs.warnings)
        notes += read.notes.get(vs.story_id, [])
        notes += [f"ViStoryBench's reader: {e}" for e in read.story_errors.get(vs.story_id, [])]
        regions: dict[str, dict[str, Region]] = {}
        if converted is not None:
            regions, found = converted_regions(converted, vs.story_id)
            notes += found
        cast = {key: CastMember(name=key, references=tuple(c.images), identity=_identity(c.tag, key, notes))
                for key, c in vs.characters.items()}
        found_images = images.get(vs.story_id, {})
        shots = []
        for shot in vs.shots:
            file = found_images.get(shot.index)
            shot_regions = {k: r for k, r in (regions.get(str(shot.index)) or {}).items() if k in shot.character_keys}
            shots.append(Shot(id=str(shot.index), file=file, characters=tuple(shot.character_keys),
                              problem=None if file is not None else "no image in the run folder",
                              regions=shot_regions))
        extra = sorted(set(found_images) - {s.index for s in vs.shots})
        if extra:
            notes.append(f"images for shot index(es) {extra} not in the dataset story: not scored")
        for note in notes:
            logger.warning("ViStoryBench story %s: %s", vs.story_id, note)
        story = Story(name=vs.story_id, method=method, source=vs.path, cast=cast, shots=tuple(shots),
                      notes=tuple(notes))
        out.append(validate_story(story))
    return out


__all__ = ["TAG_IDENTITY", "converted_regions", "split_run_folder", "stories_from_vistorybench"]
