"""The runner end to end against fake ComfyUI servers: right image in the right file, spreading over
servers, faults (400s, execution errors, dropped websockets, dying servers, damaged downloads,
timeouts) and resuming without losing or redoing work."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import yaml
from PIL import Image
from story_fake_comfy import positive_text, scene_color
from story_support import SCENES

from storymaker.story.errors import NoServerLeft, ValidationFailed
from storymaker.story.files import file_sha256
from storymaker.story.runner import StoryRunner
from storymaker.story.schema import default_seed
from storymaker.story.server import free_port

STEMS = ["01-morning", "02-street", "03-alice-reads-a-book-by-the"]
SEEDS = [default_seed(100, "morning"), 7, default_seed(100, "alice-reads-a-book-by-the")]  # base_seed 100


def run(path, servers, options, **changes):
    runner = StoryRunner(path, [s if isinstance(s, str) else s.url for s in servers],
                         dataclasses.replace(options, **changes))
    return asyncio.run(runner.run()), runner


def manifest(runner) -> dict:
    return json.loads((runner.story_dir / "manifest.json").read_text())


def color(path) -> tuple:
    with Image.open(path) as im:
        return im.convert("RGB").getpixel((0, 0))


def assert_scene_files(runner, names=None):
    """Each scene's file holds the image the fake rendered from that scene's seed and prompt."""
    scenes = manifest(runner)["scenes"]
    for plan in runner.plans:
        rec = scenes[plan.id]
        path = runner.story_dir / rec["file"]
        assert rec["status"] == "done" and rec["sha256"] == file_sha256(path)
        assert color(path) == scene_color(plan.scene.seed, plan.scene.prompt), plan.stem
        if names:
            assert rec["file"] == names[plan.stem]


def test_story_is_rendered_scene_by_scene(comfy, make_story, options, story_dir):
    server = comfy.start()
    report, runner = run(make_story(), [server], options)
    assert report.ok and sorted(report.rendered) == STEMS and report.skipped == []
    assert_scene_files(runner, {s: f"{s}.png" for s in STEMS})
    assert [p["7"]["inputs"]["seed"] for _, p in server.accepted] == SEEDS  # story order
    # the reference was uploaded once and each prompt's LoadImage names it
    (upload,) = runner.plans[0].uploads
    assert server.inputs == {upload.name: (story_dir / "refs" / "alice.png").read_bytes()}
    assert all(p["2"]["inputs"]["image"] == upload.name for _, p in server.accepted)
    assert server.requests["POST /upload/image"] == 1
    m = manifest(runner)
    rec = m["scenes"]["street"]
    assert rec["seed"] == 7 and rec["server"] == server.url and rec["prompt_id"] in server.history
    assert rec["output"] == {"filename": "street_00002_.png", "subfolder": "storymaker/test-story/comfyui", "type": "output"}
    assert set(rec["timings"]) == {"wait_s", "run_s", "download_s"} and rec["timings"]["run_s"] is not None
    assert [a["outcome"] for a in rec["attempts"]] == ["done"]
    sheet = runner.story_dir / "contact-sheet.png"
    assert report.contact_sheet == sheet and m["contact_sheet"]["sha256"] == file_sha256(sheet)
    assert Image.open(sheet).size[0] > 2 * 256  # two columns for three scenes


def test_websocket_wakes_the_waiter_and_survives_drops(comfy, make_story, options):
    """Completion arrives over the websocket, far sooner than the 3 s poll interval, even after the
    websocket dropped in the middle of a prompt (messages lost, then reconnected)."""
    server = comfy.start(drop_ws_after=4)
    comfy.hold_until([server], lambda: server.accepted and server.ws_connections)  # drop mid-prompt
    start = time.monotonic()
    report, runner = run(make_story(), [server], options, poll_interval=3.0)
    assert report.ok
    assert server.faults.drop_ws_times == 0  # the drop did happen
    assert time.monotonic() - start < 2.5
    assert_scene_files(runner)


def test_scenes_spread_over_servers_by_queue_length(comfy, make_story, options):
    a, b = comfy.start(), comfy.start()
    # nothing finishes while scenes are handed out, so queue lengths alone decide
    comfy.hold_until([a, b], lambda: len(a.accepted) + len(b.accepted) == 4)
    scenes = [{"id": f"s{i}", "prompt": f"scene {i}"} for i in range(5)]
    report, runner = run(make_story(scenes=scenes), [a, b], options, max_queue=2)
    assert report.ok
    # s0 -> a (tie, first listed); s1 -> b (0 < 1); s2 -> a (tie); s3 -> b (1 < 2); s4 waits for a slot
    assert [positive_text(p) for _, p in a.accepted][:2] == ["scene 0", "scene 2"]
    assert [positive_text(p) for _, p in b.accepted][:2] == ["scene 1", "scene 3"]
    assert len(a.accepted) + len(b.accepted) == 5
    assert_scene_files(runner)


def test_a_busy_server_is_left_alone(comfy, make_story, options):
    busy, free = comfy.start(external_load=3), comfy.start()
    scenes = [{"id": f"s{i}", "prompt": f"scene {i}"} for i in range(4)]
    report, runner = run(make_story(scenes=scenes), [busy, free], options, max_queue=2)
    assert report.ok and len(busy.accepted) == 0 and len(free.accepted) == 4
    assert busy.requests["GET /queue"] >= 4  # it was asked every time


def test_server_killed_mid_story_its_scene_is_requeued_elsewhere(comfy, make_story, options, caplog):
    dying, healthy = comfy.start(die_after_accepting=1), comfy.start()
    report, runner = run(make_story(), [dying, healthy], options)
    assert report.ok and report.failed == {}
    assert len(healthy.accepted) == 3  # every scene, including those the dead server had accepted
    scenes = manifest(runner)["scenes"]
    attempts = scenes["morning"]["attempts"]
    assert attempts[0]["server"] == dying.url and attempts[0]["outcome"] in ("ServerUnavailable", "moved")
    assert (attempts[-1]["server"], attempts[-1]["outcome"]) == (healthy.url, "done")
    assert {rec["server"] for rec in scenes.values()} == {healthy.url}
    assert_scene_files(runner)
    assert f"dropping server {dying.url}" in caplog.text


def test_http_400_node_errors_fail_only_that_scene(comfy, make_story, options):
    server = comfy.start(reject_seed=7)
    report, runner = run(make_story(), [server], options)
    assert not report.ok and list(report.failed) == ["02-street"]
    error = report.failed["02-street"]
    assert f"ComfyUI ({server.url}) rejected scene 02-street: Prompt outputs failed validation" in error
    assert "node 7 (KSampler): Value 150.0 bigger than max of 100.0: cfg" in error
    assert server.rejected == 1  # not retried: the same prompt would be rejected again
    scenes = manifest(runner)["scenes"]
    assert scenes["street"]["status"] == "failed" and "bigger than max" in scenes["street"]["error"]
    assert [scenes[k]["status"] for k in ("morning", "alice-reads-a-book-by-the")] == ["done", "done"]


def test_execution_error_names_the_node(comfy, make_story, options):
    server = comfy.start(fail_seed=SEEDS[0])
    report, runner = run(make_story(), [server], options)
    assert report.failed == {"01-morning": "node 7 (KSampler) raised RuntimeError: CUDA out of memory (fake)"}
    assert sorted(report.rendered) == STEMS[1:]
    sheet = Image.open(runner.story_dir / "contact-sheet.png").convert("RGB")
    assert sheet.getpixel((8 + 128, 8 + 128)) == (64, 64, 64)  # placeholder for the failed scene


def test_validation_against_object_info_happens_before_queueing(comfy, make_story, options):
    server = comfy.start()
    path = make_story(sampling={"sampler_name": "eulr"}, values={"weight": 5.0},
                      bindings={"weight": {"title": "StoryMaker", "input": "weight"}})
    with pytest.raises(ValidationFailed) as info:
        run(path, [server], options)
    message = str(info.value)
    assert "scenes 01-morning, 02-street, 03-alice-reads-a-book-by-the: node 7 (KSampler): input 'sampler_name' " \
           "is 'eulr', not offered by this server" in message
    assert "node 3 (TestCharacterApply \"StoryMaker\"): input 'weight' is 5.0, above the maximum 2.0" in message
    assert server.requests["POST /prompt"] == 0


def test_damaged_download_is_fetched_again(comfy, make_story, options, caplog):
    server = comfy.start(corrupt_views=2)
    report, runner = run(make_story(), [server], options)
    assert report.ok
    assert server.requests["GET /view"] == 3 + 2
    assert "is damaged" in caplog.text
    assert_scene_files(runner)


def test_resume_after_interruption_skips_verified_scenes(comfy, make_story, options):
    path = make_story()
    first = comfy.start(die_after_accepting=3)
    report, runner = run(path, [first], options, max_queue=1)
    assert report.rendered == STEMS[:2] and report.not_rendered == STEMS[2:]
    assert "no ComfyUI server is left" in report.message and "rerun to resume" in report.message
    done = {p: (runner.story_dir / f"{p}.png").stat() for p in STEMS[:2]}

    second = comfy.start()
    report, runner = run(path, [second], options)
    assert report.skipped == STEMS[:2] and report.rendered == STEMS[2:]
    assert [p["7"]["inputs"]["seed"] for _, p in second.accepted] == SEEDS[2:]
    for stem, stat in done.items():  # untouched: same inode, same mtime
        now = (runner.story_dir / f"{stem}.png").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert_scene_files(runner)

    report, runner = run(path, [], options)  # all verified: no server needed at all
    assert report.ok and report.skipped == STEMS and not runner.needs_server()


def test_damaged_local_file_is_kept_and_fetched_again(comfy, make_story, options, caplog):
    path = make_story()
    server = comfy.start()
    run(path, [server], options)
    story = options.out_dir / "test-story"
    (story / "02-street.png").write_bytes(b"edited by hand")
    (story / "01-morning.png").unlink()
    report, runner = run(path, [server], options)
    assert sorted(report.refetched) == STEMS[:2] and report.rendered == []
    assert len(server.accepted) == 3  # nothing was rendered again
    assert (story / "02-street.png").read_bytes() == b"edited by hand"
    assert "does not match its recorded sha256" in caplog.text
    assert_scene_files(runner, {STEMS[0]: "01-morning.png", STEMS[1]: "02-street-v2.png",
                                STEMS[2]: f"{STEMS[2]}.png"})


def test_damaged_file_is_fetched_from_a_restarted_server_on_another_port(comfy, make_story, options):
    """A ComfyUI the runner starts has a new port each run but the same output folder."""
    path = make_story()
    first = comfy.start()
    run(path, [first], options)
    comfy.kill(first)
    restarted = comfy.start()
    restarted.outputs = dict(first.outputs)
    story = options.out_dir / "test-story"
    (story / "02-street.png").unlink()
    report, runner = run(path, [restarted], options)
    assert report.refetched == ["02-street"] and report.rendered == [] and restarted.accepted == []
    assert manifest(runner)["scenes"]["street"]["server"] == restarted.url
    assert_scene_files(runner)


def test_damaged_file_is_rendered_again_when_the_server_lost_it(comfy, make_story, options):
    path = make_story()
    run(path, [comfy.start()], options)
    story = options.out_dir / "test-story"
    (story / "02-street.png").write_bytes(b"damaged")
    other = comfy.start()
    report, runner = run(path, [other], options)
    assert report.rendered == ["02-street"] and len(other.accepted) == 1
    rec = manifest(runner)["scenes"]["street"]
    assert rec["file"] == "02-street-v2.png" and rec["superseded"][0]["file"] == "02-street.png"
    assert (story / "02-street.png").read_bytes() == b"damaged"
    assert_scene_files(runner)


def test_changed_scene_is_rendered_again_and_the_old_file_kept(comfy, make_story, options):
    server = comfy.start()
    path = make_story()
    _, runner = run(path, [server], options)
    old = (runner.story_dir / "02-street.png").read_bytes()
    doc = yaml.safe_load(path.read_text())
    doc["scenes"][1]["prompt"] = "alice runs down a rainy street"
    path.write_text(yaml.safe_dump(doc))
    report, runner = run(path, [server], options)
    assert report.rendered == ["02-street"] and report.skipped == [STEMS[0], STEMS[2]]
    assert (runner.story_dir / "02-street.png").read_bytes() == old
    rec = manifest(runner)["scenes"]["street"]
    assert rec["file"] == "02-street-v2.png" and rec["superseded"][0]["why"] == "the story changed this scene"
    assert_scene_files(runner)


def test_a_server_that_picks_its_own_prompt_ids_is_followed_by_them(comfy, make_story, options):
    """ComfyUI before July 2025 ignores the client's prompt_id: the id it answers is the one to watch."""
    server = comfy.start(own_prompt_ids=True)
    report, runner = run(make_story(), [server], options, scene_timeout=2.0)
    assert report.ok and sorted(report.rendered) == STEMS
    scenes = manifest(runner)["scenes"]
    assert [scenes[p.id]["prompt_id"] for p in runner.plans] == [pid for pid, _ in server.accepted]
    assert all(scenes[p.id]["attempts"][-1]["prompt_id"] == scenes[p.id]["prompt_id"] for p in runner.plans)
    assert_scene_files(runner)


