"""The book's order tells one story, and every page says what it is for.

Reads `_toc.yml` and the stored pages only (no build): the introduction links every page of the
table of contents, in its order; every chapter and reference page opens, under its title, with
the question it answers and why a reader sizing a job cares; no chapter retells the design
notebook's out-of-memory crash (the errata do, once); the KV cache's multi-head against
grouped-query comparison is told in the memory chapter only, the published training runs
reproduced from the FLOP model in the performance chapter only (others link to them).
"""
import json
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
INTRO = BOOK / "intro.md"
VERBATIM = {"appendix_design_notebook"}  # the design notes, reproduced as written


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = []

    def walk(entries):
        for e in entries:
            out.append(e["file"].split("/")[-1])
            walk(e.get("sections", []))

    for part in toc["parts"]:
        walk(part["chapters"])
    return out


def opening(stem: str) -> str:
    nb = BOOK / f"{stem}.ipynb"
    if nb.exists():
        return "".join(json.loads(nb.read_text())["cells"][0]["source"])
    return (BOOK / f"{stem}.md").read_text()


def test_the_parts_tell_the_story_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert [p["caption"] for p in toc["parts"]] == [
        "The model", "One chip", "Many chips", "Time", "Serving", "Reference", "Appendix"]


def test_the_introduction_lists_every_page_in_the_toc_order():
    chapters = INTRO.read_text().split("## Chapters", 1)[1]
    links = re.findall(r"^- \[[^\]]*\]\(([\w.]+)\.(?:ipynb|md)\)", chapters, re.M)
    listed = [s for s in links if s in set(toc_pages())]
    assert list(dict.fromkeys(listed)) == [s for s in toc_pages() if s in listed]
    assert set(toc_pages()) <= set(links), set(toc_pages()) - set(links)


def test_every_page_opens_with_its_question_and_why_it_matters():
    for stem in toc_pages():
        if stem in VERBATIM or stem == "notation":
            continue
        text = opening(stem)
        head = text.split("\n\n", 3)
        assert head[0].startswith("# "), (stem, head[0])
        if stem == "glossary":
            assert head[1].startswith("**What it answers.**"), stem
            continue
        assert head[1].startswith("**The question.**") and head[1].rstrip().endswith("?"), (stem, head[1])
        assert head[2].startswith("**Why it matters.**"), (stem, head[2])


