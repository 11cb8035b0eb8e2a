"""Unit tests of agent.logview, the backend of `pg-sfs-agent logs`."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.logview import (
    LogRecord,
    column_widths,
    filter_records,
    format_record,
    inherit_levels,
    merge,
    parse_line,
    parse_timestamp,
    run,
)

P0 = "[pod/postgresql-sfs-0/postgresql] "
P1 = "[pod/postgresql-sfs-1/postgresql] "
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def agent_line(prefix: str, ts: str, event: str, level: str = "info", **extra: object) -> str:
    pod = prefix[len("[pod/"):].split("/", maxsplit=1)[0] if prefix else "postgresql-sfs-9"
    ordinal = int(pod.rsplit("-", 1)[1])
    obj = {"timestamp": ts, "level": level, "event": event, "pod": pod, "ordinal": ordinal,
           "role": "primary" if ordinal == 0 else "replica", **extra}
    return prefix + json.dumps(obj)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def parsed(line: str) -> LogRecord:
    rec = parse_line(line)
    assert rec is not None
    return rec


def run_text(text: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(list(argv), io.StringIO(text), out)
    return code, out.getvalue()


# --- parsing ------------------------------------------------------------------------------------


def test_agent_json_line_with_prefix() -> None:
    line = agent_line(P1, "2026-11-23T21:30:00.123456Z", "clone.progress",
                      done_kb=10, note="half way")
    rec = parsed(line + "\n")
    assert rec.structured
    assert rec.timestamp == utc(2026, 11, 23, 21, 30, 0, 123456)
    assert (rec.pod, rec.level, rec.event) == ("postgresql-sfs-1", "info", "clone.progress")
    assert rec.fields == {"pod": "postgresql-sfs-1", "ordinal": 1, "role": "replica",
                          "done_kb": 10, "note": "half way"}
    assert rec.raw == line


def test_pod_from_json_without_prefix_and_prefix_wins() -> None:
    rec = parsed(agent_line("", "2026-11-23T21:30:00Z", "x"))
    assert rec.pod == "postgresql-sfs-9"
    rec = parsed(P0 + json.dumps({"event": "x", "pod": "someone-else"}))
    assert rec.pod == "postgresql-sfs-0"


def test_postgres_line() -> None:
    rec = parsed(P0 + "2026-11-23 21:30:01.234 UTC [42] LOG:  database system is ready")
    assert not rec.structured
    assert rec.timestamp == utc(2026, 11, 23, 21, 30, 1, 234000)
    assert (rec.pod, rec.level, rec.event) == ("postgresql-sfs-0", "info", "postgres")
    assert rec.fields == {"msg": "[42] LOG:  database system is ready", "tag": "LOG"}


@pytest.mark.parametrize(("tag", "level"), [
    ("DEBUG1", "debug"), ("LOG", "info"), ("NOTICE", "info"), ("WARNING", "warning"),
    ("ERROR", "error"), ("FATAL", "critical"), ("PANIC", "critical"),
])
def test_postgres_severity_tags(tag: str, level: str) -> None:
    rec = parsed(f"{P0}2026-11-23 21:30:01.234 UTC [42] {tag}:  something")
    assert rec.level == level
    assert rec.fields["tag"] == tag


def test_postgres_zones() -> None:
    rec = parsed("2026-11-23 23:30:01.234 +02 [7] LOG:  x")
    assert rec.timestamp == utc(2026, 11, 23, 21, 30, 1, 234000)
    # An abbreviation we cannot resolve: still a postgres line, just untimed.
    rec = parsed("2026-11-23 22:30:01.234 CET [7] LOG:  x")
    assert rec.event == "postgres" and rec.timestamp is None


def test_text_lines() -> None:
    rec = parsed(P1 + "pg_basebackup: waiting for checkpoint")
    assert (rec.event, rec.level, rec.timestamp) == ("text", "", None)
    assert rec.pod == "postgresql-sfs-1"
    assert rec.fields == {"msg": "pg_basebackup: waiting for checkpoint"}
    # A tag at the start of an unprefixed line is postgres talking (e.g. during startup).
    rec = parsed("FATAL:  the database system is starting up")
    assert (rec.event, rec.level) == ("postgres", "critical")
    # A tag in the middle of ordinary text is not.
    assert parsed("see the LOG:  file").event == "text"


@pytest.mark.parametrize("line", ["", "\n", "   \r\n", P0, P0 + "  \n"])
def test_blank_lines(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("body", [
    '[1, 2]', '"just a string"', '42', 'null', '{"broken": ', '{not json}', "{" * 100_000,
    "[" * 100_000, '{"a":' * 100_000,
])
def test_json_that_is_not_an_object_is_text(body: str) -> None:
    rec = parsed(P0 + body)
    assert rec.event == "text" and not rec.structured
    assert rec.fields["msg"] == body


def test_wrong_types_in_json() -> None:
    rec = parsed(json.dumps({"timestamp": [1], "level": 3, "event": {"a": 1}}))
    assert (rec.timestamp, rec.level, rec.event) == (None, "", '{"a":1}')
    rec = parsed(json.dumps({"timestamp": True, "level": "WARN", "event": None}))
    assert (rec.timestamp, rec.level, rec.event) == (None, "warning", "")
    rec = parsed(json.dumps({"timestamp": 0, "event": "epoch"}))
    assert rec.timestamp == utc(1970, 1, 1)


def test_kubelet_timestamp_is_a_fallback() -> None:
    rec = parsed(P0 + "2026-11-23T21:30:09.123456789Z pg_ctl: server starting")
    assert rec.timestamp == utc(2026, 11, 23, 21, 30, 9, 123456)
    assert rec.fields["msg"] == "pg_ctl: server starting"
    line = P0 + "2026-11-23T21:30:09Z " + json.dumps({"timestamp": "2026-11-23T21:30:08Z"})
    assert parsed(line).timestamp == utc(2026, 11, 23, 21, 30, 8)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-23T21:30:00Z", utc(2026, 11, 23, 21, 30)),
    ("2026-11-23T21:30:00.5z", utc(2026, 11, 23, 21, 30, 0, 500000)),
    ("2026-11-23T23:30:00+02:00", utc(2026, 11, 23, 21, 30)),
    ("2026-11-23T21:30:00.123456789+00:00", utc(2026, 11, 23, 21, 30, 0, 123456)),
    ("2026-11-23 21:30:00", utc(2026, 11, 23, 21, 30)),
    ("2026-13-23T21:30:00Z", None),
    ("2026-02-30T21:30:00Z", None),
    ("2026-11-23T21:30:00+99:00", None),
    ("0001-01-01T00:00:00+05:00", None),
    ("yesterday", None),
    ("", None),
])
def test_parse_timestamp(text: str, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("value", [None, True, float("nan"), float("inf"), 10**30, [], {}])
def test_parse_timestamp_wrong_types(value: object) -> None:
    assert parse_timestamp(value) is None


# --- merging ------------------------------------------------------------------------------------


def test_merge_orders_across_pods() -> None:
    # kubectl prints one pod's log after the other.
    lines = [
        agent_line(P0, "2026-11-23T21:30:00Z", "a0"),
        agent_line(P0, "2026-11-23T21:30:02Z", "c0"),
        agent_line(P1, "2026-11-23T21:30:01Z", "b1"),
        agent_line(P1, "2026-11-23T21:30:03Z", "d1"),
    ]
    assert [r.event for r in merge(parsed(x) for x in lines)] == ["a0", "b1", "c0", "d1"]


def test_merge_is_stable_and_keeps_untimed_lines_with_their_predecessor() -> None:
    lines = [
        P0 + "untimed first line of pod 0",
        agent_line(P0, "2026-11-23T21:30:00Z", "a0"),
        agent_line(P0, "2026-11-23T21:30:02Z", "c0"),
        P0 + "after c0",
        P0 + "after c0, again",
        agent_line(P1, "2026-11-23T21:30:01Z", "b1"),
        P1 + "after b1",
        agent_line(P1, "2026-11-23T21:30:02Z", "c1"),
    ]
    got = [r.event if r.structured else r.fields["msg"] for r in merge(parsed(x) for x in lines)]
    assert got == [
        "untimed first line of pod 0", "a0", "b1", "after b1",
        "c0", "after c0", "after c0, again", "c1",
    ]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.none() | st.integers(min_value=0, max_value=50))))
def test_merge_properties(spec: list[tuple[str, int | None]]) -> None:
    base = utc(2026, 1, 1)
    records = [
        LogRecord(timestamp=None if t is None else base + timedelta(seconds=t), pod=pod,
                  level="info", event=str(i))
        for i, (pod, t) in enumerate(spec)
    ]
    out = merge(records)
    assert sorted(r.event for r in out) == sorted(r.event for r in records)
    times = [r.timestamp for r in out if r.timestamp is not None]
    assert times == sorted(times)
    # Within one pod, lines keep their relative order when the pod's clock is monotonic.
    for pod in "abc":
        mine = [r for r in records if r.pod == pod]
        stamps = [r.timestamp for r in mine if r.timestamp is not None]
        if stamps == sorted(stamps):
            assert [r.event for r in out if r.pod == pod] == [r.event for r in mine]


# --- filtering ----------------------------------------------------------------------------------

SAMPLE = "\n".join([
    agent_line(P0, "2026-11-23T21:30:00.123456Z", "bootstrap.start", pgdata="/pgdata"),
    P0 + "2026-11-23 21:30:01.234 UTC [42] LOG:  database system is ready to accept connections",
    P0 + '2026-11-23 21:30:05.000 UTC [57] ERROR:  relation "x" does not exist',
    P0 + "2026-11-23 21:30:05.000 UTC [57] STATEMENT:  select * from x;",
    agent_line(P1, "2026-11-23T21:30:02.5Z", "peer.wait", level="warning",
               peer="postgresql-sfs-0", reason="no record yet"),
    P1 + "pg_basebackup: waiting for checkpoint",
    agent_line(P1, "2026-11-23T21:30:03Z", "clone.progress", done_kb=1024),
    agent_line("[pod/postgresql-sfs-2/postgresql] ", "2026-11-23T21:30:04Z", "clone.done"),
]) + "\n"


def sample() -> list[LogRecord]:
    records = (parse_line(x) for x in SAMPLE.splitlines())
    return merge(inherit_levels(r for r in records if r is not None))


def events(records: list[LogRecord]) -> list[str]:
    return [r.event for r in records]


def test_filter_pods() -> None:
    recs = sample()
    assert {r.pod for r in filter_records(recs, pods=["postgresql-sfs-1"])} == {"postgresql-sfs-1"}
    assert {r.pod for r in filter_records(recs, pods=["2", "0"])} == {
        "postgresql-sfs-0", "postgresql-sfs-2"}
    assert {r.pod for r in filter_records(recs, pods=["*-[12]"])} == {
        "postgresql-sfs-1", "postgresql-sfs-2"}


def test_filter_minimum_level_keeps_secondary_lines() -> None:
    recs = sample()
    assert events(filter_records(recs, levels="warning")) == ["peer.wait", "postgres", "postgres"]
    errors = filter_records(recs, levels="error")
    assert [r.fields["tag"] for r in errors] == ["ERROR", "STATEMENT"]
    # Untagged text counts as info.
    assert "text" in events(filter_records(recs, levels="info"))
    assert "text" not in events(filter_records(recs, levels="warning"))


def test_filter_events_and_postgres() -> None:
    recs = sample()
    assert events(filter_records(recs, events=["clone.*"])) == ["clone.progress", "clone.done"]
    assert events(filter_records(recs, events=["peer.wait", "boot*"])) == [
        "bootstrap.start", "peer.wait"]
    agent_only = filter_records(recs, postgres=False)
    assert all(r.structured for r in agent_only) and len(agent_only) == 4


# --- formatting ---------------------------------------------------------------------------------


def test_format_aligns_columns() -> None:
    recs = sample()
    widths = column_widths(recs)
    lines = [format_record(r, widths) for r in recs]
    # Every line starts with the time column, then pod, level, event columns aligned.
    assert lines[0].startswith("21:30:00.123  postgresql-sfs-0(primary)  info ")
    pod_w, level_w = widths["pod"], widths["level"]
    level_col = 12 + 2 + pod_w + 2
    event_col = level_col + level_w + 2
    for line, rec in zip(lines, recs):
        assert line[level_col:].startswith((rec.level or "-") + " "), line
        assert line[event_col:].startswith(rec.event), line
    untimed = next(x for x in lines if "pg_basebackup" in x)
    assert untimed.startswith("--:--:--.---  postgresql-sfs-1 ")


def test_format_fields() -> None:
    rec = parsed(agent_line(P1, "2026-11-23T21:30:02.5Z", "peer.wait", level="warning",
                            peer="postgresql-sfs-0", reason="no record yet", n=3,
                            ok=True, extra={"a": [1, 2]}, empty="", q='say "hi"'))
    line = format_record(rec, {})
    assert line == (
        "21:30:02.500  postgresql-sfs-1(replica)  warning  peer.wait  "
        'peer=postgresql-sfs-0 reason="no record yet" n=3 ok=true extra={"a":[1,2]} '
        'empty="" q="say \\"hi\\""'
    )
    # pod, ordinal, role, timestamp, level and event are shown once, in their columns.
    for key in ("ordinal=", "role=", "pod=", "timestamp=", "level=", "event="):
        assert key not in line


def test_format_postgres_line_and_control_characters() -> None:
    rec = parsed(P0 + "2026-11-23 21:30:01.234 UTC [42] LOG:  ready\x1b[31m red\x07")
    line = format_record(rec, column_widths([rec]))
    assert line == "21:30:01.234  postgresql-sfs-0  info  postgres  [42] LOG:  ready\\x1b[31m red\\x07"
    rec = parsed(json.dumps({"event": "ev\nil", "k\x1b": "v\r\n"}))
    line = format_record(rec, column_widths([rec]))
    assert not CONTROL.search(line)


# --- run ----------------------------------------------------------------------------------------


def test_run_end_to_end() -> None:
    code, out = run_text(SAMPLE)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 8
    assert [x.split()[0] for x in lines] == [
        "21:30:00.123", "21:30:01.234", "21:30:02.500", "--:--:--.---",
        "21:30:03.000", "21:30:04.000", "21:30:05.000", "21:30:05.000",
    ]
    assert 'reason="no record yet"' in lines[2]


def test_run_options() -> None:
    _, out = run_text(SAMPLE, "--pod", "1,2", "--no-postgres")
    assert [x.split()[3] for x in out.splitlines()] == [
        "peer.wait", "clone.progress", "clone.done"]
    _, out = run_text(SAMPLE, "--level", "error")
    assert len(out.splitlines()) == 2
    _, out = run_text(SAMPLE, "--event", "clone.*", "--event", "peer.*")
    assert len(out.splitlines()) == 3


def test_run_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_text("", "--help")
    assert code == 0 and "--no-postgres" in out
    code, out = run_text("", "--level", "loud")
    assert code == 2 and out == ""
    assert "invalid choice" in capsys.readouterr().err


def test_run_binary_junk_and_huge_lines() -> None:
    junk = bytes(b for b in range(256) if b != 0x0A) * 50 + b"\n\xff\xfe{\"event\": \"x\xff\"}\n" + b"y" * 2_000_000
    stdin = io.TextIOWrapper(io.BytesIO(junk), encoding="utf-8")
    out = io.StringIO()
    assert run([], stdin, out) == 0
    assert len(out.getvalue().splitlines()) == 3


def test_run_survives_unencodable_output() -> None:
    # A JSON escape can produce a lone surrogate; an ASCII terminal cannot show "é".
    text = json.dumps({"event": "x", "bad": "\ud800", "accent": "é é"}) + "\n"
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    assert run([], io.StringIO(text), out) == 0
    out.flush()
    assert b"\\ud800" in raw.getvalue() and b"\\xe9" in raw.getvalue()


# --- never crash --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
good_prefixes = st.sampled_from(["", P0, P1, "[pod/x/y]", "[pod/a/b] 2026-11-23T21:30:00Z "])
prefixes = good_prefixes | st.sampled_from(["[pod//] ", "[pod/a b/c] ", "[pod/x"])


@settings(max_examples=300)
@given(prefixes, st.text())
def test_arbitrary_text_never_raises(prefix: str, text: str) -> None:
    for line in (prefix + text, text):
        rec = parse_line(line)
        if rec is not None:
            out = format_record(rec, column_widths([rec]))
            assert not CONTROL.search(out)


@settings(max_examples=300)
@given(good_prefixes, st.dictionaries(
    st.sampled_from(["timestamp", "level", "event", "pod", "ordinal", "role"]) | st.text(),
    json_values, max_size=8,
))
def test_arbitrary_json_objects_never_raise(prefix: str, obj: dict[str, object]) -> None:
    rec = parsed(prefix + json.dumps(obj))
    assert rec.structured
    out = format_record(rec, column_widths([rec]))
    assert not CONTROL.search(out)


@settings(max_examples=100)
@given(st.lists(prefixes.flatmap(
    lambda p: st.one_of(st.text(), json_values.map(json.dumps),
                        st.dictionaries(st.text(), json_values).map(json.dumps)).map(
        lambda body: p + body)), max_size=20),
    st.lists(st.sampled_from(["--pod", "0", "--level", "info", "--event", "*", "--no-postgres",
                              "--bogus"]), max_size=4))
def test_run_never_raises(lines: list[str], argv: list[str]) -> None:
    code, _ = run_text("\n".join(lines), *argv)
    assert code in (0, 2)


@settings(max_examples=100)
@given(st.binary())
def test_run_never_raises_on_bytes(data: bytes) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    assert run([], stdin, io.StringIO()) == 0
