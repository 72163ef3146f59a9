"""Copy the browser test's screenshots that docs/gallery.md shows into docs/images/gallery/, as
small JPEGs. Run after ``pytest tests/test_browser.py`` (which writes test-artifacts/browser/)."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "test-artifacts", "browser")
TARGET = os.path.join(REPO, "docs", "images", "gallery")
WIDTH = 1100  # of 1920: the node text stays readable, the file stays near 100 KB

# screenshot under test-artifacts/browser/ -> file name in docs/images/gallery/
SHOTS = {
    "templates/template_browser.png": "template_browser.jpg",
    "templates/template_opened.png": "template_opened.jpg",
    "erase_one_concept_minicanvas/concept_picker_classic.png": "picker_classic.jpg",
    "erase_one_concept_minicanvas/erase_workflow_classic.png": "erase_one_classic.jpg",
    "erase_one_concept_minicanvas/concept_picker_vue.png": "picker_nodes2.jpg",
    "erase_one_concept_minicanvas/erase_workflow_vue.png": "erase_one_nodes2.jpg",
    "templates/erase_several_concepts_minicanvas_classic.png": "erase_several_classic.jpg",
    "templates/train_then_erase_minicanvas_vue.png": "train_then_erase_nodes2.jpg",
    "erase_workflow_classic.png": "train_curve_and_heatmap_classic.jpg",
    "hostile/hostile_concept_menu_classic.png": "hostile_menu_classic.jpg",
    "hostile/hostile_concept_menu_vue.png": "hostile_menu_nodes2.jpg",
    # the newer frontend the test also drives (tests/test_browser.py, tools/browser/newer-frontend.txt)
    "frontend-1.58.1/templates/template_opened.png": "frontend_1_58_template_opened.jpg",
    "frontend-1.58.1/templates/erase_several_concepts_minicanvas_vue.png": "frontend_1_58_erase_several_nodes2.jpg",
    "frontend-1.58.1/hostile/hostile_concept_menu_classic.png": "frontend_1_58_hostile_menu_classic.jpg",
}


def main() -> int:
    from PIL import Image
    os.makedirs(TARGET, exist_ok=True)
    missing = [s for s in SHOTS if not os.path.isfile(os.path.join(SOURCE, s))]
    if missing:
        print(f"missing (run pytest tests/test_browser.py first): {', '.join(missing)}", file=sys.stderr)
        return 1
    for src, dst in SHOTS.items():
        with Image.open(os.path.join(SOURCE, src)) as im:
            im = im.convert("RGB")
            im = im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.LANCZOS)
            im.save(os.path.join(TARGET, dst), "JPEG", quality=80, optimize=True)
        print(f"docs/images/gallery/{dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
