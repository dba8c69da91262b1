"""The method-comparison benchmark end to end on a tiny budget: files, rows, paired statistics."""

import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import compare_methods  # noqa: E402


def test_smoke_run_writes_the_table_the_json_and_the_plot(tmp_path):
    rows = ["no_kd", "fixed_0.5", "dto"]
    argv = [
        "--rows",
        *rows,
        "--folds",
        "2",
        "--seeds",
        "1",
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--teacher_steps",
        "2",
        "--labelled_per_class",
        "2",
        "--workers",
        "1",
        "--output_dir",
        str(tmp_path / "out"),
        "--results_dir",
        str(tmp_path / "results"),
    ]
    report = compare_methods.main(argv)
    results = tmp_path / "results"
    assert (results / "compare_methods.png").stat().st_size > 0
    table = (results / "compare_methods.md").read_text()
    for row in rows:
        assert f"| {row} |" in table
    saved = json.loads((results / "compare_methods.json").read_text())
    assert len(saved["runs"]) == len(rows) * 2 and len(saved["teacher_top1_per_fold"]) == 2
    by_row = {r["row"]: r for r in report["table"]}
    baseline = [r["top1"] for r in report["runs"] if r["row"] == "fixed_0.5"]
    dto = [r["top1"] for r in report["runs"] if r["row"] == "dto"]
    assert by_row["dto"]["diff_to_baseline"] == pytest.approx(sum(d - b for d, b in zip(dto, baseline)) / 2)
    assert by_row["fixed_0.5"]["first_step_reaching_baseline"] is not None
    assert by_row["dto"]["mean_pi_distill"] is not None and by_row["no_kd"]["mean_pi_distill"] is None

    # a second call with one more row reuses the finished runs
    again = compare_methods.main([*argv[:1], *rows, "dot_adamw", *argv[1 + len(rows) :]])
    assert len(again["runs"]) == (len(rows) + 1) * 2
    lines = (tmp_path / "out" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == (len(rows) + 1) * 2

    # --runs_dir: one file per run, read back by the next call (a benchmark committed run by run)
    runs_dir = tmp_path / "committed"
    first = compare_methods.main([*argv, "--runs_dir", str(runs_dir), "--only_folds", "0"])
    assert len(list(runs_dir.glob("*.json.gz"))) == len(rows) and len(first["runs"]) == len(rows)
    # a recorded run is read, not trained again: a value written into its file comes back
    marked = runs_dir / "dto__fold0__seed0.json.gz"
    record = json.loads(gzip.decompress(marked.read_bytes()))
    marked.write_bytes(gzip.compress(json.dumps({**record, "top1": 0.123}).encode()))
    # fold 1 trained by two spawned workers, each run recorded as it finishes
    resumed = compare_methods.main([*argv, "--runs_dir", str(runs_dir), "--workers", "2"])
    assert len(list(runs_dir.glob("*.json.gz"))) == len(rows) * 2 and len(resumed["runs"]) == len(rows) * 2
    assert next(r["top1"] for r in resumed["runs"] if (r["row"], r["fold"]) == ("dto", 0)) == 0.123
    # other settings are refused rather than allowed to replace the committed runs of the same names
    with pytest.raises(
        ValueError, match=r"holds 6 runs made with other settings .*'temperature': \(4.0, 2.0\)"
    ):
        compare_methods.main([*argv, "--runs_dir", str(runs_dir), "--temperature", "2"])
    # each run names its fold's teacher by the SHA-256 of its weights; runs against another teacher are refused
    for path in runs_dir.glob("*.json.gz"):
        record = json.loads(gzip.decompress(path.read_bytes()))
        weights = tmp_path / "out" / f"teacher_fold{record['fold']}" / "model.safetensors"
        assert record["teacher_weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    record = json.loads(gzip.decompress(marked.read_bytes()))
    marked.write_bytes(gzip.compress(json.dumps({**record, "teacher_weights": "0" * 16}).encode()))
    with pytest.raises(ValueError, match=r"holds 1 runs trained against other teachers .*--teachers_dir"):
        compare_methods.main([*argv, "--runs_dir", str(runs_dir)])


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="unknown rows"):
        compare_methods.CompareArguments(rows=["fixed_0.5", "magic"])
    with pytest.raises(ValueError, match="baseline"):
        compare_methods.CompareArguments(rows=["dto"])
    with pytest.raises(ValueError, match="student_family vit"):
        compare_methods.CompareArguments(rows=["fixed_0.5", "deit_hard_dto"], student_family="resnet")


def test_the_unlabelled_pool_keeps_the_labelled_subset_and_marks_the_rest():
    from datasets import ClassLabel, Dataset

    labels = [i % 3 for i in range(30)]
    pool = Dataset.from_dict({"x": list(range(30)), "label": labels}).cast_column(
        "label", ClassLabel(num_classes=3)
    )
    subset = compare_methods.training_set(pool, 2, seed=7, unlabelled_pool=False)
    whole = compare_methods.training_set(pool, 2, seed=7, unlabelled_pool=True)
    kept = subset["x"][:]
    assert len(kept) == 6 and sorted(subset["label"][:]) == [0, 0, 1, 1, 2, 2]
    assert whole["x"][:].tolist() == list(range(30))  # every image, in order
    marked = whole["label"][:].tolist()
    assert [marked[i] for i in kept] == [labels[i] for i in kept]
    assert all(marked[i] == -100 for i in range(30) if i not in set(kept))


def test_signal_rows_run_feature_kd_and_the_deit_token(tmp_path):
    rows = ["fixed_0.5", "feature_vkd_dto", "deit_hard_fixed_0.5"]
    argv = [
        "--rows",
        *rows,
        "--student_family",
        "vit",
        "--folds",
        "2",
        "--seeds",
        "1",
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--teacher_steps",
        "2",
        "--labelled_per_class",
        "2",
        "--workers",
        "1",
        "--output_dir",
        str(tmp_path / "out"),
        "--results_dir",
        str(tmp_path / "results"),
    ]
    report = compare_methods.main(argv)
    by_row = {r["row"]: r for r in report["table"]}
    assert set(by_row) == set(rows)
    assert by_row["feature_vkd_dto"]["mean_pi_distill"] is not None  # DTO-KD on (logit + feature KD, task)
    assert compare_methods.split_row("feature_mokd_fixed_0.5") == ("feature_mokd", "fixed_0.5")
    assert compare_methods.split_row("dto_amortized") == ("logits", "dto_amortized")
    assert set(compare_methods.SIGNAL_ROWS) <= set(compare_methods.ALL_ROWS)


def test_paper_regime_smoke_run_reports_per_step_conflict_weights_and_the_best_fixed_baseline(tmp_path):
    rows = [
        "no_kd",
        "fixed_0.5",
        "fixed_1.0",
        "dto",
        "dto_representation",
        "feature_vkd_fixed_0.5",
        "feature_vkd_dto",
        "feature_vkd_dto_shared",
        "deit_soft_fixed_0.5",
        "deit_soft_dto_shared",
        "dot_adamw",
    ]
    # a validation pilot (as a pilot run writes it) recorded with the report: its curve gains 0.9 -> 0.95 over
    # the last quarter (the evaluation at step 300 is the last at or before 3/4 of 400)
    pilot = tmp_path / "pilot.json"
    curve = [[100, 0.5], [300, 0.9], [400, 0.95]]
    pilot.write_text(
        json.dumps(
            {
                "arguments": {
                    "evaluate_on": "validation",
                    "max_steps": 400,
                    "learning_rate": 0.003,
                    "student_width": 64,
                },
                "table": [{"row": "fixed_0.5", "top1_mean": 0.95, "curve": curve}],
            }
        )
    )
    argv = [
        "--regime", "paper", "--student_family", "vit", "--rows", *rows, "--folds", "2", "--seeds", "1",
        "--max_steps", "4", "--eval_steps", "2", "--teacher_steps", "2", "--workers", "1",
        "--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"), "--pilots", str(pilot),
    ]  # fmt: skip
    report = compare_methods.main(argv)
    results = tmp_path / "results"
    table = (results / "compare_methods.md").read_text()
    (recorded,) = report["settings_chosen_on_validation"]
    assert recorded["validation_top1"] == {"fixed_0.5": 0.95}
    assert recorded["last_quarter_gain"]["fixed_0.5"] == pytest.approx(0.05)
    assert "Validation pilot" in table and "fixed_0.5 95.0 (+5.00 pp)" in table
    # the table says whether its own best fixed alpha plateaued (4 steps: the curve at step 4 against its last evaluation at or before 3)
    best = report["best_fixed"]["logits"]
    gain = {r["row"]: r for r in report["table"]}[best]["last_quarter_gain"]
    curve_best = {r["row"]: r for r in report["table"]}[best]["curve"]
    assert gain == pytest.approx(curve_best[-1][1] - [acc for step, acc in curve_best if step <= 3][-1])
    # one figure per signal's best fixed alpha (logits, VkD features, DeiT's token)
    assert "over the last quarter of training" in table and f"`{best}` {100 * gain:+.2f} pp" in table
    gains = {r["row"]: r["last_quarter_gain"] for r in report["table"]}
    plateau = all(gains[row] < 0.005 for row in report["best_fixed"].values())
    assert ("a plateau" in table) == plateau and ("NOT converged" in table) == (not plateau)
    assert "Command: `python benchmarks/compare_methods.py --regime paper --student_family vit" in table
    by_row = {r["row"]: r for r in report["table"]}
    best_logit = max(("fixed_0.5", "fixed_1.0"), key=lambda row: by_row[row]["top1_mean"])
    assert (
        by_row["dto"]["baseline"] == best_logit
        and by_row["feature_vkd_dto"]["baseline"] == "feature_vkd_fixed_0.5"
    )
    traces = json.loads((results / "compare_methods_per_step.json").read_text())["rows"]  # fold 0, seed 0
    saved = json.loads((results / "compare_methods.json").read_text())
    for row in ("dto", "dto_representation", "feature_vkd_dto"):
        cosines = [c for c in traces[row]["grad_cos"] if c is not None]
        runs = {r["fold"]: r for r in saved["runs"] if r["row"] == row}
        assert cosines and runs[0]["conflict_rate"] == pytest.approx(
            sum(c < 0 for c in cosines) / len(cosines)
        )
        mean = (runs[0]["conflict_rate"] + runs[1]["conflict_rate"]) / 2
        assert by_row[row]["conflict_rate"] == pytest.approx(mean)
    assert (
        by_row["fixed_1.0"]["conflict_rate"] is None and by_row["fixed_1.0"]["median_weight_distill"] == 1.0
    )
    assert by_row["no_kd"]["median_weight_task"] == 1.0
    # DeiT's soft token pairs with its own fixed row; the shared Gram leaves its two heads (one loss each) out
    assert by_row["deit_soft_dto_shared"]["baseline"] == "deit_soft_fixed_0.5"
    assert by_row["dto"]["vertex_share"] is not None and by_row["fixed_0.5"]["vertex_share"] is None
    shared = [r for r in saved["runs"] if r["row"] == "feature_vkd_dto_shared"]
    assert shared and all(r["gram_parameters"] == "shared" for r in shared)
    assert all("per_step" not in r and "median_weight_distill" in r for r in saved["runs"])
    assert len(saved["teacher_top1_per_fold"]) == 2
    # an experimental method's row has its own table after the comparison, and the resolution line reads the
    # compared rows only
    assert by_row["dot_adamw"]["experiment"] and not by_row["dto"]["experiment"]
    comparison, experiments = table.split("Experiments, not methods to compare against")
    assert "| dot_adamw |" in experiments and "| dot_adamw |" not in comparison
    assert "| dto |" in comparison and "| dto |" not in experiments
    compared = [r for r in report["table"] if not r["experiment"] and r["row"] != r["baseline"]]
    widest = max(compared, key=lambda r: r["diff_se"])
    assert (
        f"Resolution: the largest paired standard error of a compared row is {100 * widest['diff_se']:.2f} pp (`{widest['row']}`)"
        in table
    )