def test_inserting_removing_and_reordering_scenes_renders_only_the_new_scene(comfy, make_story, options):
    """A scene without `seed:` keeps its seed (and image) wherever it moves in the story."""
    server = comfy.start()
    run(make_story(), [server], options)
    scenes = [{"id": "prologue", "prompt": "alice wakes up"}, SCENES[2], SCENES[0]]  # street removed
    report, runner = run(make_story(scenes=scenes), [server], options)
    assert report.rendered == ["01-prologue"] and len(server.accepted) == 4
    assert report.skipped == ["02-alice-reads-a-book-by-the", "03-morning"]
    assert_scene_files(runner)


@pytest.mark.parametrize("own_prompt_ids", [False, True], ids=["client-ids", "server-ids"])
def test_cancelled_run_leaves_queued_prompt_that_the_next_run_collects(comfy, make_story, options, own_prompt_ids):
    server = comfy.start(own_prompt_ids=own_prompt_ids)
    comfy.call(server.pause)
    path = make_story()

    async def interrupted():
        runner = StoryRunner(path, [server.url], dataclasses.replace(options, max_queue=1))
        task = asyncio.ensure_future(runner.run())
        while not server.accepted:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return runner

    runner = asyncio.run(interrupted())
    rec = manifest(runner)["scenes"]["morning"]
    assert rec["status"] == "queued" and rec["prompt_id"] == server.accepted[0][0]
    assert {manifest(runner)["scenes"][k]["status"] for k in ("street", "alice-reads-a-book-by-the")} == {"pending"}

    comfy.call(server.resume)
    report, runner = run(path, [server], options)
    assert report.ok and len(server.accepted) == 3  # the queued prompt was collected, not queued again
    assert manifest(runner)["scenes"]["morning"]["prompt_id"] == server.accepted[0][0]
    assert_scene_files(runner)


