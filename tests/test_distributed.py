"""``torchrun --nproc-per-node 2 -m zplug explain``: the same files as one process, every input once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zplug.demo.samples import samples_dir
from zplug.distributed import Context, DistributedError, context

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ZPLUG_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    return {**clean, "OMP_NUM_THREADS": "1", "ZPLUG_DISABLE_PLUGIN_AUTOLOAD": "1"}


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "zplug", "explain", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env(), cwd=cwd, timeout=180)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_write_the_same_files_as_one(tmp_path):
    # 3 batches of 5, 5 and 2 inputs: rank 0 does batches 0 and 2, rank 1 batch 1
    options = ["--demo", "--preset", "epsilon_plus_flat", "--attributor", "smoothgrad", "--param", "n_iter=2",
               "--batch-size", "5", "--save-inputs", "--save-relevance"]
    single = subprocess.run([str(BIN / "zplug"), "explain", *options, "--out", "one"], capture_output=True,
                            text=True, env=env(), cwd=tmp_path, timeout=120)
    assert (single.returncode, single.stderr) == (0, "")
    double = torchrun(*options, "--out", "two", cwd=tmp_path)
    assert double.returncode == 0, double.stderr
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len([name for name in one if name.startswith("heatmaps/")]) == 12
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []
    # the summary is printed once (rank 0) and reads the same, apart from folders and timing
    assert double.stdout.count("explained 12 inputs") == 1
    assert single.stdout.splitlines()[:5] == double.stdout.splitlines()[:5]
    assert double.stdout.splitlines()[-1].endswith(" s on 2 processes")


def test_an_error_on_one_rank_is_reported_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        shutil.copy(samples_dir() / "cross" / "cross_0.png", data / f"{i}.png")
    (data / "3.png").write_text("broken\n")  # batch 1 (rank 1) with --batch-size 2
    result = torchrun(str(data), "--demo", "--batch-size", "2", "--out", "out", cwd=tmp_path)
    assert result.returncode != 0
    # input 3 is checked by rank 1 (inputs are dealt round-robin for reading), before anything is written
    message = (f"zplug: error: cannot read image '{data / '3.png'}': not a PNG, JPEG, BMP, GIF, WebP, TIFF or "
               "PPM/PGM/PBM image; give --skip-bad to explain the other 3 inputs")
    assert [line for line in result.stderr.splitlines() if line.startswith("zplug: error:")] == [message]
    assert not (tmp_path / "out").exists()


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with context("cpu") as ctx:
        assert ctx == Context() and not ctx.distributed and ctx.is_main
        assert ctx.mine(3) == [0, 1, 2] and ctx.all_gather("x") == ["x"]


def test_round_robin_deals_every_unit_once():
    ranks = [Context(rank=r, world_size=3) for r in range(3)]
    dealt = sorted(unit for ctx in ranks for unit in ctx.mine(10))
    assert dealt == list(range(10))
    assert ranks[1].mine(10) == [1, 4, 7]


def test_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(DistributedError, match=r"^environment variable RANK='two' is not an integer$"):
        with context("cpu"):
            pass
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match=r"^RANK=2 is not in 0..1 \(WORLD_SIZE=2\)$"):
        with context("cpu"):
            pass


def test_overwrite_accounts_for_every_process_and_skip_bad_keeps_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in (0, 1, 2, 4, 5):
        shutil.copy(samples_dir() / "cross" / "cross_0.png", data / f"{i}.png")
    (data / "3.png").write_text("broken\n")
    first = torchrun(str(data), "--demo", "--batch-size", "2", "--out", "out", "--skip-bad", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "out" / "keep.txt").write_text("mine\n")
    again = torchrun(str(data), "--demo", "--batch-size", "2", "--out", "out", "--skip-bad", "--overwrite",
                     cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # 5 heatmaps (3 from rank 0, 2 from rank 1) and the sheet replaced; keep.txt left
    assert "--overwrite: 6 files replaced; 1 other file in out/ from before left as it was" in again.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir()) == [
        "00_0.png", "01_1.png", "02_2.png", "04_4.png", "05_5.png"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine\n"
