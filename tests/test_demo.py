from skmm.demo import run_demo


def test_quick_demo_prints_a_table(capsys):
    assert run_demo(quick=True) == 0
    out = capsys.readouterr().out
    for method in ("skmm", "uniform", "kcenter", "adaptive"):
        assert out.count(f"\n{method} ") == 2
    assert "noise floor" in out
