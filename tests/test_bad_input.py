"""Bad input matrix: malformed variants of every task's data files, generated here, must each give one error line.

For every task loader (e2e csv, dart json + xml, webnlg xml, superglue jsonl, xsum / cnn_dm json, jsonl, csv and
source/target, spider json, conll2003) a minimal good data folder is written to a temporary directory, then one
file is replaced by a malformed variant (not UTF-8, empty, truncated, wrong top-level shape, an oversized CSV
field). In process, `task.load` must raise one PeftrunError whose single line names the file; a few variants go
through the `peftrun` command to check exit code 2, one `error:` line, no traceback, no complete record, and
nothing written outside the run directory. Also here: the tokenisation cache never unpickles (a planted or
corrupt entry is rebuilt with a warning naming it).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrun.config import TaskConfig
from peftrun.errors import PeftrunError
from peftrun.tasks import build_task
from tests.conftest import ROOT

E2E_CSV = b'mr,ref\n"name[Alimentum], food[Thai]",Alimentum serves Thai food.\n"name[Eagle], area[riverside]",The Eagle is by the river.\n'
DART = [{"tripleset": [["Alimentum", "food", "Thai"]], "annotations": [{"source": "x", "text": "Alimentum serves Thai."}]},
        {"tripleset": [["Eagle", "area", "riverside"]], "annotations": [{"source": "x", "text": "The Eagle is by a river."}]}]
ENTRY = ('<entry category="Food" eid="Id{n}" size="1"><modifiedtripleset><mtriple>Alimentum | food | Thai</mtriple>'
         '</modifiedtripleset><lex comment="good" lid="Id1">Alimentum serves Thai food number {n}.</lex></entry>')
WEBNLG_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<benchmark><entries>\n' + "\n".join(ENTRY.format(n=n) for n in (1, 2))
              + "\n</entries></benchmark>\n").encode()
DART_XML = WEBNLG_XML
RTE = b"".join(json.dumps({"idx": i, "premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}.",
                           "label": "entailment"}).encode() + b"\n" for i in range(2))
XSUM_ROWS = [{"document": "The council voted to close the library on Mill Road.", "summary": "A library will close."},
             {"document": "Heavy rain caused flooding across the county.", "summary": "Rain flooded the county."}]
XSUM_CSV = b'document,summary\n"The council voted to close the library.",A library will close.\n"Rain flooded roads.",Floods.\n'
SPIDER_TABLES = [{"db_id": "concert_singer", "table_names_original": ["singer"],
                  "column_names_original": [[-1, "*"], [0, "Singer_ID"], [0, "Name"]], "primary_keys": [1],
                  "foreign_keys": []}]
SPIDER_DEV = [{"db_id": "concert_singer", "question": "How many singers?", "query": "SELECT count(*) FROM singer"},
              {"db_id": "concert_singer", "question": "Names of singers?", "query": "SELECT name FROM singer"}]
CONLL = b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"

# case name -> (task, split, {relative path: good content}, the file the variants replace, its format)
CASES: dict[str, tuple[str, str, dict[str, bytes], str, str]] = {
    "e2e": ("e2e", "validation", {"devset.csv": E2E_CSV}, "devset.csv", "csv"),
    "dart-json": ("dart", "validation", {"dart-v1.1.1-full-dev.json": json.dumps(DART, indent=1).encode()},
                  "dart-v1.1.1-full-dev.json", "json"),
    "dart-xml": ("dart", "validation", {"dart-v1.1.1-full-dev.xml": DART_XML}, "dart-v1.1.1-full-dev.xml", "xml"),
    "webnlg": ("webnlg", "validation", {"dev/1triples/Food.xml": WEBNLG_XML}, "dev/1triples/Food.xml", "xml"),
    "webnlg-test": ("webnlg", "test", {"testdata_with_lex.xml": WEBNLG_XML}, "testdata_with_lex.xml", "xml"),
    "rte": ("rte", "validation", {"RTE/val.jsonl": RTE}, "RTE/val.jsonl", "jsonl"),
    "boolq": ("boolq", "train", {"train.jsonl": b"".join(json.dumps({"idx": i, "question": "q", "passage": "p",
                                                                     "label": True}).encode() + b"\n" for i in range(2))},
              "train.jsonl", "jsonl"),
    "xsum-jsonl": ("xsum", "validation", {"validation.jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in XSUM_ROWS)},
                   "validation.jsonl", "jsonl"),
    "xsum-json": ("xsum", "test", {"test.json": json.dumps(XSUM_ROWS, indent=1).encode()}, "test.json", "json"),
    "xsum-csv": ("xsum", "train", {"train.csv": XSUM_CSV}, "train.csv", "csv"),
    "cnn_dm-source": ("cnn_dm", "test", {"test.source": b"Doc one.\nDoc two.\n", "test.target": b"One.\nTwo.\n"},
                      "test.source", "lines"),
    "spider-dev": ("spider", "validation", {"dev.json": json.dumps(SPIDER_DEV, indent=1).encode(),
                                            "tables.json": json.dumps(SPIDER_TABLES, indent=1).encode()}, "dev.json", "json"),
    "spider-tables": ("spider", "validation", {"dev.json": json.dumps(SPIDER_DEV, indent=1).encode(),
                                               "tables.json": json.dumps(SPIDER_TABLES, indent=1).encode()}, "tables.json", "json"),
    "conll": ("conll2003", "validation", {"valid.txt": CONLL}, "valid.txt", "lines"),
}


def non_utf8(data: bytes) -> bytes:
    cut = data.index(b"\n") + 1
    return data[:cut] + b"\xff\xfe\xfa" + data[cut:]


WRONG_SHAPE = {"json": b'{"not": "a list of entries"}', "xml": b"<benchmark><other/></benchmark>",
               "jsonl": b'[1, 2]\n"text"\n', "csv": b"alpha,beta\n1,2\n"}
VARIANTS = {
    "non-utf8": (non_utf8, ("csv", "json", "xml", "jsonl", "lines")),
    "empty": (lambda data: b"", ("csv", "json", "xml", "jsonl", "lines")),
    "whitespace": (lambda data: b" \n\n\t\n", ("csv", "json", "xml", "jsonl", "lines")),
    "truncated": (lambda data: data[: len(data) // 2], ("json", "xml")),
    "wrong-shape": (None, ("json", "xml", "jsonl", "csv")),
    "oversized-csv-field": (lambda data: data + b'"' + b"x" * 200_000 + b'",y\n', ("csv",)),
    "nul-and-binary": (lambda data: bytes(range(256)) * 4, ("csv", "json", "xml", "jsonl", "lines")),
}
MATRIX = [(case, variant) for case, (_, _, _, _, fmt) in CASES.items() for variant, (_, fmts) in VARIANTS.items()
          if fmt in fmts]


def task_for(name: str, data_dir: Path):
    raw = OmegaConf.load(ROOT / "conf" / "task" / f"{name}.yaml")
    return build_task(OmegaConf.merge(OmegaConf.structured(TaskConfig), raw, {"data_dir": str(data_dir)}))


def write_case(root: Path, case: str, variant: str | None) -> tuple[str, str, Path]:
    """The data folder of `case` with its target file replaced by `variant`; (task, split, target path)."""
    task, split, files, target, fmt = CASES[case]
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == target and variant is not None:
            make = VARIANTS[variant][0]
            content = WRONG_SHAPE[fmt] if make is None else make(content)
        path.write_bytes(content)
    return task, split, root / target


@pytest.mark.parametrize("case", list(CASES))
def test_good_files_load(tmp_path: Path, case: str) -> None:
    """The generated folders are valid, so each variant below fails only because of what it breaks."""
    task, split, _ = write_case(tmp_path, case, None)
    assert len(task_for(task, tmp_path).load(split, grouped=True)) == 2


@pytest.mark.parametrize(("case", "variant"), MATRIX, ids=[f"{c}-{v}" for c, v in MATRIX])
def test_malformed_file_is_one_error_naming_it(tmp_path: Path, case: str, variant: str) -> None:
    task, split, target = write_case(tmp_path, case, variant)
    with pytest.raises(PeftrunError) as caught:
        task_for(task, tmp_path).load(split, grouped=True)
    message = str(caught.value)
    assert str(target) in message, message
    assert "\n" not in message and len(message) < 400, message


def test_malformed_rows_are_still_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A readable file with one bad row keeps today's behaviour: skip it, count it in one warning."""
    (tmp_path / "val.jsonl").write_bytes(RTE + b"{not json\n" + json.dumps({"idx": 9, "premise": "p"}).encode() + b"\n")
    with caplog.at_level(logging.WARNING):
        examples = task_for("rte", tmp_path).load("validation", grouped=True)
    assert len(examples) == 2
    assert "skipped 2 of 4" in caplog.text


