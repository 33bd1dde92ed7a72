"""Write every example workflow in both formats: `workflows/NAME.json` (UI) and `workflows/api/NAME.api.json`.

The API files sit in a subfolder because ComfyUI lists every `*.json` of a pack's `workflows/` folder in the
editor's Templates browser, and the editor opens only the UI format from there.

    python scripts/build_workflows.py

Each graph is defined once here; the UI file is derived from the API one with the node specs, so the two
always describe the same graph (tests/workflows checks it again, and validates both against the specs).
Node titles follow the story runner's conventions (`positive`, `negative`, `sampler`, `latent`, `output`,
`character:1`, `mask:1`, `pose`), so any single-scene workflow here is also a story template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from storymaker.workflow_format import api_to_ui  # noqa: E402

# The files each workflow expects (README, "Models"): names are what users save the downloads as.
CHECKPOINT = "sd_xl_base_1.0.safetensors"
STORYMAKER = "mask.bin"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CONTROLNET = "controlnet-openpose-sdxl-1.0.safetensors"
STYLE_LORA = "your_sdxl_style_lora.safetensors"
SAM = "sam_vit_b_01ec64.pth"
NEGATIVE = "bad quality, NSFW, low quality, ugly, disfigured, deformed"


class Graph:
    """API-format prompt builder: `add` returns the node id; `out(id, slot)` is a link."""

    def __init__(self):
        self.nodes = {}

    def add(self, class_type: str, title: str = None, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}
        return node_id


def out(node_id: str, slot: int = 0) -> list:
    return [node_id, slot]


def base(g: Graph):
    """Checkpoint, StoryMaker, InsightFace and CLIP vision loaders."""
    ckpt = g.add("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=CHECKPOINT)
    sm = g.add("StoryMakerLoader", "Load StoryMaker", storymaker_file=STORYMAKER)
    face = g.add("StoryMakerInsightFaceLoader", "Load InsightFace", model_name="buffalo_l", provider="CUDA", det_size=640)
    clip_vision = g.add("CLIPVisionLoader", "Load CLIP Vision", clip_name=CLIP_VISION)
    return ckpt, sm, face, clip_vision


def character(g: Graph, face: str, slot: int, name: str, with_mask: bool = True, **extra) -> str:
    image = g.add("LoadImage", f"character:{slot}", image=f"character_{slot}.png")
    inputs = dict(image=out(image), insightface=out(face), name=name, face_index=0, identity="auto", face_only="default",
                  **extra)
    if with_mask:
        mask = g.add("LoadImageMask", f"mask:{slot}", image=f"character_{slot}_mask.png", channel="red")
        inputs["mask"] = out(mask)
    return g.add("StoryMakerCharacterFromImage", f"Character {slot}: {name}", **inputs)


def scene(g: Graph, model, clip, vae, prompt: str, seed: int, suffix: str = "", positive=None, negative=None,
          width: int = 960, height: int = 1280, prefix: str = "storymaker/scene") -> str:
    """Prompt -> KSampler -> decode -> save. Titles get a suffix when a graph holds several scenes."""
    if positive is None:
        positive = out(g.add("CLIPTextEncode", f"positive{suffix}", text=prompt, clip=clip))
    if negative is None:
        negative = out(g.add("CLIPTextEncode", f"negative{suffix}", text=NEGATIVE, clip=clip))
    latent = g.add("EmptyLatentImage", f"latent{suffix}", width=width, height=height, batch_size=1)
    sampler = g.add("KSampler", f"sampler{suffix}", model=model, seed=seed, steps=25, cfg=7.5,
                    sampler_name="uni_pc", scheduler="normal", positive=positive, negative=negative,
                    latent_image=out(latent), denoise=1.0)
    decoded = g.add("VAEDecode", f"VAE Decode{suffix}", samples=out(sampler), vae=vae)
    return g.add("SaveImage", f"output{suffix}", images=out(decoded), filename_prefix=prefix)


def encode(g: Graph, sm: str, characters: list, clip_vision: str = None, face_only: bool = False) -> str:
    """Encode 1-3 characters (slot order); a saved character needs no CLIP vision."""
    inputs = {f"character_{i + 1}": out(c) for i, c in enumerate(characters)}
    if clip_vision is not None:
        inputs["clip_vision"] = out(clip_vision)
    first = inputs.pop("character_1")
    return g.add("StoryMakerEncodeCharacters", "Encode characters", storymaker=out(sm), character_1=first,
                 face_only=face_only, **inputs)


def apply(g: Graph, model, sm, embeds, **extra) -> str:
    return g.add("StoryMakerApply", "Apply StoryMaker", model=model, storymaker=out(sm), embeds=out(embeds),
                 ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0, **extra)


def one_character(scenes: list, segment: bool = False) -> dict:
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    if segment:  # no mask: Segment Anything cuts the character out
        sam = g.add("StoryMakerSAMLoader", "Load Segment Anything", sam_file=SAM)
        char = character(g, face, 1, "ava", with_mask=False, sam=out(sam))
    else:
        char = character(g, face, 1, "ava")
    embeds = encode(g, sm, [char], clip_vision)
    model = apply(g, out(ckpt), sm, embeds)
    for i, prompt in enumerate(scenes):
        suffix = "" if len(scenes) == 1 else f" {i + 1}"
        scene(g, out(model), out(ckpt, 1), out(ckpt, 2), prompt, seed=666, suffix=suffix)  # one seed: one look
    return g.nodes


# Region masks, left to right: (title, image file) per character slot.
REGIONS = {
    2: [("region 1 (left)", "region_left.png"), ("region 2 (right)", "region_right.png")],
    3: [("region 1 (left)", "region_third_left.png"), ("region 2 (middle)", "region_third_middle.png"),
        ("region 3 (right)", "region_third_right.png")],
}
GROUP_PROMPTS = {
    2: ("a woman and a man taking a selfie in front of the Eiffel tower, the woman on the left, the man on the right",
        1280, 960),
    3: ("three friends on a park bench, a woman on the left, a man in the middle, a girl on the right, photo",
        1344, 768),
}


def characters_in_regions(count: int, segment: bool = False) -> dict:
    """2-3 characters, each kept to its region mask (left to right); ``segment``: Segment Anything cuts each
    character out of its reference, so no character masks are needed (datasets that ship none)."""
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    sam = g.add("StoryMakerSAMLoader", "Load Segment Anything", sam_file=SAM) if segment else None
    extra = {"sam": out(sam)} if segment else {}
    chars = [character(g, face, i + 1, name, with_mask=not segment, **extra)
             for i, name in enumerate(("ava", "ben", "cleo")[:count])]
    embeds = encode(g, sm, chars, clip_vision)
    regions = {f"mask_{i + 1}": out(g.add("LoadImageMask", title, image=file, channel="red"))
               for i, (title, file) in enumerate(REGIONS[count])}
    model = apply(g, out(ckpt), sm, embeds, **regions)
    prompt, width, height = GROUP_PROMPTS[count]
    scene(g, out(model), out(ckpt, 1), out(ckpt, 2), prompt, seed=666, width=width, height=height)
    return g.nodes


def two_characters_regions() -> dict:
    return characters_in_regions(2)


def no_character() -> dict:
    """Plain SDXL, same node titles as the story templates: scenes with nobody on stage."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=CHECKPOINT)
    scene(g, out(ckpt), out(ckpt, 1), out(ckpt, 2), "an empty street at dawn, photo", seed=666, width=1024,
          height=1024)
    return g.nodes


