"""The glossary: every term it defines is linked from the chapters, every link finds its term, and
in each page a term's first use in the prose is its link (no term is used before it is linked).

Reads the stored pages only (no build). A page's prose is its markdown minus code, math, roles,
links, headings and labels, up to its closing "What to take away" (a summary of the page, whose
terms the page has linked already). `TERMS` holds how each glossary term is spelled in prose; it
must list the glossary's terms exactly.
"""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
GLOSSARY = BOOK / "glossary.md"
EXEMPT = {"appendix_design_notebook.md", "glossary.md", "intro.md"}  # verbatim notes; the glossary; the contents
TAKEAWAY = re.compile(r"^#+ What to take away", re.M)

# Glossary term -> how the prose spells it (a regular expression; the match is what gets linked).
TERMS = {
    "ahead-of-time compilation": r"\bahead-of-time\b",
    "all-gather": r"\ball-gather(?:s|ed)?\b",
    "all-reduce": r"\ball-reduce[sd]?\b",
    "all-to-all": r"\ball-to-alls?\b",
    "arithmetic intensity": r"\b[Aa]rithmetic intensity\b",
    "capacity factor": r"\bcapacity factors?\b",
    "chunked loss": r"\bchunked loss\b",
    "context parallelism": r"\b[Cc]ontext parallelism\b",
    "cuBLASLt": r"\bcuBLASLt\b",
    "cuDNN": r"\bcuDNN\b",
    "custom call": r"\bcustom calls?\b",
    "data parallelism": r"\b[Dd]ata parallelism\b",
    "DCN": r"\bDCN\b|\bdata-centre network\b",
    "decode": r"\b[Dd]ecod(?:e|es|ing)\b",
    "dropless": r"\b[Dd]ropless\b",
    "E4M3": r"\bE4M3\b",
    "E5M2": r"\bE5M2\b",
    "expert parallelism": r"\b[Ee]xpert parallelism\b",
    "flash attention": r"\b[Ff]lash attention\b",
    "FSDP": r"\bFSDP\b",
    "GQA": r"\bGQA\b|\b[Gg]rouped-query(?: attention)?\b",
    "HBM": r"\bHBM\b",
    "HFU": r"\bHFU\b",
    "HLO": r"\bHLO\b",
    "ICI": r"\bICI\b",
    "InfiniBand": r"\bInfiniBand\b",
    "KV cache": r"\bKV[- ]cache\b",
    "megacore": r"\bmegacore\b",
    "mesh": r"\bmesh\b",
    "MFU": r"\bMFU\b",
    "mixture of experts": r"\b[Mm]ixture[- ]of[- ]experts\b|\bMoE\b",
    "Mosaic": r"\bMosaic\b",
    "NVLink": r"\bNVLink\b",
    "Pallas": r"\bPallas\b",
    "pipeline parallelism": r"\b[Pp]ipeline parallelism\b",
    "prefill": r"\b[Pp]refill(?:s|ed)?\b",
    "reduce-scatter": r"\breduce-scatter(?:s|ed)?\b",
    "remat": r"\bremat\b|\b[Rr]ematerialis\w*",
    "ridge point": r"\bridge point\b",
    "roofline": r"\b[Rr]ooflines?\b",
    "shard_map": r"`shard_map`|\bshard_map\b",
    "splash attention": r"\bsplash(?:[- ]attention)?\b",
    "SPMD partitioner": r"\bSPMD partitioner\b",
    "tensor parallelism": r"\b[Tt]ensor parallelism\b",
    "TensorCore": r"\bTensorCores?\b",
    "TTFT": r"\bTTFT\b|\b[Tt]ime to first token\b",
    "XLA": r"\bXLA\b",
    "ZeRO": r"\bZeRO(?:-[123])?\b",
}
CODE_TERMS = {"shard_map"}  # terms the prose writes as inline code

ROLE = re.compile(r"\{term\}`([^`]*)`")
_MASKS = [
    re.compile(r"^\s*(`{3,}|~{3,}|:{3,}).*?^\s*\1\s*$", re.S | re.M),   # fenced blocks, directives
    re.compile(r"^#+ .*$", re.M),                                          # headings
    re.compile(r"^\(\S+\)=\s*$", re.M),                                    # labels
    re.compile(r"\$\$.*?\$\$", re.S),                                      # display math
    re.compile(r"(?<![\\$])\$(?!\s)[^$\n]+?(?<!\s)\$"),                    # inline math
    re.compile(r"\{[\w:.-]+\}`[^`]*`"),                                    # roles (term included)
    re.compile(r"`[^`\n]+`"),                                              # inline code (see below)
    re.compile(r"!?\[[^\]]*\]\([^)]*\)"),                                  # links
    re.compile(r"<[^>\n]*>|https?://\S+"),                                 # html, urls
]


