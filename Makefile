# The commands a person types. `make test` is the README's test command and what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dctkd-installed
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
SYNCED := nbs dctkd README.md

.PHONY: install sync test demo docs bench clean

# A fresh .venv with torch pinned first (the local CPU build), then dctkd and its dev extras under the same
# constraints, so pip can never replace torch or pull an unpinned torchvision.
$(STAMP): settings.ini setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 and dctkd[dev] into $(VENV) ..."
	@$(PIP) torch==2.13.0 2> >(grep -v 'is ignored: it is neither' >&2)
	@$(PIP) -e '.[dev]' 2> >(grep -v 'is ignored: it is neither' >&2)
	@touch $@

install: $(STAMP)

# Notebooks are the source: fail when nbdev_clean, nbdev_export or the README build would change a file.
sync: $(STAMP)
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then echo "sync check skipped: not a git checkout"; exit 0; fi; \
	before="$$(git status --porcelain -- $(SYNCED); git diff -- $(SYNCED))"; \
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export && $(BIN)/dctkd_readme >/dev/null || exit 1; \
	after="$$(git status --porcelain -- $(SYNCED); git diff -- $(SYNCED))"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "notebooks and library out of sync: nbdev_clean / nbdev_export / dctkd_readme changed these files:"; \
	  git status --porcelain -- $(SYNCED); \
	  echo "review them (git diff), then commit notebooks, dctkd/ and README.md together"; exit 1; fi; \
	echo "notebooks, library and README in sync"

test: sync
	@MPLBACKEND=Agg $(BIN)/python -m pytest tests -p no:cacheprovider --durations=15

# The quickstart: toy scenes, a teacher, a baseline, a DCT and a DCT + KD student, evaluated, with attention
# maps and spectra; the executed notebook and its HTML go to a new runs/demo/<date-time>/ folder.
demo: $(STAMP)
	@mkdir -p runs/demo; out=$$(mktemp -d runs/demo/$$(date +%Y%m%d-%H%M%S)-XXXX); \
	echo "quickstart -> $$out (a few minutes on 2 CPU cores)"; \
	(cd nbs/experiments && env -u MPLBACKEND ../../$(BIN)/papermill -k python3 --cwd . quickstart.ipynb ../../$$out/quickstart.ipynb -p out ../../$$out) || exit 1; \
	$(BIN)/jupyter nbconvert --to html --log-level WARN $$out/quickstart.ipynb >/dev/null; \
	cat $$out/results.md; \
	echo "report: $$out/quickstart.html (executed notebook: $$out/quickstart.ipynb)"

# The docs site without Quarto (nbdev's processing + nbconvert), into _docs/; the core notebooks are executed
# for their figures. Where Quarto is installed, `nbdev_docs` builds the standard nbdev site from the same notebooks.
docs: $(STAMP)
	@bash tests/site/setup.sh >/dev/null
	@$(BIN)/dctkd_site --out _docs --execute 00_dct,02_losses,16_viz
	@echo "docs: _docs/index.html"

bench: $(STAMP)
	@$(BIN)/python benchmarks/dct.py
	@$(BIN)/python benchmarks/train.py
	@$(BIN)/python benchmarks/data.py

clean:
	rm -rf _proc _docs .pytest_cache

# The CPU benchmark (issue 17): the toy scenes' benchmark regime, a teacher trained once, the paper's methods and their
# "+ KD" × 3 seeds (nbs/experiments/plans/cpu-bench.yaml); report in benchmarks/results/cpu-bench.md (+ .csv, .png).
.PHONY: cpu-bench
cpu-bench: $(STAMP)
	@MPLBACKEND=Agg $(BIN)/python -c "import sys; from dctkd.bench import bench_cli; sys.exit(bench_cli())"
