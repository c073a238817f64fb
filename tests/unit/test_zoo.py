"""Topology Zoo import: lengths, ids, self-loops, parallel edges, missing coordinates, hostile XML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from twin.model import zoo
from twin.model.validate import load_topology, validate_file
from twin.model.zoo import ZooError, haversine_km, import_zoo, site_ids

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "zoo"
MINI = FIXTURES / "mini.graphml"
NOCOORDS = FIXTURES / "nocoords.graphml"


def imported(tmp_path: Path, source: Path = MINI, **options):
    out = tmp_path / "out.yaml"
    out.write_text(import_zoo(source, **options))
    return out, load_topology(out)


def test_haversine_known_distances():
    assert haversine_km(0, 0, 0, 1) == pytest.approx(111.195, abs=0.01)
    assert haversine_km(34.694, 135.502, 33.590, 130.402) == pytest.approx(485.1, abs=0.5)
    assert haversine_km(10, 20, 10, 20) == 0


def test_mini_imports_and_validates(tmp_path):
    out, topo = imported(tmp_path)
    assert validate_file(out) == []
    assert [s.id for s in topo.sites] == ["osaka", "fukuo", "hiros", "tokyo", "toky2"]
    assert [s.name for s in topo.sites] == ["Osaka", "Fukuoka", "Hiroshima", "Tokyo", "Tokyo"]
    assert topo.name == "mini-net"
    assert topo.sites[0].lat == pytest.approx(34.69374) and topo.sites[0].lon == pytest.approx(135.50218)


def test_lengths_are_great_circle_times_route_factor(tmp_path):
    _, topo = imported(tmp_path)
    span = next(s for s in topo.spans if set(s.ends) == {"osaka", "hiros"})
    straight = haversine_km(34.69374, 135.50218, 34.39627, 132.45937)
    assert span.length == pytest.approx(straight * 1.3, abs=0.001)
    _, topo2 = imported(tmp_path, route_factor=1.5, wavelengths=4, rate="1Gbit")
    span2 = next(s for s in topo2.spans if set(s.ends) == {"osaka", "hiros"})
    assert span2.length == pytest.approx(straight * 1.5, abs=0.001)
    assert span2.wavelengths == 4 and span2.rate == 1e9


def test_self_loops_dropped_and_parallel_edges_merged_with_notes(tmp_path):
    text = import_zoo(MINI)
    _, topo = imported(tmp_path)
    pairs = [frozenset(s.ends) for s in topo.spans]
    assert len(pairs) == len(set(pairs)) == 5  # 7 edges - 1 self-loop - 1 parallel
    assert '# Dropped 1 self-loop(s) at: "Hiroshima"' in text
    assert "# Merged 1 parallel edge(s) into one span each: fukuo-osaka (2 edges)" in text


def test_co_located_nodes_get_a_positive_length(tmp_path):
    _, topo = imported(tmp_path)
    span = next(s for s in topo.spans if set(s.ends) == {"tokyo", "toky2"})
    assert span.length == zoo.MIN_LENGTH_KM


def test_missing_coordinates_name_the_nodes():
    with pytest.raises(ZooError) as excinfo:
        import_zoo(NOCOORDS)
    message = str(excinfo.value)
    assert '2 node(s) without Latitude/Longitude: "Hidden PoP", "Secret Site"' in message
    assert "--edge-length" in message


def test_edge_length_for_nodes_without_coordinates(tmp_path):
    out, topo = imported(tmp_path, NOCOORDS, edge_length_km=50)
    lengths = {frozenset(s.ends): s.length for s in topo.spans}
    assert lengths[frozenset({"hidde", "secre"})] == 50
    assert lengths[frozenset({"senda", "hidde"})] == 50
    assert lengths[frozenset({"sappo", "senda"})] == pytest.approx(haversine_km(
        43.06417, 141.34694, 38.26667, 140.86667) * 1.3, abs=0.001)
    hidden = topo.site("hidde")
    assert (hidden.lat, hidden.lon) == (0, 0)
    assert "# no coordinates in the source file" in out.read_text()


def test_site_ids_are_valid_unique_and_short():
    labels = ["New York", "New York", "New Yorkshire", "Zürich", "東京", "2nd Ave", "", "a;rm -rf /"] + ["X"] * 12
    ids = site_ids(labels)
    assert len(set(ids)) == len(ids)
    for site_id in ids:
        assert 1 <= len(site_id) <= 5 and site_id[0].isalpha() and site_id.isalnum() and site_id.islower()
    assert ids[:4] == ["newyo", "newy2", "newy3", "zuric"]


def test_hostile_labels_stay_data(tmp_path):
    source = tmp_path / "evil.graphml"
    source.write_text(MINI.read_text().replace(">Osaka<", '>Osaka\n# kind: scenario\n"; rm -rf /<'))
    out, topo = imported(tmp_path, source)
    assert topo.sites[0].name.startswith("Osaka\n# kind: scenario")
    assert yaml.safe_load(out.read_text())["kind"] == "topology"


@pytest.mark.parametrize("declaration", [
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>',
    '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE graphml SYSTEM "http://example.invalid/graphml.dtd">',
])
def test_doctype_and_entities_are_rejected(tmp_path, declaration):
    source = tmp_path / "bomb.graphml"
    text = MINI.read_text()
    head, _, rest = text.partition("?>")
    source.write_text(head + "?>" + declaration + rest)
    with pytest.raises(ZooError, match="are not allowed in GraphML input"):
        import_zoo(source)


def test_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "MAX_GRAPHML_BYTES", 1000)
    with pytest.raises(ZooError, match="larger than"):
        import_zoo(MINI)


@pytest.mark.parametrize(("text", "message"), [
    ("<graphml><graph>", "not valid XML"),
    ('<graphml><graph><node id="a"/></graph></graphml>', "a topology needs at least two sites"),
    ('<graphml><graph><node id="a"/><node id="b"/><edge source="a" target="c"/></graph></graphml>',
     "unknown node 'c'"),
    ('<graphml><graph><node id="a"/><node id="a"/></graph></graphml>', "appears twice"),
    ('<graphml><graph><node id="a"/><node id="b"/><edge source="a" target="a"/></graph></graphml>',
     "no edges between two different nodes"),
])
def test_malformed_graphs(tmp_path, text, message):
    source = tmp_path / "bad.graphml"
    source.write_text(text)
    with pytest.raises(ZooError, match=message):
        import_zoo(source, edge_length_km=10)


def test_options_are_checked():
    with pytest.raises(ZooError, match="route factor 0.5 is below 1"):
        import_zoo(MINI, route_factor=0.5)
    with pytest.raises(ZooError, match="out of range"):
        import_zoo(MINI, wavelengths=0)
    with pytest.raises(ZooError, match="--rate"):
        import_zoo(MINI, rate="fast")
    with pytest.raises(ZooError, match="must be positive"):
        import_zoo(MINI, edge_length_km=-1)
    with pytest.raises(ZooError, match="cannot read"):
        import_zoo(FIXTURES / "missing.graphml")
