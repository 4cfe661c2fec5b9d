"""utils.frames: the lazy equivalents of DataFrame.drop and distinct give the same rows."""

from __future__ import annotations

from tests.dataframes import assert_df_equality
from utils.frames import distinct_rows, drop_columns


def frame(spark):
    return spark.createDataFrame(
        [(1, "a", None, 2.5), (1, "a", 3, 2.5), (2, None, 4, None), (1, "a", None, 2.5)],
        "id int, name string, n int, x double")


def test_drop_columns_is_drop_with_the_column_order_kept(spark):
    df = frame(spark)
    for names in (("name",), ("id", "x"), ("n", "name", "x"), ()):
        dropped = drop_columns(df, *names)
        assert dropped.columns == df.drop(*names).columns
        assert_df_equality(dropped, df.drop(*names))


def test_drop_columns_ignores_a_name_that_is_not_a_column_like_drop(spark):
    assert drop_columns(frame(spark), "missing").columns == ["id", "name", "n", "x"]


def test_distinct_rows_is_select_distinct(spark):
    df = frame(spark)
    for columns in (("id",), ("id", "name"), ("name", "n", "x")):
        assert_df_equality(distinct_rows(df, *columns), df.select(*columns).distinct())
    assert distinct_rows(df, "id", "name").count() == 2   # NULL is one value, as in DISTINCT
