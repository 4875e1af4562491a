# Container images (included by the top-level Makefile).
#
#   make images                          build whisper-moe:<version>-cpu and -cuda
#   make image-cpu                       the cpu image alone
#   make images IMAGE_BUILD=registry     base image from a registry, packages from PyPI
#   make images IMAGE_REPO=ghcr.io/acme/whisper-moe
#   make push-images IMAGE_REPO=...      build, then push both tags
#   make image-test                      build the cpu image and run both pipelines in it
#   make lint-dockerfiles                hadolint on every Dockerfile
#
# IMAGE_BUILD=airgap (the default) needs no container registry and no network inside the
# build: the base image is made from Debian packages (scripts/make_base_image.sh, mmdebstrap)
# and every Python package comes from docker/wheelhouse/<variant>, filled beforehand on the
# host from requirements-runtime.lock (`make wheelhouse`, downloaded once per lock into
# WHEELHOUSE_CACHE, default ~/.cache/whisper-moe/wheelhouse). IMAGE_BUILD=registry pulls
# PYTHON_IMAGE and lets pip use PyPI and the PyTorch index inside the build.
#
# The tag is the project version from pyproject.toml, so an image always says which code
# it holds. TORCH_CUDA_INDEX_URL picks the CUDA build of the locked torch version; choose
# one that the GPU nodes' driver supports (cu13x wheels need an R580 or newer driver,
# cu12x wheels run on R525 or newer). TORCH_CPU_FIND_LINKS / TORCH_CUDA_FIND_LINKS name a
# local folder that holds the torch wheel instead of an index (default for CPU: the
# find-links folder pip is configured with, if any).