def test_the_oom_crash_is_told_once_in_the_errata():
    told = []
    for path in sorted(BOOK.glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        for c in json.loads(path.read_text())["cells"]:
            if c["cell_type"] == "markdown" and re.search(r"died\s+allocating|seed_oom|2097152000|2,097,152,000", "".join(c["source"])) \
                    and not re.search(r"^#+ What to take away", "".join(c["source"]), re.M):
                told.append(path.name)
    assert told == ["appendix_errata.ipynb"], told


def test_the_one_matrix_estimate_is_measured_once_and_the_errata_link_to_it():
    """Chapter 3 sets the design notebook's attention-bytes formulas beside the measured scratch;
    the errata correct the savings derived from them and link there rather than retell it."""
    def markdown(name):
        return "\n".join("".join(c["source"]) for c in json.loads((BOOK / name).read_text())["cells"]
                         if c["cell_type"] == "markdown")

    told = [p.name for p in sorted(BOOK.glob("[!.]*.ipynb"))
            if re.search(r"batch\*heads\*T\*T\*2", markdown(p.name))]
    assert told == ["03_tpu_optimizations.ipynb"], told
    assert "(attn-one-matrix)=" in markdown("03_tpu_optimizations.ipynb")
    assert "<attn-one-matrix>`" in markdown("appendix_errata.ipynb")


def test_the_introduction_asks_each_chapter_its_own_question():
    intro = INTRO.read_text()
    for stem in toc_pages():
        m = re.search(r"\*\*The question\.\*\* (.*?)\n\n", opening(stem), re.S)
        if not m:
            continue
        item = re.search(r"^- \[[^\]]*\]\(" + re.escape(stem) + r"\.(?:ipynb|md)\): (.*?)(?=\n\n|\n- |\Z)",
                         intro, re.S | re.M)
        assert item, f"{stem} is not listed in the introduction"
        asked = " ".join(m.group(1).split())
        assert " ".join(item.group(1).split()) == asked[0].lower() + asked[1:], stem


def _tellers(code: str, prose: str, book: pathlib.Path = BOOK) -> list[str]:
    """The notebooks that tell something: a code cell matching `code`, or a paragraph of markdown
    (the takeaway excepted: a summary that links back) with a glued number matching `prose`."""
    told = []
    for path in sorted(book.glob("*.ipynb")):
        if path.name.startswith("."):
            continue
        for c in json.loads(path.read_text())["cells"]:
            text = "".join(c["source"])
            if c["cell_type"] == "code":
                hit = re.search(code, text, re.S)
            else:
                text = re.split(r"^#+ What to take away", text, flags=re.M)[0]
                hit = any("{glue:" in p and re.search(prose, p, re.S) for p in text.split("\n\n"))
            if hit:
                told.append(path.name)
                break
    return told


# The KV cache's bytes per token, multi-head Llama-2-7B against grouped-query Llama-3-8B: computed
# for both models (or with `kv_cache_table`, which sets a model's own heads against multi-head) or
# quoted with a number.
KV_CODE = (r"kv_cache_table\("
           r"|(?=.*llama2_7b)(?=.*llama3_8b)(?=.*\bkv_(?:cache_bytes|bytes_per_token)\()")
KV_PROSE = r"(?=.*Llama-2)(?=.*Llama-3)(?=.*\bmulti-head\b)(?=.*\bcache\b)"
# The published training runs reproduced from the FLOP model: the entries of
# `vishwamai.analysis.published`, the predictions in `published_runs.json`, or the attention
# conventions' reconciliation quoted with a number.
PUBLISHED_CODE = r"(?<![\w.])published\.(?:reproductions|reproduce|PUBLISHED|RUNS)\b|published_runs\.json"
PUBLISHED_PROSE = (r"(?=.*\b(?:MaxText|torchtitan|Megatron)\b)(?=.*\bLlama[ -](?:2|3|3\.1)[ -](?:7|8)B\b)"
                   r"(?=.*\bfull[- ]square\b|.*\bcausal\b)")  # the dense Llama runs (chapter 3d has the MoE ones)


def test_the_kv_cache_comparison_is_told_once_in_the_memory_chapter():
    assert _tellers(KV_CODE, KV_PROSE) == ["04_memory.ipynb"]


def test_the_published_runs_are_reproduced_once_in_the_performance_chapter():
    assert _tellers(PUBLISHED_CODE, PUBLISHED_PROSE) == ["05_performance.ipynb"]


def test_the_told_once_checks_find_a_retelling(tmp_path):
    """A chapter that computes the KV comparison or the published reproductions again is caught,
    as the serving chapter's copies were."""
    for name in ("04_memory.ipynb", "05_performance.ipynb"):
        (tmp_path / name).write_text((BOOK / name).read_text())
    copy = {"cells": [
        {"cell_type": "code", "source": ["kv = serving.kv_cache_table(\"llama2_7b\")\n"]},
        {"cell_type": "markdown", "source": [
            "Llama-2-7B keeps all its query heads (multi-head), so its cache per token is "
            "{glue:text}`kv_l2_over_l3`x Llama-3-8B's.\n"]},
        {"cell_type": "code", "source": ["repro = published.reproductions()\n"]},
        {"cell_type": "markdown", "source": [
            "MaxText's Llama 3.1 8B MFU agrees under the full-square convention "
            "(ratio {glue:text}`mt_ratio`).\n"]}]}
    (tmp_path / "06_serving.ipynb").write_text(json.dumps(copy))
    assert _tellers(KV_CODE, KV_PROSE, tmp_path) == ["04_memory.ipynb", "06_serving.ipynb"]
    assert _tellers(PUBLISHED_CODE, PUBLISHED_PROSE, tmp_path) == ["05_performance.ipynb", "06_serving.ipynb"]
