"""`edgerun export`'s summary says what the issue's report asks for: bytes vs fp32, the codec's
encode / decode time, the precisions and the metric."""

from __future__ import annotations

from types import SimpleNamespace

from edgerun.report import export_summary

BUNDLE = SimpleNamespace(path="/b", model_id="m", hash="ab" * 32, native_ok=True, native_reason="")
REPORT = {"cut": "blocks.7", "cut_index": 23, "front_fraction": 0.414, "codec": "tsq",
          "bytes_per_request": 10440, "bytes_per_request_fp32": 62720, "encode_us": 39.63, "decode_us": 13.96,
          "front_precision": {"a": "fp32", "b": "int8"}, "back_precision": "fp32", "front_weight_bytes": 884672,
          "metric": "top1_agreement", "metric_whole_fp32": 1.0, "metric_split": 0.971, "n_eval": 138,
          "split_vs_whole_max_abs": 0.2}


def crossing_line(report: dict) -> str:
    (line,) = [ln for ln in export_summary(BUNDLE, report).splitlines() if ln.startswith("crossing")]
    return line


def test_coded_crossing_shows_ratio_and_codec_times():
    assert crossing_line(REPORT) == ("crossing 10440 bytes per sample (tsq; fp32: 62720, 6.01x fewer; "
                                     "encode 39.6 us, decode 14.0 us)")


def test_codec_times_are_left_out_when_not_measured():
    assert crossing_line({**REPORT, "encode_us": None, "decode_us": None}).endswith("6.01x fewer)")


def test_raw_crossing_has_no_ratio():
    raw = {**REPORT, "codec": "none", "bytes_per_request": 62720, "encode_us": None, "decode_us": None}
    assert crossing_line(raw) == "crossing 62720 bytes per sample (none; fp32: 62720)"


def test_mixed_precision_and_metric_are_printed():
    text = export_summary(BUNDLE, REPORT)
    assert "precision front mixed (fp32: 1 layers, int8: 1 layers), back fp32, front weights 884672 B" in text
    assert "split 0.9710 (n=138" in text


def test_a_quantized_back_half_prints_its_measured_error():
    text = export_summary(BUNDLE, {**REPORT, "back_precision": "fp16", "back_calib_rel_err": 0.00217})
    assert "back fp16 (rel. error 2.2e-03 vs fp32 on calibration data), front weights" in text


def test_a_split_losing_more_than_one_point_is_flagged():
    """The user asked for the precisions and codec, but sees what they cost: more than 1 pp
    (the planner's default accuracy budget) gets a warning line; 0.5 pp does not."""
    assert "warning" not in export_summary(BUNDLE, {**REPORT, "metric_split": 0.995})
    text = export_summary(BUNDLE, {**REPORT, "back_precision": "int8", "metric_split": 0.942})
    assert "warning  the split loses 5.80 pp of top1_agreement against the whole fp32 model" in text
    assert "warning" not in export_summary(BUNDLE, {**REPORT, "metric": "action_mae", "metric_whole_fp32": 0.0,
                                                    "metric_split": 0.3})  # an error, not a score


def test_exits_are_listed_and_a_request_for_more_than_fit_is_said():
    ex = {"points": ["layer1", "block1"], "asked": 2}
    (line,) = [ln for ln in export_summary(BUNDLE, {**REPORT, "exits": ex}).splitlines() if ln.startswith("exits")]
    assert line == "exits    2 at layer1, block1"
    (line,) = [ln for ln in export_summary(BUNDLE, {**REPORT, "exits": {**ex, "asked": 1000}}).splitlines()
               if ln.startswith("exits")]
    assert line.endswith("(asked for 1000: only 2 fit before the cut, each at most 90 % of the front's compute)")
    assert not [ln for ln in export_summary(BUNDLE, REPORT).splitlines() if ln.startswith("exits")]
