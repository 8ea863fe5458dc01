"""The NAT commands end to end, in-process: distill with an AT teacher, train a tiny NAT on the output for a
few steps, translate with --decoder nat, draw its attention per mask-predict pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qkv import checkpoint, viz
from qkv.cli import main
from qkv.config import NATConfig, preset
from qkv.data import demo
from qkv.decode import nat as nat_decode
from qkv.models import saved
from qkv.models.nat import NATransformer
from qkv.models.seq2seq import Transformer
from qkv.tokenize import train_bpe
from qkv.train.pipeline import warm_start


@pytest.fixture(scope="module")
def corpus_and_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 200-pair demo TSV (column 1 English, column 2 Chinese) and a random tiny AT model for it."""
    root = tmp_path_factory.mktemp("nat")
    pairs = demo.generate(size=200)
    demo.write_tsv(root / "train.tsv", pairs)
    tok = train_bpe([t for pair in pairs for t in pair], 300)
    torch.manual_seed(0)
    model = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64))
    checkpoint.save_directory(
        root / "teacher",
        tensors={checkpoint.MODEL_FILE: model.state_dict()},
        json={checkpoint.CONFIG_FILE: {"model": model.config.to_dict()}},
        text=saved.tokenizer_files(tok, tok),
    )
    return root / "train.tsv", root / "teacher"


def test_distill_train_translate_attention(
    corpus_and_teacher: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, teacher = corpus_and_teacher
    distilled = tmp_path / "distilled.tsv"
    common = ["--src-col", "2", "--tgt-col", "1"]
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), *common, "--out", str(distilled),
                 "--beam", "1", "--quiet"]) == 0  # fmt: skip
    lines = distilled.read_text(encoding="utf-8").split("\n")[:-1]
    originals = data.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == len(originals) == 200
    for line, original in zip(lines, originals, strict=True):
        en, zh = line.split("\t")
        assert zh == original.split("\t")[1]  # the source stays in its column

    run = tmp_path / "nat"
    assert main(["train", "--model-type", "nat", "--data", str(distilled), *common, "--preset", "tiny",
                 "--vocab-size", "300", "--max-steps", "3", "--max-tokens", "512", "--quiet",
                 "--out", str(run), "--threads", "1"]) == 0  # fmt: skip
    assert isinstance(saved.load(run).model, NATransformer)
    capsys.readouterr()

    assert main(["translate", "--model", str(run), "--decoder", "nat", "--iterations", "3",
                 "--length-beam", "2", "我爱你", "", "他很高。"]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.split("\n")) == 4  # three lines out, empty in -> empty out
    assert main(["translate", "--model", str(run), "--length-beam", "2", "--rescore-model", str(teacher),
                 "我爱你"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["translate", "--model", str(run), "--length-beam", "2", "--iterations", "2", "--int8",
                 "--rescore-model", str(teacher), "我爱你", "", "他很高。"]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.split("\n")) == 4
    assert main(["attention", "--model", str(run), "--iterations", "2", "我爱你",
                 "--out", str(tmp_path / "attn.png"), "--layers", "0", "--heads", "0"]) == 0  # fmt: skip
    assert (tmp_path / "attn-iter1.png").is_file()  # one image per pass (a 1-token output stops after 1)

    # --adaptive reaches mask-predict, in translate and in attention
    seen: list[bool] = []
    real = nat_decode.mask_predict

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["adaptive"])
        return real(*args, **kwargs)

    monkeypatch.setattr(nat_decode, "mask_predict", spy)
    monkeypatch.setattr(viz, "mask_predict", spy)
    assert main(["translate", "--model", str(run), "--iterations", "4", "--adaptive", "我爱你"]) == 0
    assert main(["translate", "--model", str(run), "--iterations", "4", "我爱你"]) == 0
    assert main(["attention", "--model", str(run), "--iterations", "4", "--adaptive", "我爱你",
                 "--out", str(tmp_path / "attn-adaptive.png")]) == 0  # fmt: skip
    assert seen == [True, False, True, True]  # attention: its heat maps' passes, then its translation


