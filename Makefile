# flsec: the two commands of the README, and their set-up.
#   make demo   set up, then run the short threat suite (attacks x robust, private and secure pipelines) and its report
#   make test   set up, then lint and run the test suite (CI runs exactly this)
# Override the PyTorch build for a GPU machine, e.g.:  make demo TORCH_SPEC='torch==2.13.0' TORCH_INDEX=...

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= test,text,fm,flower,ray
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.flsec-installed
FMNIST_DIR  := /usr/share/datasets/fashion-mnist

.PHONY: demo fedavg test test-slow setup data lint clean flower-deploy bench-ray

demo: setup data
	@echo ">> flsec suite run threat-short: 3 attacks x 9 pipelines (mean, median, FLAME, central DP, SecAgg+, BFV HE,"
	@echo "   SecAgg+ with distributed DP, median over grouped SecAgg+, Krum under two-server sharing), about 6.5 min on 2 cores"
	@echo "   on Fashion-MNIST, 10 clients: accuracy, attack success, epsilon and the server's reconstruction PSNR"
	$(BIN)/flsec suite run threat-short --out runs/threat-short --report
	@echo ">> report: runs/threat-short/report.md (outcomes.png: the three outcomes side by side); re-running resumes"

# The plain federation of the FL core: FedAvg, Fashion-MNIST, 10 clients, Dirichlet(0.5), 30 rounds.
fedavg: setup data
	$(BIN)/flsec run --out runs/fedavg/history.json

test: setup data
	@echo ">> ruff, then the test suite without the slow paper-scale checks (about 8 min on 2 cores, doctests included)"
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not slow"

test-slow: setup data
	$(BIN)/pytest -q -m slow

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> setting up $(VENV): $(TORCH_SPEC) first, then flsec[$(EXTRAS)] (first time: a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist where the machine allows it
# (root and apt-get); otherwise flsec falls back to scikit-learn digits and says so.
data:
	@if [ -d $(FMNIST_DIR) ]; then echo ">> Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo ">> installing Debian package dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo ">> could not install dataset-fashion-mnist: runs will fall back to scikit-learn digits"; \
	else echo ">> not root or no apt-get: Fashion-MNIST not installed, runs fall back to scikit-learn digits"; fi

# Sequential vs a local Ray on this machine: a 4-cell suite and a 50-client cohort round (docs/scale-out.md).
bench-ray: setup data
	$(BIN)/flsec bench ray

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The example Flower app on a real local deployment: one SuperLink and 10 SuperNodes on 127.0.0.1,
# `flwr run` of examples/flower-robust-dp (Median + central DP under two sign-flipping nodes), all stopped after.
# Needs the flower extra in $(VENV) (`make setup`); it installs nothing itself.
flower-deploy: setup
	PYTHON_BIN_DIR=$(abspath $(BIN)) examples/flower-robust-dp/deploy.sh
