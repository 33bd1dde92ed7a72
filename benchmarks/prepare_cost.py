"""Cost of preparing one character: face analysis, segmentation, crops, two CLIP encodes, the resampler.

    python benchmarks/prepare_cost.py [--insightface-root ROOT] [--sam sam_vit_b_01ec64.pth] [--device cuda]

Runs the pack's own code path (storymaker_core) on the scikit-image astronaut photo. Without real model
files it builds stand-ins of the real sizes: random full-size CLIP ViT-H/14 (open_clip, no download),
random Segment Anything vit_b, the release-size resampler with random weights, and tiny InsightFace models
with the real signatures (their timing is then not buffalo_l's: pass --insightface-root for that). One
image-attention layer is timed on its first call (image K/V computed) and on later calls (K/V cached).
Whether later scenes re-execute any StoryMaker node is measured in a real ComfyUI graph by
`comfyui_graph.py` (its `storymaker_nodes_reexecuted_in_later_scenes`), not here. Prints one summary line
last and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--insightface-root", help="folder holding models/buffalo_l/*.onnx (default: tiny stand-ins)")
    parser.add_argument("--sam", help="Segment Anything checkpoint (default: random vit_b)")
    parser.add_argument("--clip-model", default="ViT-H-14", help="open_clip architecture (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "prepare_cost.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import open_clip
    import torch
    from skimage import data

    from storymaker_core.characters import character_from_reference, person_box_from_face
    from storymaker_core.faces import FaceAnalyzer, FaceAnalyzerConfig
    from storymaker_core.patch import ImageBranchSettings, ImageProjections, LayerPatch, StoryMakerAttention
    from storymaker_core.resampler import StoryMakerResampler
    from storymaker_core.segment import PersonSegmenter
    from support import release_layout, seeded_weights

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    photo = data.astronaut()
    costs = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.insightface_root
        if root is None:
            from fixtures.tiny_insightface import face_at, letterbox_scale, write_tiny_insightface
            scale = letterbox_scale(*photo.shape[:2])
            root = str(write_tiny_insightface(Path(tmp) / "insightface", faces=[face_at(210 * scale, 135 * scale, 90 * scale)]))
        faces = FaceAnalyzer(FaceAnalyzerConfig(root=root, providers=["CUDA", "CPU"] if device.type == "cuda" else ["CPU"]))
        costs["face analysis"] = timed(lambda: faces.select_face(photo), args.repeats, sync)
        face = faces.select_face(photo)

        sam_path = args.sam
        if sam_path is None:
            from segment_anything import sam_model_registry
            sam_path = str(Path(tmp) / "sam_vit_b_random.pth")
            torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), sam_path)
        segmenter = PersonSegmenter(sam_path, device=device)
        box = person_box_from_face(face.bbox, photo.shape[:2])
        costs["segmentation"] = timed(lambda: segmenter.segment(photo, box), args.repeats, sync)
        mask = segmenter.segment(photo, box)
        if args.sam is None:  # random SAM weights segment noise: the crops use the box as the mask
            mask = np.zeros(photo.shape[:2], bool)
            mask[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True

        costs["crops"] = timed(lambda: character_from_reference(photo, mask, face.kps, face.embedding), args.repeats, sync)
        character = character_from_reference(photo, mask, face.kps, face.embedding)

        clip = open_clip.create_model(args.clip_model, pretrained=None).visual.to(device).eval()  # ViT-H: the real size
        crops = torch.from_numpy(np.concatenate([character.character_image, character.face_image])).permute(0, 3, 1, 2)
        pixels = (crops.float() / 255).to(device)
        with torch.no_grad():
            costs[f"CLIP {args.clip_model} encode x2"] = timed(lambda: clip(pixels), args.repeats, sync)

        layout = release_layout()
        with torch.device("meta"):
            resampler = StoryMakerResampler()
        resampler.load_state_dict(seeded_weights(layout["image_proj_model"], 0), assign=True)
        resampler = resampler.to(device).eval()
        inputs = (torch.randn(1, 512, device=device), torch.randn(1, 257, 1280, device=device),
                  torch.randn(1, 257, 1280, device=device))
        with torch.no_grad():
            costs["resampler (+ negative tokens)"] = timed(lambda: (resampler(*inputs), resampler.uncond_tokens(1)),
                                                          args.repeats, sync)
            tokens = resampler(*inputs)
            uncond = resampler.uncond_tokens(1)

        kv = {("middle", 0, 0): (torch.randn(1280, 2048, device=device) * 0.02, torch.randn(1280, 2048, device=device) * 0.02)}
        shared = StoryMakerAttention(ImageProjections(kv), tokens, uncond, ImageBranchSettings())
        patch = LayerPatch(shared, ("middle", 0, 0))
        q = torch.randn(2, 1024, 1280, device=device)
        k = v = torch.randn(2, 77, 1280, device=device)
        extra = {"n_heads": 20, "cond_or_uncond": [1, 0]}
        with torch.no_grad():
            sync()
            start = time.perf_counter()
            patch(q, k, v, extra)  # first step of the first scene: K/V computed
            sync()
            first = time.perf_counter() - start
            later = timed(lambda: patch(q, k, v, extra), args.repeats, sync)  # later steps and scenes: cached

    total = sum(costs.values())
    print(f"device: {args.device}; insightface: {'given' if args.insightface_root else 'tiny stand-ins'}; "
          f"SAM: {'given' if args.sam else 'random vit_b'}; CLIP: random {args.clip_model}; resampler: release size")
    for name, seconds in costs.items():
        print(f"  {name:<32} {seconds * 1000:9.1f} ms")
    print(f"  {'one attn2 layer, first call':<32} {first * 1000:9.1f} ms (image K/V computed)")
    print(f"  {'one attn2 layer, later calls':<32} {later * 1000:9.1f} ms (image K/V cached)")
    result = {"benchmark": "prepare_cost", "device": args.device, "per_character_s": costs, "total_s": total,
              "attn2_first_call_s": first, "attn2_cached_call_s": later}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"prepare_cost: {total * 1000:.0f} ms per character (attn2 later calls {later / first:.2f}x the first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
