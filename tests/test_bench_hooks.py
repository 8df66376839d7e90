from gc2bench.cli import main


def test_bench_hooks_reports_the_overhead_against_the_tower(capsys):
    assert main(["bench", "hooks", "--layers", "2", "--width", "64", "--repeats", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "building a random CLIP tower" in captured.err and "2/2" in captured.err and "round" in captured.err
    assert lines[0].startswith("CLIP tower: 2 layers, width 64")
    assert lines[1].startswith("tower alone") and "% of the tower" in lines[3]
