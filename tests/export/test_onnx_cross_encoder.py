"""The ONNX Runtime cross-encoder (``backend="onnx"``) against eager PyTorch, the reference.

``data/tiny_cross_encoder.onnx`` is the float32 export of ``build_views()``'s cross-encoder (tiny BERT, seed 0), so
the ONNX Runtime path is tested where the ``onnx`` package (needed only to export) is not installed. Regenerate with:
``python tests/export/test_onnx_cross_encoder.py``.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mm_sbert.export import OnnxScorer, export_cross_encoder_onnx, with_onnx_scorer
from mm_sbert.export.onnx_cross_encoder import query_candidate_features, score_candidates
from mm_sbert.image_features import RegionFeatures
from mm_sbert.retrieval import CooperativeRetriever, PairScoreCache, rerank
from mm_sbert.retrieval.cooperative_retriever import cross_encoder_logits

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "tiny_cross_encoder.onnx")
# Stated tolerance of the float32 export against eager logits (observed: ~1e-6).
FP32_ATOL = 1e-4
CAPTIONS = ["a red square", "two big green circles on the left of a blue star", "a cat"]
COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]


def make_image(index: int) -> Image.Image:
    image = Image.new("RGB", (32, 32), COLORS[index % 8])
    ImageDraw.Draw(image).rectangle([index * 3, 0, index * 3 + 8, 16], fill=COLORS[(index + 3) % 8])
    return image


IMAGES = [make_image(i) for i in range(6)]


@pytest.fixture(scope="module")
def views():
    from conftest import build_views

    return build_views()


def onnx_backend(cross_encoder, onnx_path: str):
    """A copy of ``cross_encoder`` scoring pairs through ``onnx_path``, as ``backend="onnx"`` loads it."""
    return with_onnx_scorer(cross_encoder, onnx_path)


def eager_logits(cross_encoder, pairs) -> torch.Tensor:
    return cross_encoder_logits(cross_encoder, pairs)


def test_float32_export_scores_equal_eager_pairs_and_batches(views):
    _, cross_encoder = views
    fast = onnx_backend(cross_encoder, FIXTURE)
    pairs = [(caption, image) for caption in CAPTIONS for image in IMAGES]
    expected = eager_logits(cross_encoder, pairs)
    torch.testing.assert_close(cross_encoder_logits(fast, pairs, batch_size=7), expected, atol=FP32_ATOL, rtol=0)
    # A single unpadded pair, and more regions than the traced example had (widths are dynamic).
    regions = RegionFeatures(torch.rand(9, cross_encoder[0].region_feature_dim), torch.rand(9, 4).sort(dim=1).values)
    single = [("a", regions)]
    torch.testing.assert_close(
        cross_encoder_logits(fast, single), eager_logits(cross_encoder, single), atol=FP32_ATOL, rtol=0
    )
    probabilities = fast.predict(pairs[:3])
    assert isinstance(probabilities, np.ndarray)
    np.testing.assert_allclose(probabilities, torch.sigmoid(expected[:3]).numpy(), atol=FP32_ATOL)


@pytest.mark.parametrize("query_is_caption", [True, False])
def test_score_candidates_preprocesses_the_query_once_and_equals_the_pairs(views, query_is_caption):
    _, cross_encoder = views
    fast = onnx_backend(cross_encoder, FIXTURE)
    module = fast[0]
    calls = []
    original = module.preprocess
    module.preprocess = lambda inputs, *args, **kwargs: calls.append(list(inputs)) or original(inputs, *args, **kwargs)
    try:
        if query_is_caption:
            query, candidates, pairs = CAPTIONS[1], IMAGES, [(CAPTIONS[1], image) for image in IMAGES]
        else:
            query, candidates, pairs = IMAGES[2], CAPTIONS, [(caption, IMAGES[2]) for caption in CAPTIONS]
        logits = score_candidates(fast[0], query, candidates)
    finally:
        module.preprocess = original
    assert calls == [[query], list(candidates)]
    torch.testing.assert_close(logits, eager_logits(cross_encoder, pairs), atol=FP32_ATOL, rtol=0)
    features = query_candidate_features(module, query, candidates)
    reference = module.preprocess(pairs)
    assert sorted(features) == sorted(reference)
    for name in features:
        assert torch.equal(features[name], reference[name]), name


def test_score_candidates_refuses_one_modality(views):
    fast = onnx_backend(views[1], FIXTURE)
    with pytest.raises(ValueError, match="The query and its candidates are all texts"):
        score_candidates(fast[0], "a red square", ["a cat", "a dog"])


def test_cooperative_retriever_with_the_onnx_cross_encoder_reranks_like_eager(views):
    bi_encoder, cross_encoder = views
    eager = CooperativeRetriever(bi_encoder, cross_encoder, top_k=4, show_progress_bar=False)
    eager.index(IMAGES)
    fast = CooperativeRetriever(bi_encoder, onnx_backend(cross_encoder, FIXTURE), top_k=4)
    fast.use_index(eager.embedding_index, items=IMAGES)
    for expected_hits, hits in zip(eager.search(CAPTIONS), fast.search(CAPTIONS)):
        assert [hit.corpus_id for hit in hits] == [hit.corpus_id for hit in expected_hits]
        assert [hit.ce_score for hit in hits] == pytest.approx([hit.ce_score for hit in expected_hits], abs=FP32_ATOL)


def test_rerank_with_a_cache_scores_each_query_in_one_onnx_batch_like_eager(views, monkeypatch):
    # rerank() is the one rerank path: the ONNX per-query batching sits inside it, cache misses included.
    _, cross_encoder = views
    fast = onnx_backend(cross_encoder, FIXTURE)
    rows = torch.tensor([[0, 1, 2], [3, 4, 5], [5, 0, 2]])
    query_ids = ["q0", "q1", "q2"]
    expected = rerank(cross_encoder, CAPTIONS, IMAGES, rows, query_ids=query_ids, cache=PairScoreCache())
    calls = []
    features = query_candidate_features
    from mm_sbert.export import onnx_cross_encoder

    monkeypatch.setattr(
        onnx_cross_encoder,
        "query_candidate_features",
        lambda module, query, candidates: (
            calls.append((query, len(candidates))) or features(module, query, candidates)
        ),
    )
    cache = PairScoreCache()
    rerank(fast, CAPTIONS[:1], IMAGES, rows[:1, :2], query_ids=query_ids[:1], cache=cache)  # 2 pairs cached
    calls.clear()
    result = rerank(fast, CAPTIONS, IMAGES, rows, query_ids=query_ids, cache=cache)
    assert calls == [(CAPTIONS[0], 1), (CAPTIONS[1], 3), (CAPTIONS[2], 3)]
    assert result.ce_pairs == 7
    assert result.rows.tolist() == expected.rows.tolist()
    torch.testing.assert_close(result.ce_scores, expected.ce_scores, atol=FP32_ATOL, rtol=0)


def test_missing_file_is_a_clear_error(views, tmp_path):
    with pytest.raises(FileNotFoundError, match="No ONNX model at .*; write one with export_cross_encoder_onnx"):
        OnnxScorer(str(tmp_path / "none.onnx"))


def test_the_onnx_cross_encoder_wrapper_is_a_deprecated_alias_of_the_backend_switch(views):
    import mm_sbert

    with pytest.warns(DeprecationWarning, match="backend='onnx'"):
        wrapper = mm_sbert.OnnxCrossEncoder
    fast = wrapper(views[1], FIXTURE)
    assert fast[0].onnx_scorer is not None and views[1][0].onnx_scorer is None, "the given model is not changed"
    pairs = [(CAPTIONS[0], image) for image in IMAGES]
    torch.testing.assert_close(
        cross_encoder_logits(fast, pairs), eager_logits(views[1], pairs), atol=FP32_ATOL, rtol=0
    )
    assert "OnnxCrossEncoder" not in mm_sbert.__all__
    with pytest.raises(AttributeError, match="backend='onnx'"):
        mm_sbert.export.OnnxCrossEncoder  # noqa: B018


def test_export_then_load_from_the_model_folder_with_int8(views, tmp_path):
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    _, cross_encoder = views
    cross_encoder.save(str(tmp_path / "model"))
    written = cross_encoder.export_onnx(str(tmp_path / "model"), quantize=True)
    assert written == [str(tmp_path / "model" / "onnx" / name) for name in ("model.onnx", "model_qint8.onnx")]
    pairs = [(caption, image) for caption in CAPTIONS for image in IMAGES]
    expected = eager_logits(cross_encoder, pairs)
    from mm_sbert import MMCrossEncoder

    fast = MMCrossEncoder(str(tmp_path / "model"), backend="onnx")  # default: <folder>/onnx/model.onnx
    torch.testing.assert_close(cross_encoder_logits(fast, pairs), expected, atol=FP32_ATOL, rtol=0)
    int8 = onnx_backend(cross_encoder, written[1])
    # The tiny random model's logits are ~1e-2 apart, below int8 resolution; only closeness is stated here
    # (ranking agreement on real-size models: benchmarks/results/retrieval_latency.md).
    torch.testing.assert_close(cross_encoder_logits(int8, pairs), expected, atol=0.05, rtol=0)
    assert os.path.getsize(written[1]) < os.path.getsize(written[0])


def test_int8_export_quantises_every_weight_per_channel_and_no_attention_product(views, tmp_path):
    onnx = pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    fp32, int8 = views[1].export_onnx(str(tmp_path), quantize=True)
    graph = onnx.load(fp32).graph
    weights = {initializer.name for initializer in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    with_weights = [node.name for node in matmuls if any(name in weights for name in node.input)]
    products = sorted(node.name for node in matmuls if not any(name in weights for name in node.input))
    assert with_weights and products  # the tiny model has both kinds
    quantized = onnx.load(int8).graph
    # Weight MatMuls become integer MatMuls; the attention products of two activations stay float MatMuls.
    still_float = {node.name for node in quantized.node if node.op_type == "MatMul"}
    assert set(products) <= still_float and not set(with_weights) & still_float
    assert sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in quantized.node) == len(
        with_weights
    )
    scales = [i for i in quantized.initializer if i.name.endswith("_scale") and i.data_type == onnx.TensorProto.FLOAT]
    assert scales and all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in scales)  # one per output channel


def test_a_similarity_started_cross_encoder_exports_with_its_learned_bias(tmp_path):
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    from conftest import build_views

    _, cross_encoder = build_views(fusion_layer=1)
    cross_encoder[0].start_cross_encoder(cross_modal_bias=-1.5)
    (path,) = export_cross_encoder_onnx(cross_encoder, str(tmp_path))
    pairs = [(caption, image) for caption in CAPTIONS for image in IMAGES]
    expected = eager_logits(cross_encoder, pairs)
    fast = onnx_backend(cross_encoder, path)
    torch.testing.assert_close(cross_encoder_logits(fast, pairs, batch_size=5), expected, atol=FP32_ATOL, rtol=0)


def test_backend_onnx_loads_exports_and_scores_like_eager(views, tmp_path):
    """The host's convention: MMCrossEncoder(folder, backend="onnx", model_kwargs={"file_name": ...})."""
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    from mm_sbert import MMCrossEncoder

    bi_encoder, cross_encoder = views
    folder = tmp_path / "model"
    cross_encoder.save(str(folder))
    pairs = [(caption, image) for caption in CAPTIONS for image in IMAGES]
    expected = eager_logits(cross_encoder, pairs)
    fast = MMCrossEncoder(str(folder), backend="onnx", device="cpu")  # no export yet: written on load
    assert (folder / "onnx" / "model.onnx").is_file()
    assert fast[0].onnx_scorer is not None
    got = torch.as_tensor(fast.predict(pairs, activation_fn=torch.nn.Identity()))
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)
    # The scores really come from ONNX Runtime: a scorer that answers zeros changes them.
    real = fast[0].onnx_scorer
    fast[0].onnx_scorer = lambda features: torch.zeros(len(features["input_ids"]))
    assert not fast.predict(pairs[:3], activation_fn=torch.nn.Identity()).any()
    # NaN scores from the session are refused like NaN outputs of the PyTorch forward, naming the row.
    fast[0].onnx_scorer = lambda features: torch.tensor([0.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"NaN or infinite outputs for input\(s\) \[1\]"):
        fast.predict(pairs[:3], batch_size=3)
    fast[0].onnx_scorer = real
    # Embedding single captions stays PyTorch, so the bi-encoder view of the same module still encodes.
    embeddings = fast.to_bi_encoder().encode(CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, bi_encoder.encode(CAPTIONS, convert_to_tensor=True), atol=1e-5, rtol=0)
    int8 = MMCrossEncoder(str(folder), backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"})
    assert (folder / "onnx" / "model_qint8.onnx").is_file()
    assert int8[0].onnx_scorer.onnx_path.endswith("model_qint8.onnx")
    torch.testing.assert_close(
        torch.as_tensor(int8.predict(pairs, activation_fn=torch.nn.Identity())), expected, atol=0.05, rtol=0
    )


def test_backend_onnx_refusals(views, tmp_path):
    from mm_sbert import MMCrossEncoder, MMSentenceTransformer

    bi_encoder, cross_encoder = views
    folder = tmp_path / "model"
    cross_encoder.save(str(folder))
    with pytest.raises(ValueError, match="backend='openvino' is not supported by mm_sbert"):
        MMCrossEncoder(str(folder), backend="openvino")
    with pytest.raises(ValueError, match="The ONNX file_name .* points outside the model folder"):
        MMCrossEncoder(str(folder), backend="onnx", model_kwargs={"file_name": "../elsewhere.onnx"})
    with pytest.raises(FileNotFoundError, match="only .* can be exported on load"):
        MMCrossEncoder(str(folder), backend="onnx", model_kwargs={"file_name": "onnx/other.onnx"})
    with pytest.raises(ValueError, match=r"model_kwargs \['file_name'\] apply to backend='onnx'"):
        MMCrossEncoder(str(folder), model_kwargs={"file_name": "onnx/model.onnx"})
    with pytest.raises(ValueError, match="MMSentenceTransformer embeds in PyTorch only"):
        MMSentenceTransformer(str(folder), backend="onnx")
    assert not (tmp_path / "elsewhere.onnx").exists()


if __name__ == "__main__":  # regenerate the fixture
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from conftest import build_views

    folder = os.path.join(os.path.dirname(FIXTURE), "export")
    (path,) = export_cross_encoder_onnx(build_views()[1], folder)
    shutil.move(path, FIXTURE)
    shutil.rmtree(folder)
    print(f"wrote {FIXTURE}")


@pytest.mark.parametrize("head_input", ["text_image_match", "token_match"])
def test_a_model_reading_tags_scores_them_alike_in_onnx_in_eager_reranking_and_in_predict(tmp_path, head_input):
    """The tags count with the image (late fusion, matching head): the export takes their mask, the one-forward
    rerank path joins them as predict does, and an export that does not take the mask is refused, not trusted."""
    pytest.importorskip("onnx", reason="exporting needs the `onnx` package (pip install onnx)")
    from conftest import build_views

    from mm_sbert.retrieval.cooperative_retriever import eager_candidate_logits, eager_module

    _, cross_encoder = build_views(fusion_layer=1, head_input=head_input, add_od_labels=True)
    module = cross_encoder[0]
    regions = module.featurizer.featurize(IMAGES)
    for index, region in enumerate(regions[:4]):
        region.tags = ["red square", "star"][: index % 3] or None
    pairs = [(caption, region) for caption in CAPTIONS for region in regions]
    expected = eager_logits(cross_encoder, pairs)
    # The tags change the scores (so a path that drops them would be caught).
    untagged = [(caption, RegionFeatures(r.features, r.boxes, image_size=r.image_size)) for caption, r in pairs]
    assert (eager_logits(cross_encoder, untagged) - expected).abs().max() > 1e-3
    assert eager_module(cross_encoder) is module
    for caption in CAPTIONS:
        torch.testing.assert_close(
            eager_candidate_logits(module, caption, regions, batch_size=4),
            eager_logits(cross_encoder, [(caption, region) for region in regions]),
            atol=1e-5,
            rtol=0,
        )
    (path,) = export_cross_encoder_onnx(cross_encoder, str(tmp_path / "tagged"))
    fast = onnx_backend(cross_encoder, path)
    assert "tag_mask" in fast[0].onnx_scorer.input_names
    torch.testing.assert_close(cross_encoder_logits(fast, pairs, batch_size=5), expected, atol=FP32_ATOL, rtol=0)
    # An export of the same weights made without the tags' mask (as exports were before tags were an input).
    module.add_od_labels = False
    try:
        (old_path,) = export_cross_encoder_onnx(cross_encoder, str(tmp_path / "old"))
    finally:
        module.add_od_labels = True
    with pytest.raises(ValueError, match="does not take the tags' mask"):
        onnx_backend(cross_encoder, old_path)
