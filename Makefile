# The commands a person types. `make test` is the README's test command and what CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dctkd-installed
DEMO_STAMP := $(VENV)/.dctkd-demo
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
# What the sync check compares. The experiment notebooks are left out: nothing is exported from them, and outputs a
# person saved while running them (JupyterLab, papermill --inplace) are theirs, not a library out of sync.
# nbdev_clean still tidies their metadata.
SYNCED := nbs dctkd README.md ':(exclude)nbs/experiments'

.PHONY: install sync test demo docs bench clean doctor

# A fresh .venv with torch pinned first (the local CPU build), then dctkd and extras under the same constraints,
# so pip can never replace torch or pull an unpinned torchvision. `make install` (and so `make test`) installs
# every extra (`dctkd[all]`: dev, docs, lab and each `extra_*` line of settings.ini); `make demo` only `dctkd[lab]`.
define pip_install
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 and dctkd[$(1)] into $(VENV) ..."
	@$(PIP) torch==2.13.0 2> >(grep -v 'is ignored: it is neither' >&2)
	@$(PIP) -e '.[$(1)]' 2> >(grep -v 'is ignored: it is neither' >&2)
	@touch $@
endef

$(STAMP): settings.ini setup.py constraints.txt
	$(call pip_install,all)

$(DEMO_STAMP): settings.ini setup.py constraints.txt
	$(call pip_install,lab)

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

# Two pytest-xdist workers (`-n 2`, one per core of a 2-core machine); `--dist loadgroup` keeps the tests marked with one
# xdist_group on one worker (tests/conftest.py: the docs-site tests beside the notebooks whose outputs they reuse).
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: sync
	@MPLBACKEND=Agg $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadgroup -p no:cacheprovider --durations=15

# The quickstart: toy scenes, a teacher, a baseline, a DCT and a DCT + KD student, evaluated, with attention
# maps and spectra; the executed notebook and its HTML go to a new runs/demo/<date-time>/ folder.
demo: $(DEMO_STAMP)
	@mkdir -p runs/demo; out=$$(mktemp -d runs/demo/$$(date +%Y%m%d-%H%M%S)-XXXX); \
	echo "quickstart -> $$out (a few minutes on 2 CPU cores)"; \
	(cd nbs/experiments && env -u MPLBACKEND ../../$(BIN)/papermill -k python3 --log-output --no-progress-bar --cwd . quickstart.ipynb ../../$$out/quickstart.ipynb -p out ../../$$out) || exit 1; \
	$(BIN)/jupyter nbconvert --to html --log-level WARN $$out/quickstart.ipynb >/dev/null; \
	cat $$out/results.md; \
	echo "report: $$out/quickstart.html (executed notebook: $$out/quickstart.ipynb)"

# The docs site without Quarto (nbdev's processing + nbconvert), into _docs/; every notebook is executed for its
# outputs (about 5 CPU-minutes). Where Quarto is installed, `nbdev_docs` builds the standard nbdev site from the same notebooks.
docs: $(STAMP)
	@bash tests/site/setup.sh >/dev/null
	@$(BIN)/dctkd_site --out _docs --execute all
	@echo "docs: _docs/index.html"

# The benchmarks guide from the scripts' own output: each script interleaves its variants and prints median [min–max]
# and the load; with --out it writes benchmarks/results/<name>.md/.json, and benchmarks/guide.py copies the .md files
# into the guide's generated cells (only those). BENCH_<name> are CPU-sized settings for a 2-core machine; empty them
# on a GPU machine for the scripts' full-size defaults (`make bench BENCH_dct= BENCH_data= BENCH_train_e2e=`);
# BENCH_ALL goes to every script (e.g. `BENCH_ALL='--threads 1'` on a machine busy with other jobs).
BENCH := dct train data train_e2e switches split determinism
BENCH_dct ?= --batch 32
BENCH_train ?=
BENCH_switches ?=
BENCH_split ?= --rounds 2
BENCH_data ?= --n 1000
BENCH_train_e2e ?= --n 160 --size 64 --batch 32 --epochs 2 --workers 0
BENCH_determinism ?=
BENCH_ALL ?=
bench: $(STAMP)
	@for b in $(BENCH); do \
	  case $$b in dct) args="$(BENCH_dct)";; train) args="$(BENCH_train)";; data) args="$(BENCH_data)";; \
	    train_e2e) args="$(BENCH_train_e2e)";; switches) args="$(BENCH_switches)";; split) args="$(BENCH_split)";; determinism) args="$(BENCH_determinism)";; esac; \
	  echo; $(BIN)/python benchmarks/$$b.py --out benchmarks/results $$args $(BENCH_ALL) || exit 1; done
	@$(BIN)/python benchmarks/guide.py && $(BIN)/nbdev_clean --fname nbs/guides/benchmarks.ipynb

# Every device path checked and timed, in at most 5 minutes on one GPU (small sizes on CPU, CUDA checks skipped): the
# environment, training steps under fp32 / bf16 + channels_last (± torch.compile) / fp16 + GradScaler against fp32, the
# decode cache, DDP (NCCL). The report goes to DOCTOR_OUT; exit status 1 when a check failed. DOCTOR_ARGS e.g. --skip compile.
DOCTOR_OUT ?= doctor.md
DOCTOR_ARGS ?=
doctor: $(STAMP)
	@$(BIN)/dctkd_doctor --out $(DOCTOR_OUT) $(DOCTOR_ARGS)

clean:
	rm -rf _proc _docs .pytest_cache

# The CPU benchmark (issue 22): the CIFAR ResNets on the toy scenes' benchmark regime, a teacher trained once, the paper's
# methods and their "+ KD" × 5 paired seeds (nbs/experiments/plans/cpu-bench.yaml), 2 worker processes of 1 thread each
# under dctkd.bench.BENCH_ENV (pinned kernels); report, per-seed CSV, figures, fingerprint, teacher and the bench-check
# record in benchmarks/results/cpu-bench*. CPU_BENCH adds options (e.g. CPU_BENCH='--seeds 0,1 --out runs/sweeps/trial').
CPU_BENCH ?=
.PHONY: cpu-bench bench-check
cpu-bench: $(STAMP)
	@MPLBACKEND=Agg $(BIN)/python -c "import sys; from dctkd.bench import bench_cli; sys.exit(bench_cli())" --jobs 2 --threads 1 --plan nbs/experiments/plans/cpu-bench.yaml --kd-note benchmarks/cpu-bench-kd-note.md $(CPU_BENCH)

# Retrain one committed benchmark cell from the committed teacher (benchmarks/results/cpu-bench-check.json,
# cpu-bench-teacher.pt): bit for bit where the fingerprint matches, within the cell's committed range elsewhere.
bench-check: $(STAMP)
	@MPLBACKEND=Agg $(BIN)/python -c "import sys; from dctkd.bench import bench_check_cli; sys.exit(bench_check_cli())"
