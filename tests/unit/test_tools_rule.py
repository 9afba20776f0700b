"""The tool selector's keep rule, its calibration, and the catalog / query files (numpy only).

The rule keeps the k_max best tools with score >= max(floor, best - margin); a query counts as
recalled only when *every* tool it needs is kept; calibration picks the rule that keeps the fewest
tools on average at the target recall.
"""

import json

import numpy as np
import pytest

from edgerun.errors import ConfigError
from edgerun.exporters import tools
from edgerun.exporters.tools_data import Query, load_catalog, load_queries
from edgerun.tools import Rule

# 3 queries x 4 tools. Query 0 needs tool 0 (ranked 1st), query 1 needs tools 1 and 2 (ranked
# 1st and 3rd), query 2 needs nothing and matches nothing well.
SCORES = np.array([[0.9, 0.1, 0.2, 0.3],
                   [0.1, 0.8, 0.5, 0.6],
                   [0.05, 0.04, 0.03, 0.02]])
NEEDED = [np.array([0]), np.array([1, 2]), np.array([], np.int64)]


def test_a_query_is_recalled_only_when_every_needed_tool_is_kept():
    two = tools.evaluate(SCORES, NEEDED, Rule(floor=-1.0, margin=1.0, k_max=2))
    three = tools.evaluate(SCORES, NEEDED, Rule(floor=-1.0, margin=1.0, k_max=3))
    assert two["recall"] == 0.5        # query 1's second tool is ranked 3rd
    assert three["recall"] == 1.0
    assert three["mean_kept"] == 3.0


def test_margin_and_floor_cut_the_kept_set():
    by_margin = tools.evaluate(SCORES, NEEDED, Rule(floor=-1.0, margin=0.35, k_max=4))
    # Over the queries that need tools: query 0 keeps 1 (0.9 only), query 1 keeps 0.8, 0.6, 0.5.
    assert by_margin["mean_kept"] == 2.0
    by_floor = tools.evaluate(SCORES, NEEDED, Rule(floor=0.1, margin=1.0, k_max=4))
    assert by_floor["no_tool_kept_none"] == 1.0   # nothing of query 2 reaches the floor
    assert by_floor["no_tool_mean_kept"] == 0.0


def test_calibration_keeps_the_fewest_tools_that_reach_the_target():
    rule, met = tools.calibrate(SCORES, NEEDED, target_recall=1.0)
    assert met
    r = tools.evaluate(SCORES, NEEDED, rule)
    assert r["recall"] == 1.0
    # The cheapest rule: 1 tool for query 0, 3 for query 1, none for query 2 (a floor above 0.05).
    assert r["mean_kept"] == 2.0 and r["no_tool_kept_none"] == 1.0
    half, met_half = tools.calibrate(SCORES, NEEDED, target_recall=0.5)
    assert met_half and tools.evaluate(SCORES, NEEDED, half)["mean_kept"] < 2.0


def test_an_unreachable_target_says_so_and_keeps_the_best_recall():
    scores = np.zeros((2, 40))
    scores[0, 39] = 1.0          # query 0's tool is best
    scores[1, :39] = 0.5         # query 1's tool is last of 40, beyond the largest k_max (32)
    needed = [np.array([39]), np.array([39])]
    rule, met = tools.calibrate(scores, needed, target_recall=1.0)
    assert not met
    assert tools.evaluate(scores, needed, rule)["recall"] == 0.5


def test_calibration_needs_queries_that_need_tools():
    with pytest.raises(ConfigError, match="label some queries"):
        tools.calibrate(SCORES[2:], NEEDED[2:], 0.9)
    with pytest.raises(ConfigError, match="target recall"):
        tools.calibrate(SCORES, NEEDED, 1.5)


@pytest.mark.parametrize("bad", [dict(margin=-0.1), dict(floor=float("nan")), dict(k_max=0), dict(k_max=2.0)])
def test_rule_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        Rule(**bad)