def term_target(role_text: str) -> str:
    """`text <target>` -> target; `target` -> target."""
    m = re.match(r"^(.*?)\s*<([^<>]+)>$", role_text, re.S)
    return m.group(2) if m else role_text


def prose_mask(text: str) -> str:
    """`text` with everything that is not prose blanked out, same length (positions kept)."""
    def blank(m):
        if m.group(0).strip("`") in CODE_TERMS:  # `shard_map` is a term written as code
            return m.group(0)
        return re.sub(r"[^\n]", "\0", m.group(0))

    out = text
    for pat in _MASKS:
        out = pat.sub(blank, out)
    return out


def until_takeaway(text: str) -> str:
    m = TAKEAWAY.search(text)
    return text[:m.start()] if m else text


def glossary_terms() -> list[str]:
    text = GLOSSARY.read_text()
    body = re.search(r"^```\{glossary\}\s*$(.*?)^```\s*$", text, re.S | re.M).group(1)
    return [line.strip() for line in body.splitlines() if line.strip() and not line[0].isspace()]


def pages() -> list[tuple[str, list[str]]]:
    """(name, markdown texts in order) of every page of the book but the exempt ones."""
    out = []
    for path in sorted(BOOK.glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        cells = json.loads(path.read_text())["cells"]
        out.append((path.name, ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]))
    for path in sorted(BOOK.glob("*.md")):
        if path.name not in EXEMPT:
            out.append((path.name, [path.read_text()]))
    return out


def first_uses(texts: list[str]) -> dict:
    """term -> ('link' | 'plain', cell, snippet): what comes first in the page's prose."""
    found = {}
    stop = False
    for i, raw in enumerate(texts):
        if stop:
            break
        text = until_takeaway(raw)
        stop = len(text) < len(raw)
        events = [(m.start(), "link", term_target(m.group(1)), m.group(0)) for m in ROLE.finditer(text)]
        masked = prose_mask(text)
        for term, pat in TERMS.items():
            for m in re.finditer(pat, masked):
                events.append((m.start(), "plain", term, text[max(0, m.start() - 30):m.end() + 10]))
        for _, kind, term, snippet in sorted(events):
            found.setdefault(term, (kind, i, snippet))
    return found


def test_terms_table_lists_the_glossary_exactly():
    terms = glossary_terms()
    assert len(terms) == len(set(terms)), "a term is defined twice"
    assert sorted(terms, key=str.lower) == sorted(TERMS, key=str.lower)


def test_every_term_link_finds_its_term():
    defined = set(glossary_terms())
    bad = [(name, term_target(t)) for name, texts in pages() for text in texts
           for t in ROLE.findall(text) if term_target(t) not in defined]
    assert not bad, f"{{term}} links to terms the glossary does not define: {bad}"


def test_every_glossary_term_is_linked_from_a_page():
    linked = {term_target(t) for _, texts in pages() for text in texts for t in ROLE.findall(text)}
    unused = sorted(set(glossary_terms()) - linked)
    assert not unused, f"glossary terms no page links to: {unused}"


@pytest.mark.parametrize("name,texts", pages(), ids=[n for n, _ in pages()])
def test_each_term_is_linked_at_its_first_use(name, texts):
    late = {t: (i, s) for t, (kind, i, s) in first_uses(texts).items() if kind == "plain"}
    assert not late, f"{name}: terms used before their glossary link (markdown cell, text): {late}"


def test_the_check_sees_a_term_used_before_its_link():
    texts = ["FSDP cuts the weights; `FSDP` in code and $FSDP$ in math do not count.",
             "Then {term}`FSDP` is linked, and {term}`shard_map` too."]
    assert first_uses(texts)["FSDP"][0] == "plain"
    assert first_uses(texts)["shard_map"][0] == "link"
    assert first_uses(["Under `shard_map` the kernel runs per chip."])["shard_map"][0] == "plain"
    assert "FSDP" not in first_uses(["`shard_map` and `x`, then `y FSDP z`"])
    assert "FSDP" not in first_uses(["## FSDP\n\n```python\nFSDP = 1\n```\n"])
    assert "FSDP" not in first_uses(["## What to take away\n\nFSDP saves memory."])
    assert term_target("all-reduces <all-reduce>") == "all-reduce"
