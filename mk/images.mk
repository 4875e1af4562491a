# Container images (included by the top-level Makefile).
#
#   make images                          build whisper-moe:<version>-cpu and -cuda
#   make images IMAGE_REPO=ghcr.io/acme/whisper-moe
#   make push-images IMAGE_REPO=...      build, then push both tags
#   make lint-dockerfiles                hadolint on every Dockerfile
#
# The tag is the project version from pyproject.toml, so an image always says which code
# it holds. TORCH_CUDA_INDEX_URL picks the CUDA build of the locked torch version; choose
# one that the GPU nodes' driver supports (cu13x wheels need an R580 or newer driver,
# cu12x wheels run on R525 or newer).

PROJECT_VERSION := $(shell awk -F'"' '/^\[project\]/{p=1;next} /^\[/{p=0} p && /^version *=/{print $$2; exit}' pyproject.toml)
IMAGE_REPO ?= whisper-moe
IMAGE_TAG ?= $(PROJECT_VERSION)
CPU_IMAGE ?= $(IMAGE_REPO):$(IMAGE_TAG)-cpu
CUDA_IMAGE ?= $(IMAGE_REPO):$(IMAGE_TAG)-cuda
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA_INDEX_URL ?= https://download.pytorch.org/whl/cu130
HADOLINT ?= $(firstword $(wildcard .venv/bin/hadolint) hadolint)
DOCKERFILES := $(wildcard docker/Dockerfile*)

.PHONY: images image-cpu image-cuda push-images lint-dockerfiles print-images

images: image-cpu image-cuda

image-cpu:
	@test -n "$(PROJECT_VERSION)" || { echo "no version found in pyproject.toml [project]" >&2; exit 1; }
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile --target cpu \
		--build-arg TORCH_CPU_INDEX_URL=$(TORCH_CPU_INDEX_URL) \
		--label org.opencontainers.image.version=$(PROJECT_VERSION) \
		-t $(CPU_IMAGE) .

image-cuda:
	@test -n "$(PROJECT_VERSION)" || { echo "no version found in pyproject.toml [project]" >&2; exit 1; }
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f docker/Dockerfile --target cuda \
		--build-arg TORCH_CUDA_INDEX_URL=$(TORCH_CUDA_INDEX_URL) \
		--label org.opencontainers.image.version=$(PROJECT_VERSION) \
		-t $(CUDA_IMAGE) .

push-images: images
	$(DOCKER) push $(CPU_IMAGE)
	$(DOCKER) push $(CUDA_IMAGE)

lint-dockerfiles:
	$(HADOLINT) $(DOCKERFILES)

print-images:
	@echo $(CPU_IMAGE)
	@echo $(CUDA_IMAGE)