def test_paper_regime_arguments_are_checked():
    with pytest.raises(ValueError, match="ViT student"):
        compare_methods.CompareArguments(regime="paper")
    with pytest.raises(ValueError, match=r"rows \['dto'\] have no fixed-alpha row.*fixed_0.5"):
        compare_methods.CompareArguments(regime="paper", student_family="vit", rows=["dto"])
    # no_kd pairs with logit KD's best fixed alpha: feature rows' own fixed alphas do not serve it
    with pytest.raises(ValueError, match=r"rows \['no_kd'\] have no fixed-alpha row"):
        compare_methods.CompareArguments(
            regime="paper", student_family="vit", rows=["no_kd", "feature_vkd_fixed_0.5", "feature_vkd_dto"]
        )
    with pytest.raises(ValueError, match="feature_vkd_fixed_0.5 or fixed_0.5"):
        compare_methods.CompareArguments(regime="paper", student_family="vit", rows=["feature_vkd_dto"])
    # a feature row may pair with logit KD's fixed alpha when its signal has none
    compare_methods.CompareArguments(
        regime="paper", student_family="vit", rows=["fixed_0.5", "feature_vkd_dto"]
    )
    args = compare_methods.CompareArguments(regime="paper", student_family="vit")
    assert args.rows == list(compare_methods.PAPER_ROWS) and args.results_dir.endswith("paper_regime")
    with pytest.raises(ValueError, match="ema_decay is read by the paper regime only"):
        compare_methods.CompareArguments(ema_decay=0.999)
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\)"):
        compare_methods.CompareArguments(regime="paper", student_family="vit", ema_decay=1.0)


