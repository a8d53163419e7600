# Observability: dashboards, Prometheus rules and their proofs (issue 5). Included by the root Makefile,
# which defines PY (the venv's python) and UV_RUN.
PY ?= .venv/bin/python
PROMTOOL ?= promtool
OBS_RULES := deploy/helm/gateway/rules/rtai.rules.yaml
OBS_RULES_TEST := deploy/prometheus/rules_test.yaml
OBS_TESTS := tests/observability
PROMETHEUS_URL ?=
PREVIEW_RANGE ?= 1h
PREVIEW_OUT ?= build/dashboards-preview

.PHONY: rules-check dashboards-check test-observability observability-typecheck dashboards-preview

rules-check: ## promtool: check the rule file and run its unit tests
	$(PROMTOOL) check rules $(OBS_RULES)
	$(PROMTOOL) test rules $(OBS_RULES_TEST)

dashboards-check: ## Static checks of dashboards and rules (schema, parse, coverage, docs); no services started
	$(PY) -m pytest $(OBS_TESTS)/test_dashboards.py $(OBS_TESTS)/test_rules.py -q

test-observability: ## All observability tests, including the live Prometheus one (starts redis, gateway, workers, Prometheus)
	$(PY) -m pytest $(OBS_TESTS) -q

observability-typecheck: ## mypy on the observability tests and the preview script (their helpers import each other by file)
	MYPYPATH=$(OBS_TESTS) $(PY) -m mypy $(OBS_TESTS) scripts/dashboards_preview.py

dashboards-preview: ## Render every dashboard panel to PNG (PROMETHEUS_URL=... to use yours; else a local stack is loaded)
	$(PY) scripts/dashboards_preview.py --out $(PREVIEW_OUT) --range $(PREVIEW_RANGE) $(if $(PROMETHEUS_URL),--prometheus $(PROMETHEUS_URL))
