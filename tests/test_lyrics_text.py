"""Corpus location and verification, the held-out split, vocabulary, samplers, OOV handling."""

from __future__ import annotations


import pytest
import torch

from gradlab.tasks import corpus
from gradlab.tasks.text import Vocab, batches_per_epoch, consecutive, prepare, random_chunks, split_lines


def test_locate_order_and_checks(tmp_path, monkeypatch, corpus_zip):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(corpus.ENV_VAR, raising=False)
    assert corpus.locate(None, download=False) is None
    monkeypatch.setenv(corpus.ENV_VAR, str(corpus_zip.parent))  # a folder holding the zip
    assert corpus.locate(None, download=False) == corpus_zip
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not it")
    with pytest.raises(corpus.CorpusError, match="is not the lyrics corpus"):
        corpus.locate(bad)
    with pytest.raises(corpus.CorpusError, match=r"corpus=.*missing.zip does not exist. Set corpus to the path of"):
        corpus.locate(tmp_path / "missing.zip")


def test_download_verifies_and_lands_atomically(tmp_path, corpus_zip):
    dest = tmp_path / "c" / corpus.FILE_NAME
    wrong = tmp_path / "wrong.zip"
    wrong.write_bytes(b"x")
    got = corpus.download(dest, urls=(wrong.as_uri(), corpus_zip.as_uri()))  # the first fails its checksum
    assert got == dest and corpus.sha256_of(dest) == corpus.SHA256
    assert not dest.with_suffix(".part").exists()


def test_offline_failure_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(corpus.ENV_VAR, raising=False)
    monkeypatch.setattr(corpus, "_download_to_cache", lambda: corpus.download(tmp_path / "z.zip", urls=((tmp_path / "nowhere.zip").as_uri(),)))
    with pytest.raises(corpus.CorpusError) as info:
        corpus.locate(None)
    message = str(info.value)
    for needle in ("could not download", "nowhere.zip", "user cache", "--set corpus=PATH", corpus.ENV_VAR, corpus.SHA256):
        assert needle in message


def test_real_corpus_matches_the_book(corpus_zip):
    raw = corpus.read_text(corpus_zip)
    assert len(raw) == 63_282
    book = prepare(raw, "book")
    assert book.stats["train_chars"] == 10_000 and len(book.vocab) == 1027  # the book's numbers
    assert book.train_text == raw.replace("\n", " ").replace("\r", " ")[:10_000]
    assert batches_per_epoch(len(book.train_ids), 32, 35, "consecutive") == 8
    full = raw.replace("\n", " ").replace("\r", " ")
    assert len(set(full)) == 2582
    _, val_lines = split_lines(raw, 0.1)
    kept = [ln for ln in val_lines if ln.strip() and ln not in book.train_text]
    assert book.stats["val_lines"] == len(kept) > 500  # held-out lines were never trained on, verbatim
    assert book.stats["val_lines"] + book.stats["val_lines_dropped_as_seen"] == sum(bool(ln.strip()) for ln in val_lines)
    assert book.stats["val_oov_chars"] > 0.1 * book.stats["val_chars"]  # 10,000 characters cannot cover the rest
    assert book.stats["val_targets"] == book.stats["val_chars"] - 1 == book.stats["val_targets_scored"] + book.stats["val_targets_oov"]


RAW = "ab\nbc\nab\ncd\nxyz\nab c\nqq\nbd"


def test_split_by_whole_lines_and_drop_seen():
    train, val = split_lines(RAW, 0.25)
    assert train == ["ab", "bc", "ab", "cd", "xyz", "ab c"] and val == ["qq", "bd"]
    d = prepare(RAW, "full", 0.25)
    assert d.train_text == "ab bc ab cd xyz ab c"
    assert d.vocab.idx_to_char == sorted(set(d.train_text))
    assert d.val_text == "qq bd"  # "qq" is outside the vocabulary and stays; lines are joined by a space
    u = d.vocab.unknown_id
    assert u == len(d.vocab) and d.val_ids.tolist() == [u, u] + d.vocab.encode(" bd").tolist()
    s = d.stats
    assert (s["val_oov_chars"], s["val_targets"], s["val_targets_oov"], s["val_targets_scored"]) == (2, 4, 1, 3)
    d3 = prepare("ab\ncd\ncd", "full", 0.3)
    assert d3.stats["val_lines_dropped_as_seen"] == 1 and d3.val_text == ""


def test_vocab_is_stable_and_errors_name_the_character():
    v = Vocab(sorted(set("hello")))
    assert v.decode(v.encode("hole")) == "hole"
    with pytest.raises(ValueError, match="prefix 'hz' has characters outside the vocabulary: 'z'"):
        v.encode("hz", "prefix")


def test_bad_options():
    with pytest.raises(ValueError, match="Unknown setting"):
        prepare(RAW, "books")
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(RAW, "full", 1.5)


def test_consecutive_streams_continue():
    ids = torch.arange(100)
    batches = list(consecutive(ids, 4, 5))
    assert len(batches) == batches_per_epoch(100, 4, 5, "consecutive") == 4
    for x, y in batches:
        assert x.shape == (5, 4) and torch.equal(y, x + 1)
    assert torch.equal(batches[1][0][0], batches[0][0][-1] + 1)  # batch i+1 continues batch i, stream by stream


def test_random_chunks_cover_without_overlap():
    ids = torch.arange(101)
    batches = list(random_chunks(ids, 4, 5, torch.Generator().manual_seed(0)))
    assert len(batches) == batches_per_epoch(101, 4, 5, "random") == 5
    starts = torch.cat([x[0] for x, _ in batches])
    assert len(set(starts.tolist())) == 20 and all(s % 5 == 0 for s in starts.tolist())
    for x, y in batches:
        assert torch.equal(y, x + 1) and torch.equal(x - x[0], torch.arange(5)[:, None].expand(5, 4))