# The commit baked into the images (docker/Dockerfile GIT_COMMIT), which a model's lineage
# records; -dirty when tracked files differ from it. CI passes GIT_COMMIT=$GITHUB_SHA.
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(if $(shell git status --porcelain --untracked-files=no 2>/dev/null),-dirty)
PROJECT_VERSION := $(shell awk -F'"' '/^\[project\]/{p=1;next} /^\[/{p=0} p && /^version *=/{print $$2; exit}' pyproject.toml)
IMAGE_REPO ?= whisper-moe
IMAGE_TAG ?= $(PROJECT_VERSION)
CPU_IMAGE ?= $(IMAGE_REPO):$(IMAGE_TAG)-cpu
CUDA_IMAGE ?= $(IMAGE_REPO):$(IMAGE_TAG)-cuda
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=
IMAGE_BUILD ?= airgap
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA_INDEX_URL ?= https://download.pytorch.org/whl/cu130
WHEEL_PYTHON ?= $(PYTHON)
TORCH_CPU_FIND_LINKS ?= $(firstword $(shell $(WHEEL_PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_CUDA_FIND_LINKS ?=
BASE_IMAGE_CPU ?= whisper-moe-base:bookworm
BASE_IMAGE_CUDA ?= whisper-moe-base:bookworm-gcc
WHEELHOUSE := docker/wheelhouse
WHEELHOUSE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/whisper-moe/wheelhouse
RUNTIME_LOCK := requirements-runtime.lock
LOCK_HASH := $(shell sha256sum $(RUNTIME_LOCK) docker/install_python_deps.py | sha256sum | cut -c1-12)
HADOLINT ?= $(firstword $(wildcard .venv/bin/hadolint) hadolint)
DOCKERFILES := $(wildcard docker/Dockerfile*)

ifeq ($(IMAGE_BUILD),airgap)
# --network=none: the build itself proves it needs nothing from outside.
CPU_BUILD_ARGS = --pull=false --network=none --build-arg PYTHON_IMAGE=$(BASE_IMAGE_CPU) \
	--build-arg WHEELHOUSE=/build/wheelhouse/cpu
CUDA_BUILD_ARGS = --pull=false --network=none --build-arg PYTHON_IMAGE=$(BASE_IMAGE_CUDA) \
	--build-arg WHEELHOUSE=/build/wheelhouse/cuda
CPU_PREREQS = base-image-cpu $(WHEELHOUSE)/cpu/.complete-$(LOCK_HASH)
CUDA_PREREQS = base-image-cuda $(WHEELHOUSE)/cuda/.complete-$(LOCK_HASH)
else ifeq ($(IMAGE_BUILD),registry)
CPU_BUILD_ARGS =
CUDA_BUILD_ARGS =
CPU_PREREQS =
CUDA_PREREQS =
else
$(error IMAGE_BUILD=$(IMAGE_BUILD): use airgap or registry)
endif

.PHONY: images image-cpu image-cuda push-images lint-dockerfiles print-images print-version wheelhouse \
	base-image-cpu base-image-cuda image-test

images: image-cpu image-cuda

image-cpu: $(CPU_PREREQS)
	@test -n "$(PROJECT_VERSION)" || { echo "no version found in pyproject.toml [project]" >&2; exit 1; }
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) $(CPU_BUILD_ARGS) -f docker/Dockerfile --target cpu \
		--build-arg TORCH_CPU_INDEX_URL=$(TORCH_CPU_INDEX_URL) --build-arg GIT_COMMIT=$(GIT_COMMIT) \
		--label org.opencontainers.image.version=$(PROJECT_VERSION) \
		-t $(CPU_IMAGE) .

image-cuda: $(CUDA_PREREQS)
	@test -n "$(PROJECT_VERSION)" || { echo "no version found in pyproject.toml [project]" >&2; exit 1; }
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) $(CUDA_BUILD_ARGS) -f docker/Dockerfile --target cuda \
		--build-arg TORCH_CUDA_INDEX_URL=$(TORCH_CUDA_INDEX_URL) --build-arg GIT_COMMIT=$(GIT_COMMIT) \
		--label org.opencontainers.image.version=$(PROJECT_VERSION) \
		-t $(CUDA_IMAGE) .

## The wheelhouse of air-gapped builds, made where PyPI (and the torch wheel) can be reached.
wheelhouse: $(WHEELHOUSE)/cpu/.complete-$(LOCK_HASH)

# Each variant's wheels are downloaded once per lock into WHEELHOUSE_CACHE (outside the
# checkout, so a fresh clone reuses them) and linked into the build context from there.
$(WHEELHOUSE)/cpu/.complete-$(LOCK_HASH): $(RUNTIME_LOCK) docker/install_python_deps.py
	$(call cached_wheels,cpu,$(if $(TORCH_CPU_FIND_LINKS),--torch-find-links $(TORCH_CPU_FIND_LINKS),--torch-index-url $(TORCH_CPU_INDEX_URL)))
	touch $@

$(WHEELHOUSE)/cuda/.complete-$(LOCK_HASH): $(RUNTIME_LOCK) docker/install_python_deps.py
	$(call cached_wheels,cuda,$(if $(TORCH_CUDA_FIND_LINKS),--torch-find-links $(TORCH_CUDA_FIND_LINKS),--torch-index-url $(TORCH_CUDA_INDEX_URL)))
	touch $@

# $(call cached_wheels,VARIANT,TORCH_SOURCE): fill the cache entry unless complete, then
# hard-link it into docker/wheelhouse/VARIANT (a copy across file systems).
define cached_wheels
	set -e; cached=$(WHEELHOUSE_CACHE)/$(1)-$(LOCK_HASH); \
	if [ ! -f "$$cached/.complete" ]; then \
		rm -rf "$$cached.partial"; \
		$(WHEEL_PYTHON) docker/install_python_deps.py $(RUNTIME_LOCK) --download "$$cached.partial" $(2); \
		touch "$$cached.partial/.complete"; rm -rf "$$cached"; mv "$$cached.partial" "$$cached"; \
	else echo "wheelhouse $(1): reusing $$cached"; fi; \
	rm -rf $(WHEELHOUSE)/$(1); mkdir -p $(WHEELHOUSE); \
	cp -al "$$cached" $(WHEELHOUSE)/$(1) 2>/dev/null || cp -a "$$cached" $(WHEELHOUSE)/$(1)
endef

## Local base images from Debian packages (made once; remove the image to remake it).
base-image-cpu:
	@$(DOCKER) image inspect $(BASE_IMAGE_CPU) > /dev/null 2>&1 || \
		DOCKER=$(DOCKER) scripts/make_base_image.sh $(BASE_IMAGE_CPU)

base-image-cuda:
	@$(DOCKER) image inspect $(BASE_IMAGE_CUDA) > /dev/null 2>&1 || \
		DOCKER=$(DOCKER) scripts/make_base_image.sh $(BASE_IMAGE_CUDA) --with-compiler

push-images: images
	$(DOCKER) push $(CPU_IMAGE)
	$(DOCKER) push $(CUDA_IMAGE)

## Build the cpu image and run both compiled pipelines in it under the Kubernetes
## securityContext (scripts/run_image_test.py); installs and starts what it needs.
image-test: venv
	$(BIN)/python scripts/run_image_test.py $(IMAGE_TEST_ARGS)

lint-dockerfiles:
	$(HADOLINT) $(DOCKERFILES)

print-images:
	@echo $(CPU_IMAGE)
	@echo $(CUDA_IMAGE)

print-version:
	@echo $(PROJECT_VERSION)
