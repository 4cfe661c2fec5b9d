import pytest

from utils.teaching import check_exercise


def test_placeholder_is_not_an_error(capsys):
    check_exercise(1, ..., 42, "count the rows")
    assert "Exercise 1: not attempted yet. Hint: count the rows" in capsys.readouterr().out


def test_wrong_answer_teaches():
    with pytest.raises(AssertionError, match=r"Exercise 2: not quite. use a window \(your answer: 41\)"):
        check_exercise(2, 41, 42, "use a window")


def test_right_answer_and_frames_compare_by_content(spark, capsys):
    check_exercise(3, 42, 42, "hint")
    df = spark.createDataFrame([(2, "b"), (1, "a")], "id INT, v STRING")
    check_exercise(4, df, [(1, "a"), (2, "b")], "hint")
    assert capsys.readouterr().out == "Exercise 3: correct.\nExercise 4: correct.\n"
    with pytest.raises(AssertionError, match="Exercise 5: not quite"):
        check_exercise(5, df, [(1, "a")], "hint")
