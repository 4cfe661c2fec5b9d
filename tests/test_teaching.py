import pytest

from utils.teaching import check_exercise


def test_placeholder_is_not_an_error(capsys):
    assert check_exercise(1, ..., 42, "count the rows") is False
    assert "Exercise 1: not attempted yet. Hint: count the rows" in capsys.readouterr().out


def test_wrong_answer_teaches():
    with pytest.raises(AssertionError, match=r"Exercise 2: not quite. use a window \(your answer: 41\)"):
        check_exercise(2, 41, 42, "use a window")


def test_right_answer_and_frames_compare_by_content(spark, capsys):
    assert check_exercise(3, 42, 42, "hint") is True
    df = spark.createDataFrame([(2, "b"), (1, "a")], "id INT, v STRING")
    assert check_exercise(4, df, [(1, "a"), (2, "b")], "hint") is True
    assert "Exercise 4: correct." in capsys.readouterr().out
