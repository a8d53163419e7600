# Edge security and abuse resistance (issue 7). Included by the root Makefile, which defines PY (the venv's python).
PY ?= .venv/bin/python
SEC_TESTS := tests/security
FUZZ_EXAMPLES ?= 1000
PREFIX ?= rtai

.PHONY: test-security test-security-unit fuzz redis-acl

test-security-unit: ## gateway unit tests of auth, origins, rate limit, fairness, internal errors (no servers)
	$(PY) -m pytest services/gateway/tests -q

test-security: ## edge security on real processes: every limit and refusal, auth, isolation, fairness, Redis ACL, 10k-frame fuzz
	$(PY) -m pytest $(SEC_TESTS) -q

fuzz: ## larger protocol fuzz: FUZZ_EXAMPLES x 100 frames (default 100,000) against a live gateway; report in build/security
	RTAI_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest $(SEC_TESTS)/test_fuzz.py -q
	cat build/security/fuzz-report.json

redis-acl: ## print a least-privilege Redis ACL file (GATEWAY_PW_FILE, WORKER_PW_FILE, optional ADMIN_PW_FILE, PREFIX)
	$(PY) scripts/redis_acl.py --prefix $(PREFIX) --gateway-password-file $(GATEWAY_PW_FILE) \
	  --worker-password-file $(WORKER_PW_FILE) $(if $(ADMIN_PW_FILE),--admin-password-file $(ADMIN_PW_FILE))
