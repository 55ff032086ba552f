"""show profile, --history lines, the Prometheus exposition, the HTML report
and monitor's columns, from known stat values."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtpctl.grammar import GrammarError, parse
from smtpctl.monitor import columns
from smtpctl.report import Chart, rate, render, step_values, svg_chart
from smtpd.stat.kinds import Histogram, StatKind
from smtpd.stat.prometheus import exposition
from smtpd.stat.views import (
    history_lines,
    parse_duration,
    parse_history_line,
    profile_lines,
    profile_rows,
)

T0 = 1_800_000_000


def hist(*ns: int) -> Histogram:
    h = Histogram()
    for v in ns:
        h.observe(v)
    return h


def sample_raw() -> dict[str, tuple[StatKind, int | Histogram]]:
    return {
        "profiling.imsg.queue.SMTP_MESSAGE_COMMIT": (StatKind.HISTOGRAM, hist(400_000, 600_000)),
        "profiling.imsg.smtp.QUEUE_MESSAGE_FD": (StatKind.HISTOGRAM, hist(4_000, 6_000, 5_000)),
        "profiling.imsg.parent.QUEUE_DELIVERY_START": (StatKind.HISTOGRAM, hist(3_000_000)),
        "queue.delivery.latency": (StatKind.HISTOGRAM, hist(20_000_000)),
        "smtp.session": (StatKind.COUNTER, 2),
        "scheduler.ramqueue.hold-overflow": (StatKind.COUNTER, 0),
        "imsg.queue.smtp.frames_in": (StatKind.COUNTER, 17),
        "control.started": (StatKind.TIMESTAMP, T0),
        "some.wait": (StatKind.DURATION, 1_500_000_000),
    }


def test_profile_sorted_by_total_time() -> None:
    rows = profile_rows(sample_raw())
    assert [(r.proc, r.msg) for r in rows] == [
        ("parent", "QUEUE_DELIVERY_START"), ("queue", "SMTP_MESSAGE_COMMIT"),
        ("smtp", "QUEUE_MESSAGE_FD")]
    assert rows[1].count == 2 and rows[1].mean_ns == 500_000 and rows[1].max_ns == 600_000
    lines = profile_lines(rows)
    assert lines[0].split()[:4] == ["process", "imsg", "count", "total"]
    fields = lines[2].split()
    assert fields[:4] == ["queue", "SMTP_MESSAGE_COMMIT", "2", "1.0"]
    assert fields[-1] == "600.0"  # max in µs
    assert "no profiling data" in profile_lines([])[0]


def test_durations_and_history_lines() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "10m", "2h", "7d", "1w")] == [
        90, 30, 600, 7200, 7 * 86400, 7 * 86400]
    for bad in ("", "0", "5x", "-1m", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    lines = history_lines([(T0, 3), (T0 + 61, 7)])
    assert lines == ["2027-01-15T08:00:00Z 3", "2027-01-15T08:01:01Z 7"]
    assert [parse_history_line(x) for x in lines] == [(T0, 3), (T0 + 61, 7)]


def test_grammar() -> None:
    assert parse(["show", "profile"]).name == "show_profile"
    cmd = parse(["show", "stats", "--history", "smtp.session", "--since", "10m"])
    assert (cmd.name, cmd.args, cmd.mutates) == ("show_stats_history",
                                                 ("smtp.session", "10m"), False)
    assert parse(["show", "stats", "--history", "a.b"]).args == ("a.b",)
    assert parse(["report", "--since", "2h"]).args == ("2h",)
    for bad in (["show", "stats", "--history"], ["show", "stats", "--history", "a b"],
                ["show", "stats", "--history", "k", "--since", "soon"], ["report", "2h"]):
        with pytest.raises(GrammarError):
            parse(bad)


def test_prometheus_exposition_parses() -> None:
    text = exposition(sample_raw(), 42).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    handler = fams["smtpd_imsg_handler_seconds"]
    assert handler.type == "histogram"
    count = {tuple(sorted(s.labels.items())): s.value for s in handler.samples
             if s.name.endswith("_count")}
    assert count[(("proc", "queue"), ("type", "SMTP_MESSAGE_COMMIT"))] == 2
    infs = [s.value for s in handler.samples if s.labels.get("le") == "+Inf"]
    assert sorted(infs) == [1, 2, 3]
    assert fams["smtpd_smtp_session"].samples[0].value == 2
    assert fams["smtpd_scheduler_ramqueue_hold_overflow"].samples[0].value == 0
    assert fams["smtpd_uptime_seconds"].samples[0].value == 42
    assert fams["smtpd_some_wait_seconds"].samples[0].value == 1.5
    frames = fams["smtpd_imsg_frames_in"].samples[0]
    assert frames.labels == {"proc": "queue", "peer": "smtp"} and frames.value == 17
    assert fams["smtpd_queue_delivery_latency_seconds"].type == "histogram"


def test_rates_from_step_series() -> None:
    points = [(T0, 0), (T0 + 10, 50), (T0 + 20, 50), (T0 + 30, 5)]  # a restart at +30
    assert step_values(points, [T0 - 1, T0 + 5, T0 + 10, T0 + 35]) == [0, 0, 50, 5]
    series = rate(points, T0, T0 + 40)
    assert max(v for _, v in series) == 50.0  # 50 in one 1 s step
    assert sum(v for _, v in series) == 55.0  # the restart's 5 counted, no negative
    assert min(v for _, v in series) == 0.0


def test_report_svg_has_the_real_points() -> None:
    """A fake daemon with 30 accepted messages over 60 s: the HTML carries an
    SVG polyline per series whose highest point is the real peak rate."""
    now = T0 + 120
    hist_points = {
        "smtp.message": ["2027-01-15T08:00:00Z 0", "2027-01-15T08:00:30Z 10",
                         "2027-01-15T08:01:00Z 30"],
        "profiling.imsg.queue.SMTP_MESSAGE_COMMIT.total_ns": [
            "2027-01-15T08:00:00Z 0", "2027-01-15T08:01:00Z 2000000"],
        "profiling.imsg.smtp.OLD_ONE.total_ns": [
            "2027-01-15T08:00:00Z 0", "2027-01-15T08:00:10Z 9000000"],
        "profiling.imsg.lookup.IDLE.total_ns": ["2027-01-15T08:00:00Z 5"],
    }

    def fetch(words: list[str]) -> tuple[int, list[str]]:
        if words == ["show", "profile"]:
            return 0, profile_lines(profile_rows(sample_raw()))
        if words == ["show", "stats"]:
            return 0, ["profiling.imsg.queue.SMTP_MESSAGE_COMMIT.total_ns=2000000",
                       "smtp.message=30"]
        if words == ["show", "stats", "--history-keys"]:
            # a handler from before a restart (history only) and one idle in the span
            return 0, ["profiling.imsg.queue.SMTP_MESSAGE_COMMIT.total_ns",
                       "profiling.imsg.smtp.OLD_ONE.total_ns", "smtp.message",
                       "profiling.imsg.lookup.IDLE.total_ns"]
        if words[:3] == ["show", "stats", "--history"]:
            lines = hist_points.get(words[3])
            return (0, lines) if lines else (1, [])
        raise AssertionError(words)

    page = render(fetch, "2m", 120, now)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in \
        page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "SMTP_MESSAGE_COMMIT" in page
    svgs = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(svgs) == 2
    ns = "{http://www.w3.org/2000/svg}"
    tput = ET.fromstring(svgs[0])
    lines = {p.get("data-series"): p.get("points", "") for p in tput.iter(ns + "polyline")}
    accepted = [tuple(map(float, xy.split(","))) for xy in lines["accepted"].split()]
    assert len(accepted) == 120
    # The history says +10 at 08:00:30 and +20 at 08:01:00 (a value holds
    # between lines): two one-second steps carry mail.  y = PAD + h * (1 - v / ymax)
    # with h = 124: the peak (20/s) on the top line, 10/s half-way, the rest on 0.
    ys = sorted(y for _, y in accepted)
    assert ys[0] == 48.0 and ys[1] == 110.0 and set(ys[2:]) == {172.0}
    assert accepted[29][1] == 110.0 and accepted[59][1] == 48.0  # at +30 s and +60 s
    assert ">20 " not in svgs[0] and ">20<" in svgs[0]  # the y axis says 20 (msg/s)
    busy = ET.fromstring(svgs[1])
    # ranked by handler time spent in the span; a handler idle in it is left out
    assert [p.get("data-series") for p in busy.iter(ns + "polyline")] == [
        "smtp.OLD_ONE", "queue.SMTP_MESSAGE_COMMIT"]


def test_svg_chart_empty_is_valid() -> None:
    svg = svg_chart(Chart("nothing", "x/s", ()), T0, T0 + 60)
    ET.fromstring(svg)


def test_monitor_columns() -> None:
    prev = {"smtp.session": 1, "smtp.session.total": 10, "scheduler.envelope.total": 5,
            "scheduler.envelope": 2, "scheduler.delivery.ok": 3, "queue.bounce": 0}
    cur = {"smtp.session": 2, "smtp.session.total": 14, "scheduler.envelope.total": 9,
           "scheduler.envelope": 1, "scheduler.envelope.inflight": 1,
           "scheduler.delivery.ok": 8, "queue.bounce": 1}
    # conn 4, curr went 1 -> 2 so 3 left; 4 enqueued, held 2 -> 2 so 4 dequeued
    assert columns(prev, cur) == [2, 4, 3, 2, 4, 4, 5, 0, 0, 0, 0, 0, 1]
