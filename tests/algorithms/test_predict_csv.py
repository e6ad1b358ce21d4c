"""metalearn-predict's CSV: a file or class name that starts like a spreadsheet formula is
written as text (issue 21 item 6; OWASP, CSV injection)."""
import csv
import io
from pathlib import Path

import torch

from metalearn.inference import Prediction, write_csv


def test_formula_like_names_are_written_as_text():
    classes = ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "cat"]
    queries = [Path("=HYPERLINK(\"http:x\")"), Path("q/ok.png")]
    pred = Prediction([classes[0], "cat"], torch.full((2, 5), 0.2), classes)
    out = io.StringIO()
    write_csv(out, queries, pred)
    header, *rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert header == ["path", "label", "'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(A1)", "cat"]
    assert rows[0][:2] == ["'=HYPERLINK(\"http:x\")", "'=cmd|' /C calc'!A0"]
    assert rows[1][:2] == ["q/ok.png", "cat"] and rows[1][2:] == ["0.200000"] * 5
