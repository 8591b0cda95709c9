"""Checks a device check's report (``benchmarks/device_check.py --out FILE``): every section is
there, parity passed, and, for a ``--smoke`` report, the rows the smoke size makes. CI runs it after
the smoke run on each JAX it tests (``scripts/device_check_smoke.sh``).

    python benchmarks/check_device_report.py REPORT.json
"""

from __future__ import annotations

import json
import pathlib
import sys


def check(report: dict) -> None:
    """Raises AssertionError naming what is missing or wrong."""
    for section in ("machine", "parity", "loop_variants", "speed", "epoch"):
        assert section in report, f"section {section!r} missing"
    assert report["machine"]["devices"], "no devices"
    assert report["parity"]["passed"], f"parity failed: {report['parity'].get('failures')}"
    loops = report["loop_variants"]
    assert loops["skipped"] == [], loops["skipped"]
    assert [r["loop_variant"] for r in loops["rows"]] == ["rolled", "unrolled", "command_buffer"]
    for row in loops["rows"]:
        assert row["step_s"] > 0 and row["compile_s"] > 0 and 0 < row["floor_s"] < row["step_s"]
    assert "WHILE" in loops["rows"][2]["xla_flags"]
    speed = report["speed"]
    assert not speed["skipped"], speed["skipped"]
    assert [r["config"] for r in speed["fig2"]] == [
        "cnn",
        "cnmf_1x1:approximate",
        "cnmf_1x1:unrolled",
    ]
    if report["smoke"]:
        # one layer case and one model (the device run: all six and all four)
        assert sorted(report["parity"]["rows"]) == ["layer/s75_i32_3x3_it20", "model/cnmf_1x1"]
        layer = report["parity"]["rows"]["layer/s75_i32_3x3_it20"]
        assert 1e-5 < layer["bfloat16_h_scaled_error"] < 2e-2  # mixed precision really rounds
        assert {(r["seeds"], r["seed_loop"]) for r in speed["rows"]} == {(2, "vmap"), (2, "map")}
    runs = report["epoch"]["runs"]
    assert set(runs) == {"float32", "bfloat16"} and runs["bfloat16"]["wall_s"] > 0
    assert "bfloat16_minus_float32_accuracy" in report["epoch"]


def main(argv=None) -> int:
    (path,) = sys.argv[1:] if argv is None else argv
    check(json.loads(pathlib.Path(path).read_text()))
    print(f"{path}: every section present, parity passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
