"""Render each table's Markdown (tables/<name>.md, written by `gsil aggregate`) as a standalone HTML page
(tables/<name>.html), so that Snakemake's report shows the table itself: its HTML reporter displays images, HTML
and PDF results in the page and offers every other file (.md, .csv) only as a download.

The page is the Markdown rendered by markdown-it-py (CommonMark + GFM tables; raw HTML in the source is escaped),
with a small inline stylesheet: no script, no external resource, so it works inside the report's iframe and
opened from disk. Run by rule aggregate_results (workflow/rules/aggregate.smk) after `gsil aggregate`:

    python workflow/report/tables_html.py --tables-dir results/<run>/tables --names main compute ...
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; margin: 1.5em; }
h1 { font-size: 1.3em; margin: 0 0 0.8em; }
h2 { font-size: 1.1em; margin: 1.4em 0 0.4em; }
table { border-collapse: collapse; margin: 0 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #cbd2d9; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
thead th { background: #e4e7eb; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #f5f7fa; }
p { max-width: 70em; margin: 0.4em 0; color: #3e4c59; }
pre { background: #f5f7fa; padding: 0.8em; overflow-x: auto; font-size: 12px; max-width: 100em; }
code { font-size: 0.95em; }
"""


def render(markdown_text: str, title: str) -> str:
    """The HTML page of one table's Markdown."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def title_of(markdown_text: str, default: str) -> str:
    for line in markdown_text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return default


def main(argv: list[str] | None = None) -> int:
    from gsil.io import write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables-dir", required=True, type=Path, help="folder holding <name>.md")
    parser.add_argument("--names", nargs="+", required=True, help="table names: <name>.md -> <name>.html")
    parser.add_argument("--output-dir", type=Path, help="where the pages go (default: --tables-dir)")
    args = parser.parse_args(argv)
    out_dir = args.output_dir or args.tables_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        source = args.tables_dir / f"{name}.md"
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            print(f"tables_html: {source} does not exist (did gsil aggregate write it?)", file=sys.stderr)
            return 1
        target = out_dir / f"{name}.html"
        write_text(target, render(text, title_of(text, name)))       # atomic: temporary sibling + rename
        print(f"tables_html: wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
