import hashlib

from utils.phi import DEFAULT_TEACHING_SALT, mask_phone, patient_key


def test_patient_key_is_salted_sha256_of_normalized_mrn(spark):
    df = spark.createDataFrame([(" mrn0000001 ",), ("MRN0000001",), (None,), ("",)], "mrn STRING")
    keys = [r[0] for r in df.select(patient_key("mrn")).collect()]
    expected = hashlib.sha256((DEFAULT_TEACHING_SALT + "MRN0000001").encode()).hexdigest()
    assert keys == [expected, expected, None, None]


def test_mask_phone_keeps_last_two_digits(spark):
    df = spark.createDataFrame([("(555) 123-4567",), (None,)], "phone STRING")
    assert [r[0] for r in df.select(mask_phone("phone")).collect()] == ["***-***-**67", None]
