"""`tessera evaluate`: a model directory, as `tessera serve --model` serves it, against the
shapes world's pixel checker.

    tessera evaluate --model ops/bundled/shapes-dalle --out runs/eval --card

Writes report.json and contact_sheet.png to --out and, with --card, the figures into
the model card (README.md in the model directory). The checker reads only pixels.

It stands beside `tessera serve`, not in ops/training: it evaluates the graph the server's
configuration builds (served_graph), run in process by LocalPipeline, and draws the client's
contact sheet, so it needs the server and the client where training needs neither.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import time
from pathlib import Path

import torch
from PIL import Image

from tessera.clients.sheet import contact_sheet
from tessera.ops.families.tessera.dvae import uint8_pixels
from tessera.ops.messages import GenerateParams
from tessera.ops.pipeline import LocalPipeline
from tessera.ops.shapes.checker import check_image, scene_attributes
from tessera.ops.shapes.world import ATTRIBUTES, HELD_OUT, caption, random_scene, render
from tessera.ops.training.data import alter, render_batch, to_tensor
from tessera.server.config import served_graph
from tessera.server.engine import GraphConfig

log = logging.getLogger("tessera.evaluate")

BARS = {
    "dvae_roundtrip_attribute_rate": 0.99,
    "top1_all_attributes": 0.80,
    "top1_color_and_shape": 0.90,
    "rerank_lift_points": 15.0,
    "zh_vs_en_gap_points": 5.0,       # at most
    "clip_pick_true_caption": 0.90,
    "held_out_color_and_shape": 0.50,
}


def _pil(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def dvae_roundtrip(pipe: LocalPipeline, n: int, seed: int) -> dict:
    rng = random.Random(f"{seed}/eval/dvae")
    hits = total = 0
    per = {a: 0 for a in ATTRIBUTES}
    for start in range(0, n, 64):
        scenes, images = render_batch(rng, min(64, n - start))
        dvae = pipe.bundle.dvae
        recon = uint8_pixels(dvae.decode(dvae.encode(images))).cpu().numpy()  # as the model saves them
        for scene, arr in zip(scenes, recon):
            ok = check_image(Image.fromarray(arr), scene_attributes(scene))
            for a, v in ok.items():
                per[a] += v
            hits += sum(ok.values())
            total += len(ok)
    return {"rate": hits / total, "per_attribute": {a: v / n for a, v in per.items()}, "images": n}


def clip_pick(pipe: LocalPipeline, n: int, seed: int) -> float:
    """CLIP picks the true caption among five that differ from it in one attribute."""
    rng = random.Random(f"{seed}/eval/clip")
    tok, clip = pipe.bundle.tokenizer, pipe.bundle.clip.model
    right = 0
    for _ in range(n):
        scene = random_scene(rng)
        language = rng.choice(("en", "zh"))
        others = [alter(scene, a, rng) for a in rng.sample(ATTRIBUTES, 4)]
        texts = [caption(s, language) for s in [scene] + others]
        image = to_tensor([render(scene, rng)])
        with torch.inference_mode():
            scores = clip.encode_text(torch.tensor([tok.encode(t) for t in texts])) @ clip.encode_image(image).t()
        right += int(scores.squeeze(1).argmax()) == 0
    return right / n


def generation(pipe: LocalPipeline, prompts: list[tuple[str, dict, int]], candidates: int) -> dict:
    """Top-1 after rerank vs the unreranked candidate 0, per prompt."""
    requests = [GenerateParams(p, num_images=candidates, num_candidates=candidates, seed=s) for p, _, s in prompts]
    results = []
    for start in range(0, len(requests), 8):
        results += [ranked.images for ranked in pipe.generate(requests[start:start + 8])]
    rows = []
    for (prompt, named, _), images in zip(prompts, results):
        top = check_image(_pil(images[0].png), named)
        first = next(im for im in images if im.candidate_index == 0)
        single = check_image(_pil(first.png), named)
        rows.append({"prompt": prompt, "top1": top, "single": single, "images": images})
    n = len(rows)

    def rate(key, attrs=None):
        return sum(all(v for a, v in r[key].items() if attrs is None or a in attrs) for r in rows) / n

    return {"prompts": n,
            "top1_all_attributes": rate("top1"), "top1_color_and_shape": rate("top1", ("color", "shape")),
            "single_all_attributes": rate("single"),
            "single_color_and_shape": rate("single", ("color", "shape")),
            "top1_per_attribute": {a: sum(r["top1"][a] for r in rows) / n for a in ATTRIBUTES},
            "_rows": rows}


def evaluate(graph: GraphConfig, out: Path, n_prompts: int, candidates: int, seed: int,
             model_dir: str | None = None) -> dict:
    """The figures of the model `graph` serves (model_dir names it in the report; None: bundled)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pipe = LocalPipeline(graph, capacity=128)
    rng = random.Random(f"{seed}/eval/prompts")
    scenes = [random_scene(rng) for _ in range(n_prompts)]
    en = [(caption(s, "en"), scene_attributes(s), 1000 + i) for i, s in enumerate(scenes)]
    zh = [(caption(s, "zh"), scene_attributes(s), 1000 + i) for i, s in enumerate(scenes)]
    held = []
    for i in range(max(3, n_prompts // 4)):
        color, shape = sorted(HELD_OUT)[i % len(HELD_OUT)]
        s = random_scene(rng, allow_held_out=True, color=color, shape=shape)
        held.append((caption(s, "en" if i % 2 == 0 else "zh"), scene_attributes(s), 5000 + i))
    log.info("dVAE round trip...")
    dv = dvae_roundtrip(pipe, 512, seed)
    log.info("CLIP caption picking...")
    pick = clip_pick(pipe, 300, seed)
    log.info("generating %d prompts x %d candidates...", 2 * n_prompts + len(held), candidates)
    g_en, g_zh, g_held = (generation(pipe, p, candidates) for p in (en, zh, held))
    both = (g_en["top1_all_attributes"] + g_zh["top1_all_attributes"]) / 2
    figures = {
        "dvae_roundtrip_attribute_rate": dv["rate"],
        "top1_all_attributes": both,
        "top1_color_and_shape": (g_en["top1_color_and_shape"] + g_zh["top1_color_and_shape"]) / 2,
        "rerank_lift_points": 100 * (both - (g_en["single_all_attributes"] + g_zh["single_all_attributes"]) / 2),
        "zh_vs_en_gap_points": 100 * abs(g_en["top1_all_attributes"] - g_zh["top1_all_attributes"]),
        "clip_pick_true_caption": pick,
        "held_out_color_and_shape": g_held["top1_color_and_shape"],
    }
    verdict = {k: (v <= BARS[k] if k == "zh_vs_en_gap_points" else v >= BARS[k]) for k, v in figures.items()}
    report = {
        "model_dir": str(model_dir or "bundled"), "seed": seed, "candidates": candidates,
        "figures": figures, "bars": BARS, "meets_bar": verdict,
        "dvae": dv, "english": _public(g_en), "chinese": _public(g_zh), "held_out": _public(g_held),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    rows = [[_pil(im.png) for im in r["images"]] for r in g_en["_rows"][:8] + g_held["_rows"][:2]]
    labels = [r["prompt"] for r in g_en["_rows"][:8] + g_held["_rows"][:2]]  # Chinese ones too (sheet.py)
    contact_sheet(rows, labels).save(out / "contact_sheet.png")
    return report


def _public(g: dict) -> dict:
    return {k: v for k, v in g.items() if not k.startswith("_")}


def write_card(model_dir: Path, report: dict, sheet: str) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    train = cfg.get("training", {})
    stages = train.get("stages", {})
    f, ok = report["figures"], report["meets_bar"]

    def line(key, label, pct=True):
        v, bar = f[key], BARS[key]
        shown = f"{100 * v:.2f}%" if pct else f"{v:.1f} points"
        need = (f"≤ {bar:g} points" if key == "zh_vs_en_gap_points"
                else (f"≥ {100 * bar:.0f}%" if pct else f"≥ {bar:g} points"))
        gap = "" if ok[key] else f" — short by {abs(100 * (bar - v)) if pct else abs(bar - v):.2f} points"
        return f"| {label} | {shown} | {need} | {'yes' if ok[key] else 'no'}{gap} |"

    total = sum(s.get("seconds") or 0 for s in stages.values())
    text = f"""# {cfg.get('name', model_dir.name)}: model card

A small DALL·E for the shapes world (`../shared/SHAPES.md`), trained from scratch on CPU
by the project's own script. Everything here is regenerated by the two commands below.

## Training
- Command: `{train.get('command', '?')}` (preset `{train.get('preset')}`, seed {train.get('seed')})
- Data: shapes world rendered on the fly, deterministic by seed; the held-out colour-shape
  pairs (green triangle, purple square, orange circle) are never drawn; captions in English
  and Chinese with every attribute but the shape dropped at p = 0.3; 10% of transformer
  captions dropped entirely, for classifier-free guidance.
- Steps: {', '.join(f"{k} {v.get('steps')} ({v.get('seconds')} s)" for k, v in stages.items())};
  {total / 60:.1f} minutes of training in all on 2 CPU cores (bf16 autocast).
- Models: BPE tokenizer ({cfg['transformer']['text_vocab']} tokens, context {cfg['transformer']['text_len']});
  VQ dVAE {cfg['dvae']['grid']}×{cfg['dvae']['grid']} grid, {cfg['dvae']['n_codes']} codes;
  transformer {cfg['transformer']['n_layer']} layers × {cfg['transformer']['d_model']} wide;
  CLIP {cfg['clip']['d_embed']}-d embeddings.
- Sampling defaults: {cfg.get('sampling')}.

## Evaluation
Command: `tessera evaluate --model {_shown(model_dir)} --out runs/eval --card`
({report['english']['prompts']} full prompts per language over combinations seen in training,
{report['held_out']['prompts']} held-out prompts, {report['candidates']} candidates each;
a pixel-only checker; {report['seconds']:.0f} s).

| figure | measured | bar | met |
|---|---|---|---|
{line('dvae_roundtrip_attribute_rate', 'dVAE round trip: attributes read back')}
{line('top1_all_attributes', 'top-1 of 16 after rerank: all attributes')}
{line('top1_color_and_shape', 'top-1 of 16 after rerank: colour and shape')}
{line('rerank_lift_points', 'rerank lift over one unreranked candidate', pct=False)}
{line('zh_vs_en_gap_points', 'Chinese vs English gap (all attributes)', pct=False)}
{line('clip_pick_true_caption', 'CLIP picks the true caption of five')}
{line('held_out_color_and_shape', 'held-out pairs: colour and shape')}

English top-1 all-attributes {100 * report['english']['top1_all_attributes']:.1f}%,
Chinese {100 * report['chinese']['top1_all_attributes']:.1f}%; per attribute (English top-1):
{', '.join(f"{a} {100 * v:.0f}%" for a, v in report['english']['top1_per_attribute'].items())}.
dVAE round trip per attribute: {', '.join(f"{a} {100 * v:.1f}%" for a, v in report['dvae']['per_attribute'].items())}.

![contact sheet]({sheet})
"""
    (model_dir / "README.md").write_text(text)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`tessera evaluate`'s arguments (tessera.server.cli lists the command)."""
    ap.add_argument("--model", default=None, help="model directory (default: the bundled one)")
    ap.add_argument("--out", type=Path, default=Path("runs/eval"))
    ap.add_argument("--prompts", type=int, default=300,
                    help="full prompts per language (300: a language gap reads to about ±2 points)")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--card", action="store_true", help="write the figures into the model card")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The graph `tessera serve --model` serves, from the same configuration defaults.
    report = evaluate(served_graph(model_dir=args.model), args.out, args.prompts, args.candidates, args.seed,
                      model_dir=args.model)
    print(json.dumps({"figures": report["figures"], "meets_bar": report["meets_bar"]}, indent=2))
    if args.card:
        from tessera.ops.families.tessera.loading import BUNDLED_MODEL_DIR
        model_dir = Path(args.model) if args.model else BUNDLED_MODEL_DIR
        (model_dir / "contact_sheet.png").write_bytes((args.out / "contact_sheet.png").read_bytes())
        write_card(model_dir, report, "contact_sheet.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