def test_decoder_kind_must_match_the_model(
    corpus_and_teacher: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, teacher = corpus_and_teacher
    assert main(["translate", "--model", str(teacher), "--decoder", "nat", "我爱你"]) == 2
    assert "is an autoregressive model" in capsys.readouterr().err


def test_warm_start_copies_exactly_the_tensors_both_models_have() -> None:
    torch.manual_seed(0)
    teacher = Transformer(preset("tiny", 50, max_positions=32))
    nat = NATransformer(NATConfig.from_dict(teacher.config.to_dict()))
    copied, fresh = warm_start(nat, teacher)
    assert sorted(fresh) == ["length_proj.bias", "length_proj.weight"]
    theirs = teacher.state_dict()
    assert all(torch.equal(nat.state_dict()[name], theirs[name]) for name in copied)
    layers = teacher.config.encoder_layers
    deep = Transformer(preset("tiny", 50, max_positions=32, encoder_layers=layers + 1, decoder_layers=1))
    copied, fresh = warm_start(deep, teacher)
    assert {name.split(".")[1] for name in fresh if name.startswith("encoder.")} == {str(layers)}
    assert not [name for name in fresh if not name.startswith("encoder.")]
    assert torch.equal(deep.state_dict()["decoder.0.ffn.fc_in.weight"], theirs["decoder.0.ffn.fc_in.weight"])


def test_init_from_takes_the_teachers_tokenizers_and_says_what_is_new(
    corpus_and_teacher: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, teacher = corpus_and_teacher
    common = ["--data", str(data), "--src-col", "2", "--tgt-col", "1", "--max-steps", "1", "--quiet",
              "--threads", "1", "--init-from", str(teacher)]  # fmt: skip
    source = saved.load(teacher)
    nat_run = tmp_path / "nat"
    assert main(["train", "--model-type", "nat", *common, "--out", str(nat_run)]) == 0
    assert "new: length_proj (2)" in capsys.readouterr().out
    nat = saved.load(nat_run)
    assert isinstance(nat.model, NATransformer)
    assert nat.src_tokenizer.to_json() == source.src_tokenizer.to_json()  # no new BPE was trained

    layers = source.model.config.encoder_layers
    deep_run = tmp_path / "deep-shallow"
    assert main(["train", *common, "--encoder-layers", str(layers + 1), "--decoder-layers", "1",
                 "--out", str(deep_run)]) == 0  # fmt: skip
    deep = saved.load(deep_run).model
    assert (deep.config.encoder_layers, deep.config.decoder_layers) == (layers + 1, 1)
    assert f"new: encoder.{layers} (" in capsys.readouterr().out
    # --resume continues a run from its own checkpoint: --init-from beside it is a usage error.
    assert main(["train", "--resume", str(nat_run), "--init-from", str(teacher)]) == 2


def test_teacher_rescoring_scores_a_sentences_candidates_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """At batch size 1 the teacher scores each sentence's whole length beam in one pass (not one pass per
    candidate), and the choices are those of a larger batch."""
    from qkv.decode import nat as nat_decode
    from qkv.translator import Translator

    pairs = demo.generate(size=60)
    tok = train_bpe([t for pair in pairs for t in pair], 200)
    torch.manual_seed(1)
    teacher = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64)).eval()
    config = NATConfig.from_dict(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64).to_dict())
    model = NATransformer(config).eval()  # type: ignore[arg-type]
    calls: list[int] = []
    score = nat_decode.teacher_scores

    def counted(
        t: Transformer, sources: list[list[int]], outputs: list[list[int]], **kw: bool
    ) -> list[float]:
        calls.append(len(outputs))
        return score(t, sources, outputs, **kw)

    monkeypatch.setattr(nat_decode, "teacher_scores", counted)
    texts = [zh for zh, _ in pairs[:4]]

    def translate(batch_size: int) -> list[str]:
        translator = Translator(
            model, tok, tok, length_beam=3, teacher=(teacher, tok, tok), batch_size=batch_size
        )
        return translator.translate(texts)

    one_by_one = translate(1)
    assert calls == [3, 3, 3, 3]
    calls.clear()
    assert translate(8) == one_by_one
    assert calls == [12]


