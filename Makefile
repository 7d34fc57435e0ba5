# Two commands on a fresh machine (Python 3.11+ and make):
#   make lab    set everything up and open the course in JupyterLab
#   make test   set everything up and run the whole test suite
# Others: make release (regenerate modules/), make bench (time every notebook),
#         make check NB=modules/00_orientation/00_orientation.ipynb (a learner's self-check),
#         make grade MODULE=00_orientation SUBMISSIONS=path/to/folder-or.zip [JOBS=2] [ID_REGEX=...] [RAY=host:port]
#                    [ZIP_ENCODING=cp1251] [ACCEPT='student1 student2'],
#         make bench-grading [MODULE=..] [JOBS=..] (grading throughput against plain serial nbgrader),
#         make binder-box [BOX_ARGS='--user jovyan 00_orientation'] (every notebook in Binder's environment,
#                    built from binder/ alone, under 2 GB and one CPU; root),
#         make gpu-check [NB="00_orientation 03_profiling"] [PROFILE=t4] [JOBS=4] (every notebook on the GPU:
#                        time, peak GPU memory, declared CPU runs, heavy cells with no CUDA work, errors;
#                        PROFILE=t4 predicts Colab's T4),
#         make hub [LEARNERS=30] [MODULES="00_orientation 01_edge"] [HUB_ROOT=/srv/sysml-hub] [HUB_PORT=8000]
#                  [HUB_PREFIX=sysml-] [HUB_ARGS='--ssl-key k.pem --ssl-cert c.pem'] (a JupyterHub for a lab: root;
#                  autograders/INSTRUCTORS.md, Running a lab hub; a re-run with more learners or another port
#                  restarts it), make hub-down [HUB_ARGS=--remove-accounts: deletes the accounts' homes too, with
#                  the instructor's gradebook, submissions and feedback],
#         make colab-check [COLAB_ARGS='--only 02_snn --python /path/to/python3.13'] (every notebook's install
#                    cell, setup and first exercise in a Colab-like environment: Colab's 2026-08 runtime, Python 3.13, torch 2.11, IPython 7.34,
#                    no course; COLAB_ARGS='--runtime py312-torch2.14' for the older one; not in make test)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
# Leave empty on these machines; on your own, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# fetches the 200 MB CPU build of torch instead of the multi-GB CUDA one.
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
TORCH_PIN := $(shell grep -m1 '^torch==' requirements.txt)
START := modules/00_orientation/00_orientation.ipynb
MODULE ?= 00_orientation
LAB_ROOT ?= $(CURDIR)

# Jupyter and nbgrader find tools (alembic, jupyter-*) on PATH: put the venv first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: lab test release bench bench-grading binder-box gpu-check colab-check check grade constraints hub hub-down

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else f"Python 3.11 or newer is needed (flwr 1.42); {sys.executable} is {v.major}.{v.minor}. Try: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and alone: with it installed, a resolver backtracking over other packages
	@# (a slow index answer is enough) can never swap the CPU build for a multi-GB CUDA one.
	$(BIN)/python -m pip install $(PIP_INDEX) -c constraints.txt "$(TORCH_PIN)"
	$(BIN)/python -m pip install $(PIP_INDEX) -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# JupyterLab settings the course ships (no "get Jupyter news?" pop-up); Binder's postBuild installs the same.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
# (not `install -D`: macOS's BSD install has no -D)
$(LAB_OVERRIDES): binder/overrides.json $(STAMP)
	mkdir -p $(dir $@) && cp $< $@ && chmod 644 $@

# Validate in JupyterLab judges as `make check` and grading do (course settings, stderr ignored):
# the course serves it in place of nbgrader's (autograders/validate.py); Binder's postBuild runs the same.
LAB_VALIDATE := $(VENV)/.validate-installed
$(LAB_VALIDATE): autograders/validate.py $(STAMP)
	$(BIN)/python -m autograders.validate --sys-prefix
	touch $@

# Serve the whole repository (so every module shows in the file browser), opening the start page.
lab: $(STAMP) $(LAB_OVERRIDES) $(LAB_VALIDATE)
	$(BIN)/jupyter lab --ServerApp.root_dir="$(LAB_ROOT)" --LabApp.default_url=/lab/tree/$(START) \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

$(TEST_STAMP): tests/requirements.txt $(STAMP)
	$(BIN)/python -m pip install -r tests/requirements.txt -c constraints.txt
	touch $@

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

release: $(STAMP)
	$(BIN)/python -m autograders.release

bench: $(STAMP)
	$(BIN)/python -m tests.bench_notebooks

binder-box: $(STAMP)
	$(BIN)/python -m tests.binder_box $(BOX_ARGS)

