"""`cotrain report`: report.md and PNGs from the recorded run directory (tests/data/recorded-run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.figure import Figure

from cotrain import cli
from cotrain.records import read_csv_rows
from cotrain.report import (
    cdf_curves,
    headline,
    knob_panels,
    knobs_figure,
    latency_figure,
    load_figure,
    platform_figure,
    platform_note,
    run_labels,
    training_figure,
    write_report,
)
from cotrain.runread import read_run

RECORDED = Path(__file__).parent / "data" / "recorded-run"
SUMMARY = json.loads((RECORDED / "summary.json").read_text(encoding="utf-8"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def copy_run(tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(RECORDED, run)
    return run


def test_report_writes_markdown_and_at_least_three_pngs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"

    code = cli.main(["report", str(RECORDED), "--out", str(out)])

    assert code == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    report = (out / "report.md").read_text(encoding="utf-8")
    for png in pngs:
        assert f"]({png.name})" in report  # every plot is in the report
    inference = SUMMARY["inference"]
    assert f"| {inference['slo_attainment']:.1%} |" in report
    assert f"| {inference['latency_ms']['p99']:.1f} |" in report
    assert f"| {SUMMARY['training']['cl']['samples_per_s']:.1f} |" in report
    assert "initial knobs" not in report  # no knob changed: said in words, not as an empty table
    assert "The knobs stayed as configured." in report
    assert "written:" in capsys.readouterr().out


def test_two_runs_get_a_comparison_table(tmp_path: Path) -> None:
    second = copy_run(tmp_path, "rerun")
    (second / "summary.json").unlink()  # its figures must then be recomputed from the records

    written = write_report([RECORDED, second], tmp_path / "out", show_progress=False)

    report = written[0].read_text(encoding="utf-8")
    section = report.split("## Comparison", 1)[1].split("\n## ", 1)[0]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| recorded-run") or line.startswith("| rerun")
    ]
    assert len(rows) == 2
    assert "summary.json" in rows[0] and "recomputed" in rows[1]
    p99 = f"{SUMMARY['inference']['latency_ms']['p99']:.1f}"
    assert all(f"| {p99} |" in row for row in rows)  # the recomputation agrees with the summary
    assert (tmp_path / "out" / "recorded-run-latency.png").exists()
    assert (tmp_path / "out" / "rerun-latency.png").exists()
    assert (tmp_path / "out" / "latency-cdf.png").exists()


def test_headline_recomputed_matches_the_summary(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "run")
    (run / "summary.json").unlink()

    head = headline("run", read_run(run))

    assert head.source.startswith("recomputed")
    assert head.attainment == pytest.approx(SUMMARY["inference"]["slo_attainment"], abs=1e-6)
    assert head.p99_ms == pytest.approx(SUMMARY["inference"]["latency_ms"]["p99"], abs=1e-3)
    assert head.samples_per_s["cl"] == pytest.approx(SUMMARY["training"]["cl"]["samples_per_s"], abs=0.01)


def test_a_path_that_is_not_a_run_directory_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"

    assert cli.main(["report", str(RECORDED), str(empty), "--out", str(out)]) == 2
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2

    err = capsys.readouterr().err
    assert f"{empty} is not a cotrain run directory" in err
    assert not out.exists()  # nothing written when any input is bad


def test_a_crashed_run_with_torn_lines_is_still_reported(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "crashed")
    (run / "summary.json").unlink()
    events = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    (run / "events.jsonl").write_text(
        "\n".join(e for e in events if '"run_stopped"' not in e) + "\n" + '{"event":"wor', encoding="utf-8"
    )
    with (run / "requests.csv").open("a", encoding="utf-8") as f:
        f.write("999,11316.1,11316.12,11316.2,80.0,1,resnet18/fp32,0,serv")

    written = write_report([run], tmp_path / "out", show_progress=False)

    report = written[0].read_text(encoding="utf-8")
    assert "| running |" in report  # no run_stopped: the report says so
    assert len([p for p in written if p.suffix == ".png"]) >= 3


def test_power_and_temperature_are_reported_where_the_telemetry_has_them(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "orin")
    lines = (run / "telemetry.csv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0]]
    for i, line in enumerate(lines[1:]):
        fields = line.split(",")
        fields[1], fields[2], fields[4] = "jtop", "MAXN" if i < 4 else "30W", "55.0"
        fields[7], fields[8] = f"{20.0 + i:.3f}", "48.500"
        rows.append(",".join(fields))
    (run / "telemetry.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    records = read_run(run)

    note = platform_note(records)
    panels = {p.title: p.steps for p in knob_panels(records)}

    assert "power mean 23.5 W, max 27.0 W" in note and "temperature mean 48.5 °C" in note
    assert "GPU utilisation mean 55.0 %" in note
    assert [v for _, v in panels["power mode (from telemetry)"]] == ["MAXN", "30W"]
    written = write_report([run], tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "platform.png") in written


def test_the_host_says_what_it_could_not_measure() -> None:
    note = platform_note(read_run(RECORDED))
    assert "power not measured" in note and "psutil" in note


def test_knob_panels_show_batch_and_workers_always_and_other_knobs_when_they_change(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "gated")
    first = json.loads((run / "decisions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    later = json.loads(json.dumps(first))
    later.update(t_s=4.0, action={"training": {"cl": {"gate_policy": "yield"}}}, reason="gate on")
    later["knobs"]["training"]["cl"]["gate_policy"] = "yield"
    with (run / "decisions.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(later) + "\n")

    titles = [p.title for p in knob_panels(read_run(run))]

    assert titles[:2] == ["inference max batch size", "train:cl dataloader workers"]
    assert "train:cl interleaving gate" in titles
    assert "inference threads" not in titles  # constant, so no panel


def test_labels_are_unique_when_directories_share_a_name(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"
    assert run_labels([a, b]) == ["x-run", "y-run"]
    assert run_labels([RECORDED]) == ["recorded-run"]


def two_service_run(tmp_path: Path) -> Path:
    """The recorded run re-laid as two services: `fast` (priority 2, the recorded SLO of 200 ms)
    and `bulk` (priority 1, SLO 50 ms, and every fourth request shed)."""
    run = copy_run(tmp_path, "two")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    inference = config["workloads"].pop("inference")
    config["workloads"]["services"] = [
        {**inference, "name": "bulk", "priority": 1, "slo_ms": 50},
        {**inference, "name": "fast", "priority": 2},
    ]
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    lines = (run / "requests.csv").read_text(encoding="utf-8").splitlines()
    for name in ("fast", "bulk"):
        (run / "services" / name).mkdir(parents=True)
        rows = lines
        if name == "bulk":
            rows = [lines[0]]
            for i, line in enumerate(lines[1:]):
                f = line.split(",")
                rows.append(
                    ",".join([*f[:2], "", "", "", "", "", "", "shed", "queue full"]) if i % 4 == 3 else line
                )
        (run / "services" / name / "requests.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (run / "requests.csv").unlink()
    return run


def test_the_latency_cdf_has_a_curve_for_every_service(tmp_path: Path) -> None:
    run = two_service_run(tmp_path)
    served = [r for r in read_csv_rows(RECORDED / "requests.csv") if r["outcome"] == "served"]

    curves = cdf_curves([("two", read_run(run)), ("one", read_run(RECORDED))])

    assert [c.label for c in curves] == ["two: fast (SLO 200 ms)", "two: bulk (SLO 50 ms)", "one"]
    fast, bulk, one = curves
    assert fast.attainment == pytest.approx(SUMMARY["inference"]["slo_attainment"])
    within_50 = sum(1 for i, r in enumerate(served) if i % 4 != 3 and float(r["latency_ms"]) <= 50)
    assert bulk.attainment == pytest.approx(within_50 / len(served))
    assert bulk.fraction[-1] == pytest.approx(1 - len(served[3::4]) / len(served))  # shed: never served
    assert one.fraction[-1] == pytest.approx(1.0)
    written = write_report([run], tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "latency-cdf.png") in written


def test_the_load_plot_is_written_with_or_without_the_reported_queue(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "reported")
    lines = (run / "telemetry.csv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0] + ",queue_depth,arrival_rate_per_s"] + [
        f"{line},{i % 3},20.0" for i, line in enumerate(lines[1:])
    ]
    (run / "telemetry.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    records = read_run(run)
    assert [t.queue_depth for t in records.telemetry][:4] == [0, 1, 2, 0]
    assert all(t.arrival_rate_per_s == 20.0 for t in records.telemetry)
    assert all(t.queue_depth is None for t in read_run(RECORDED).telemetry)  # an older run's file
    for source in (run, RECORDED):
        out = tmp_path / f"out-{source.name}"
        written = write_report([source], out, show_progress=False)
        assert (out / "load.png") in written and (out / "load.png").read_bytes()[:8] == PNG_MAGIC
        assert "](load.png)" in written[0].read_text(encoding="utf-8")


# --- the figures, inspected as objects -----------------------------------------------------------------


def drawn(fig: Figure) -> Any:
    """The figure laid out on an Agg canvas (as savefig would), so extents are final."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def legend_labels(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [text.get_text() for legend in legends for text in legend.get_texts()]


