"""Reading what an executed chapter glued: myst-nb's `glue` writes a display_data output whose
metadata carries `{"scrapbook": {"name": ..., "mime_prefix": ...}}` and whose data holds the
value under `<mime_prefix>text/plain` (the repr of the glued text)."""
import ast
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def glued(nb: dict) -> dict[str, str]:
    """{name: text} of every glue output of an executed notebook (a dict as json.load gives).
    A name glued twice in one page with two texts raises ValueError."""
    out: dict[str, str] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            sb = o.get("metadata", {}).get("scrapbook")
            if not sb:
                continue
            raw = o.get("data", {}).get(sb.get("mime_prefix", "") + "text/plain")
            if raw is None:
                continue
            raw = "".join(raw) if isinstance(raw, list) else raw
            try:
                text = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                text = raw
            name = sb["name"]
            if name in out and out[name] != str(text):
                raise ValueError(f"glue {name!r} has two values in one page: {out[name]!r}, {text!r}")
            out[name] = str(text)
    return out


def conflicts(pages: dict[str, dict[str, str]]) -> list[str]:
    """Names glued with different texts on different pages, one line each."""
    seen: dict[str, dict[str, str]] = {}
    for page, values in pages.items():
        for name, text in values.items():
            seen.setdefault(name, {})[page] = text
    return [f"{name}: " + ", ".join(f"{p} -> {t!r}" for p, t in sorted(v.items()))
            for name, v in sorted(seen.items()) if len(set(v.values())) > 1]


def tree_stamp(root: pathlib.Path = ROOT) -> str:
    """A hash of the chapters, the package and the result files: records of another tree state
    are not compared."""
    h = hashlib.sha256()
    for pattern in ("book/*.ipynb", "book/results/*.json", "vishwamai/**/*.py"):
        for p in sorted(root.glob(pattern)):
            if p.name.startswith("."):      # nbval's prepared copies (book/.ci-*) come and go
                continue
            h.update(p.as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def record(directory: pathlib.Path, page: str, nb: dict) -> dict[str, dict[str, str]]:
    """Writes this page's glue to `directory/<tree stamp>/<page>.json` and returns every page
    recorded there for the same tree."""
    d = directory / tree_stamp()
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{page}.json").write_text(json.dumps(glued(nb), indent=1, sort_keys=True))
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}
