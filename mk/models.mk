# Models: converted artifacts, head training, accuracy and the model benchmark (owner: models).
# The cache is the worker's MODEL_CACHE_DIR; never committed.
MODEL_CACHE_DIR ?= $(or $(RTAI_WORKER_MODEL_CACHE_DIR),$(HOME)/.cache/rtai)
# The labelled sets (read by eval/train only; the tests carry their own slice).
RTAI_DATA_DIR ?= $(abspath ../shared/data)
export RTAI_DATA_DIR

.PHONY: models eval train-sentiment-head bench-models test-models

models: install-models ## export MiniLM to int8 ONNX and convert SmolLM2 to safetensors in the model cache (once)
	RTAI_WORKER_MODEL_CACHE_DIR=$(MODEL_CACHE_DIR) $(PY) -m rtai_worker.models.build --cache-dir $(MODEL_CACHE_DIR)

eval: models ## accuracy and macro-F1 of each sentiment model on both labelled sets (markdown table)
	$(PY) scripts/eval_sentiment.py --cache-dir $(MODEL_CACHE_DIR)

train-sentiment-head: models ## re-train the committed minilm-sentiment head (deterministic)
	$(PY) scripts/train_sentiment_head.py --cache-dir $(MODEL_CACHE_DIR)

bench-models: models ## embed batched vs 1 and sorted vs unsorted, generate TTFT and tokens/s -> bench/results/models.{json,md}
	RTAI_WORKER_MODEL_CACHE_DIR=$(MODEL_CACHE_DIR) $(PY) bench/bench_models.py

test-models: models ## the model tests on the real models
	RTAI_WORKER_MODEL_CACHE_DIR=$(MODEL_CACHE_DIR) $(PYTEST) services/inference-worker/tests -k models -p no:cacheprovider