def test_scene_timeout_moves_the_scene_to_another_server(comfy, make_story, options):
    stuck, healthy = comfy.start(), comfy.start()
    comfy.call(stuck.pause)
    start = time.monotonic()
    report, runner = run(make_story(), [stuck, healthy], options, scene_timeout=1.0)
    assert report.ok and len(healthy.accepted) == 3
    assert time.monotonic() - start < 2.0  # every scene on the stuck server moved at the first timeout
    assert stuck.requests["POST /queue"] >= 1 and stuck.pending == []  # our prompts were taken back
    outcomes = [a["outcome"] for a in manifest(runner)["scenes"]["morning"]["attempts"]]
    assert outcomes == ["SceneTimeout", "done"]
    assert_scene_files(runner)


def test_unreachable_servers(comfy, make_story, options):
    dead = f"http://127.0.0.1:{free_port()}"
    server = comfy.start()
    report, runner = run(make_story(), [dead, server], options)
    assert report.ok and len(server.accepted) == 3
    with pytest.raises(NoServerLeft, match=f"no ComfyUI server is left \\({dead}: "):
        run(make_story(name="other"), [dead], options)


def test_story_manifest_is_an_evaluation_manifest(comfy, make_story, options, story_dir):
    """`python -m storymaker evaluate story/<name>` reads the runner's manifest as it is: the cast's
    references, each scene's file, prompt, characters and seed."""
    from storymaker.evaluate.manifest import load_manifest

    report, runner = run(make_story(), [comfy.start()], options)
    assert report.ok
    scored = load_manifest(runner.story_dir)
    assert scored.references == {"alice": (story_dir / "refs" / "alice.png").resolve()}
    assert sorted(entry.file.name for entry in scored.images) == sorted(f"{s}.png" for s in STEMS)
    assert all(entry.characters == ("alice",) and entry.prompt and entry.seed is not None for entry in scored.images)


