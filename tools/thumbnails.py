"""Thumbnails for the template browser: ``example_workflows/<title>.jpg``, one per template.

``python -m tools.thumbnails`` starts the real ComfyUI server with the pack, queues each demo-model
template's API twin as shipped, and lays out what its Save Image nodes wrote (each with its
title) into one small JPEG; it prints how long each run took on this machine. The SD 1.5
template needs a checkpoint and a SAeUron SAE that are not here: its thumbnail is a screenshot
of the graph itself in the real frontend, under a banner that says so.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = 128  # one picture in a panel (the demo model's 32 px, enlarged 4x by the workflow)
PANEL = 2 * CELL  # up to 4 pictures (2 x 2) per Save Image node
LABEL_H = 26
MAX_COLUMNS = 3
BG, FG = (32, 32, 32), (230, 230, 230)
BANNER = (161, 48, 155)


def _font(size: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)


def _panel(pictures, title: str):
    """Four pictures in a 2 x 2 grid, or (fewer than 4) the first one filling the panel, each kept
    in its proportions; the node's title below."""
    from PIL import Image, ImageDraw
    pictures = pictures[:4] if len(pictures) >= 4 else pictures[:1]
    cell = PANEL if len(pictures) == 1 else CELL
    rows = -(-len(pictures) // 2) if len(pictures) > 1 else 1
    panel = Image.new("RGB", (PANEL, rows * cell + LABEL_H), BG)
    for i, im in enumerate(pictures):
        k = min(cell / im.width, cell / im.height)  # up (pixel art stays sharp) or down to the cell
        im = im.resize((round(im.width * k), round(im.height * k)), Image.NEAREST if k >= 1 else Image.LANCZOS)
        x0, y0 = (i % 2) * cell, (i // 2) * cell
        panel.paste(im, (x0 + (cell - im.width) // 2, y0 + (cell - im.height) // 2))
    draw = ImageDraw.Draw(panel)
    draw.text((PANEL // 2, rows * cell + LABEL_H // 2), title, fill=FG, font=_font(15), anchor="mm")
    return panel


def compose(panels: list, path: str):
    from PIL import Image
    # the template browser shows thumbnails in square cards, cropped to fill: lay the panels out
    # about square, then pad the sheet to a square
    cols = min(MAX_COLUMNS, math.ceil(math.sqrt(len(panels))))
    rows = -(-len(panels) // cols)
    gap = 6
    w, h = PANEL, max(p.height for p in panels)
    sheet = Image.new("RGB", (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap), (18, 18, 18))
    for i, p in enumerate(panels):
        sheet.paste(p, (gap + (i % cols) * (w + gap), gap + (i // cols) * (h + gap) + h - p.height))
    side = max(sheet.size)
    square = Image.new("RGB", (side, side), (18, 18, 18))
    square.paste(sheet, ((side - sheet.width) // 2, (side - sheet.height) // 2))
    square.save(path, "JPEG", quality=85, optimize=True)


def from_output(server, name: str) -> tuple[list, float]:
    """Queue the template's API twin; (panels of its Save Image outputs in graph order, seconds)."""
    from PIL import Image

    from tools import workflows as wf
    ui, api = wf.load(name)
    t0 = time.time()
    entry = server.run(api, timeout=1800)
    seconds = time.time() - t0
    panels = []
    where = {str(n["id"]): (n["pos"][1], n["pos"][0]) for n in ui["nodes"]}  # as on the canvas: by row, then column
    for nid in sorted(entry["outputs"], key=lambda i: where[i]):
        if api[nid]["class_type"] != "SaveImage":
            continue
        pictures = [Image.open(os.path.join(server.base, "output", im["subfolder"], im["filename"])).convert("RGB")
                    for im in entry["outputs"][nid]["images"]]
        panels.append(_panel(pictures, api[nid]["_meta"]["title"]))
    return panels, seconds


def from_screenshot(server, name: str, work: str, path: str, note: str):
    """A template that cannot run here: the graph as the frontend shows it, with a banner."""
    import subprocess

    from PIL import Image, ImageDraw

    from tools import workflows as wf
    ui, _ = wf.load(name)
    src = os.path.join(work, f"{name}.json")
    with open(src, "w", encoding="utf-8") as f:
        json.dump(ui, f)
    proc = subprocess.run(["node", wf.DRIVER, "convert", "--url", server.url, "--workflow", src, "--out", work,
                           "--name", name], capture_output=True, text=True, timeout=600, cwd=os.path.dirname(wf.DRIVER))
    if proc.returncode != 0:
        raise RuntimeError(f"drive.js convert failed for {name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    shot = Image.open(os.path.join(work, f"{name}_classic.png")).convert("RGB")
    shot = shot.crop((60, 80, 1060, 1080))  # a square of the graph (the template browser's cards are square)
    shot.thumbnail((640, 640))
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, 0, shot.width, 34), fill=BANNER)
    draw.text((shot.width // 2, 17), note, fill=(255, 255, 255), font=_font(17), anchor="mm")
    shot.save(path, "JPEG", quality=85, optimize=True)


SD15_NOTE = "Needs downloads: SD 1.5 checkpoint + SAeUron SAE (the graph, not its output)"


def main(argv=None):
    from tools import workflows as wf
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=wf.NAMES)
    args = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from tools.comfy_server import ComfyServer
    with tempfile.TemporaryDirectory(prefix="saemnesia-thumbs-") as base:
        wf.write_returning_user_settings(base)
        server = ComfyServer(base, threads=1)  # one torch thread: the measured times are a shared CPU's
        server.start()
        try:
            for name in args.names:
                if name == "erase_concept_sd15_saeuron":
                    from_screenshot(server, name, base, wf.thumbnail_path(name), SD15_NOTE)
                    print(f"{name}: screenshot of the graph (no checkpoint here)")
                    continue
                panels, seconds = from_output(server, name)
                compose(panels, wf.thumbnail_path(name))
                print(f"{name}: {len(panels)} Save Image nodes, ran in {seconds:.0f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
