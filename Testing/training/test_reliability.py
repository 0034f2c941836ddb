"""Which labeled and held-out scans bore the parent out: the evidence the anchor and the
routing probe read."""

from __future__ import annotations


def test_a_scan_bears_the_parent_out_a_margin_above_the_worst_labeled_scan():
    from assft.training.anchor import borne_out

    # hospital's evidence: labeled T2 0.21 and FLAIR 0.46, held-out T1 0.72 and T2 0.19
    dices, training = [0.206, 0.458, 0.72, 0.185], [True, True, False, False]
    assert borne_out(dices, training, margin=0.15) == [False, True, True, False]
    # (the FLAIR scan counts: 0.25 above the T2 one, though far below the T1 one)
    # one acquisition: nothing stands a margin above the worst label
    assert not any(borne_out([0.80, 0.84, 0.86], [True, True, False], margin=0.15))
    # no training scan with a Dice: nothing is borne out
    assert borne_out([0.9, float("nan")], [False, True], margin=0.0) == [False, False]
