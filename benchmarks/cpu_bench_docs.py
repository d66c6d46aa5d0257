"""Write the CPU benchmark's section of the README (nbs/index.ipynb), the getting-started guide and the benchmarks guide
from the committed results files (`dctkd.bench.bench_section`), so every number there is one a results file holds.
Usage (after `make cpu-bench`): `python benchmarks/cpu_bench_docs.py && make sync`. `tests/test_bench.py` checks it."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# notebook -> the heading of its benchmark section (the markdown cell that starts with it is replaced)
SECTIONS = {'nbs/index.ipynb': '## Does distillation help? A CPU benchmark',
            'nbs/guides/getting_started.ipynb': '## Does distillation help? The CPU benchmark',
            'nbs/guides/benchmarks.ipynb': '## CPU benchmark: distillation on the toy scenes'}


def main(results=ROOT / 'benchmarks' / 'results') -> int:
    from dctkd.bench import bench_section
    for nb, heading in SECTIONS.items():
        p = ROOT / nb
        d = json.loads(p.read_text())
        cells = [c for c in d['cells'] if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith(heading)]
        if len(cells) != 1:
            print(f"{nb}: expected one markdown cell starting with {heading!r}, found {len(cells)}", file=sys.stderr); return 1
        cells[0]['source'] = bench_section(results, heading).splitlines(keepends=True)
        p.write_text(json.dumps(d, indent=1, ensure_ascii=False) + '\n')
        print(f"{nb}: benchmark section written")
    return 0


if __name__ == '__main__':
    sys.exit(main())