def pose_guided() -> dict:
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    char = character(g, face, 1, "ava")
    embeds = encode(g, sm, [char], clip_vision)
    model = apply(g, out(ckpt), sm, embeds)
    positive = g.add("CLIPTextEncode", "positive", text="a woman dancing in a ballroom, elegant dress", clip=out(ckpt, 1))
    negative = g.add("CLIPTextEncode", "negative", text=NEGATIVE, clip=out(ckpt, 1))
    controlnet = g.add("ControlNetLoader", "Load OpenPose ControlNet", control_net_name=CONTROLNET)
    pose = g.add("LoadImage", "pose", image="pose.png")
    control = g.add("ControlNetApplyAdvanced", "Apply pose", positive=out(positive), negative=out(negative),
                    control_net=out(controlnet), image=out(pose), strength=0.8, start_percent=0.0, end_percent=1.0)
    scene(g, out(model), out(ckpt, 1), out(ckpt, 2), "", seed=666, positive=out(control, 0), negative=out(control, 1))
    return g.nodes


def clothing_swap() -> dict:
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    clothing = g.add("LoadImage", "clothing", image="clothing.png")
    # The clothing image replaces the masked character crop, so a mask would be loaded for nothing: none here.
    char = character(g, face, 1, "ava", with_mask=False, clothing=out(clothing))
    embeds = encode(g, sm, [char], clip_vision)
    model = apply(g, out(ckpt), sm, embeds)
    scene(g, out(model), out(ckpt, 1), out(ckpt, 2), "a woman walking in a park, full body, photo", seed=666)
    return g.nodes