def test_teacher_with_the_same_tokenizers_scores_the_candidate_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher whose tokenizers serialise the same as the NAT's (here: a copy) is handed the NAT's own
    ids, sources with </s> and the very candidates the NAT wrote; one with another vocabulary gets them
    re-tokenised from text, in its own ids."""
    import tokenizers

    from qkv.decode import nat as nat_decode
    from qkv.tokenize import Tokenizer
    from qkv.translator import Translator

    pairs = demo.generate(size=60)
    tok = train_bpe([t for pair in pairs for t in pair], 200)
    copy = Tokenizer(tokenizers.Tokenizer.from_str(tok.inner.to_str()))
    other = train_bpe([t for pair in pairs for t in pair], 150)
    torch.manual_seed(1)
    config = NATConfig.from_dict(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64).to_dict())
    model = NATransformer(config).eval()  # type: ignore[arg-type]
    seen: list[tuple[list[list[int]], list[list[int]]]] = []
    score = nat_decode.teacher_scores

    def recorded(
        t: Transformer, sources: list[list[int]], outputs: list[list[int]], **kw: bool
    ) -> list[float]:
        seen.append(([list(s) for s in sources], [list(o) for o in outputs]))
        return score(t, sources, outputs, **kw)

    monkeypatch.setattr(nat_decode, "teacher_scores", recorded)
    text = pairs[0][0]
    src_ids = [*tok.encode(text), config.eos_id]
    candidates = [h.tokens for h in nat_decode.translate_ids(model, [src_ids], length_beam=3)[0]]
    for teacher_tok, shared in ((copy, True), (other, False)):
        seen.clear()
        torch.manual_seed(2)
        teacher = Transformer(preset("tiny", teacher_tok.vocab_size, dropout=0.0, max_positions=64)).eval()
        translator = Translator(model, tok, tok, length_beam=3, teacher=(teacher, teacher_tok, teacher_tok))
        (best,) = translator.translate([text])
        assert translator._teacher_shares_vocabularies() == (shared, shared)
        ((sources, outputs),) = seen
        if shared:
            assert sources == [src_ids] * 3 and sorted(outputs) == sorted(candidates)
        else:
            assert sources == [[*other.encode(text), config.eos_id]] * 3
            assert sorted(outputs) == sorted(other.encode(tok.decode(c)) for c in candidates)
        assert best in {tok.decode(c) for c in candidates}


def test_distill_leaves_out_sources_the_teacher_translates_to_nothing(
    corpus_and_teacher: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On cmn-eng a real teacher translated 2 of 28,979 sources to nothing; `qkv train` refuses empty
    targets, so distill leaves those pairs out, says which, and the file trains as it is."""
    from qkv import distill as distill_module

    data, teacher = corpus_and_teacher
    real = distill_module.translate_all

    def with_empties(*args: object, **kwargs: object) -> list[str]:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        out[2] = out[6] = ""
        return out

    monkeypatch.setattr(distill_module, "translate_all", with_empties)
    distilled = tmp_path / "distilled.tsv"
    common = ["--src-col", "2", "--tgt-col", "1"]
    assert main(["distill", "--teacher", str(teacher), "--data", str(data), *common, "--out", str(distilled),
                 "--beam", "1", "--quiet"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "left out 2 source(s) the teacher translated to nothing (source numbers 3, 7 of" in captured.err
    assert "wrote 198 distilled pairs" in captured.out
    lines = distilled.read_text(encoding="utf-8").split("\n")[:-1]
    originals = data.read_text(encoding="utf-8").split("\n")[:-1]
    kept = [o.split("\t")[1] for i, o in enumerate(originals) if i not in (2, 6)]
    assert [line.split("\t")[1] for line in lines] == kept and all(line.split("\t")[0] for line in lines)
    assert main(["train", "--model-type", "nat", "--data", str(distilled), *common, "--preset", "tiny",
                 "--vocab-size", "300", "--max-steps", "2", "--max-tokens", "512", "--quiet",
                 "--out", str(tmp_path / "nat"), "--threads", "1"]) == 0  # fmt: skip


def test_shared_vocabularies_are_worked_out_again_when_a_tokenizer_is_replaced() -> None:
    from qkv.translator import Translator

    pairs = demo.generate(size=40)
    tok = train_bpe([t for pair in pairs for t in pair], 200)
    other = train_bpe([t for pair in pairs for t in pair], 150)
    config = NATConfig.from_dict(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64).to_dict())
    model = NATransformer(config).eval()  # type: ignore[arg-type]
    teacher = Transformer(preset("tiny", tok.vocab_size, dropout=0.0, max_positions=64)).eval()
    translator = Translator(model, tok, tok, length_beam=2, teacher=(teacher, tok, tok))
    assert translator._teacher_shares_vocabularies() == (True, True)
    translator.tgt_tokenizer = other
    assert translator._teacher_shares_vocabularies() == (True, False)
    translator.teacher = (teacher, other, other)
    assert translator._teacher_shares_vocabularies() == (False, True)
