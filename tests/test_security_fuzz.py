"""Issue 12: seeded fuzzing of a real checkpoint, a real ONNX file and a database's Parquet files.

Every truncation or byte flip ends in a result or one clear line (a ``FilterlensError`` in the
API, exit status 1 with one ``error:`` line on the command line), never another exception, and
reading a damaged database never changes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_path
from filterlens.errors import FilterlensError
from security_helpers import assert_one_error_line, run_cli, tree

pytest.importorskip("torch")

N_CASES = 24  # per file: half truncations, half byte flips


def mutations(data: bytes, seed: int, n: int = N_CASES):
    """``n`` damaged copies of ``data``: truncations anywhere (head and tail weighted) and 1-16 byte flips."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        if i % 2 == 0:
            at = int(rng.choice([rng.integers(0, min(len(data), 4096)), rng.integers(0, len(data)),
                                 len(data) - rng.integers(1, min(len(data), 4096))]))
            yield f"truncated at {at}", data[:at]
        else:
            buf = bytearray(data)
            k = int(rng.integers(1, 17))
            # flip near the ends too: headers, footers and zip directories live there
            spots = np.concatenate([rng.integers(0, len(data), k),
                                    len(data) - 1 - rng.integers(0, min(len(data), 2048), k // 2 + 1)])
            for pos in spots:
                buf[int(pos)] ^= int(rng.integers(1, 256))
            yield f"{len(spots)} bytes flipped", bytes(buf)


def _load_or_clear_error(path: Path) -> None:
    from filterlens.sources import load_model

    try:
        mf = load_model(path)
    except FilterlensError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.strip(), msg
        return
    assert mf.layers is not None


@pytest.mark.parametrize("name, suffix", [("cifar10_resnet20-12fca82f.th", ".th"),
                                          ("cifar10_resnet_2b_pgd2.onnx", ".onnx")])
def test_damaged_model_files_end_in_a_result_or_one_line(tmp_path, name, suffix):
    data = shared_path("models", name).read_bytes()
    for i, (what, damaged) in enumerate(mutations(data, seed=12)):
        f = tmp_path / f"case{i}{suffix}"
        f.write_bytes(damaged)
        try:
            _load_or_clear_error(f)
        except AssertionError:
            raise
        except Exception as exc:  # anything else would be a traceback for the user
            pytest.fail(f"{name}, {what}: {type(exc).__name__}: {exc}")
        f.unlink()


def test_damaged_gzip_onnx_ends_in_a_result_or_one_line(tmp_path):
    import gzip

    data = gzip.compress(shared_path("models", "cifar10_resnet_2b_pgd2.onnx").read_bytes())
    for i, (what, damaged) in enumerate(mutations(data, seed=7, n=12)):
        f = tmp_path / f"case{i}.onnx.gz"
        f.write_bytes(damaged)
        try:
            _load_or_clear_error(f)
        except AssertionError:
            raise
        except Exception as exc:
            pytest.fail(f"gz, {what}: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def pristine_db(tmp_path_factory):
    """A database of the real checkpoint and ONNX model (via the command line)."""
    import contextlib
    import io

    from filterlens.cli.main import main

    root = tmp_path_factory.mktemp("fuzzdb")
    src = [shared_path("models", "cifar10_resnet20-12fca82f.th"), shared_path("models", "cifar10_resnet_2b_pgd2.onnx")]
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as info:
        main(["extract", *map(str, src), "--db", str(root / "db"), "--training", "normal"])
    assert info.value.code in (0, None)
    return root / "db"


READS = [
    ["db", "models", "--format", "csv"],
    ["db", "layers", "--format", "csv"],
    ["db", "info"],
    ["db", "check", "--deep"],
    ["db", "query", "--format", "csv", "SELECT model, count(*) AS n, sum(list_sum(w)) AS s FROM filters GROUP BY model"],
]


@pytest.mark.parametrize("which", ["models_table", "layers_table", "filters"])
def test_damaged_database_files_end_in_a_result_or_one_line_and_change_nothing(tmp_path, capsys, pristine_db,
                                                                             which):
    import json

    manifest = json.loads((pristine_db / "manifest.json").read_text())
    rels = manifest["files"] if which == "filters" else [manifest[which]]
    for j, rel in enumerate(rels):
        data = (pristine_db / rel).read_bytes()
        for i, (what, damaged) in enumerate(mutations(data, seed=100 + j, n=N_CASES // len(rels) + 2)):
            db = tmp_path / f"db{j}_{i}"
            shutil.copytree(pristine_db, db)
            (db / rel).write_bytes(damaged)
            before = tree(db)
            for command in READS:
                code, _, err = run_cli(capsys, *command, "--db", db)
                assert code in (0, 1), (rel, what, command, err)
                if code == 1 and command[1] != "check":
                    assert_one_error_line(err)
                assert "Traceback" not in err
            assert tree(db) == before, (rel, what)
            shutil.rmtree(db)
