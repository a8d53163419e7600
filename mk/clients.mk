# Clients and user experience (issue 8): web page, browser client, Python SDK, rtai CLI. Included by the root Makefile.
PY ?= .venv/bin/python
AXE_VERSION := 4.14.1
BROWSER_DEPS := build/browser
AXE_JS := $(BROWSER_DEPS)/node_modules/axe-core/axe.min.js

.PHONY: browser-deps test-browser test-client page-screenshot

$(AXE_JS):
	npm install --prefix $(BROWSER_DEPS) --no-save --no-package-lock --no-audit --no-fund axe-core@$(AXE_VERSION)

browser-deps: $(AXE_JS) ## npm-install axe-core (for the accessibility checks) into build/browser (git-ignored)

test-browser: install-py browser-deps ## the web page in headless Chromium (Debian's /usr/bin/chromium) on real services
	scripts/install-system.sh redis-server chromium
	$(PY) -m pytest tests/browser

test-client: install-py ## SDK and CLI: unit tests, then live tests (real Redis, gateway, worker) and the make run test
	scripts/install-system.sh redis-server
	$(PY) -m pytest libs/client/tests tests/integration/test_make_run.py

page-screenshot: install-py browser-deps ## refresh docs/img/page.png (the README's screenshot) from a real run
	RTAI_UPDATE_SCREENSHOT=1 $(PY) -m pytest tests/browser/test_page.py -k each_live_task -q