def test_runs_with_a_moving_average_are_kept_apart_from_runs_without(tmp_path, monkeypatch):
    """--ema_decay enters a run's settings (a runs_dir of runs without the average refuses it), while runs made
    without it keep the settings they were recorded with (no ema_decay key): they are reused, not retrained. The
    decay reaches each run's DTOKDConfig (with timm's warm-up), which is what makes evaluate() score the average."""
    import hf_dtokd

    configs: list[tuple[float, bool]] = []

    class RecordingConfig(hf_dtokd.DTOKDConfig):
        def __post_init__(self) -> None:
            configs.append((self.ema_decay, self.ema_warmup))
            super().__post_init__()

    monkeypatch.setattr(hf_dtokd, "DTOKDConfig", RecordingConfig)  # run_paper imports it at call time
    runs = tmp_path / "runs"
    argv = [
        "--regime", "paper", "--student_family", "vit", "--rows", "fixed_0.5", "--folds", "2", "--only_folds", "0",
        "--seeds", "1", "--max_steps", "4", "--eval_steps", "2", "--teacher_steps", "2", "--workers", "1",
        "--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"), "--runs_dir", str(runs),
    ]  # fmt: skip
    compare_methods.main(argv)
    (recorded,) = runs.iterdir()
    run = json.loads(gzip.decompress(recorded.read_bytes()))
    assert "ema_decay" not in run["settings"]
    stamp = recorded.stat().st_mtime_ns
    compare_methods.main(argv)  # reused: nothing trained, the file untouched
    assert recorded.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        compare_methods.main([*argv, "--ema_decay", "0.9"])
    averaged = tmp_path / "runs_ema"
    report = compare_methods.main([*argv[:-1], str(averaged), "--ema_decay", "0.9"])
    (run_ema,) = [json.loads(gzip.decompress(p.read_bytes())) for p in averaged.iterdir()]
    assert run_ema["settings"]["ema_decay"] == 0.9 and report["arguments"]["ema_decay"] == 0.9
    assert configs == [(0.0, False), (0.9, True)]  # one run trained without the average, one with it
    table = (tmp_path / "results" / "compare_methods.md").read_text()
    assert "--ema_decay 0.9" in table and "moving average of its weights (decay 0.9" in table


