"""Character-level data: 90/10 split, content-hash cache, default corpus, batches, bad files."""

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from nanogpt import data
from nanogpt.data import DataError, default_corpus, get_batch, load_dataset
from tests.support.procs import tiny_shakespeare


def write(path, content: bytes):
    path.write_bytes(content)
    return str(path)


def test_vocabulary_is_the_sorted_characters_and_the_split_is_90_10(tmp_path):
    text = "hello world, hello data!\n" * 8
    ds = load_dataset("", write(tmp_path / "t.txt", text.encode()), 4, tmp_path / "cache")
    assert ds.chars == tuple(sorted(set(text)))
    assert (len(ds.train), len(ds.val)) == (int(len(text) * 0.9), len(text) - int(len(text) * 0.9))
    assert ds.decode([int(i) for i in np.concatenate([ds.train, ds.val])]) == text


def test_non_ascii_text_round_trips(tmp_path):
    text = "naïve café — 日本語 ✓ " * 10
    ds = load_dataset("", write(tmp_path / "t.txt", text.encode()), 4, tmp_path / "cache")
    assert ds.decode(ds.encode(text)) == text


def test_tiny_shakespeare_has_nanogpts_65_characters(tmp_path):
    ds = load_dataset("", str(tiny_shakespeare()), 64, tmp_path / "cache")
    assert ds.vocab_size == 65
    assert len(ds.train) == 1003854 and len(ds.val) == 111540  # nanoGPT's shakespeare_char counts


def test_a_second_load_reads_the_cache_keyed_by_content(tmp_path):
    path = write(tmp_path / "t.txt", b"abcdefghij" * 20)
    first = load_dataset("", path, 4, tmp_path / "cache")
    entries = list((tmp_path / "cache").iterdir())
    second = load_dataset("", path, 4, tmp_path / "cache")
    assert isinstance(second.train, np.memmap)
    assert np.array_equal(first.train, second.train) and first.chars == second.chars
    assert list((tmp_path / "cache").iterdir()) == entries
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # temp files were renamed into place
    write(tmp_path / "t.txt", b"klmnopqrst" * 20)  # new content: a new cache entry, new vocabulary
    assert load_dataset("", path, 4, tmp_path / "cache").chars == tuple("klmnopqrst")


def test_the_default_corpus_is_offline_python_documentation_and_deterministic(tmp_path):
    text = default_corpus()
    assert len(text) > 300_000 and "assert" in text
    assert default_corpus() == text
    assert load_dataset("python-docs", "", 64, tmp_path / "cache").vocab_size == len(set(text))


def test_shakespeare_offline_says_to_pass_a_data_file(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"cannot download tiny Shakespeare .*pass --data-file PATH"):
        load_dataset("shakespeare", "", 64, tmp_path / "cache")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"abc\xff\xfedef" * 10, "is not UTF-8 text (bad byte at offset 3)"),
        (b"x" * 40, "has 40 characters: too short for block_size=8"),
    ],
)
def test_unusable_data_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_dataset("", str(path), 8, tmp_path / "cache")
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_dataset_names_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'openwebtext'; known: python-docs, shakespeare"):
        load_dataset("openwebtext", "", 8, tmp_path / "cache")


def test_batches_are_windows_with_targets_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    torch.manual_seed(0)
    x, y = get_batch(tokens, 5, 16, torch.device("cpu"))
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(5, 16))  # contiguous windows


def test_batches_follow_the_seed():
    tokens = np.arange(1000, dtype=np.uint16)
    torch.manual_seed(7)
    a = get_batch(tokens, 4, 8, torch.device("cpu"))
    torch.manual_seed(7)
    b = get_batch(tokens, 4, 8, torch.device("cpu"))
    assert torch.equal(a[0], b[0])
