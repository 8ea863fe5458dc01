"""Training on a prepared corpus (qkv prepare): the tasks take lengths from its index, and the trainer reads
only the pairs of the batches it trains on, never the whole corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.config import preset
from qkv.data.prepared import PreparedCorpus
from qkv.models.seq2seq import Transformer
from qkv.train.nat_task import NATTask
from qkv.train.task import Seq2SeqTask
from qkv.train.trainer import TrainConfig, Trainer


@pytest.mark.parametrize(
    "task",
    [
        Seq2SeqTask(0, 1, 2),
        NATTask(0, 4, 3),
        NATTask(0, 4, 3, cut_at=2, max_positions=20),  # bounds clipped by max_positions for some pairs
    ],
    ids=["seq2seq", "nat", "nat-cut"],
)
def test_lengths_from_the_index_equal_lengths_of_the_examples(
    prepared_corpus: dict[str, Path], task: Seq2SeqTask | NATTask
) -> None:
    corpus = PreparedCorpus(prepared_corpus["train"])
    everything = np.arange(len(corpus))
    from_index = task.lengths(corpus).lengths_of(everything)
    from_examples = task.lengths(list(corpus)).lengths_of(everything)  # the same pairs, in memory
    assert [lengths.tolist() for lengths in from_index] == [lengths.tolist() for lengths in from_examples]
    # By hand: the decoder reads <s> + target (seq2seq), at least one position (NAT), or the bound (cut).
    for src_len, tgt_len, (src, tgt) in zip(*from_index, corpus, strict=True):
        assert src_len == len(src)
        if isinstance(task, Seq2SeqTask):
            assert tgt_len == len(tgt) + 1
        elif task.cut_at is None:
            assert tgt_len == max(len(tgt), 1)
        else:
            assert tgt_len == min(max(len(src) + 3, len(tgt) + 1), 20)


class CountingCorpus(PreparedCorpus):
    """A prepared corpus that counts the pairs read."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        type(self).reads += 1
        return super().__getitem__(index)


def test_the_trainer_reads_only_the_pairs_it_trains_on(
    prepared_corpus: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    corpus = CountingCorpus(prepared_corpus["train"])
    torch.manual_seed(0)
    model = Transformer(preset("tiny", 300))
    config = TrainConfig(max_steps=3, max_tokens=256, save_every=100, log_every=1, warmup=1)
    trainer = Trainer(model, config, tmp_path / "run", train=corpus, progress=False)
    assert trainer.train_data is corpus  # kept as given, never copied into memory
    trainer.fit()
    src_lens, tgt_lens = trainer.task.lengths(corpus).lengths_of(np.arange(len(corpus)))
    batches = trainer._epoch_batches(0)[:3]
    assert CountingCorpus.reads == sum(len(batch) for batch in batches)
    assert CountingCorpus.reads < len(corpus) / 2
    assert all(len(batch) * max(src_lens[batch].max(), tgt_lens[batch].max()) <= 256 for batch in batches)
