# Deploy proofs that run the rendered charts (issue 6): conformance and live autoscaling. Included by the root Makefile.
# Both are also part of `make test` (they live under tests/deploy); these targets run them alone, with their output.
PY ?= .venv/bin/python
DEPLOY_PROOF_FILES := tests/deploy/local_service.py tests/deploy/dockerfile.py tests/deploy/hpa_sim.py tests/deploy/test_conformance.py \
	tests/deploy/test_autoscaling_live.py tests/deploy/autoscaling_stack.py tests/deploy/test_hpa_sim.py

.PHONY: test-conformance test-autoscaling-live deploy-proofs deploy-proofs-typecheck

test-conformance: deploy-tools ## Gateway+worker charts (default, sentinel values) run locally with the rendered env; probes and one request
	$(PY) -m pytest tests/deploy/test_conformance.py -q -s

test-autoscaling-live: deploy-tools ## Rendered KEDA queries on a live Prometheus under load, and the replica counts the HPA would choose
	$(PY) -m pytest tests/deploy/test_hpa_sim.py tests/deploy/test_autoscaling_live.py -q -s

deploy-proofs: test-conformance test-autoscaling-live ## Both of the above

deploy-proofs-typecheck: ## mypy on the deploy proofs (the live test imports the observability harness by file)
	MYPYPATH=tests/observability $(PY) -m mypy $(DEPLOY_PROOF_FILES)
