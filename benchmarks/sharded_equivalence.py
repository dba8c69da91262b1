"""How far FSDP2 and DeepSpeed ZeRO-2 / 3 on 2 CPU processes are from one process with the global batch.

Runs the worker of ``tests/distributed/test_sharded.py`` once per backend (launched from the shipped YAML in
``examples/accelerate/``, with the test harness's CPU adjustment), trains every case on one process with the
global batch, and records per backend and case the largest absolute difference of the final weights and of
the logged pi, plus the two deliberately broken runs (the loss reduction or the Gram's sum over ranks
skipped), which the tests must tell apart. The tests assert a tolerance of 1e-6 on both; this file shows
the margin on either side.

Writes ``benchmarks/results/sharded_equivalence.{json,md}`` (docs/distributed.md quotes the markdown through
``docs/update_readme.py``). Run: ``python benchmarks/sharded_equivalence.py`` (about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "distributed")]

from ddp_worker import make_trainer  # noqa: E402
from sharded_worker import BROKEN, BROKEN_GRAM, GRAM_VARIANTS, VARIANTS  # noqa: E402

from testing_utils import launch_two_processes, train_logs  # noqa: E402

BACKENDS = ("fsdp2", "deepspeed_zero2", "deepspeed_zero3")
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 1e-6


def single_process_runs(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    runs = {}
    for name, (overrides, _, batch) in {**VARIANTS, **GRAM_VARIANTS}.items():
        trainer = make_trainer(str(folder / name), overrides, batch)
        trainer.train()
        params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        runs[name] = (params, torch.tensor(train_logs(trainer, "pi_distill")))
    runs[BROKEN], runs[BROKEN_GRAM] = runs["dto_amortized"], runs["dto"]
    return runs


def deviations(result: dict, reference: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float] | str:
    if "refused" in result:
        return "refused"
    params, pi = reference
    return {
        "weights": (torch.tensor(result["params"][0]) - params).abs().max().item(),
        "pi": (torch.tensor(result["pi_distill"]) - pi).abs().max().item(),
    }


def markdown(rows: dict[str, dict[str, dict | str]]) -> str:
    lines = [
        "| case | " + " | ".join(BACKENDS) + " |",
        "|---|" + "---|" * len(BACKENDS),
    ]
    for name, cells in rows.items():
        shown = []
        for backend in BACKENDS:
            cell = cells[backend]
            shown.append(cell if isinstance(cell, str) else f"{cell['weights']:.1e} / {cell['pi']:.1e}")
        broken = " (broken on purpose)" if name in (BROKEN, BROKEN_GRAM) else ""
        lines.append(f"| `{name}`{broken} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    start = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        references = single_process_runs(folder / "single")
        rows: dict[str, dict[str, dict | str]] = {}
        for backend in BACKENDS:
            output = folder / backend
            output.mkdir()
            launch_two_processes(
                "sharded_worker.py", output, config_file=ROOT / "examples" / "accelerate" / f"{backend}.yaml"
            )
            results = json.loads((output / "sharded_results.json").read_text())
            for name, reference in references.items():
                rows.setdefault(name, {})[backend] = deviations(results[name], reference)
    report = {
        "machine": platform.platform(),
        "versions": {name: version(name) for name in ("torch", "transformers", "accelerate", "deepspeed")},
        "tolerance": TOLERANCE,
        "seconds": round(time.time() - start),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sharded_equivalence.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "sharded_equivalence.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