def face_only_style() -> dict:
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    lora = g.add("LoraLoader", "Style LoRA", model=out(ckpt), clip=out(ckpt, 1), lora_name=STYLE_LORA,
                 strength_model=0.8, strength_clip=0.8)
    char = character(g, face, 1, "ava")
    embeds = encode(g, sm, [char], clip_vision, face_only=True)
    model = apply(g, out(lora), sm, embeds)
    scene(g, out(model), out(lora, 1), out(ckpt, 2), "a watercolor illustration of a woman reading under a tree",
          seed=666, width=1024, height=1024)
    return g.nodes


def character_blend() -> dict:
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    first, second = character(g, face, 1, "ava"), character(g, face, 2, "ben")
    blend = g.add("StoryMakerBlendCharacters", "Blend characters", character_a=out(first), character_b=out(second),
                  weight=0.5)
    embeds = encode(g, sm, [blend], clip_vision)
    model = apply(g, out(ckpt), sm, embeds)
    scene(g, out(model), out(ckpt, 1), out(ckpt, 2), "a portrait photo of a person in a cafe", seed=666,
          width=1024, height=1024)
    return g.nodes


def save_character() -> dict:
    g = Graph()  # saving needs neither the checkpoint nor StoryMaker
    face = g.add("StoryMakerInsightFaceLoader", "Load InsightFace", model_name="buffalo_l", provider="CUDA", det_size=640)
    clip_vision = g.add("CLIPVisionLoader", "Load CLIP Vision", clip_name=CLIP_VISION)
    char = character(g, face, 1, "ava")
    g.add("StoryMakerSaveCharacter", "Save character", character=out(char), filename="ava", clip_vision=out(clip_vision))
    return g.nodes


def reuse_saved_character() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=CHECKPOINT)
    sm = g.add("StoryMakerLoader", "Load StoryMaker", storymaker_file=STORYMAKER)
    saved = g.add("StoryMakerLoadCharacter", "Load character", character_file="ava.safetensors")
    embeds = encode(g, sm, [saved])  # no CLIP vision, no InsightFace: the file holds the features
    model = apply(g, out(ckpt), sm, embeds)
    scene(g, out(model), out(ckpt, 1), out(ckpt, 2), "a woman hiking in the mountains, photo", seed=666)
    return g.nodes


STORY_SCRIPT = """# one scene per line: [names] on stage (left to right), options after |
[ava] drinking coffee in a sunny kitchen, morning light
[ava, ben] walking side by side in a park, autumn | seed=42
[ben] reading a newspaper on a bench | candidates=4
[ben, ava, rex] at a picnic | layout=thirds
[NC] an empty street at dawn, rain
"""