def test_int8_rows_decode_within_half_a_step():
    emb = np.random.default_rng(0).standard_normal((50, 384)).astype(np.float32)
    emb[3] = 0.0
    q, scale = tools.quantize_rows(emb)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    assert np.all(np.abs(q * scale[:, None] - emb) <= scale[:, None] / 2 + 1e-7)


def test_tool_text_reads_name_description_and_parameters():
    t = {"name": "move_arm", "description": "Move the arm.",
         "parameters": {"type": "object", "properties": {"x": {"type": "number", "description": "metres"}, "y": {}}}}
    assert tools.tool_text(t) == "move_arm: Move the arm. Parameters: x (metres), y"
    assert tools.tool_text({"name": "ping"}) == "ping:"


def test_catalog_forms(tmp_path):
    plain = [{"name": "a", "description": "x"}, {"type": "function", "function": {"name": "b", "description": "y"}}]
    f = tmp_path / "cat.json"
    f.write_text(json.dumps(plain))
    assert [t["name"] for t in load_catalog(f)] == ["a", "b"]
    lines = tmp_path / "cat.jsonl"
    lines.write_text("\n".join(json.dumps(t) for t in plain) + "\n")
    assert [t["name"] for t in load_catalog(lines)] == ["a", "b"]


@pytest.mark.parametrize("content, msg", [
    ("[]", "holds no tools"),
    ('[{"name": "a"}, {"name": "a"}]', "two tools are named 'a'"),
    ('[{"description": "no name"}]', "non-empty 'name'"),
    ('[{"name": "a", "description": 3}]', "not a string"),
    ('{"name": "a"}\nnot json\n', ":2 is not JSON"),
])
def test_bad_catalogs_say_what_is_wrong(tmp_path, content, msg):
    f = tmp_path / "cat.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=msg):
        load_catalog(f)


def test_queries_must_name_catalog_tools(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"query": "weather?", "tools": ["weather"]}\n{"query": "hi", "tools": []}\n')
    assert load_queries(f, {"weather"}) == [Query("weather?", frozenset({"weather"}), str(f)),
                                            Query("hi", frozenset(), str(f))]
    with pytest.raises(ConfigError, match="not in the catalog"):
        load_queries(f, {"email"})
    f.write_text('{"query": "", "tools": []}\n')
    with pytest.raises(ConfigError, match="must be"):
        load_queries(f, {"weather"})


def test_odd_parameters_are_refused_in_a_catalog_and_tolerated_in_tool_text(tmp_path):
    f = tmp_path / "cat.json"
    for params in ('["p1"]', '"oops"', '3', '{"properties": ["a"]}'):
        f.write_text(f'[{{"name": "a", "description": "x", "parameters": {params}}}]')
        with pytest.raises(ConfigError, match="not a JSON schema object"):
            load_catalog(f)
        assert tools.tool_text({"name": "a", "description": "x", "parameters": json.loads(params)}) == "a: x"


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match="nests JSON too deeply"):
        load_catalog(f)
    with pytest.raises(ConfigError, match="nests JSON too deeply"):
        load_queries(f, {"a"})


def test_few_labelled_queries_calibrate_on_all_of_them():
    one = [Query("book me a flight to NYC", frozenset({"book_flight"}))]
    assert tools.split_queries(one) == (one, one)
    two = one + [Query("hello there", frozenset())]
    calib, held = tools.split_queries(two)
    assert calib == held == two  # one half would hold no query that needs a tool


def test_figures_over_no_query_are_null_not_nan():
    r = tools.evaluate(SCORES[2:], NEEDED[2:], Rule())
    assert r["recall"] is None and r["mean_kept"] is None
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("target", [float("nan"), 0, -1, 5, float("inf")])
def test_a_bad_target_recall_is_refused(target):
    with pytest.raises(ConfigError, match="target recall"):
        tools.check_target(target)