def test_dot_rows_take_another_momentum_gap_and_other_names_are_refused():
    assert compare_methods.parse_method("dot_adamw_delta0") == ("dot_adamw", 0.5, {"dot_delta": 0.0})
    assert compare_methods.split_row("feature_vkd_dot_delta0.02") == ("feature_vkd", "dot_delta0.02")
    assert compare_methods.parse_method("dot_delta0.02") == ("dot", 0.5, {"dot_delta": 0.02})
    assert compare_methods.parse_method("dot_lr0.1") == ("dot", 0.5, {"learning_rate": 0.1})
    # one momentum at the distillation branch's beta1 (0.9 + 0.075): AdamW with beta1 0.975 on the fixed loss
    assert compare_methods.parse_method("dot_adamw_beta0.975_delta0") == (
        "dot_adamw",
        0.5,
        {"dot_momentum": 0.975, "dot_delta": 0.0},
    )
    assert compare_methods.parse_method("dto_shared") == ("dto", 0.5, {"gram_parameters": "shared"})
    arguments = dict(regime="paper", student_family="vit")
    compare_methods.CompareArguments(rows=["fixed_0.5", "dot_adamw_delta0.02"], **arguments)
    assert compare_methods.parse_method("dot_adamw_branches") == (
        "dot_adamw",
        0.5,
        {"dot_second_moment": "branches"},
    )
    assert compare_methods.parse_method("dot_adamw_branches_delta0") == (
        "dot_adamw",
        0.5,
        {"dot_second_moment": "branches", "dot_delta": 0.0},
    )
    compare_methods.CompareArguments(rows=["fixed_0.5", "dot_adamw_beta0.825_delta0"], **arguments)
    compare_methods.CompareArguments(rows=["fixed_0.5", "dot_adamw_branches"], **arguments)
    assert compare_methods.parse_method("dot_adamw_shared_bias") == (
        "dot_adamw",
        0.5,
        {"dot_bias_correction": "shared"},
    )
    compare_methods.CompareArguments(rows=["fixed_0.5", "feature_vkd_dot_adamw_shared_bias"], **arguments)
    with pytest.raises(ValueError, match="unknown rows \\['dot_branches'\\]"):
        compare_methods.CompareArguments(rows=["fixed_0.5", "dot_branches"], **arguments)
    with pytest.raises(ValueError, match="unknown rows \\['dto_delta0'\\]"):
        compare_methods.CompareArguments(rows=["fixed_0.5", "dto_delta0"], **arguments)


