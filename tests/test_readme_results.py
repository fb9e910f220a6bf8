"""The README's results table is benchmarks/report.py's output, and report.py reads the figures
from benchmarks/results/*.json: no figure in the README is typed by hand.

When a benchmark is rerun, its JSON changes and this test fails until
`python benchmarks/report.py --write` has put the new table into README.md.
"""
import json
import os

import pytest

from test_bench_helpers import RESULTS, ROOT, load_bench


@pytest.fixture(scope="module")
def report():
    return load_bench("report")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_readme_results_table_is_report_output(report):
    readme = read(os.path.join(ROOT, "README.md"))
    assert report.readme_table(readme) == report.table(), \
        "README.md's results table is not benchmarks/report.py's output: run `python benchmarks/report.py --write`"


def test_table_sits_in_the_results_section(report):
    readme = read(os.path.join(ROOT, "README.md"))
    section = readme[readme.index("\n## Results"):]
    section = section[:section.index("\n## ", 1)]
    assert report.BEGIN in section and report.END in section


def test_row_kernel_figure_is_the_json_range(report):
    """An oracle outside report.py: the min-max of the four row kernels' ratios in kernels.json."""
    with open(os.path.join(RESULTS, "kernels.json")) as f:
        rows = json.load(f)["rows"]
    ratios = [r["ratio"] for r in rows if r["name"].split()[0] in ("layer_norm", "softmax", "cross_entropy", "adamw")]
    assert len(ratios) == 8
    line = next(li for li in report.table().splitlines() if li.startswith("| layer_norm"))
    assert f"{min(ratios):.1f}–{max(ratios):.1f}x" in line


def test_every_row_says_where_it_was_measured(report):
    lines = report.table().splitlines()[2:]
    machines = [li.split(" | ")[3] for li in lines]
    assert all(m.strip() for m in machines)
    sgemm = [li for li in lines if li.startswith("| sgemm")]
    assert len(sgemm) == 2 and any("Intel" in li for li in sgemm) and any("AMD" in li for li in sgemm)


def test_write_replaces_only_the_table_and_check_agrees(report, tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# t\n\n## Results\n\nintro\n\n", "\n\nafter the table\n\n## Layout\n"
    readme.write_text(before + report.BEGIN + "\n| old | table |\n" + report.END + after, encoding="utf-8")
    assert report.main(["--check", "--readme", str(readme)]) == 1
    assert report.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text == before + report.BEGIN + "\n\n" + report.table() + "\n\n" + report.END + after
    assert report.main(["--write", "--readme", str(readme)]) == 0          # idempotent
    assert readme.read_text(encoding="utf-8") == text
    assert report.main(["--check", "--readme", str(readme)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]            # no temporary left behind


def test_missing_markers_are_an_error(report, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n", encoding="utf-8")
    assert report.main(["--write", "--readme", str(readme)]) == 2
    assert "markers" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# no table here\n"


def copy_results(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    for name in os.listdir(RESULTS):
        if name.endswith(".json"):
            (out / name).write_text(read(os.path.join(RESULTS, name)), encoding="utf-8")
    return out


def test_quick_results_are_refused(report, tmp_path):
    results = copy_results(tmp_path)
    data = json.loads((results / "ops.json").read_text())
    data["quick"] = True
    (results / "ops.json").write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="--quick"):
        report.table(str(results))


def test_demo_json_follows_its_schema(report, tmp_path):
    report.check_demo(json.loads(read(os.path.join(RESULTS, "demo.json"))))
    results = copy_results(tmp_path)
    data = json.loads((results / "demo.json").read_text())
    del data["final_val_bits_per_byte"]
    (results / "demo.json").write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="final_val_bits_per_byte"):
        report.table(str(results))


def test_training_figures_from_two_builds_are_refused(report, tmp_path):
    results = copy_results(tmp_path)
    data = json.loads((results / "train.json").read_text())
    data["rows"][0]["libraries"] = ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    (results / "train.json").write_text(json.dumps(data))
    with pytest.raises(report.ReportError, match="changed during"):
        report.table(str(results))
