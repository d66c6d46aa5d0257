"""What every benchmark script shares: the machine and its load, interleaved timing, `median [min–max]`, a scratch
cache folder, and the results files (`--out`: <name>.md for the benchmarks guide, <name>.json) that `make bench`
writes and `benchmarks/guide.py` copies into nbs/guides/benchmarks.ipynb."""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def load() -> str:
    "The load averages (1, 5, 15 min) against the core count, e.g. '3.2 / 2.9 / 2.5 on 2 cores'."
    l1, l5, l15 = os.getloadavg()
    return f"{l1:.1f} / {l5:.1f} / {l15:.1f} on {os.cpu_count()} cores"


def machine() -> dict:
    "Where and when: date (UTC), machine, cores, load averages, Python and torch."
    import torch
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                machine=f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
                cores=os.cpu_count(), loadavg=[round(v, 2) for v in os.getloadavg()], python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def stat(values) -> dict:
    "median, min, max and count of `values`."
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def fmt(values, unit: str = '', scale: float = 1., digits: int = 2) -> str:
    "`median [min–max]unit` of `values` times `scale`, e.g. fmt(ts, ' ms', 1e3) -> '12.31 [11.90–13.02] ms'."
    s = stat([v * scale for v in values])
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]{unit}"


def interleave(fns: dict, rounds: int, warmup: int = 1, sync=lambda: None, number: int = 1) -> dict:
    """Seconds per call of each function in `fns` (name -> callable), `rounds` times each, interleaved: every round
    runs every function once (in a rotated order), so a busy spell on a shared machine hits all of them alike.
    Each timing is `number` calls (for calls too short to time alone), divided by `number`."""
    names = list(fns)
    for _ in range(warmup):
        for n in names: fns[n]()
    sync()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            for _ in range(number): fns[n]()
            sync()
            times[n].append((time.perf_counter() - t) / number)
    return times


def ratios(num, den) -> list:
    "Per-round ratios num[i] / den[i] of two interleaved series."
    return [a / b for a, b in zip(num, den)]


def arguments(doc: str, quick: dict) -> argparse.ArgumentParser:
    "The parser every script starts from: --quick (a smoke run of a few seconds, `quick`'s settings) and --out."
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument('--quick', action='store_true',
                    help='a smoke run of a few seconds: ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in quick.items()))
    ap.add_argument('--out', default=None, help='write <name>.md and <name>.json here (make bench: benchmarks/results)')
    ap.add_argument('--threads', type=int, default=None, help="torch's intra-op threads (default: torch's choice)")
    ap._quick = dict(quick, threads=1)
    return ap


def parse(ap: argparse.ArgumentParser):
    "Parse; with --quick, the quick settings replace the defaults (explicit options still win)."
    a = ap.parse_args()
    if a.quick:
        ap.set_defaults(**ap._quick)
        a = ap.parse_args()
    return a


class Report:
    "Prints as it goes and keeps the same lines, as Markdown, for `<out>/<name>.md`; numbers go to `<out>/<name>.json`."
    def __init__(self, name: str, title: str, args):
        self.name, self.title, self.args, self.md, self.data = name, title, args, [], {}
        if getattr(args, 'threads', None):
            import torch
            torch.set_num_threads(args.threads)
        self.start, self.t0 = machine(), time.time()
        self.scratch = Path(tempfile.mkdtemp(prefix=f'dctkd-bench-{name}-'))
        os.environ['DCTKD_CACHE'] = str(self.scratch / 'cache')      # decode caches go here, never to ~/.cache/dctkd
        cmd = ' '.join(['python', f'benchmarks/{name}.py'] + sys.argv[1:])
        m = self.start
        print(f"{title}\n{m['date']}, {m['machine']}, {m['cores']} cores, load {load()} (1/5/15 min), "
              f"torch {m['torch']} with {m['threads']} thread{'s' if m['threads'] != 1 else ''}" + (f", {m['gpu']}" if m['gpu'] else '') + f"\n$ {cmd}")
        self.cmd = cmd

    def line(self, text: str = '', md: str = None):
        "Print `text`; keep `md` (default: the same text) for the Markdown file."
        print(text)
        self.md.append(text if md is None else md)

    def table(self, header: list, rows: list):
        "A table, printed aligned and kept as Markdown."
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for r in [header] + rows: print('  '.join(str(x).rjust(w) for x, w in zip(r, widths)))
        self.md += ['', '| ' + ' | '.join(map(str, header)) + ' |', '|---|' + '---:|' * (len(header) - 1)]
        self.md += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows] + ['']

    def record(self, key: str, values, unit: str = 's'):
        "Keep the statistics of `values` under `key` in the JSON file."
        self.data[key] = dict(stat(list(values)), unit=unit, values=list(values))

    def __enter__(self): return self

    def __exit__(self, exc_type, *_):
        if exc_type is None: self.close()
        else: shutil.rmtree(self.scratch, ignore_errors=True)

    def close(self):
        "Write the results (with --out) and remove the scratch folder."
        shutil.rmtree(self.scratch, ignore_errors=True)
        end = load()
        print(f"load at the end: {end}; {time.time() - self.t0:.1f} s")
        if not self.args.out: return
        out = Path(self.args.out); out.mkdir(parents=True, exist_ok=True)
        m = self.start
        head = (f"Measured {m['date']} on {m['machine']} with {m['cores']} cores"
                + (f" and {m['gpu']}" if m['gpu'] else ' (no GPU)') + f", torch {m['torch']} with {m['threads']} thread{'s' if m['threads'] != 1 else ''}; "
                f"load average {' / '.join(f'{v:.1f}' for v in m['loadavg'])} (1/5/15 min) at the start, {end} at the end"
                + (" — **a busy machine**: absolute times are inflated, the interleaved ratios much less"
                   if m['loadavg'][0] > 0.75 * (m['cores'] or 1) else '') + f". Command: `{self.cmd}`.")
        md = f"## {self.title}\n\n{head}\n\n" + '\n'.join(self.md).strip() + '\n'
        (out / f'{self.name}.md').write_text(md, encoding='utf-8')
        (out / f'{self.name}.json').write_text(json.dumps(dict(name=self.name, title=self.title, command=self.cmd,
                                                               machine=m, load_at_end=end, results=self.data), indent=1),
                                               encoding='utf-8')
        print(f"wrote {out / self.name}.md and .json")
