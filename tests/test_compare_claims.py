"""`gsil compare-claims`: verdicts of several runs side by side, a flip only between supported and contradicted."""

import csv

import pytest

from gsil.aggregate.stability import compare, flips, read_claims, to_markdown
from gsil.cli import main as gsil_main
from gsil.logutil import GsilError

COLUMNS = ["Claim", "Statement", "Model A", "Model B", "Benchmark", "n", "Difference", "Interval", "McNemar p",
           "Per-seed differences", "Verdict", "Reason"]


def write_claims(path, verdicts: dict[str, str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for claim, verdict in verdicts.items():
            writer.writerow({"Claim": claim, "Statement": f"statement {claim}", "Difference": "+2.5",
                             "Interval": "[+0.5, +4.5]", "Verdict": verdict})
    return path


@pytest.mark.parametrize("verdicts, flipped", [
    (["supported", "contradicted"], True),
    (["supported", "inconclusive", "contradicted"], True),
    (["supported", "inconclusive"], False),
    (["contradicted", "not run"], False),
    (["inconclusive", "inconclusive"], False),
])
def test_only_supported_against_contradicted_is_a_flip(verdicts, flipped):
    assert flips(verdicts) is flipped


def test_compare_puts_runs_side_by_side(tmp_path):
    a = read_claims(write_claims(tmp_path / "demo" / "tables" / "claims.csv",
                                 {"(a)": "supported", "(b)": "inconclusive", "(c)": "contradicted"}))
    b = read_claims(write_claims(tmp_path / "demo-data1" / "tables" / "claims.csv",
                                 {"(a)": "inconclusive", "(b)": "supported", "(d)": "supported"}))
    table = compare([a, b])
    assert [row["Claim"] for row in table] == ["(a)", "(b)", "(c)", "(d)"]
    assert table[0]["demo"] == "supported (+2.5 [+0.5, +4.5])" and table[0]["demo-data1"].startswith("inconclusive")
    assert table[2]["demo-data1"] == "not run" and table[3]["demo"] == "not run"
    assert [row["Flips"] for row in table] == ["no"] * 4
    assert "No claim flips" in to_markdown(table)


def test_cli_exits_1_on_a_flip_and_writes_the_table(tmp_path, capsys):
    first = write_claims(tmp_path / "one.csv", {"(a)": "supported"})
    second = write_claims(tmp_path / "two.csv", {"(a)": "contradicted"})
    out = tmp_path / "cmp.md"
    assert gsil_main(["compare-claims", str(first), str(second), "--names", "seed0,seed1", "--output", str(out)]) == 1
    assert "Flipped between supported and contradicted: (a)." in out.read_text()
    assert "| (a) | statement (a) | supported" in capsys.readouterr().out


def test_bad_tables_are_named(tmp_path):
    with pytest.raises(GsilError, match="no claims table"):
        read_claims(tmp_path / "missing.csv")
    (tmp_path / "x.csv").write_text("Claim,Verdict\n(a),supported\n")
    with pytest.raises(GsilError, match="x.csv: not a claims table"):
        read_claims(tmp_path / "x.csv")
    bad = write_claims(tmp_path / "bad.csv", {"(a)": "probably"})
    with pytest.raises(GsilError, match="bad.csv:2: verdict 'probably'"):
        read_claims(bad)
    one = read_claims(write_claims(tmp_path / "one.csv", {"(a)": "supported"}))
    with pytest.raises(GsilError, match="at least two runs"):
        compare([one])
    with pytest.raises(GsilError, match="same name"):
        compare([one, one])


def test_long_differences_are_shown_to_three_digits(tmp_path):
    """Claim (b)'s difference is a mean of log-ratios with every digit in the CSV; the side-by-side view rounds it
    and leaves short ones as written."""
    a = write_claims(tmp_path / "a" / "tables" / "claims.csv", {"(b)": "inconclusive"})
    a.write_text(a.read_text().replace("+2.5", "-0.21103674545884132"))
    b = write_claims(tmp_path / "b" / "tables" / "claims.csv", {"(b)": "inconclusive"})
    row = compare([read_claims(a), read_claims(b)])[0]
    assert row["a"] == "inconclusive (-0.211 [+0.5, +4.5])" and row["b"] == "inconclusive (+2.5 [+0.5, +4.5])"
