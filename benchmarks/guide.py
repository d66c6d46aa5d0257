"""Rewrite the generated cells of the benchmarks guide (nbs/guides/benchmarks.ipynb) from benchmarks/results/<name>.md.

A generated cell is a Markdown cell whose first line is the marker `<!-- generated from benchmarks/results/<name>.md
by make bench: do not edit -->`; each is replaced by the marker and that file. Every other cell of the guide
(hand-written text, other sections) stays exactly as it is. `make bench` runs the scripts, then this.
Usage: `python benchmarks/guide.py [--guide nbs/guides/benchmarks.ipynb] [--results benchmarks/results]`.
"""
import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = '<!-- generated from benchmarks/results/{}.md by make bench: do not edit -->'
MARK_RE = re.compile(r'<!-- generated from benchmarks/results/([\w.-]+)\.md by make bench')


def generated_cells(nb: dict) -> dict:
    "name -> the guide's generated cell for benchmarks/results/<name>.md."
    out = {}
    for c in nb['cells']:
        src = ''.join(c['source'])
        m = MARK_RE.match(src)
        if c['cell_type'] == 'markdown' and m: out[m.group(1)] = c
    return out


def cell_text(name: str, results: Path) -> str:
    "What the generated cell for `name` holds: the marker, then results/<name>.md."
    f = results / f'{name}.md'
    if not f.exists(): raise SystemExit(f'{f} not found: run `make bench` (or python benchmarks/{name}.py --out {results})')
    return MARK.format(name) + '\n' + f.read_text(encoding='utf-8').rstrip('\n')


def rewrite(guide: Path, results: Path) -> list:
    "Replace the generated cells of `guide` from `results`; returns the names rewritten."
    nb = json.loads(guide.read_text(encoding='utf-8'))
    cells = generated_cells(nb)
    if not cells: raise SystemExit(f'{guide}: no generated cells (a Markdown cell starting with {MARK.format("<name>")})')
    for name, c in cells.items(): c['source'] = cell_text(name, results).splitlines(True)
    tmp = guide.with_name(guide.name + '.tmp')
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    tmp.replace(guide)
    return list(cells)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--guide', default=str(ROOT / 'nbs' / 'guides' / 'benchmarks.ipynb'))
    ap.add_argument('--results', default=str(ROOT / 'benchmarks' / 'results'))
    a = ap.parse_args()
    names = rewrite(Path(a.guide), Path(a.results))
    print(f"rewrote {', '.join(names)} in {a.guide}")


if __name__ == '__main__':
    main()
