from skmm.demo import run_demo


def test_quick_demo_prints_a_table(capsys):
    assert run_demo(quick=True) == 0
    out = capsys.readouterr().out
    assert "method" in out and "uniform" in out and "skmm" in out
    assert out.count("/8") == 4
