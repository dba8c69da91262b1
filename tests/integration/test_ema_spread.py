"""benchmarks/ema_spread.py: spreads and paired differences of runs with and without a moving average."""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ema_spread  # noqa: E402


def _write_runs(
    folder: Path, top1: dict[str, list[float]], ema_decay: float, teacher: str = "t", other_decay: float = 0.0
) -> None:
    folder.mkdir(parents=True)
    for row, values in top1.items():
        for i, value in enumerate(values):
            fold, seed = i % 2, i // 2
            decay = (
                other_decay if other_decay and i == 0 else ema_decay
            )  # the first pair's run: another decay
            settings = {"ema_decay": decay} if decay else {}
            run = {
                "row": row,
                "fold": fold,
                "seed": seed,
                "top1": value,
                "curve": [[100, 0.5], [200, value - 0.01]],
                "teacher_weights": teacher,
                "settings": settings,
            }
            (folder / f"{row}__fold{fold}__seed{seed}.json.gz").write_bytes(
                gzip.compress(json.dumps(run).encode())
            )


def test_spreads_and_paired_differences_match_numpy(tmp_path):
    plain = {"fixed_0.5": [0.98, 0.97, 0.99, 0.96], "dto": [0.97, 0.98, 0.97, 0.95]}
    ema = {"fixed_0.5": [0.985, 0.975, 0.985, 0.97], "dto": [0.98, 0.975, 0.98, 0.96]}
    _write_runs(tmp_path / "plain", plain, 0.0)
    _write_runs(tmp_path / "ema", ema, 0.999)
    report = ema_spread.main(
        [
            "--plain_runs",
            str(tmp_path / "plain"),
            "--ema_runs",
            str(tmp_path / "ema"),
            "--output",
            str(tmp_path / "s"),
        ]
    )
    assert report["ema_decay"] == 0.999 and len(report["pairs"]) == 4
    fixed = report["rows"][0]
    assert fixed["test_std_plain"] == pytest.approx(np.std(plain["fixed_0.5"], ddof=1))
    assert fixed["test_std_ema"] == pytest.approx(np.std(ema["fixed_0.5"], ddof=1))
    gain = np.subtract(ema["fixed_0.5"], plain["fixed_0.5"])
    assert fixed["ema_gain"] == pytest.approx((gain.mean(), gain.std(ddof=1) / 2))
    (difference,) = report["differences"]
    diffs = np.subtract(ema["dto"], ema["fixed_0.5"])
    assert difference["ema"] == pytest.approx((diffs.mean(), diffs.std(ddof=1) / 2))
    table = (tmp_path / "s.md").read_text()
    assert "| dto - fixed_0.5 |" in table and "decay 0.999" in table


def test_mismatched_folders_are_refused(tmp_path):
    runs = {"fixed_0.5": [0.98, 0.97], "dto": [0.97, 0.98]}
    _write_runs(tmp_path / "plain", runs, 0.0)
    _write_runs(tmp_path / "other_teacher", runs, 0.999, teacher="u")
    _write_runs(tmp_path / "no_average", runs, 0.0)
    _write_runs(tmp_path / "two_decays", runs, 0.999, other_decay=0.99)
    common = ["--plain_runs", str(tmp_path / "plain"), "--output", str(tmp_path / "s")]
    with pytest.raises(ValueError, match="trained against other teachers"):
        ema_spread.main([*common, "--ema_runs", str(tmp_path / "other_teacher")])
    with pytest.raises(ValueError, match="holds runs without a moving average"):
        ema_spread.main([*common, "--ema_runs", str(tmp_path / "no_average")])
    with pytest.raises(ValueError, match=r"runs of several decays \[0.99, 0.999\]"):
        ema_spread.main([*common, "--ema_runs", str(tmp_path / "two_decays")])
    with pytest.raises(ValueError, match="is not a folder of runs"):
        ema_spread.main([*common, "--ema_runs", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="baseline and at least one row"):
        ema_spread.SpreadArguments(plain_runs="a", ema_runs="b", rows=["dto"])