gpu-check: $(STAMP)
	$(BIN)/python -m tests.gpu_check $(NB) $(if $(PROFILE),--profile $(PROFILE)) $(if $(JOBS),--jobs $(JOBS)) \
	  $(GPU_CHECK_ARGS)

colab-check: $(STAMP)
	$(BIN)/python -m tests.colab_like $(COLAB_ARGS)

bench-grading: $(STAMP)
	$(BIN)/python -m tests.bench_grading $(MODULE) $(if $(JOBS),--jobs $(JOBS)) $(BENCH_ARGS)

check: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make check NB=modules/00_orientation/00_orientation.ipynb"; exit 2; }
	$(BIN)/python -m autograders.check $(NB)

grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade MODULE=00_orientation SUBMISSIONS=folder-or.zip"; exit 2; }
	$(BIN)/python -m autograders.grade $(MODULE) "$(SUBMISSIONS)" $(if $(JOBS),--jobs $(JOBS)) \
	  $(if $(ID_REGEX),--id-regex '$(ID_REGEX)') $(if $(ZIP_ENCODING),--zip-encoding $(ZIP_ENCODING)) \
	  $(foreach s,$(ACCEPT),--accept $(s)) $(if $(RAY),--ray $(RAY))

# Grades out: a Canvas or Moodle gradebook import from grades.csv (autograders/export.py; INSTRUCTORS.md
# "Grades into Canvas or Moodle"), with the hand grades of the gradebook.db beside it (NO_GRADEBOOK=1: not),
# or from a lab hub's gradebook.db (IDS: account -> LMS id). GRADES: one grades.csv per module, space-separated,
# or a gradebook.db; ROSTER: the LMS's export; MODULE=... on the command line with one GRADES: the module of a
# grades.csv copied out of grading/<module>/ (or the one assignment of a gradebook.db to export).
# Status 3 of the export (file written, some students not matched) is said in words: make itself can only
# fail with 2, as for a refusal; `python -m autograders.export` keeps 0, 2 and 3 apart.
EXPORT_GRADES = $(if $(GRADES),$(if $(and $(filter command line,$(origin MODULE)),$(filter 1,$(words $(GRADES)))),\
  "$(MODULE)=$(GRADES)",$(GRADES)),grading/$(MODULE)/grades.csv)
.PHONY: export
export: $(STAMP)
	@test -n "$(LMS)" -a -n "$(or $(GRADES),$(MODULE))" -a -n "$(ROSTER)" -a -n "$(OUT)" || { echo "usage: make export \
	  LMS=canvas|moodle|moodle-xml GRADES='grading/00_orientation/grades.csv ...' ROSTER=lms_export.csv OUT=import.csv \
	  [MODULE=00_orientation] [WORKSHEET=00_orientation=worksheet.csv] [MATCH_ON=column] [IDS=who.csv]"; exit 2; }
	@rc=0; $(BIN)/python -m autograders.export $(LMS) \
	  $(EXPORT_GRADES) \
	  $(foreach r,$(ROSTER),--roster "$(r)") --out "$(OUT)" $(foreach w,$(WORKSHEET),--worksheet "$(w)") \
	  $(if $(MATCH_ON),--match-on "$(MATCH_ON)") $(if $(ALLOW_UNMATCHED),--allow-unmatched) \
	  $(if $(IDS),--ids "$(IDS)") $(if $(NO_GRADEBOOK),--no-gradebook) || rc=$$?; \
	if [ $$rc = 3 ]; then echo "make export: $(OUT) IS WRITTEN, without the students listed above as NOT MATCHED" \
	  "TO THE ROSTER: match them (MATCH_ON, WORKSHEET, IDS) and export again, or ALLOW_UNMATCHED=1 (status 3 of" \
	  "python -m autograders.export; make reports it as Error 3 and exits 2)"; fi; exit $$rc

constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

# A lab hub on this machine (root): JupyterHub, an instructor and LEARNERS learner accounts, nbgrader's exchange.
# Runs with the system's Python (stdlib only): it builds the learners' own environment under HUB_ROOT.
HUB_ROOT ?= /srv/sysml-hub
LEARNERS ?= 30
HUB_PREFIX ?= sysml-
HUB_PORT ?= 8000
HUB_PY ?= python3
hub:
	$(HUB_PY) -m autograders.hub up --root "$(HUB_ROOT)" --learners $(LEARNERS) --prefix "$(HUB_PREFIX)" \
	  --port $(HUB_PORT) $(if $(MODULES),--modules $(MODULES)) $(HUB_ARGS)

hub-down:
	$(HUB_PY) -m autograders.hub down --root "$(HUB_ROOT)" --prefix "$(HUB_PREFIX)" $(HUB_ARGS)