def test_oversized_csv_field_names_the_line(tmp_path: Path) -> None:
    _, _, target = write_case(tmp_path, "e2e", "oversized-csv-field")
    with pytest.raises(PeftrunError, match=rf"{target} line \d+: is not readable CSV"):
        task_for("e2e", tmp_path).load("validation", grouped=True)


def test_non_utf8_error_names_the_line(tmp_path: Path) -> None:
    _, _, target = write_case(tmp_path, "rte", "non-utf8")
    with pytest.raises(PeftrunError, match=rf"{target} line 2: is not UTF-8"):
        task_for("rte", tmp_path).load("validation", grouped=True)


# ------------------------------------------------------------------ through the command

CLI_CASES = [("e2e", "non-utf8"), ("webnlg", "truncated"), ("rte", "wrong-shape")]


@pytest.mark.parametrize(("case", "variant"), CLI_CASES, ids=[f"{c}-{v}" for c, v in CLI_CASES])
def test_command_exits_2_with_one_error_line(tmp_path: Path, case: str, variant: str) -> None:
    data, work, cache = tmp_path / "data", tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    task, split, target = write_case(data, case, variant)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    run_dir = work / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PEFTRUN_CACHE_DIR=str(cache))
    proc = subprocess.run(
        [sys.executable, "-m", "peftrun", f"task={task}", f"task.data_dir={data}", f"task.eval_splits=[{split}]",
         f"task.train_split={split}", "trainer.max_steps=1", f"hydra.run.dir={run_dir}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(target) in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    record = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    assert record.get("status") != "complete"
    assert [p.name for p in work.iterdir()] == ["run"]  # nothing beside the run directory
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before  # data untouched, nothing added
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


# ------------------------------------------------------------------ the tokenisation cache


class _WordTokenizer:
    """Enough of a tokenizer for peftrun.data.tokenize_examples: word ids from a fixed vocabulary."""

    eos_token_id = 0
    special_tokens_map = {"eos_token": "</s>"}

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"</s>": 0}

    def get_vocab(self) -> dict[str, int]:
        return {"</s>": 0, "a": 1, "b": 2}

    def __call__(self, texts, add_special_tokens=True, text_target=None):
        texts = text_target if text_target is not None else texts
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab)) for w in t.split()] for t in texts]}


