"""The registration benchmark on a CT of one's own (``--ct``): how an independent evaluator or a user measures it."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_registration  # noqa: E402


def test_ct_name_of():
    assert bench_registration.ct_name_of("cts/head.nii.gz") == "head"
    assert bench_registration.ct_name_of("a/b/pelvis_2mm.NRRD") == "pelvis_2mm"


@pytest.mark.slow  # 85 s: six processes (agent, greedy, refinement alone, three baselines) on 3 frames
def test_benchmark_on_a_ct_of_ones_own(tmp_path, capsys):
    """The embedded sample CT given as ``--ct``: 3 frames, every method's row, the speed-up against Powell on it."""
    from medai.samples import sample_path

    ct = str(sample_path("ct_abdomen"))
    out = tmp_path / "bench.json"
    assert bench_registration.main(["--cases", "0", "--ircad-cases", "0", "--finetune-minutes", "0", "--ct", ct,
                                    "--ct-cases", "3", "--ct-baseline-cases", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    label = f"{bench_registration.ct_name_of(ct)} (generic agent, not among its training CTs)"
    methods = {name.split(": ", 1)[1] for name in results if name.startswith(label + ": ")}
    assert {"agent alone", "agent + refinement", "initial pose", "refinement alone (from the initial pose)",
            "agent alone, greedy (no match check)", "classical NCC + Powell",
            "agent + refinement (baseline subset)"} <= methods
    registered = results[f"{label}: agent + refinement"]
    assert registered["cases"] == 3 and len(registered["per_case"]) == 3
    # frames 20 mm / 10 deg off: the registration must end far closer than it started
    assert registered["median_mtre_mm"] < 0.25 * results[f"{label}: initial pose"]["median_mtre_mm"]
    assert all(0.0 <= case["confidence"] <= 1.0 and np.isfinite(case["mtre"]) for case in registered["per_case"])
    printed = capsys.readouterr().out
    assert f"{label}:\nspeed-up vs classical NCC + Powell:" in printed