def test_last_quarter_gain_reads_the_curve_at_three_quarters_of_the_final_step():
    assert compare_methods.last_quarter_gain(
        [(0, 0.5), (250, 0.6), (500, 0.7), (750, 0.8), (1000, 0.85)]
    ) == (pytest.approx(0.05))
    # no evaluation at 750: the last one before it (700) is the reference
    assert compare_methods.last_quarter_gain(
        [(100, 0.1), (700, 0.5), (800, 0.6), (1000, 0.62)]
    ) == pytest.approx(0.12)
    assert compare_methods.last_quarter_gain([(1000, 0.9)]) is None
    assert compare_methods.last_quarter_gain([(900, 0.8), (1000, 0.9)]) is None  # nothing at or before 750


def test_pilots_must_exist_and_be_scored_on_validation(tmp_path):
    test_scored = tmp_path / "test_scored.json"
    test_scored.write_text(json.dumps({"arguments": {"evaluate_on": "test"}, "table": []}))
    with pytest.raises(ValueError, match="not scored on the validation split"):
        compare_methods.pilot_record(test_scored)
    argv = ["--regime", "paper", "--student_family", "vit", "--output_dir", str(tmp_path / "out")]
    # refused before any teacher is trained
    with pytest.raises(FileNotFoundError, match="--pilots names results files that do not exist"):
        compare_methods.main([*argv, "--pilots", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="not scored on the validation split"):
        compare_methods.main([*argv, "--pilots", str(test_scored)])
    assert not (tmp_path / "out").exists()


def test_finished_only_reports_the_pairs_every_row_finished_and_trains_nothing(tmp_path):
    runs = tmp_path / "runs"
    argv = [
        "--regime", "paper", "--student_family", "vit", "--rows", "fixed_0.5", "no_kd", "--folds", "2",
        "--seeds", "1", "--max_steps", "4", "--eval_steps", "2", "--teacher_steps", "2", "--workers", "1",
        "--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"), "--runs_dir", str(runs),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no fold / seed pair has all 2 rows recorded yet"):
        compare_methods.main([*argv, "--finished_only"])
    compare_methods.main([*argv, "--only_folds", "0"])  # fold 0 only: one of the two pairs
    recorded = sorted(path.name for path in runs.iterdir())
    report = compare_methods.main([*argv, "--finished_only", "--results_name", "partial"])
    assert sorted(path.name for path in runs.iterdir()) == recorded and len(recorded) == 2  # nothing trained
    assert (report["pairs_finished"], report["pairs_planned"]) == (1, 2)
    assert {(r["row"], r["fold"]) for r in report["runs"]} == {("fixed_0.5", 0), ("no_kd", 0)}
    table = (tmp_path / "results" / "partial.md").read_text()
    assert table.startswith(
        "**In progress: 1 of 2 fold / seed pairs finished by every row** (folds / seeds 0/0)"
    )


def test_row_seeds_give_rows_more_pairs_with_their_best_fixed_alpha_only(tmp_path):
    runs = tmp_path / "runs"
    argv = [
        "--regime", "paper", "--student_family", "vit", "--rows", "fixed_0.5", "no_kd", "dto", "--folds", "2",
        "--only_folds", "0", "--seeds", "1", "--max_steps", "4", "--eval_steps", "2", "--teacher_steps", "2",
        "--workers", "1", "--output_dir", str(tmp_path / "out"), "--results_dir", str(tmp_path / "results"),
        "--runs_dir", str(runs),
    ]  # fmt: skip
    # no_kd's second seed would pair with nothing: its best fixed alpha runs one seed (the run is kept)
    with pytest.raises(
        ValueError, match="no_kd runs 2 seeds per fold, its best fixed alpha fixed_0.5 1, .* give fixed_0.5=2"
    ):
        compare_methods.main([*argv, "--row_seeds", "no_kd=2"])
    assert sorted(path.name for path in runs.iterdir()) == [
        "dto__fold0__seed0.json.gz",
        "fixed_0.5__fold0__seed0.json.gz",
        "no_kd__fold0__seed0.json.gz",
        "no_kd__fold0__seed1.json.gz",
    ]
    report = compare_methods.main([*argv, "--row_seeds", "no_kd=2", "fixed_0.5=2"])
    assert len(list(runs.iterdir())) == 5  # fixed_0.5 seed 1 only: the rest was recorded
    recorded = {
        (r["row"], r["seed"]): r
        for r in (json.loads(gzip.decompress(p.read_bytes())) for p in runs.iterdir())
    }
    by_row = {r["row"]: r for r in report["table"]}
    assert report["common_pairs"] == 1
    assert (by_row["no_kd"]["pairs"], by_row["fixed_0.5"]["pairs"], by_row["dto"]["pairs"]) == (2, 2, 1)
    diffs = [recorded[("no_kd", seed)]["top1"] - recorded[("fixed_0.5", seed)]["top1"] for seed in (0, 1)]
    assert by_row["no_kd"]["diff_to_baseline"] == pytest.approx(sum(diffs) / 2)
    assert by_row["no_kd"]["diff_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2)  # std of two / sqrt(2)
    assert by_row["dto"]["diff_to_baseline"] == pytest.approx(
        recorded[("dto", 0)]["top1"] - recorded[("fixed_0.5", 0)]["top1"]
    )
    assert report["run_seconds_total"] == pytest.approx(
        sum(r["seconds_per_step"] * 4 for r in recorded.values())
    )
    table = (tmp_path / "results" / "compare_methods.md").read_text()
    assert "1 paired runs; more where marked" in table and "(2 pairs)" in table
    assert "x 1 seeds (`fixed_0.5` 2, `no_kd` 2 seeds" in table and "Run time: 5 runs" in table


def test_row_seeds_are_checked():
    arguments = dict(regime="paper", student_family="vit", rows=["fixed_0.5", "dot"], seeds=3)
    assert compare_methods.CompareArguments(row_seeds=["dot=7"], **arguments).seeds_of_row() == {
        "fixed_0.5": 3,
        "dot": 7,
    }
    with pytest.raises(ValueError, match="which is not in rows .* add it to --rows"):
        compare_methods.CompareArguments(row_seeds=["dto=7"], **arguments)
    with pytest.raises(ValueError, match="RUN=N"):
        compare_methods.CompareArguments(row_seeds=["dot"], **arguments)
    with pytest.raises(ValueError, match="fewer seeds than --seeds 3"):
        compare_methods.CompareArguments(row_seeds=["dot=2"], **arguments)
    with pytest.raises(ValueError, match="for the paper regime"):
        compare_methods.CompareArguments(row_seeds=["fixed_0.5=4"], rows=["fixed_0.5", "no_kd"])


def test_reach_per_pair_compares_each_pair_with_its_own_best_fixed_final():
    baseline = [
        [(250, 0.8), (500, 0.9), (750, 0.95)],  # final 0.95, first reached at 750
        [(250, 0.9), (500, 0.97), (750, 0.96)],  # final 0.96, first reached at 500
        [(250, 0.9), (500, 0.9), (750, 0.9)],  # final 0.9, first reached at 250
        [(250, 0.5), (500, 0.6), (750, 0.7)],  # final 0.7, first reached at 750
    ]
    row = [
        [(250, 0.95), (500, 0.9), (750, 0.9)],  # 250 < 750: earlier, ratio 1/3
        [(250, 0.9), (500, 0.96), (750, 0.99)],  # 500: same, ratio 1
        [(250, 0.8), (500, 0.85), (750, 0.9)],  # 750 > 250: later, ratio 3
        [(250, 0.5), (500, 0.6), (750, 0.69)],  # never
    ]
    counts = compare_methods.reach_per_pair(row, baseline)
    assert {k: counts[k] for k in ("earlier", "same", "later", "never")} == {
        "earlier": 1,
        "same": 1,
        "later": 1,
        "never": 1,
    }
    assert counts["median_step_ratio"] == pytest.approx((1 + 3) / 2)  # ratios 1/3, 1, 3, inf
    # a row that never reaches the target in most pairs has no finite median
    assert (
        compare_methods.reach_per_pair(row[3:] * 2 + row[:1], baseline[3:] * 2 + baseline[:1])[
            "median_step_ratio"
        ]
        is None
    )


def _stop_file_argv(tmp_path, seeds: int, max_steps: int, workers: int) -> list[str]:
    """fixed_0.5 and no_kd on fold 0 of 2, runs in ``tmp_path / "runs"``, stop file ``tmp_path / "stop"``."""
    return [
        "--regime", "paper", "--student_family", "vit", "--rows", "fixed_0.5", "no_kd", "--folds", "2",
        "--only_folds", "0", "--seeds", str(seeds), "--max_steps", str(max_steps), "--eval_steps", "2",
        "--teacher_steps", "2", "--workers", str(workers), "--output_dir", str(tmp_path / "out"),
        "--results_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs"),
        "--stop_file", str(tmp_path / "stop"),
    ]  # fmt: skip


def test_a_stop_file_lets_the_run_in_flight_finish_and_starts_nothing_new(tmp_path, monkeypatch):
    runs, stop = tmp_path / "runs", tmp_path / "stop"
    argv = _stop_file_argv(tmp_path, seeds=1, max_steps=4, workers=1)
    train = compare_methods._run_task

    def train_then_stop(task):
        result = train(task)
        stop.touch()  # the session ends while the first run trains
        return result

    monkeypatch.setattr(compare_methods, "_run_task", train_then_stop)
    report = compare_methods.main(argv)
    assert report == {"stopped": True, "runs_recorded": 1, "runs_missing": 1}
    assert [path.name for path in runs.iterdir()] == ["fixed_0.5__fold0__seed0.json.gz"]
    assert not (tmp_path / "results").exists()  # no table from a stopped benchmark
    stop.unlink()
    report = compare_methods.main(argv)  # goes on: trains no_kd only
    assert sorted(path.name for path in runs.iterdir()) == [
        "fixed_0.5__fold0__seed0.json.gz",
        "no_kd__fold0__seed0.json.gz",
    ]
    assert (
        report["pairs_finished"] == 1
        and "--stop_file" not in (tmp_path / "results" / "compare_methods.md").read_text()
    )


def test_a_stop_file_with_two_workers_waits_for_the_runs_in_flight_only(tmp_path, monkeypatch):
    runs, stop = tmp_path / "runs", tmp_path / "stop"
    argv = _stop_file_argv(tmp_path, seeds=3, max_steps=2, workers=2)
    record = compare_methods.record_run

    def record_then_stop(*args):
        record(*args)
        stop.touch()  # the session ends when the first run is recorded, while the second one trains

    monkeypatch.setattr(compare_methods, "record_run", record_then_stop)
    report = compare_methods.main(argv)
    # the two runs handed to the two workers finish and are kept; none of the other four starts
    assert report == {"stopped": True, "runs_recorded": 2, "runs_missing": 4}
    assert sorted(path.name for path in runs.iterdir()) == [
        "fixed_0.5__fold0__seed0.json.gz",
        "no_kd__fold0__seed0.json.gz",
    ]


def test_extra_seeds_run_seed_by_seed_so_a_stopped_benchmark_has_whole_pairs(tmp_path, monkeypatch):
    argv = [
        "--regime", "paper", "--student_family", "vit", "--rows", "fixed_0.5", "no_kd", "dot", "--folds", "2",
        "--seeds", "1", "--row_seeds", "dot=3", "fixed_0.5=3", "--max_steps", "2", "--eval_steps", "2",
        "--teacher_steps", "2", "--workers", "1", "--output_dir", str(tmp_path / "out"),
        "--results_dir", str(tmp_path / "results"), "--runs_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    order = []

    class Planned(Exception):
        pass

    def fake_run(task):
        order.append(task[1:])
        return {"row": task[1], "fold": task[2], "seed": task[3]}

    def stop_before_the_table(*args):
        raise Planned

    monkeypatch.setattr(compare_methods, "_run_task", fake_run)
    monkeypatch.setattr(compare_methods, "record_run", lambda *args: None)
    monkeypatch.setattr(compare_methods, "paper_summary", stop_before_the_table)
    with pytest.raises(Planned):
        compare_methods.main(argv)
    common = [(row, fold, 0) for fold in (0, 1) for row in ("fixed_0.5", "no_kd", "dot")]
    extra = [(row, fold, seed) for seed in (1, 2) for fold in (0, 1) for row in ("fixed_0.5", "dot")]
    assert order == common + extra