class _Bomb:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _examples():
    from peftrun.tasks.base import Example

    return [Example(f"x-{i}", f"source words {i}", f"target {i}", (f"target {i}",)) for i in range(3)]


def test_token_cache_round_trips_and_never_unpickles(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from peftrun.data import tokenize_examples

    monkeypatch.chdir(tmp_path)
    fresh = tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8, cache_dir=str(tmp_path / "cache"))
    [entry] = list((tmp_path / "cache" / "tokenized").iterdir())
    assert entry.suffix == ".safetensors"
    assert entry.stat().st_mode & 0o777 == 0o666 & ~_umask()
    again = tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8, cache_dir=str(tmp_path / "cache"))
    assert again == fresh

    for planted in (pickle.dumps({"input_ids": _Bomb()}), b"garbage", entry.read_bytes()[:40], b""):
        entry.write_bytes(planted)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rebuilt = tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8,
                                        cache_dir=str(tmp_path / "cache"))
        assert rebuilt == fresh
        assert str(entry) in caplog.text and "rebuilding" in caplog.text
        assert not (tmp_path / "PWNED").exists()
    # the rebuilt entry replaced the planted one and reads back without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8, cache_dir=str(tmp_path / "cache")) == fresh
    assert caplog.text == ""


def test_head_cache_codec_round_trips(tmp_path: Path) -> None:
    from peftrun.head_data import CACHE_FIELDS, HeadFeature, HeadFeatures, _decode_cached, _encode_cached
    from peftrun.token_cache import load_cached, save_lists

    features = [HeadFeature([[1, 2, 3], [1, 4]], [[0, 0, 1], [0, 1]], 1),
                HeadFeature([[5, 6]], [], -1, [-100, 3], [1]),
                HeadFeature([[7]], [], 0)]
    path = tmp_path / "head.safetensors"
    save_lists(path, _encode_cached(features), {"truncated": 2})
    got = load_cached(path, CACHE_FIELDS, _decode_cached)
    assert got == HeadFeatures(features, 2)


def _umask() -> int:
    from peftrun.io import current_umask

    return current_umask()


def test_corrupt_tiny_tokenizer_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from peftrun.backbones.tokenizer import load_tiny_tokenizer, tiny_tokenizer_dir

    ids = load_tiny_tokenizer("gpt2", str(tmp_path))("hello world")["input_ids"]
    entry = tiny_tokenizer_dir("gpt2", str(tmp_path)) / "tokenizer.json"
    entry.write_text('{"truncated')
    with caplog.at_level(logging.WARNING):
        assert load_tiny_tokenizer("gpt2", str(tmp_path))("hello world")["input_ids"] == ids
    assert str(entry.parent) in caplog.text and "rebuilding" in caplog.text
    json.loads(entry.read_text())  # the entry was rewritten whole


def test_corrupt_run_record_is_one_error_naming_it(tmp_path: Path) -> None:
    from peftrun.records import read_record

    (tmp_path / "results.json").write_bytes(b'{"status": "compl')
    with pytest.raises(PeftrunError, match=rf"{tmp_path / 'results.json'} is not a readable run record"):
        read_record(tmp_path)
    (tmp_path / "results.json").write_bytes(b"\xff\xfe")
    with pytest.raises(PeftrunError, match="not a readable run record"):
        read_record(tmp_path)
    (tmp_path / "results.json").write_text("[1]")
    with pytest.raises(PeftrunError, match="not a run record"):
        read_record(tmp_path)


def test_full_cache_disk_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import peftrun.token_cache
    from peftrun.data import tokenize_examples

    fresh = tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8)

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peftrun.token_cache, "atomic_write", full)
    with caplog.at_level(logging.WARNING):
        got = tokenize_examples(_examples(), _WordTokenizer(), "decoder", 8, 8, cache_dir=str(tmp_path))
    assert got == fresh and "No space left on device" in caplog.text
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
