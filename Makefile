# Two commands for a fresh machine:  make demo  |  make test
# Both create (or reuse) the virtual environment .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, pin the CPU build of torch (see constraints-cpu.txt).
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints-cpu.txt)
PYTEST_WORKERS ?= 2

.PHONY: demo test install bench gpu-check clean wheel preview-assets

$(VENV)/.installed: setup.py constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The 3D preview's viewer (@google/model-viewer) and the glTF validator, pinned in
# threestudio_like/preview/npm/, installed by npm into a cache outside the repository.
preview-assets: install
	$(PY) launch.py --preview-assets

# The demo also fetches the 3D viewer for save/preview.html when npm is there (never fatal:
# without it the page shows the turntable and links, and says how to add the viewer).
demo: install
	-@command -v npm >/dev/null 2>&1 && $(PY) launch.py --preview-assets || echo "note: no 3D viewer for the preview page (needs npm; see make preview-assets)"
	$(PY) launch.py --config demo.yaml --train

test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

bench: install
	$(PY) benchmarks/bench_hashgrid.py
	$(PY) benchmarks/bench_renderer.py
	$(PY) benchmarks/bench_demo.py

# On a CUDA machine (< 8 min on an H100/H200): CUDA tests, hash-grid / marcher / MVDream / demo
# figures into $(OUT) (default outputs/gpu-check) as gpu_check.json + gpu_check.md. Without CUDA
# it says so and only checks that its pieces import.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) outputs .pytest_cache

# A wheel of the package (recipes included) in dist/: pip install dist/threestudio_like-*.whl
wheel: install
	$(PY) -m pip wheel --no-deps --no-build-isolation . -w dist