def story_in_one_node() -> dict:
    """A whole story from one script: cast -> StoryMaker Story -> images, consistency scores and a storyboard."""
    g = Graph()
    ckpt, sm, face, clip_vision = base(g)
    members = [character(g, face, slot, name) for slot, name in ((1, "ava"), (2, "ben"), (3, "rex"))]
    cast = g.add("StoryMakerCast", "Cast", **{f"characters.character_{i}": out(m) for i, m in enumerate(members, 1)},
                 face_only=False, descriptions="# optional: a description replaces the name in the prompt\n"
                                               "rex: a small brown dog", clip_vision=out(clip_vision))
    story = g.add("StoryMakerStory", "Story", model=out(ckpt), clip=out(ckpt, 1), vae=out(ckpt, 2), storymaker=out(sm),
                  cast=out(cast), script=STORY_SCRIPT, story_name="ava-and-ben", style_prefix="photo",
                  style_suffix="high quality", negative=NEGATIVE, width=1024, height=1024, seed=666, steps=25, cfg=7.5,
                  sampler_name="uni_pc", scheduler="normal", ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0)
    g.add("PreviewImage", "Story images", images=out(story))
    scores = g.add("StoryMakerConsistencyScores", "Consistency scores", images=out(story), story=out(story, 1),
                   cast=out(cast), insightface=out(face), clip_vision=out(clip_vision), face_threshold=0.3,
                   clip_threshold=0.75)
    page = g.add("StoryMakerStoryboard", "Storyboard", images=out(story), story=out(scores), style="grid",
                 columns=3, panel_width=384, gutter=16, order="", captions=True, rows="3,2", page_width=1536,
                 background="dark")
    g.add("SaveImage", "Storyboard page", images=out(page), filename_prefix="storymaker/ava-and-ben-storyboard")
    return g.nodes


WORKFLOWS = {
    "01-one-character-story": lambda: one_character([
        "a woman drinking coffee in a sunny kitchen, morning light, photo",
        "a woman riding a bicycle through a city park, noon, photo",
        "a woman reading a book by the fireplace, evening, photo"]),  # needs only the required models
    "02-two-characters-regions": two_characters_regions,
    "03-pose-guided": pose_guided,
    "04-clothing-swap": clothing_swap,
    "05-face-only-style-lora": face_only_style,
    "06-character-blend": character_blend,
    "07-save-character": save_character,
    "08-reuse-saved-character": reuse_saved_character,
    "09-automatic-mask-sam": lambda: one_character(["a woman drinking coffee in a sunny kitchen, morning light, photo"],
                                                   segment=True),  # no mask file: Segment Anything makes it
    "10-story-in-one-node": story_in_one_node,
    "story-template-one-character": lambda: one_character(["a woman in a sunny kitchen, photo"]),
    "story-template-two-characters": two_characters_regions,
    "story-template-three-characters": lambda: characters_in_regions(3),
    "story-template-no-character": no_character,
    # Segment Anything instead of character masks (converted datasets, e.g. ViStoryBench, ship no masks)
    "story-template-one-character-sam": lambda: one_character(["a woman in a sunny kitchen, photo"], segment=True),
    "story-template-two-characters-sam": lambda: characters_in_regions(2, segment=True),
    "story-template-three-characters-sam": lambda: characters_in_regions(3, segment=True),
}


