"""exporter.journal: whole lines in order, a torn last line left for later, a long journal read in
parts, and a restarted writer read from its start."""

from __future__ import annotations

import os

from exporter.journal import JournalReader, JournalWriter, journal_path


def test_lines_come_back_in_order_and_only_once(tmp_path):
    writer, reader = JournalWriter(tmp_path, 0), JournalReader(journal_path(tmp_path, 0))
    writer.write("status", fields={"state": "running"})
    writer.write_point('{"iteration":1,"loss":2.5}')
    assert reader.read_new() == [{"event": "status", "fields": {"state": "running"}},
                                 {"event": "point", "point": {"iteration": 1, "loss": 2.5}}]
    assert reader.read_new() == []


def test_a_torn_last_line_waits_for_its_end(tmp_path):
    path = journal_path(tmp_path, 0)
    path.write_bytes(b'{"event":"status","fields":{}}\n{"event":"po')
    reader = JournalReader(path)
    assert [e["event"] for e in reader.read_new()] == ["status"]
    with open(path, "ab") as f:
        f.write(b'int","point":{"iteration":3,"loss":1.0}}\n')
    assert reader.read_new() == [{"event": "point", "point": {"iteration": 3, "loss": 1.0}}]


def test_non_finite_values_are_written_as_null(tmp_path):
    writer, reader = JournalWriter(tmp_path, 0), JournalReader(journal_path(tmp_path, 0))
    writer.write("model", model_config={"dropout": float("nan"), "n_layer": 2})
    assert reader.read_new() == [{"event": "model", "model_config": {"dropout": None, "n_layer": 2}}]


def test_a_long_journal_is_read_in_parts_and_says_when_more_waits(tmp_path):
    writer, reader = JournalWriter(tmp_path, 0), JournalReader(journal_path(tmp_path, 0))
    line_bytes = len('{"event":"point","point":{"iteration":0,"pad":"' + "x" * 200 + '"}}\n')
    count = 3 * JournalReader.MAX_READ_BYTES // line_bytes
    for i in range(count):
        writer.write_point('{"iteration":%d,"pad":"%s"}' % (i, "x" * 200))
    parts = []
    while not parts or reader.behind:
        parts.append(reader.read_new())
    assert len(parts) >= 3 and all(len(part) < count for part in parts)
    assert [e["point"]["iteration"] for part in parts for e in part] == list(range(count))


def test_a_new_process_of_the_rank_is_read_from_its_start_after_a_reset(tmp_path):
    reader = JournalReader(journal_path(tmp_path, 0))
    JournalWriter(tmp_path, 0).write("opened", pid=1)
    assert [e["event"] for e in reader.read_new()] == ["opened"]
    JournalWriter(tmp_path, 0).write("opened", pid=os.getpid())  # a restarted trainer: a new file
    assert reader.read_new() == [{"event": "reset"}, {"event": "opened", "pid": os.getpid()}]