def test_manifest_follows_story_edits_for_evaluation(comfy, make_story, options, story_dir):
    """A renamed cast member and a removed scene change the manifest, not the images: `evaluate` reads
    the new names and no longer scores the removed scene; put back unchanged, it is not rendered again."""
    from storymaker.evaluate.manifest import load_manifest

    server = comfy.start()
    run(make_story(), [server], options)
    report, runner = run(make_story(cast=[{"name": "Alicia", "image": "refs/alice.png"}]), [server], options)
    assert report.skipped == STEMS and len(server.accepted) == 3
    assert {e.characters for e in load_manifest(runner.story_dir).images} == {("Alicia",)}

    scenes = [{"id": "intro", "prompt": "alice wakes up"}, SCENES[0], SCENES[1]]
    report, runner = run(make_story(scenes=scenes), [server], options)
    assert report.rendered == ["01-intro"] and report.skipped == ["02-morning", "03-street"]
    rec = manifest(runner)["scenes"]["morning"]
    assert (rec["index"], rec["stem"], rec["file"]) == (2, "02-morning", "01-morning.png")
    assert rec["characters"] == ["alice"]
    removed = manifest(runner)["scenes"]["alice-reads-a-book-by-the"]
    assert removed["status"] == "removed" and removed["file"] is None
    assert removed["superseded"][-1]["file"] == f"{STEMS[2]}.png" and (runner.story_dir / f"{STEMS[2]}.png").exists()
    scored = load_manifest(runner.story_dir)
    assert sorted(e.file.name for e in scored.images) == ["01-intro.png", "01-morning.png", "02-street.png"]

    report, runner = run(make_story(), [server], options)  # the removed scene is back, unchanged
    assert report.rendered == [] and report.skipped == STEMS and len(server.accepted) == 4
    assert manifest(runner)["scenes"]["alice-reads-a-book-by-the"]["file"] == f"{STEMS[2]}.png"
    assert_scene_files(runner)