def test_the_knobs_legend_is_below_the_panels_not_over_the_batch_size_line() -> None:
    fig = knobs_figure(read_run(RECORDED), "recorded-run")
    renderer = drawn(fig)

    assert all(ax.get_legend() is None for ax in fig.axes)  # none inside a panel
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert legend_labels(fig) == ["knob setting", "mean batch served, per 1 s"]


def series_colours(fig: Figure) -> list[str]:
    from matplotlib.colors import to_hex
    from matplotlib.patches import StepPatch

    colours = []
    for ax in fig.axes:
        colours += [to_hex(line.get_color()) for line in ax.get_lines()]
        colours += [to_hex(p.get_edgecolor()) for p in ax.patches if isinstance(p, StepPatch)]
    return colours


def test_every_series_of_the_load_plot_has_its_own_colour(tmp_path: Path) -> None:
    """The rebuilt queue was drawn in the grey of the arrivals above it."""
    run = copy_run(tmp_path, "busy")
    lines = (run / "telemetry.csv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0] + ",queue_depth,arrival_rate_per_s"] + [
        f"{line},{i % 3},20.0" for i, line in enumerate(lines[1:])
    ]
    (run / "telemetry.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    shed_every(run, 5)

    fig = load_figure(read_run(run), "busy")

    colours = series_colours(fig)
    assert len(colours) == 6  # arrived, served, lost; the reported rate; the queue rebuilt and reported
    assert len(set(colours)) == len(colours)
    assert len(legend_labels(fig)) == 6


def shed_every(run: Path, n: int) -> None:
    """Turn every `n`th request of the run's requests.csv into one shed on arrival (1: all)."""
    lines = (run / "requests.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        fields = dict(zip(header, line.split(","), strict=True))
        if i % n == n - 1:
            fields.update(start_s="", end_s="", latency_ms="", batch_size="", outcome="shed")
        out.append(",".join(fields[h] for h in header))
    (run / "requests.csv").write_text("\n".join(out) + "\n", encoding="utf-8")


def test_no_legend_entry_for_a_series_with_nothing_in_it(tmp_path: Path) -> None:
    """A run whose every request was shed: no p99 or mean-batch line has a single point, so
    neither may have a legend entry."""
    run = copy_run(tmp_path, "shed")
    shed_every(run, 1)
    records = read_run(run)
    lost = len(records.requests["inference"])

    assert legend_labels(latency_figure(records, "shed")) == [
        f"failed or shed ({lost}), at the top edge",
        "SLO 200 ms",
    ]
    assert legend_labels(knobs_figure(records, "shed")) == ["knob setting"]
    assert legend_labels(load_figure(records, "shed")) == ["arrived, per 1 s", "failed or shed, per 1 s"]
    recorded = read_run(RECORDED)
    assert legend_labels(latency_figure(recorded, "r")) == [
        "served within the SLO",
        "p99 per 1 s of arrivals",
        "SLO 200 ms",
    ]
    assert "model published" not in legend_labels(training_figure(recorded, "r"))
    assert legend_labels(platform_figure(recorded, "r")) == ["CPU"]  # the host measures no GPU
