"""The console's pure parts: escaping, the DAG layout, previews and charts."""

from __future__ import annotations

from services.console import charts, dag, preview, textdiff
from services.console.markup import Markup, e, link, table, url
from services.console.pages import parents
from shared.api.pfs_models import CommitInfo

EVIL = '<script>alert("x")</script>'


def test_every_value_is_escaped_and_markup_passes_through() -> None:
    assert e(EVIL) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert e(Markup("<b>ok</b>")) == "<b>ok</b>"
    assert "<script>" not in table([EVIL], [[EVIL, 3]])
    assert 'href="/repos/a%2Fb?path=%2F%3Cx%3E"' in link(url("repos", "a/b", path="/<x>"), EVIL)
    assert "none" in table(["a"], [])


def test_dag_columns_follow_the_longest_provenance_path() -> None:
    spec_input = {"cross": [{"pfs": {"repo": "a"}}, {"union": [{"pfs": {"repo": "b"}}]}]}
    assert dag.input_repos(spec_input) == ["a", "b"]
    nodes = [dag.Node("a", "repo"), dag.Node("p", "pipeline"), dag.Node("q", "pipeline")]
    edges = [dag.Edge("a", "p"), dag.Edge("p", "q"), dag.Edge("a", "q")]
    assert dag.columns(nodes, edges) == {"a": 0, "p": 1, "q": 2}
    # A cycle (never made by PPS, but data is data) still lays out.
    assert set(dag.columns(nodes, [*edges, dag.Edge("q", "p")])) == {"a", "p", "q"}
    svg = dag.render([dag.Node(EVIL, "pipeline", "PIPELINE_FAILURE")], [])
    assert "<script>" not in svg and 'class="node pipeline bad"' in svg


def test_previews_by_name_and_content() -> None:
    csv = preview.render("/t.csv", b"a,b\n1,<i>2</i>\n", False, "/raw")
    assert "<td>1</td><td>&lt;i&gt;2&lt;/i&gt;</td>" in csv
    tsv = preview.render("/t.tsv", b"a\tb\n1\t2\n3\t", True, "/raw")
    assert "<td>1</td><td>2</td>" in tsv and "<td>3</td>" not in tsv  # a cut row is dropped
    assert "&quot;k&quot;: 1" in preview.render("/x.json", b'{"k":1}', False, "/raw")
    assert "Binary file" in preview.render("/x.bin", b"\xff\xfe\x00", False, "/raw")
    assert '<img class="preview" src="/raw?path=%2Fa.png"' in preview.render(
        "/a.png", b"\x89PNG", False, "/raw?path=%2Fa.png"
    )
    # SVG can carry script: shown as text, never as an image.
    assert preview.image_type("/a.svg") is None
    assert "&lt;svg" in preview.render("/a.svg", b"<svg onload=x>", False, "/raw")


def test_histogram_and_spec_diff() -> None:
    svg = charts.histogram([0.1, 0.2, 1.0])
    assert svg.count("<rect") == charts.BINS and "3 datums" in svg
    assert "No finished" in charts.histogram([])
    diff = charts.text_diff('{"a": 1}', '{"a": "<b>"}', "v1", "v2")
    assert '<span class="add">+{&quot;a&quot;: &quot;&lt;b&gt;&quot;}</span>' in diff


def test_line_diff_numbers_both_sides_escapes_and_stays_bounded() -> None:
    old = textdiff.Side("a\nb\nc\n")
    new = textdiff.Side(f"a\nB{EVIL}\nc\nd\n")
    html = textdiff.render(old, new)
    assert '<tr class="del"><td class="ln">2</td><td class="ln"></td>' in html
    assert '<tr class="add"><td class="ln"></td><td class="ln">2</td>' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "2 lines added, 1 removed" in html and "@@ -1,3 +1,4 @@" in html
    # A cut version: its last (maybe partial) line is left out, and the page says so.
    cut = textdiff.render(textdiff.Side("x\ny\nz", cut=True), textdiff.Side("x\ny\nzz", cut=True))
    assert "No differences" in cut
    assert "Only the first" in textdiff.render(
        textdiff.Side("x\n1\n", cut=True), textdiff.Side("y\n1\n")
    )
    # However long the diff, at most MAX_ROWS rows are drawn.
    many = textdiff.render(
        textdiff.Side(""), textdiff.Side("".join(f"{i}\n" for i in range(3 * textdiff.MAX_ROWS)))
    )
    assert many.count('<tr class="add">') == textdiff.MAX_ROWS
    assert f"first {textdiff.MAX_ROWS} lines" in many
    assert textdiff.decode(b"a\0b", False) is None
    assert textdiff.decode("é".encode()[:1], True) == ""


def test_a_merge_commit_shows_both_parents() -> None:
    fields = {"id": "c" * 32, "repo": "data", "branch": "master", "state": "finished"}
    merge = CommitInfo.from_json(
        fields | {"parent": "a" * 32, "second_parent": "b" * 32, "started": "2026-01-01"}
    )
    plain = CommitInfo.from_json(fields | {"parent": "a" * 32, "started": "2026-01-01"})
    root = CommitInfo.from_json(fields | {"parent": None, "started": "2026-01-01"})

    shown = parents(merge)
    assert shown.index("/repos/data/commits/" + "a" * 32) < shown.index("b" * 12)
    assert shown.endswith(" (merge)") and shown.count("<a ") == 2
    assert parents(plain).count("<a ") == 1 and "(merge)" not in parents(plain)
    assert parents(root) == "none"
