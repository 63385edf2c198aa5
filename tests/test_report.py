"""Snakemake's HTML report of a run (`snakemake --report results/<run>/report.html`): the workflow description,
every table and figure of rule aggregate_results with its caption (tables as HTML pages and CSV downloads), and the
per-job provenance Snakemake records; opened in headless Chromium like a person would.

The fast tests check the captions and the table pages; the slow one builds the report of the tiny run of
config/test.yaml (the session's tiny_workflow_run, shared with tests/test_e2e.py) and needs Debian's `chromium`
(.ci/run installs it; skipped without it).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, TINY_RUN_COMMAND, snakemake

CAPTIONS = REPO / "workflow" / "report" / "captions"
AGGREGATE_SMK = REPO / "workflow" / "rules" / "aggregate.smk"


def declared(name: str) -> list[str]:
    """TABLES or FIGURES: the tables and figures rule aggregate_results declares (common.smk takes them from
    gsil.aggregate.outputs)."""
    from gsil.aggregate.outputs import FIGURE_NAMES, TABLE_NAMES

    return list({"TABLES": TABLE_NAMES, "FIGURES": FIGURE_NAMES}[name])


def render_rst(text: str) -> str:
    """A caption as the report renders it (Jinja, then docutils), failing on any docutils warning."""
    import docutils.core
    import jinja2

    class Snakemake:
        config = {"run": "test", "base_model": {"source": "random"}, "data": {"profile": "demo"}}

    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text).render(snakemake=Snakemake)
    return docutils.core.publish_parts(rendered, writer="html",
                                       settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]


# ------------------------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("kind", ["tables", "figures"])
def test_every_table_and_figure_has_a_caption_and_a_category(kind):
    names = declared("TABLES" if kind == "tables" else "FIGURES")
    smk = AGGREGATE_SMK.read_text()
    for name in sorted(names):
        caption = CAPTIONS / kind / f"{name}.rst"
        assert caption.is_file(), f"{caption.relative_to(REPO)} is missing"
        html = render_rst(caption.read_text())
        assert "How it was" in html, f"{caption.name}: say how it was computed/drawn"
        assert re.search(rf'^\s+"{name}": "\d ', smk, flags=re.MULTILINE), f"{name}: no REPORT_CATEGORIES entry"
    render_rst((CAPTIONS / kind / "_default.rst").read_text())


def test_workflow_description_renders():
    html = render_rst((REPO / "workflow" / "report" / "workflow.rst").read_text())
    assert "GSIL reproduction suite: run" in html and "test" in html
    assert "Provenance" in html and "results/test/" in html
    assert 'report: "workflow/report/workflow.rst"' in (REPO / "Snakefile").read_text()


def test_table_page_renders_the_markdown_table(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tables_html", REPO / "workflow" / "report" / "tables_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "main.md").write_text("# Main results: methods x benchmarks\n\n| Method | Arith |\n|---|---|\n"
                                      "| SFT | **43.75** [39.9, 47.6]† |\n| DPO \\| x | <b>32.5</b> |\n\n"
                                      "Bold: best value in its column.\n\n```text\nrule (a)\n```\n")
    assert module.main(["--tables-dir", str(tmp_path), "--names", "main"]) == 0
    page = (tmp_path / "main.html").read_text()
    assert "<title>Main results: methods x benchmarks</title>" in page
    assert "<th>Method</th>" in page and "<td><strong>43.75</strong> [39.9, 47.6]†</td>" in page
    assert "<td>DPO | x</td>" in page and "&lt;b&gt;32.5&lt;/b&gt;" in page      # raw HTML is shown, not run
    assert '<pre><code class="language-text">rule (a)' in page and "<script" not in page
    assert module.main(["--tables-dir", str(tmp_path), "--names", "absent"]) == 1


# ------------------------------------------------------------------------------------------------ slow: the report


def chromium() -> str | None:
    for name in ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browse(page: Path, tmp_path: Path, *, screenshot: Path | None = None, size: str = "1400,1000") -> str:
    """Open `page` in headless Chromium (JavaScript runs for up to 15 s of virtual time); return the DOM after it,
    or with `screenshot` write a PNG of the window instead."""
    binary = chromium()
    profile = tmp_path / "chromium-profile"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size}",
               "--virtual-time-budget=15000"]
    command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    if screenshot:
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
        assert screenshot.stat().st_size > 10_000, "an empty window"
        return ""
    return done.stdout


def report_data(html: str, name: str):
    """The JSON the report page holds in `<script id=NAME>var NAME = ...;</script>`."""
    match = re.search(rf'<script id="{name}">\s*var \w+ = (.*?);\s*</script>', html, flags=re.DOTALL)
    assert match, f"no {name} data in the report"
    return json.loads(match.group(1))


def decode(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split("base64,", 1)[1])


def showing(report: Path, out: Path, view: str, delay_ms: int = 300) -> Path:
    """A copy of the report that runs `view` once it has loaded: opening one result as a person clicking it would
    (`app.setView`, the report's own navigation; the report has no deep links), or measuring the page."""
    script = f"<script>window.addEventListener('load', () => setTimeout(() => {{ {view} }}, {delay_ms}));</script>"
    head, body_end, tail = report.read_text(encoding="utf-8").rpartition("</body>")   # bundled scripts quote it too
    out.write_text(head + script + body_end + tail, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def built_report(tiny_workflow_run, tmp_path_factory):
    """report.html of the tiny run, written outside its work folder (the run is shared and read-only)."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    text = snakemake("--report", str(out), "--report-stylesheet", "workflow/report/report.css", *TINY_RUN_COMMAND,
                     cwd=tiny_workflow_run.workdir, timeout=900)
    assert out.is_file(), text[-3000:]
    return out, tiny_workflow_run.run_dir


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_report_has_every_table_and_figure_with_captions_and_provenance(built_report):
    report, run_dir = built_report
    html = report.read_text(encoding="utf-8")
    results = report_data(html, "results")
    by_name = {Path(path).name: entry for path, entry in results.items()}
    tables, figures = declared("TABLES"), declared("FIGURES")
    for name in tables:
        page, csv = by_name[f"{name}.html"], by_name[f"{name}.csv"]
        assert page["mime_type"] == "text/html" and "<table>" in decode(page["data_uri"]).decode() \
            or "No results for this table" in decode(page["data_uri"]).decode(), name
        assert decode(csv["data_uri"]) == (run_dir / "tables" / f"{name}.csv").read_bytes()
        assert "How it was computed" in page["caption"] and page["caption"] == csv["caption"]
        assert page["job_properties"]["rule"] == "aggregate_results"
    for name in figures:
        entry = by_name[f"{name}.png"]
        assert entry["mime_type"] == "image/png" and decode(entry["data_uri"])[:4] == b"\x89PNG"
        assert "How it was drawn" in entry["caption"]
    assert not any(name.endswith(".md") for name in by_name)          # the .html is the same text
    main_page = decode(by_name["main.html"]["data_uri"]).decode()
    assert "<th>Method</th>" in main_page and "<td>SFT</td>" in main_page

    categories = report_data(html, "categories")
    assert "1 Main results" in categories and set(categories["1 Main results"]) >= {"Tables", "Tables (CSV download)"}
    description = report_data(html, "workflow-desc")
    assert "GSIL reproduction suite: run" in description and "results/test/" in description
    # Snakemake's own provenance: every rule of the run with its jobs' runtimes and timeline.
    rules = report_data(html, "rules")
    assert {"sft_train", "align_selfplay", "evaluate_model", "aggregate_results"} <= set(rules)
    assert report_data(html, "runtimes") and report_data(html, "timeline")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_report_opens_in_chromium_with_tables_and_figures(built_report, tmp_path):
    if chromium() is None:
        pytest.skip("no headless Chromium (Debian package chromium; .ci/run installs it)")
    report, _ = built_report
    results = report_data(report.read_text(encoding="utf-8"), "results")
    path_of = {Path(path).name: path for path in results}

    landing = browse(report, tmp_path)
    for category in ("1 Main results", "4 Ablations", "6 Compute"):
        assert category in landing                                   # the menu rendered by the report's scripts
    assert "GSIL reproduction suite: run" in landing
    browse(report, tmp_path, screenshot=tmp_path / "landing.png")
    # The description's title can be scrolled to (workflow/report/report.css: the report would centre the panel
    # vertically and cut the top of a page taller than the window).
    measured = showing(report, tmp_path / "measured.html", "document.body.dataset.titleTop = "
                       "document.querySelector('#app .prose h1').getBoundingClientRect().top;")
    top = re.search(r'data-title-top="(-?[\d.]+)"', browse(measured, tmp_path, size="1400,600"))
    assert top and float(top.group(1)) >= 0, top

    table = path_of["main.html"]
    view = showing(report, tmp_path / "main-table.html",
                   f"app.setView({{navbarMode: 'resultinfo', resultPath: {json.dumps(table)}, content: 'html', "
                   f"contentPath: results[{json.dumps(table)}].data_uri}})")
    dom = browse(view, tmp_path)
    assert '<iframe src="data:text/html' in dom and "Main results" in dom     # the table page, with its caption
    browse(view, tmp_path, screenshot=tmp_path / "main-table.png")
    page = tmp_path / "main.html"
    page.write_bytes(decode(results[table]["data_uri"]))
    rendered = browse(page, tmp_path)
    assert "<table>" in rendered and "<th>Method</th>" in rendered

    figure = path_of["overview.png" if "overview.png" in path_of else "rewards.png"]
    view = showing(report, tmp_path / "figure.html",
                   f"app.setView({{navbarMode: 'resultinfo', resultPath: {json.dumps(figure)}, content: 'img', "
                   f"contentPath: results[{json.dumps(figure)}].data_uri}})")
    dom = browse(view, tmp_path)
    assert '<img src="data:image/png' in dom and "How it was drawn" in dom
    browse(view, tmp_path, screenshot=tmp_path / "figure.png")