ABOUT = {  # what each example shows, for the note at its top (the files it needs are listed after this)
    "01-one-character-story": "One character, three scenes. Every scene keeps her face, hair and clothes; only the prompt "
                              "changes, and one seed keeps the look.",
    "02-two-characters-regions": "Two characters in one image. Each region mask keeps its character on its side "
                                 "(character 1 = left region); say who is where in the prompt too.",
    "03-pose-guided": "A character in a pose from an OpenPose image, through ControlNet on both prompts.",
    "04-clothing-swap": "The character's face and identity from her photo, the outfit from a clothing-only image "
                        "(no mask needed).",
    "05-face-only-style-lora": "Face only (`face_only`): the prompt and a style LoRA dress and paint the character.",
    "06-character-blend": "Two characters blended into a new one; `weight` moves between them (0 = first, 1 = second).",
    "07-save-character": "Prepares a character once and saves it to `models/storymaker_characters/ava.safetensors`, "
                         "so later workflows need neither InsightFace nor CLIP vision (see 08).",
    "08-reuse-saved-character": "A saved character (from 07) in a new scene: no photo, no face analysis.",
    "09-automatic-mask-sam": "No mask file: Segment Anything cuts the character out around the detected face.",
    "10-story-in-one-node": "A whole story in one node: name the characters, write one scene per line in the Story "
                            "node (`[ava, ben] walking in a park | seed=42`, `[NC]` = nobody) and queue. Edit a line "
                            "and queue again: only that scene is sampled again. Images: "
                            "`output/storymaker/<story_name>/`; grammar: the pack's `docs/story-script.md`.",
    "story-template-one-character": "Template for the story runner (`python -m storymaker story`): it fills the "
                                    "nodes titled character:1, mask:1, positive, negative, latent, sampler, output.",
    "story-template-two-characters": "Template for the story runner with two characters and their regions: it fills "
                                     "character:1/2, mask:1/2, positive, negative, latent, sampler, output.",
    "story-template-three-characters": "Template for the story runner with three characters, each kept to a third of "
                                       "the image (left, middle, right): character:1/2/3, mask:1/2/3, positive, "
                                       "negative, latent, sampler, output.",
    "story-template-no-character": "Template for the story runner's scenes with no character: plain SDXL (positive, "
                                   "negative, latent, sampler, output).",
    "story-template-one-character-sam": "Story template, one character, no mask file: Segment Anything cuts the "
                                        "character out of its reference (character:1, positive, negative, latent, "
                                        "sampler, output).",
    "story-template-two-characters-sam": "Story template, two characters in left/right regions, no mask files: Segment "
                                         "Anything cuts each character out of its reference (character:1/2).",
    "story-template-three-characters-sam": "Story template, three characters in left/middle/right thirds, no mask files: "
                                           "Segment Anything cuts each character out of its reference (character:1/2/3).",
}
TIPS = ("`ip_scale` is the likeness strength (0.8 as released; lower it for more freedom from the reference), "
        "`lora_scale` StoryMaker's LoRA. A clear, front-lit photo with the face visible works best.")


def note_for(name: str, api: dict) -> str:
    """Markdown for the note at the top of a UI workflow: what it shows and every file it reads."""
    from storymaker.story.validate import FILE_FOLDERS

    models, images = [], []
    for node in api.values():
        for input_name, value in node["inputs"].items():
            folder = FILE_FOLDERS.get((node["class_type"], input_name))
            if folder == "input":
                images.append(f"`{value}`")
            elif folder:
                models.append(f"`{folder}/{value}`")
        if node["class_type"] == "StoryMakerInsightFaceLoader":
            models.append(f"`models/insightface/models/{node['inputs']['model_name']}/` (the .onnx files)")
    lines = [ABOUT[name], "", "**Models** (inside `ComfyUI/`; downloads: the pack's README, \"Models\"):"]
    lines += [f"- {m}" for m in dict.fromkeys(models)]
    if images:
        lines += ["", "**Images** (in `ComfyUI/input/`, or pick your own in the image nodes): "
                  + ", ".join(dict.fromkeys(images))]
    return "\n".join(lines + ["", TIPS])


def ui_workflow(name: str, api: dict, specs: dict) -> dict:
    return api_to_ui(api, specs, note=note_for(name, api))


def main() -> int:
    from support.node_specs import node_specs

    specs = node_specs()
    folder = REPO / "workflows"
    (folder / "api").mkdir(parents=True, exist_ok=True)
    for name, build in WORKFLOWS.items():
        api = build()
        (folder / "api" / f"{name}.api.json").write_text(json.dumps(api, indent=2) + "\n")
        (folder / f"{name}.json").write_text(json.dumps(ui_workflow(name, api, specs), indent=2) + "\n")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.api.json ({len(api)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
