"""The book's HTML renders its math offline: `mathjax_path` points at a local copy that exists.

Reads `_config.yml` and the installed wheel only; no build.
"""
import importlib.util
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _extension():
    spec = importlib.util.spec_from_file_location("offline_mathjax", ROOT / "book/_ext/offline_mathjax.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mathjax_path_is_a_local_file_that_setup_installed():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    path = cfg["config"]["mathjax_path"]
    assert "://" not in path and not path.startswith("//"), f"mathjax_path is a URL: {path}"
    ext = _extension()
    assert cfg["local_extensions"]["offline_mathjax"] == "book/_ext"
    assert path == ext.ENTRY
    js = ext.mathjax_dir().parent / path
    assert js.is_file() and js.stat().st_size > 500_000, js  # MathJax 3's tex-chtml.js, ~1.1 MB
    fonts = list((ext.mathjax_dir() / "output/chtml/fonts/woff-v2").glob("*.woff"))
    assert fonts, "MathJax's CHTML fonts are missing"


def test_custom_css_is_in_the_static_path():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    for css in cfg["html_css_files"]:
        assert any((ROOT / d / css).is_file() for d in cfg["html_static_path"]), css