def interrupt_after(path, server, options, accepted: int):
    """Run until the server accepted ``accepted`` prompts, then cancel the run as Ctrl-C does."""
    async def interrupted():
        task = asyncio.ensure_future(StoryRunner(path, [server.url], options).run())
        while len(server.accepted) < accepted:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    asyncio.run(interrupted())


def test_prompts_queued_for_a_scene_that_changed_are_taken_back(comfy, make_story, options):
    """Ctrl-C with scenes queued, fix the prompts, rerun: the old prompts must not render first."""
    server = comfy.start()
    comfy.call(server.pause)
    path = make_story()
    interrupt_after(path, server, options, 2)
    stale = [pid for pid, _ in server.accepted]
    scenes = [{**SCENES[0], "prompt": SCENES[0]["prompt"] + ", fixed"}]  # street (queued too) removed
    comfy.hold_until([server], lambda: len(server.accepted) > 2)
    report, runner = run(make_story(scenes=scenes), [server], options)
    assert report.ok and report.rendered == ["01-morning"]
    assert manifest(runner)["scenes"]["street"]["status"] == "removed"
    assert not any(pid in server.history for pid in stale) and server.pending == []
    assert server.requests["POST /queue"] == 1  # both taken back at once
    assert_scene_files(runner)


def test_every_image_of_a_batch_is_saved_and_verified(comfy, make_story, options, story_dir):
    """batch_size 3: the first image is the scene's, the others are NN-scene-b2/-b3, recorded with sha256."""
    from storymaker.evaluate.manifest import load_manifest

    wf = json.loads((story_dir / "workflows" / "one.json").read_text())
    wf["6"]["inputs"]["batch_size"] = 3
    (story_dir / "workflows" / "batch.json").write_text(json.dumps(wf))
    path, server = make_story(workflow="workflows/batch.json", scenes=SCENES[1:2]), comfy.start()
    report, runner = run(path, [server], options)
    assert report.ok and report.rendered == ["01-street"]
    rec = manifest(runner)["scenes"]["street"]
    assert rec["file"] == "01-street.png" and [b["file"] for b in rec["batch_files"]] == ["01-street-b2.png",
                                                                                       "01-street-b3.png"]
    for k, entry in enumerate(rec["batch_files"], 1):
        assert entry["sha256"] == file_sha256(runner.story_dir / entry["file"])
        assert color(runner.story_dir / entry["file"]) == scene_color(7 + k, SCENES[1]["prompt"])
    assert [e.file.name for e in load_manifest(runner.story_dir).images] == ["01-street.png"]  # scored: one

    (runner.story_dir / "01-street-b3.png").unlink()  # a damaged batch file is fetched again, not re-rendered
    report, runner = run(path, [server], options)
    assert report.refetched == ["01-street"] and len(server.accepted) == 1
    assert color(runner.story_dir / "01-street-b3.png") == scene_color(9, SCENES[1]["prompt"])
    report, runner = run(path, [server], options)
    assert report.skipped == ["01-street"]
    assert_scene_files(runner)
