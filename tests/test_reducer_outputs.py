import torch

from scripts import reducer_outputs


def test_outputs_saved_twice_compare_identical_and_a_changed_one_is_found(tmp_path, capsys):
    before, after = tmp_path / "before.pt", tmp_path / "after.pt"
    for path in (before, after):
        reducer_outputs.main(["save", str(path), "--reducers", "sttm", "random", "--budgets", "0.5",
                              "--shape", "4", "6", "6", "16", "--device", "cpu"])  # fmt: skip
    assert reducer_outputs.main(["compare", str(before), str(after)]) == 0
    assert "7 settings identical, 0 differing" in capsys.readouterr().out
    saved = torch.load(after)
    saved["random {'budget': 0.5}"]["tokens"][0, 0] += 1
    torch.save(saved, after)
    assert reducer_outputs.main(["compare", str(before), str(after)]) == 1
    report = capsys.readouterr().out
    assert "random {'budget': 0.5}: tokens DIFFERENT, boxes same" in report and "at most 1" in report
    saved["random {'budget': 0.5}"]["boxes"][0] = -1
    torch.save(saved, after)
    assert reducer_outputs.main(["compare", str(before), str(after)]) == 1
    kept = len(saved["random {'budget': 0.5}"]["boxes"])
    agreement = f"{(kept - 1) / kept:.2%} of rows the same box; {kept - 1} of {kept} / {kept} boxes in both"
    assert agreement in capsys.readouterr().out
